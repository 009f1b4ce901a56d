"""``medden info`` (what a scan is; needs no torch) and ``medden methods`` (the registered denoisers)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from medden.cli.base import app, out


def describe(volume) -> dict:
    """The facts `medden info` prints, as a JSON-ready dictionary."""
    import numpy as np

    from medden.noise import estimate_noise

    data = volume.data
    p1, p99 = np.percentile(data, [1, 99])
    noise = estimate_noise(volume)
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
        "noise_sigma": round(float(noise.sigma), 4), "noise_method": noise.method,
    }


@app.command()
def info(
    input: Path = typer.Argument(..., help="NIfTI/NRRD/MHA file, multi-frame DICOM file or DICOM series folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="SeriesInstanceUID when a folder holds several."),
) -> None:
    """Print shape, spacing, orientation, modality, value range and the estimated noise level."""
    from medden.io import load_volume

    facts = describe(load_volume(input, series_uid=series_uid))
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
    out.print(f"  noise σ      {facts['noise_sigma']:.4g} (estimated: {facts['noise_method']}; volume units)")


@app.command()
def methods(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the registered denoisers: licence, modalities, measured speed and quality, parameters and units."""
    from medden.denoisers import list_methods

    specs = list_methods()
    if as_json:
        out.print_json(json.dumps([s.describe() for s in specs]))
        return
    table = Table(title="medden denoisers (best measured first; 'auto' picks the best available permissively "
                        "licensed one for the scan's modality; the others run when named)")
    for col in ("method", "licence", "modalities", "voxels/s (2 CPU)", "dB vs BM4D", "available",
                "parameters (default, unit)"):
        table.add_column(col)
    for s in specs:
        d = s.describe()
        params = "\n".join(f"{p.name}={p.default}" + (f" [{p.unit}]" if p.unit else "") for p in s.params) or "—"
        avail = "yes" if s.available else f"no: pip install \"medden[{s.extra}]\""
        speed = f"{d['voxels_per_second']:.3g}" if d["voxels_per_second"] else "—"
        gap = ", ".join(f"{m} {v:+.1f}" for m, v in d["d_psnr_vs_bm4d_db"].items()) or "—"
        licence = d["licence"] if d["permissive"] or "non-commercial" in d["licence"] else \
            f"{d['licence']} (non-commercial)"
        table.add_row(s.name, licence,
                      " ".join(s.modalities), speed, gap, avail, params)
    out.print(table)
