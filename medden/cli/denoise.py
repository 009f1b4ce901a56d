"""``medden denoise`` (one scan, or a study folder in batch) and ``medden merge-manifests``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from medden.cli.base import app, err, out, parse_params, parse_sigma, steps
from medden.errors import InputError, ParameterError


@app.command()
def denoise(
    input: Path = typer.Argument(..., help="NIfTI/NRRD/MHA file, multi-frame DICOM file, DICOM series folder, "
                                           "or a study folder (batch)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Output path (default: beside the input, '_denoised' added)."),
    method: str = typer.Option("auto", "--method", "-m", help="Registry name (see `medden methods`) or auto."),
    sigma: str = typer.Option("auto", "--sigma", help="Noise standard deviation in the volume's units, N% of the "
                                                      "99.9th percentile of the non-zero voxels (e.g. 3%), or auto."),
    param: List[str] = typer.Option([], "--param", "-p", help="Method parameter NAME=VALUE (repeatable), e.g. "
                                                              "-p samples=8 -p seed=0 for --method diffusion."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="SeriesInstanceUID when a DICOM folder "
                                                                        "holds several."),
    modality: str = typer.Option("auto", "--modality", help="auto (from the file or its values), ct, mr, pt, nm."),
    batch: bool = typer.Option(False, "--batch", help="Treat IN as a study: denoise every volume and series below it."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Batch: process shard K/N (K from 0, e.g. "
                                                              "$SLURM_ARRAY_TASK_ID/N)."),
    anonymize: bool = typer.Option(False, "--anonymize", help="Replace patient identifiers in DICOM outputs."),
    uncertainty: Optional[Path] = typer.Option(None, "--uncertainty", help="Also write the per-voxel standard "
                                               "deviation here (methods that give one, e.g. diffusion)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (medden's own only)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Denoise a scan (or a whole study folder) and write the result beside it, same geometry and format."""
    from medden.inference import resolve_device
    from medden.io import VOLUME_SUFFIXES, default_output_path
    from medden.pipeline import denoise_file

    params = parse_params(param)
    sigma_value = parse_sigma(sigma)
    resolve_device(device)
    if not input.exists():
        raise InputError(f"{input} does not exist")
    if series_uid is not None and input.is_file() and input.name.lower().endswith(VOLUME_SUFFIXES):
        raise ParameterError(f"--series-uid selects one DICOM series of a folder; {input.name} is a single volume "
                             f"file")
    if batch or shard is not None or is_study_folder(input):
        if series_uid is not None or modality != "auto" or uncertainty is not None:
            raise ParameterError("--series-uid, --modality and --uncertainty apply to one scan, not to a study folder")
        raise typer.Exit(_study(input, output, method, sigma_value, params, device, shard, anonymize, overwrite,
                                quiet))
    output = output or default_output_path(input)
    with steps(quiet) as step:
        rec = denoise_file(input, output, method=method, sigma=sigma_value, device=device, params=params,
                           series_uid=series_uid, modality=modality, overwrite=overwrite, anonymize=anonymize,
                           uncertainty=uncertainty, progress=step)
    if not quiet:
        out.print(f"modality {rec['modality']} ({rec.get('modality_source') or ''})")
        out.print(f"{output}  [{rec['method']}, sigma {rec['sigma']:.4g} ({rec['sigma_source']}), "
                  f"{rec['seconds']:.1f} s on {rec['device']}]")
        if method == "auto":
            from medden.denoisers import explain_auto

            out.print(explain_auto(rec["modality"]))


def is_study_folder(path: Path) -> bool:
    """A folder is a study (batch mode) when it holds sub-folders or volume files, not just one flat DICOM series."""
    from medden.io import VOLUME_SUFFIXES

    if not path.is_dir():
        return False
    return any(not p.name.startswith(".") and (p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES))
               for p in path.iterdir())


def _study(study: Path, output: Path | None, method: str, sigma, params: dict, device: str, shard: str | None,
           anonymize: bool, overwrite: bool, quiet: bool) -> int:
    """Batch mode: progress over the study, one line per finished item, a summary; non-zero if any item failed."""
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
    for note in result.notes:
        err.print(f"note: {note}")
    summary = (f"{len(result.records)} volume(s): {result.count('ok')} done, {result.count('skipped')} already done, "
               f"{len(result.failed)} failed; manifest {result.manifest}")
    if result.failed:
        err.print(f"error: {summary}")
        return 2
    if not quiet:
        out.print(summary)
        if method == "auto":
            from medden.denoisers import explain_auto

            for modality in sorted({r.get("modality") for r in result.records if r.get("modality")}):
                out.print(explain_auto(modality))
    return 0


@app.command("merge-manifests")
def merge_manifests_cmd(out_dir: Path = typer.Argument(..., help="Output folder of a sharded batch run.")) -> None:
    """Join the shard manifests of a batch output folder into manifest.json (and .csv)."""
    from medden.pipeline import merge_manifests

    out.print(str(merge_manifests(out_dir)))

