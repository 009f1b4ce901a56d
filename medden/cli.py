"""The ``medden`` command: parses arguments, calls the public API, prints. Nothing imports this module.

Every user-caused problem is a :class:`~medden.errors.MeddenError`; :func:`main` prints it as one line on stderr
and exits with status 2 (1 for an unexpected internal error; set ``MEDDEN_DEBUG=1`` to see its traceback).
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

import medden
from medden.errors import MeddenError, ParameterError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Denoise 3D medical scans (CT, MRI, PET/SPECT) and measure what the denoising kept.")
out = Console(highlight=False, markup=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"medden {medden.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Denoise 3D medical scans and measure what the denoising kept."""


@contextmanager
def _steps(quiet: bool) -> Iterator:
    """A progress display with one line per step (spinner and elapsed time) on a terminal; silent with --quiet
    and when stderr is not a terminal (batch logs keep only results and errors)."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  disable=quiet or not err.is_terminal, transient=False) as progress:
        current: list[int] = []

        def step(text: str) -> None:
            if current:
                progress.update(current[-1], completed=1, total=1)
            current.append(progress.add_task(text, total=None))

        yield step
        if current:
            progress.update(current[-1], completed=1, total=1)


def parse_params(items: list[str]) -> dict[str, str]:
    """``["weight=0.5", "iterations=50"]`` → ``{"weight": "0.5", "iterations": "50"}``."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"--param needs NAME=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def parse_sigma(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ParameterError(f"--sigma must be 'auto' or a number in the volume's units, got {text!r}") from None


@app.command()
def denoise(
    input: Path = typer.Argument(..., help="NIfTI/NRRD/MHA file, multi-frame DICOM file, DICOM series folder, "
                                           "or a study folder (batch)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Output path (default: beside the input, '_denoised' added)."),
    method: str = typer.Option("auto", "--method", "-m", help="Registry name (see `medden methods`) or auto."),
    sigma: str = typer.Option("auto", "--sigma", help="Noise standard deviation in the volume's units, or auto."),
    param: List[str] = typer.Option([], "--param", "-p", help="Method parameter NAME=VALUE (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="SeriesInstanceUID when a folder holds several."),
    modality: str = typer.Option("auto", "--modality", help="auto (from the file or its values), ct, mr, pt, nm."),
    batch: bool = typer.Option(False, "--batch", help="Treat IN as a study: denoise every volume and series below it."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Batch: process shard K/N (K from 0, e.g. "
                                                              "$SLURM_ARRAY_TASK_ID/N)."),
    anonymize: bool = typer.Option(False, "--anonymize", help="Replace patient identifiers in DICOM outputs."),
    samples: Optional[int] = typer.Option(None, "--samples", help="--method diffusion: posterior samples."),
    uncertainty: Optional[Path] = typer.Option(None, "--uncertainty", help="--method diffusion: write the per-voxel "
                                                                           "posterior standard deviation here."),
    seed: Optional[int] = typer.Option(None, "--seed", help="--method diffusion: random seed (reproducible)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Denoise a scan (or a whole study folder) and write the result beside it, same geometry and format."""
    from medden.io import default_output_path, output_format
    from medden.io.atomic import check_output_path
    from medden.pipeline import provenance_record

    params = parse_params(param)
    sigma_value = parse_sigma(sigma)
    medden.inference.resolve_device(device)
    if samples is not None or seed is not None or uncertainty is not None:
        if method != "diffusion":
            raise ParameterError("--samples, --seed and --uncertainty apply to --method diffusion")
        params.update({k: v for k, v in (("samples", samples), ("seed", seed)) if v is not None})
    if not input.exists():
        raise MeddenError(f"{input} does not exist")
    if batch or shard is not None or is_study_folder(input):
        if series_uid is not None or modality != "auto":
            raise ParameterError("--series-uid and --modality apply to one scan, not to a study folder")
        raise typer.Exit(denoise_study_cli(input, output, method, sigma_value, params, device, shard, anonymize,
                                           overwrite, quiet))
    output = output or default_output_path(input)
    check_output_path(output, overwrite=overwrite, inputs=(input,))
    if uncertainty is not None:
        check_output_path(uncertainty, overwrite=overwrite, inputs=(input, output))
    with _steps(quiet) as step:
        step(f"Loading {input}")
        volume = with_modality(medden.load_volume(input, series_uid=series_uid), modality)
        output_format(output, like=volume)
        spec = medden.denoisers.default_method(volume.modality) if method == "auto" else medden.denoisers.get_method(method)
        spec.resolve_params(params)
        step(f"Denoising with {spec.name} ({'estimating noise, ' if sigma_value == 'auto' else ''}"
             f"{volume.shape[0]}×{volume.shape[1]}×{volume.shape[2]} voxels)")
        if uncertainty is not None:
            result, std = posterior_with_progress(volume, sigma_value, device, params, quiet)
        else:
            result = medden.denoise(volume, method=spec.name, sigma=sigma_value, device=device, **params)
        step(f"Writing {output}")
        prov = provenance_record(volume, result, input_path=input, output_path=output,
                                 series_uid=volume.meta.get("series_uid") or None)
        medden.save_volume(result, output, overwrite=overwrite, description=f"medden {spec.name}", protect=(input,),
                           provenance=prov, anonymize=anonymize)
        if uncertainty is not None:
            medden.save_volume(std, uncertainty, overwrite=overwrite, description="medden diffusion posterior std",
                               protect=(input, output), provenance={**prov, "output": str(uncertainty),
                                                                    "content": "posterior standard deviation"},
                               anonymize=anonymize)
    if not quiet:
        rec = result.meta["denoise"]
        out.print(f"modality {volume.modality} ({volume.meta.get('modality_source', '')})")
        out.print(f"{output}  [{spec.name}, sigma {rec['sigma']:.4g} ({rec['sigma_source']}), "
                  f"{rec['seconds']:.1f} s on {rec['device']}]")


def posterior_with_progress(volume, sigma, device: str, params: dict, quiet: bool):
    """Posterior mean and standard deviation of the diffusion method, with a bar over samples × steps."""
    from rich.progress import BarColumn, MofNCompleteColumn

    from medden.denoisers.diffusion import posterior_volume

    with Progress(TextColumn("posterior sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, disable=quiet or not err.is_terminal) as progress:
        task = progress.add_task("sampling", total=None)
        return posterior_volume(volume, sigma=sigma, device=device,
                                progress=lambda done, total: progress.update(task, completed=done, total=total),
                                **params)


def is_study_folder(path: Path) -> bool:
    """A folder is a study (batch mode) when it holds sub-folders or volume files, not just one flat DICOM series."""
    from medden.pipeline import VOLUME_SUFFIXES

    if not path.is_dir():
        return False
    return any(p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES) for p in path.iterdir())


def denoise_study_cli(study: Path, output: Path | None, method: str, sigma, params: dict, device: str,
                      shard: str | None, anonymize: bool, overwrite: bool, quiet: bool) -> int:
    """Batch mode: progress over the study, one line per finished item, a summary; non-zero if any item failed."""
    from rich.progress import BarColumn, MofNCompleteColumn

    from medden.pipeline import denoise_study, parse_shard

    out_dir = output or study.with_name(f"{study.name}_denoised")
    shard_kn = parse_shard(shard)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, disable=quiet or not err.is_terminal) as progress:
        task = progress.add_task("study", total=None)

        def on_item(i: int, n: int, item, record) -> None:
            if record is None:
                progress.update(task, total=n, completed=i, description=f"{item.label}")
                return
            progress.update(task, completed=i + 1)
            if not quiet:
                detail = record.get("error") if record["status"] == "failed" else record["output"]
                (err if record["status"] == "failed" else out).print(f"{record['status']:8s} {item.label}  {detail}")

        result = denoise_study(study, out_dir, method=method, sigma=sigma, device=device, params=params,
                               shard=shard_kn, anonymize=anonymize, overwrite=overwrite, on_item=on_item)
    summary = (f"{len(result.records)} volume(s): {result.count('ok')} done, {result.count('skipped')} already done, "
               f"{len(result.failed)} failed; manifest {result.manifest}")
    if result.failed:
        err.print(f"error: {summary}")
        return 2
    if not quiet:
        out.print(summary)
    return 0


@app.command("merge-manifests")
def merge_manifests_cmd(out_dir: Path = typer.Argument(..., help="Output folder of a sharded batch run.")) -> None:
    """Join the shard manifests of a batch output folder into manifest.json (and .csv)."""
    from medden.pipeline import merge_manifests

    out.print(str(merge_manifests(out_dir)))


def with_modality(volume: medden.Volume, modality: str) -> medden.Volume:
    """Apply a --modality override; 'auto' keeps what the file records or what the values imply."""
    import dataclasses

    from medden.volume import MODALITIES

    code = modality.strip().upper()
    if code == "AUTO":
        return volume
    if code not in MODALITIES:
        raise ParameterError(f"--modality must be auto or one of {', '.join(m.lower() for m in MODALITIES)}, "
                             f"got {modality!r}")
    return dataclasses.replace(volume, modality=code, meta={**volume.meta, "modality_source": "given by --modality"})


def describe(volume: medden.Volume) -> dict:
    """The facts `medden info` prints, as a JSON-ready dictionary."""
    from medden.denoisers import estimate_sigma

    data = volume.data
    p1, p99 = np.percentile(data, [1, 99])
    return {
        "path": volume.meta.get("source_path"),
        "format": volume.meta.get("format"),
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": volume.orientation,
        "origin_ras_mm": [round(float(o), 4) for o in volume.origin],
        "modality": volume.modality,
        "modality_source": volume.meta.get("modality_source"),
        "min": float(data.min()), "max": float(data.max()), "p1": float(p1), "p99": float(p99),
        "noise_sigma": round(estimate_sigma(volume), 4),
    }


@app.command()
def info(
    input: Path = typer.Argument(..., help="NIfTI/NRRD/MHA file, multi-frame DICOM file or DICOM series folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="SeriesInstanceUID when a folder holds several."),
) -> None:
    """Print shape, spacing, orientation, modality, value range and the estimated noise level."""
    facts = describe(medden.load_volume(input, series_uid=series_uid))
    if as_json:
        out.print_json(json.dumps(facts))
        return
    sp = " × ".join(f"{s:.4g}" for s in facts["spacing_mm"])
    out.print(f"{facts['path']}  ({facts['format']})")
    out.print(f"  shape        {' × '.join(map(str, facts['shape']))} voxels")
    out.print(f"  spacing      {sp} mm")
    out.print(f"  orientation  {facts['orientation']} (voxel axes point to; RAS+ world)")
    out.print(f"  modality     {facts['modality']} ({facts['modality_source']})")
    out.print(f"  values       {facts['min']:.6g} … {facts['max']:.6g} (1–99 %: {facts['p1']:.6g} … {facts['p99']:.6g})")
    out.print(f"  noise σ      {facts['noise_sigma']:.4g} (estimated, volume units)")


@app.command()
def methods(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the registered denoisers with their parameters, defaults and units."""
    specs = medden.list_methods()
    if as_json:
        out.print_json(json.dumps([{
            "name": s.name, "family": s.family, "summary": s.summary, "modalities": list(s.modalities),
            "gpu": s.gpu, "available": s.available, "extra": s.extra,
            "params": [{"name": p.name, "default": p.default, "unit": p.unit, "help": p.help} for p in s.params],
        } for s in specs]))
        return
    table = Table(title="medden denoisers (best first; 'auto' picks the first available one for the modality)")
    for col in ("method", "family", "GPU", "available", "parameters (default, unit)"):
        table.add_column(col)
    for s in specs:
        params = "\n".join(f"{p.name}={p.default}" + (f" [{p.unit}]" if p.unit else "") for p in s.params) or "—"
        avail = "yes" if s.available else f"no: pip install \"medden[{s.extra}]\""
        table.add_row(s.name, s.family, "yes" if s.gpu else "no", avail, params)
    out.print(table)


# [train command]
@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config (JSON, or YAML with PyYAML), or a folder of scans to "
                                            "fine-tune on without clean references."),
    mode: Optional[str] = typer.Option(None, "--mode", help="supervised, n2n (paired noisy scans) or n2v (blind "
                                                            "spot); default: the config's, n2v for a folder."),
    modality: str = typer.Option("auto", "--modality", help="mr or ct (a folder: default from its first scan)."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Checkpoints and logs (resumable)."),
    export: Optional[Path] = typer.Option(None, "--export", "-o", help="Weights file to write at the end."),
    init: Optional[str] = typer.Option(None, "--init", help="Weights to start from; 'shipped' = the shipped model "
                                                            "for the modality (default for a folder when present)."),
    wall_minutes: Optional[float] = typer.Option(None, "--wall-minutes", help="Stop after this much training."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Number of epochs."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Train a deep denoiser (resumable), or fine-tune one on a folder of your own scans (`--mode n2v scans/`)."""
    from medden.training import load_config, train as run_training, validate_config

    overrides = {"mode": mode, "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
                 "export": str(export) if export else None, "wall_minutes": wall_minutes, "epochs": epochs,
                 "device": device, "command": "medden train " + " ".join(sys.argv[2:])}
    if init and init != "shipped":
        overrides["init_weights"] = init
    if config.is_dir():
        cfg = validate_config(folder_config(config, mode or "n2v", modality, init, overrides), str(config))
    else:
        if modality != "auto":
            overrides["modality"] = modality.upper()
        if init == "shipped":
            overrides["init_weights"] = str(_shipped_for(overrides.get("modality") or
                                                         json.loads(config.read_text()).get("modality", "MR")))
        cfg = load_config(config, **overrides)
    medden.inference.resolve_device(cfg.device)
    quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 speaks
    record = run_training(cfg, log=(lambda s: None) if quiet else out.print)
    if not quiet:
        out.print(f"trained {record['steps']} steps in {record['minutes']} min"
                  + (f"; weights: {record['export']}" if record.get("export") else ""))


def _shipped_for(modality: str) -> Path:
    from medden.models import shipped_path

    path = shipped_path("deep-ct" if str(modality).upper() == "CT" else "deep-mr")
    if not path.is_file():
        raise ParameterError(f"--init shipped: the shipped model {path.name} is not installed")
    return path


def folder_config(folder: Path, mode: str, modality: str, init: Optional[str], overrides: dict) -> dict:
    """A self-supervised fine-tuning config for every scan in ``folder`` (files, or DICOM series sub-folders)."""
    scans = sorted(p for p in folder.iterdir() if p.is_dir() or p.name.endswith((".nii", ".nii.gz", ".nrrd", ".mha",
                                                                                   ".mhd", ".dcm")))
    if not scans:
        raise ParameterError(f"{folder} holds no scans (.nii, .nii.gz, .nrrd, .mha, DICOM)")
    if mode == "supervised":
        raise ParameterError("a folder of noisy scans trains self-supervised: use --mode n2v (or n2n with a config "
                             "listing the pairs)")
    if mode == "n2n":
        raise ParameterError("--mode n2n needs pairs of scans: write a config whose data entries give 'pair'")
    code = modality.strip().upper()
    if code == "AUTO":
        code = medden.load_volume(scans[0]).modality
        if code not in ("MR", "CT"):
            raise ParameterError(f"cannot tell whether {scans[0]} is MR or CT: give --modality mr or ct")
    if code not in ("MR", "CT"):
        raise ParameterError(f"--modality must be mr or ct for training, got {modality!r}")
    name = f"finetuned_{code.lower()}_{mode}"
    cfg = {"name": name, "modality": code, "mode": mode, "data": [{"path": str(p)} for p in scans],
           "patch_size": [32, 32, 32], "batch_size": 8, "epochs": 20, "steps_per_epoch": 100,
           "learning_rate": 2e-4, "network": {"features": [8, 16, 32, 64, 128, 8]},
           "checkpoint_dir": str(Path(".medden_checkpoints") / name), "export": f"{name}.safetensors",
           "noise": {"model": "lowdose-ct" if code == "CT" else "rician"}}
    if init in (None, "shipped"):
        try:
            cfg["init_weights"] = str(_shipped_for(code))
        except ParameterError:
            if init == "shipped":
                raise
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg




# [simulate command]
@app.command()
def simulate(
    input: Path = typer.Argument(..., help="Clean or full-dose scan: NIfTI/NRRD/MHA file, DICOM file or series folder."),
    output: Path = typer.Option(..., "-o", "--output", help="Output path (same format family as the input)."),
    model: str = typer.Option(..., "--model", "-m", help="Noise model: gaussian, poisson, poisson-gaussian, rician, "
                                                         "noncentral-chi, lowdose-ct, lowdose-ct-insertion."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same output."),
    dose: Optional[float] = typer.Option(None, "--dose", help="CT models: fraction of the full dose, in (0, 1]."),
    sigma: Optional[str] = typer.Option(None, "--sigma", help="Noise sigma in the volume's units, or N% of the 99.9th "
                                                              "percentile of the non-zero voxels (e.g. 3%)."),
    counts: Optional[float] = typer.Option(None, "--counts", help="Poisson models: counts per unit intensity."),
    coils: Optional[int] = typer.Option(None, "--coils", help="noncentral-chi: receive coils L."),
    param: List[str] = typer.Option([], "--param", "-p", help="Other model parameter NAME=VALUE (repeatable), "
                                                              "e.g. -p n_views=1152."),
    device: str = typer.Option("cpu", "--device", help="cpu (same output on every machine), cuda or auto."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="SeriesInstanceUID when a folder holds several."),
    modality: str = typer.Option("auto", "--modality", help="auto (from the file or its values), ct, mr, pt, nm."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Simulate noise (physics models, e.g. low-dose CT) on a scan and write it in the same format.

    The parameters are recorded with the output: in its history (NIfTI descrip, DICOM DerivationDescription) and,
    for NIfTI, in a JSON sidecar beside it.
    """
    from medden.io import output_format
    from medden.io.atomic import check_output_path
    from medden.noise.registry import get_model

    spec = get_model(model)
    given: dict = {}
    for name, value in parse_params(param).items():
        known = {p.name: p for p in spec.params}
        default = known[name].default if name in known else None
        given[name] = _parse_model_value(name, value, default)
    for name, value in (("dose", dose), ("sigma", sigma), ("counts_per_unit", counts), ("coils", coils)):
        if value is not None:
            given[name] = value
    if isinstance(given.get("sigma"), str) and not given["sigma"].strip().endswith("%"):
        given["sigma"] = _parse_model_value("sigma", given["sigma"], 0.0)
    spec.resolve_params(given)
    medden.inference.resolve_device(device)
    if not input.exists():
        raise MeddenError(f"{input} does not exist")
    check_output_path(output, overwrite=overwrite, inputs=(input,))
    with _steps(quiet) as step:
        step(f"Loading {input}")
        volume = with_modality(medden.load_volume(input, series_uid=series_uid), modality)
        output_format(output, like=volume)
        step(f"Simulating {spec.name} noise ({volume.shape[0]}×{volume.shape[1]}×{volume.shape[2]} voxels)")
        result = medden.noise.simulate(volume, spec.name, seed=seed, device=device, **given)
        step(f"Writing {output}")
        written = medden.save_volume(result, output, overwrite=overwrite, description=f"medden simulate {spec.name}",
                                     protect=(input,))
        name = Path(written).name
        if name.endswith((".nii", ".nii.gz")):
            stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
            sidecar = Path(written).with_name(stem + ".json")
            if overwrite or not sidecar.exists():
                sidecar.write_text(json.dumps({"Modality": result.modality,
                                               "MeddenSimulation": result.meta["simulation"]}, indent=2, default=str))
    if not quiet:
        out.print(f"{written}  [{result.history[-1]}]")


def _parse_model_value(name: str, text: str, default):
    """A CLI string as the type of a noise-model parameter's default (numbers when the default is None)."""
    if isinstance(default, bool):
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ParameterError(f"parameter {name!r} needs true or false, got {text!r}")
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, str):
        return text
    try:
        return int(text) if isinstance(default, int) else float(text)
    except ValueError:
        raise ParameterError(f"parameter {name!r} needs a number, got {text!r}") from None



# [evaluate command]
@app.command()
def evaluate(
    outputs: List[str] = typer.Argument(..., help="Denoised volumes to compare (PATH or NAME=PATH; the name defaults "
                                                  "to the file name)."),
    reference: Path = typer.Option(..., "--reference", "-r", help="Clean (or reference-dose) volume."),
    noisy: Optional[Path] = typer.Option(None, "--noisy", help="The denoisers' input: measured too, and enables "
                                                               "the method-noise analysis."),
    rois: Optional[Path] = typer.Option(None, "--rois", help="rois.json with boxes/spheres/masks (format: "
                                                             "medden.metrics.roi)."),
    report: Path = typer.Option(Path("report"), "-o", "--output", help="Report folder (metrics.json, report.html, "
                                                                       "report.md, figures/)."),
    data_range: Optional[float] = typer.Option(None, "--data-range", help="Peak for PSNR/SSIM in volume units "
                                                                          "(default: reference max - min)."),
    uncertainty: Optional[List[str]] = typer.Option(None, "--uncertainty", help="NAME=PATH: per-voxel standard "
                                                    "deviation of output NAME (e.g. from --method diffusion "
                                                    "--uncertainty): coverage and reliability curve. Repeatable."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Measure denoised volumes against a reference (PSNR, SSIM, HU bias, CNR, NPS, MTF, method noise) and write a
    report that opens in a browser without network."""
    from medden.metrics import evaluate as evaluate_volumes
    from medden.metrics import load_rois, write_report

    named: dict[str, Path] = {}
    for item in outputs:
        name, sep, path = item.partition("=")
        if not sep or Path(item).exists():
            path, name = item, Path(item).name.split(".")[0]
        base, n = name, 2
        while name in named or name in ("noisy", "reference"):
            name, n = f"{base}_{n}", n + 1
        named[name] = Path(path)
    stds: dict[str, Path] = {}
    for item in uncertainty or []:
        name, sep, path = item.partition("=")
        if not sep or name not in named:
            raise MeddenError(f"--uncertainty needs NAME=PATH with NAME one of the outputs ({', '.join(named)}), "
                              f"got {item!r}")
        stds[name] = Path(path)
    for p in [reference, noisy, *named.values(), *stds.values()]:
        if p is not None and not p.exists():
            raise MeddenError(f"{p} does not exist")
    with _steps(quiet) as step:
        step(f"Loading {reference}")
        ref = medden.load_volume(reference)
        noisy_vol = medden.load_volume(noisy) if noisy is not None else None
        estimates = {}
        for name, path in named.items():
            step(f"Loading {path}")
            estimates[name] = medden.load_volume(path)
        std_vols = {name: medden.load_volume(path) for name, path in stds.items()}
        roiset = load_rois(rois, load_mask=medden.load_volume) if rois is not None else None
        step(f"Measuring {len(estimates)} volume(s)")
        result = evaluate_volumes(ref, estimates, noisy=noisy_vol, rois=roiset, data_range=data_range,
                                  reference_name=reference.name, uncertainty=std_vols)
        step(f"Writing the report into {report}")
        files = write_report(result, report)
    if not quiet:
        table = Table(title=f"medden evaluate (reference {reference.name}, data range {result.data_range:.5g})")
        cols = ("psnr", "ssim", "rmse", "hu_bias", "noise_std", "nps_peak_frequency", "mtf50_ratio")
        for col in ("image", *cols):
            table.add_column(col)
        for row in result.table():
            table.add_row(row["name"], *("—" if row[c] is None else f"{row[c]:.4g}" for c in cols))
        out.print(table)
        for m in result.methods.values():
            if m.uncertainty is not None:
                c = m.uncertainty
                out.print(f"{m.name}: ±2σ coverage {c.coverage_2sd:.1%} (calibrated: 95.4%), "
                          f"std/RMSE {c.std_to_rmse:.2f}")
        for note in result.notes:
            out.print(f"note: {note}")
        out.print(f"{files.html}  ({files.json.name}, {files.markdown.name}, {len(files.figures)} figures)")



@app.command()
def serve(
    forward: str = typer.Option(..., "--forward", help="Where derived series go: HOST:PORT:AET."),
    ae_title: str = typer.Option("MEDDEN", "--ae-title", help="This node's AE title."),
    port: int = typer.Option(11112, "--port", help="DICOM port to listen on."),
    host: str = typer.Option("", "--host", help="Address to listen on (default: all interfaces)."),
    spool: Path = typer.Option(Path("medden-spool"), "--spool", help="Queue folder (kept across restarts)."),
    method: str = typer.Option("auto", "--method", "-m", help="Registry name or auto."),
    sigma: str = typer.Option("auto", "--sigma", help="Noise standard deviation in the volume's units, or auto."),
    param: List[str] = typer.Option([], "--param", "-p", help="Method parameter NAME=VALUE (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet_time: float = typer.Option(10.0, "--quiet-time", help="Seconds without a new instance that complete a series."),
    retry_wait: float = typer.Option(2.0, "--retry-wait", help="First wait (s) after a failed forward; doubles, up to 300."),
    once: bool = typer.Option(False, "--once", help="Exit when what arrived is forwarded and nothing came for the quiet time."),
) -> None:
    """DICOM node: receive CT/MR series (C-STORE), denoise each complete series, forward the derived series."""
    from medden.serve import DicomNode, NodeConfig, parse_destination

    params = parse_params(param)
    if method != "auto":
        medden.denoisers.get_method(method).resolve_params(dict(params))
    config = NodeConfig(forward=parse_destination(forward), spool=spool, ae_title=ae_title, port=port, host=host,
                        method=method, sigma=parse_sigma(sigma), device=device, params=params,
                        quiet_s=quiet_time, retry_s=retry_wait, once=once)
    failed = DicomNode(config).run()
    if failed:
        raise MeddenError(f"{failed} series could not be denoised; they are kept in {spool / 'failed'}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bids(ctx: typer.Context) -> None:
    """BIDS App: BIDS_DIR OUTPUT_DIR participant|group [--participant-label 01 02] [--suffix T1w T2w]
    [--method M] [--sigma auto|X] [--param NAME=VALUE ...] [--device D]."""
    from medden import bids as bids_app

    args = bids_app.parse_args(list(ctx.args))
    if args.analysis_level == "group":
        out.print(f"wrote {bids_app.run_group(args.output_dir)}")
        return
    result = bids_app.run_participant(args.bids_dir, args.output_dir, labels=args.participant_label,
                                      suffixes=args.suffix, method=args.method, sigma=parse_sigma(args.sigma),
                                      params=parse_params(args.param), device=args.device)
    out.print(f"{len(result.written)} written, {len(result.skipped)} already done, {len(result.failed)} failed "
              f"in {args.output_dir}")
    for source, error in result.failed:
        err.print(f"error: {source}: {error}")
    if result.failed:
        raise typer.Exit(2)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: returns the exit status instead of printing tracebacks."""
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int):  # typer.Exit(code) returns its code when not standalone
            return code
    except MeddenError as exc:
        err.print(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        err.print("error: interrupted")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # usage errors of the argument parser and unexpected failures: one line, no traceback
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click/typer usage error
            err.print(f"error: {exc.format_message()}", soft_wrap=True)
            return int(exc.exit_code) or 2
        if type(exc).__name__ == "Abort":
            err.print("error: aborted")
            return 130
        if os.environ.get("MEDDEN_DEBUG"):
            raise
        text = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"error: internal error ({type(exc).__name__}: {text}); rerun with MEDDEN_DEBUG=1 for a traceback",
                  soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper: exits with :func:`main`'s status."""
    sys.exit(main())
