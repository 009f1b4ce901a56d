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
    input: Path = typer.Argument(..., help="NIfTI/NRRD/MHA file, multi-frame DICOM file or DICOM series folder."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Output path (default: beside the input, '_denoised' added)."),
    method: str = typer.Option("auto", "--method", "-m", help="Registry name (see `medden methods`) or auto."),
    sigma: str = typer.Option("auto", "--sigma", help="Noise standard deviation in the volume's units, or auto."),
    param: List[str] = typer.Option([], "--param", "-p", help="Method parameter NAME=VALUE (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="SeriesInstanceUID when a folder holds several."),
    modality: str = typer.Option("auto", "--modality", help="auto (from the file or its values), ct, mr, pt, nm."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Denoise a scan and write the result beside it, same geometry and format."""
    from medden.io import default_output_path, output_format
    from medden.io.atomic import check_output_path

    params = parse_params(param)
    sigma_value = parse_sigma(sigma)
    medden.inference.resolve_device(device)
    output = output or default_output_path(input)
    if not input.exists():
        raise MeddenError(f"{input} does not exist")
    check_output_path(output, overwrite=overwrite, inputs=(input,))
    with _steps(quiet) as step:
        step(f"Loading {input}")
        volume = with_modality(medden.load_volume(input, series_uid=series_uid), modality)
        output_format(output, like=volume)
        spec = medden.denoisers.default_method(volume.modality) if method == "auto" else medden.denoisers.get_method(method)
        spec.resolve_params(params)
        step(f"Denoising with {spec.name} ({'estimating noise, ' if sigma_value == 'auto' else ''}"
             f"{volume.shape[0]}×{volume.shape[1]}×{volume.shape[2]} voxels)")
        result = medden.denoise(volume, method=spec.name, sigma=sigma_value, device=device, **params)
        step(f"Writing {output}")
        medden.save_volume(result, output, overwrite=overwrite, description=f"medden {spec.name}", protect=(input,))
    if not quiet:
        rec = result.meta["denoise"]
        out.print(f"modality {volume.modality} ({volume.meta.get('modality_source', '')})")
        out.print(f"{output}  [{spec.name}, sigma {rec['sigma']:.4g} ({rec['sigma_source']}), "
                  f"{rec['seconds']:.1f} s on {rec['device']}]")


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


# [simulate command]


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
    for p in [reference, noisy, *named.values()]:
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
        roiset = load_rois(rois, load_mask=medden.load_volume) if rois is not None else None
        step(f"Measuring {len(estimates)} volume(s)")
        result = evaluate_volumes(ref, estimates, noisy=noisy_vol, rois=roiset, data_range=data_range,
                                  reference_name=reference.name)
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
        for note in result.notes:
            out.print(f"note: {note}")
        out.print(f"{files.html}  ({files.json.name}, {files.markdown.name}, {len(files.figures)} figures)")



def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: returns the exit status instead of printing tracebacks."""
    try:
        app(args=argv, standalone_mode=False)
    except MeddenError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("error: interrupted", markup=False)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors and unexpected failures: one line, never a traceback
        import click

        if isinstance(exc, click.exceptions.ClickException):
            err.print(f"error: {exc.format_message()}", markup=False, soft_wrap=True)
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            err.print("error: aborted", markup=False)
            return 130
        if os.environ.get("MEDDEN_DEBUG"):
            raise
        err.print(f"error: internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                  f"rerun with MEDDEN_DEBUG=1 for a traceback", markup=False, soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper: exits with :func:`main`'s status."""
    sys.exit(main())
