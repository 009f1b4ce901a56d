"""``medden evaluate``: measure denoised volumes against a reference and write a report."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from medden.cli.base import app, out, steps
from medden.errors import MeddenError


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
    from medden.io import load_volume
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
    with steps(quiet) as step:
        step(f"Loading {reference}")
        ref = load_volume(reference)
        noisy_vol = load_volume(noisy) if noisy is not None else None
        estimates = {}
        for name, path in named.items():
            step(f"Loading {path}")
            estimates[name] = load_volume(path)
        std_vols = {name: load_volume(path) for name, path in stds.items()}
        roiset = load_rois(rois, load_mask=load_volume) if rois is not None else None
        step(f"Measuring {len(estimates)} volume(s)")
        result = evaluate_volumes(ref, estimates, noisy=noisy_vol, rois=roiset, data_range=data_range,
                                  reference_name=reference.name, uncertainty=std_vols)
        step(f"Writing the report into {report}")
        files = write_report(result, report)
    if not quiet:
        table = Table(title=f"medden evaluate (reference {reference.name}, data range {result.data_range:.5g})")
        measured = result.table().columns  # hu_bias for CT, bias (image units) otherwise
        cols = [c for c in ("psnr", "ssim", "rmse", "hu_bias", "bias", "noise_std", "nps_peak_frequency",
                            "mtf50_ratio") if c in measured]
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
