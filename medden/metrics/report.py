"""Reports of an :class:`~medden.metrics.evaluate.EvaluationResult`: ``metrics.json``, ``report.html``,
``report.md`` and PNG figures in ``figures/``.

The HTML has inline CSS and relative image links only, so it opens in a browser with no network. Figures are drawn
on matplotlib's non-interactive Agg canvas (no display needed, pyplot's backend untouched).
"""
from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medden.errors import OutputError
from medden.metrics.evaluate import SCALARS, EvaluationResult, format_cell, image_units, scalar_unit

#: Label, voxel-axis letters (RAS) and orientation letter of each standard view.
VIEWS = (("axial", "SI"), ("coronal", "AP"), ("sagittal", "LR"))
#: CT display window (level, width) in HU: the soft-tissue window W400/L40, i.e. −160 … 240 HU.
CT_WINDOW = (40.0, 400.0)
DPI = 100
PANEL_INCHES = 4.2  #: side of one image panel (420 pixels at DPI)


def display_window(result: EvaluationResult) -> tuple[float, float, str]:
    """(low, high, description) of the grey-level window for the images: the CT soft-tissue window for CT (a
    window spanning air to bone shows soft tissue as one grey), the reference's 0.5–99.5th percentiles otherwise."""
    if result.modality == "CT":
        level, width = CT_WINDOW
        return level - width / 2, level + width / 2, f"soft-tissue window W{width:g}/L{level:g} HU"
    lo, hi = (float(v) for v in np.percentile(result.images["reference"], [0.5, 99.5]))
    hi = hi if hi > lo else lo + 1.0
    return lo, hi, f"window [{lo:.4g}, {hi:.4g}] {image_units(result.modality)} (reference's 0.5–99.5th percentiles)"


@dataclass(frozen=True)
class ReportFiles:
    """Paths of what :func:`write_report` wrote."""

    json: Path
    html: Path
    markdown: Path
    figures: tuple[Path, ...]


def _subplots(nrows: int = 1, ncols: int = 1, **kw: Any):
    """A figure and axes on matplotlib's Agg canvas, without pyplot: no display, no global backend switch (safe
    inside notebooks)."""
    from matplotlib.figure import Figure

    squeeze = kw.pop("squeeze", True)
    fig = Figure(**kw)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _view_axes(affine: np.ndarray | None) -> dict[str, int]:
    """The voxel axis normal to each view (axial: the axis pointing S/I, ...)."""
    from medden.volume import orientation_code

    code = orientation_code(affine) if affine is not None else "RAS"
    out = {}
    for view, letters in VIEWS:
        out[view] = next(i for i, c in enumerate(code) if c in letters)
    return out


def _slice(img: np.ndarray, axis: int, spacing: tuple[float, ...]) -> tuple[np.ndarray, list[float]]:
    sl = np.take(img, img.shape[axis] // 2, axis=axis)
    axes = [a for a in range(3) if a != axis]
    extent = [0, img.shape[axes[0]] * spacing[axes[0]], 0, img.shape[axes[1]] * spacing[axes[1]]]
    return sl.T, extent  # first in-plane axis horizontal, second vertical (origin lower)


def _fig_slices(result: EvaluationResult, path: Path, difference: bool) -> Path | None:
    """Central axial, coronal and sagittal slices: one row per image, one column per view, in mm."""
    names = [n for n in result.images if not (difference and n == "reference")]
    if not names:
        return None
    ref = result.images["reference"]
    units = image_units(result.modality)
    if difference:
        base = result.images.get("noisy", result.images[names[-1]]) - ref
        lim = float(np.percentile(np.abs(base), 99.5)) or 1.0
        vmin, vmax, cmap = -lim, lim, "RdBu_r"
        window = f"common window ±{lim:.4g} {units}"
    else:
        vmin, vmax, window = display_window(result)
        cmap = "gray"
    axes_of = _view_axes(result.affine)
    fig, axs = _subplots(len(names), 3, figsize=(3 * PANEL_INCHES + 1.2, PANEL_INCHES * len(names) + 0.9),
                         squeeze=False, layout="constrained")
    im = None
    for r, name in enumerate(names):
        img = result.images[name] - ref if difference else result.images[name]
        for c, (view, _) in enumerate(VIEWS):
            sl, ext = _slice(img, axes_of[view], result.spacing)
            im = axs[r, c].imshow(sl, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", extent=ext,
                                  interpolation="nearest")
            axs[r, c].set_xticks([])
            axs[r, c].set_yticks([])
            if r == 0:
                axs[r, c].set_title(view, fontsize=12)
            if c == 0:
                axs[r, c].set_ylabel(name + (" − reference" if difference else ""), fontsize=12)
    fig.colorbar(im, ax=axs, shrink=0.5, label=f"difference ({units})" if difference else units)
    fig.suptitle(("Difference to the reference" if difference else "Central slices") + f", {window}", fontsize=13)
    fig.savefig(path, dpi=DPI)
    return path


def _fig_nps(result: EvaluationResult, path: Path) -> Path | None:
    curves = [(m.name, m.nps) for m in result.all_images() if m.nps is not None]
    if not curves:
        return None
    units = image_units(result.modality)
    fig, ax = _subplots(figsize=(8, 5), layout="constrained")
    for name, nps in curves:
        ax.plot(nps.frequencies, nps.nps, label=f"{name} (σ={nps.noise_std:.3g} {units}, peak "
                f"{nps.peak_frequency:.2f}/mm)", color="0.5" if name == "noisy" else None, lw=1.5)
    ax.set_xlabel("spatial frequency (1/mm)")
    ax.set_ylabel(f"NPS ({units}² · mm²)")
    ax.set_title("\n".join(textwrap.wrap(f"Noise power spectrum of (image − reference), axial, {result.nps_region}",
                                         70)), fontsize=11)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=DPI)
    return path


def _fig_mtf(result: EvaluationResult, path: Path) -> Path | None:
    edge_names = list(result.reference_mtf) or sorted({k for m in result.all_images() for k in m.mtf})
    if not edge_names:
        return None
    fig, axs = _subplots(1, len(edge_names), figsize=(5.5 * len(edge_names), 4), squeeze=False)
    for ax, edge in zip(axs[0], edge_names):
        entries = [("reference", result.reference_mtf.get(edge))] + [(m.name, m.mtf.get(edge))
                                                                      for m in result.all_images()]
        for name, mtf in entries:
            if mtf is None:
                continue
            style = {"reference": dict(color="k", ls="--"), "noisy": dict(color="0.5")}.get(name, {})
            m50 = f"{mtf.mtf50:.2f}" if math.isfinite(mtf.mtf50) else "–"
            ax.plot(mtf.frequencies, mtf.mtf, label=f"{name} (MTF50 {m50}/mm)", **style)
        ax.axhline(0.5, color="0.8", lw=0.8)
        ax.axhline(0.1, color="0.8", lw=0.8)
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("spatial frequency (1/mm)")
        ax.set_ylabel("MTF")
        ax.set_title(f"Edge MTF (slanted edge, ISO 12233), ROI {edge}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _fig_reliability(result: EvaluationResult, path: Path) -> Path | None:
    """Reliability curve (predicted std against observed RMS error, per bin) and coverage against k."""
    cal = [(m.name, m.uncertainty) for m in result.methods.values() if m.uncertainty is not None]
    if not cal:
        return None
    fig, (ax, bx) = _subplots(1, 2, figsize=(10, 4))
    top = 0.0
    for name, c in cal:
        x = [b.predicted_std for b in c.reliability]
        y = [b.observed_rmse for b in c.reliability]
        top = max(top, *x, *y)
        ax.plot(x, y, "o-", label=f"{name} (±2σ coverage {c.coverage_2sd:.1%})")
        ks = [float(k) for k in c.coverage]
        bx.plot(ks, list(c.coverage.values()), "o-", label=name)
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="calibrated")
    ax.set(xlabel="predicted standard deviation (mean per bin)", ylabel="observed RMS error",
           title="Reliability (equal-count bins of predicted std)")
    ks = sorted({float(k) for _, c in cal for k in c.nominal})
    bx.plot(ks, [math.erf(k / math.sqrt(2)) for k in ks], "k--", lw=0.8, label="calibrated Gaussian")
    bx.set(xlabel="k", ylabel="fraction with |error| ≤ k·std", ylim=(0, 1.02), title="Coverage")
    for a in (ax, bx):
        a.title.set_fontsize(9)
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _fig_bars(result: EvaluationResult, folder: Path) -> list[Path]:
    rows = result.records()
    out = []
    for key in result.table().columns:
        direction = SCALARS[key][1]
        pairs = [(r["name"], r[key]) for r in rows if r.get(key) is not None and np.isfinite(r[key])]
        if not pairs:
            continue
        fig, ax = _subplots(figsize=(max(5.0, 1.1 * len(pairs) + 2.0), 4.0), layout="constrained")
        names, vals = zip(*pairs)
        colors = ["0.6" if n == "noisy" else "C0" for n in names]
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=10)
        unit = scalar_unit(key, result.modality)
        ax.set_title(f"{key}" + (f" [{unit}]" if unit else "") + f"\n{direction} is better", fontsize=11)
        if direction == "closer to 0":
            ax.axhline(0, color="k", lw=0.8)
        elif direction == "closer to 1":
            ax.axhline(1, color="k", lw=0.8, ls="--")
        elif "noisy" in names and direction.startswith("closer to the noisy"):
            ax.axhline(vals[names.index("noisy")], color="k", lw=0.8, ls="--", label="noisy input")
            ax.legend(fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        p = folder / f"bar_{key}.png"
        fig.savefig(p, dpi=DPI)
        out.append(p)
    return out


def _tables(result: EvaluationResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table in the report."""
    table = result.table()
    keys = table.columns
    header = [f"{k} [{u}]" if (u := scalar_unit(k, result.modality)) else k for k in keys]
    tables = [("Summary", ["image"] + header, [["(better)"] + [SCALARS[k][1] for k in keys]]
               + [[r["name"]] + [format_cell(r[k]) for k in keys] for r in table])]
    if result.rois.rois:
        header = ["image", "ROI", "mean", "SD", "bias", "SE of bias", "z"]
        rows = [["reference", n, format_cell(s.mean), format_cell(s.std), "", "", ""] for n, s in result.reference_roi_stats.items()]
        for m in result.all_images():
            for n, s in m.roi_stats.items():
                b = m.roi_bias[n]
                rows.append([m.name, n, format_cell(s.mean), format_cell(s.std), format_cell(b.bias), format_cell(b.standard_error), format_cell(b.z)])
        tables.append(("ROI statistics and HU bias (HU)" if result.modality == "CT" else
                       f"ROI statistics and bias ({image_units(result.modality)})", header, rows))
    pairs = sorted({k for m in result.all_images() for k in m.cnr})
    if pairs:
        tables.append(("Contrast-to-noise ratio", ["image"] + pairs,
                       [[m.name] + [format_cell(m.cnr.get(p)) for p in pairs] for m in result.all_images()]))
    mn = [m for m in result.methods.values() if m.method_noise is not None]
    if mn:
        header = ["method", "residual SD", "removed/true noise", "corr. with noise", "corr. with edges",
                  "corr. with reference", "lag-1 autocorr. (i, j, k)", "spectral flatness"]
        rows = [[m.name, format_cell(r.residual_std), format_cell(r.removed_noise_fraction), format_cell(r.noise_correlation),
                 format_cell(r.structure_correlation), format_cell(r.reference_correlation),
                 ", ".join(f"{a:.3f}" for a in r.autocorrelation_lag1), format_cell(r.spectral_flatness)]
                for m in mn for r in [m.method_noise]]
        tables.append(("Method noise (noisy − estimate): ideal is noise only", header, rows))
    unc = [m for m in result.methods.values() if m.uncertainty is not None]
    if unc:
        ks = list(unc[0].uncertainty.coverage)
        header = ["method"] + [f"±{k}σ (ideal {unc[0].uncertainty.nominal[k]:.1%})" for k in ks] + [
            "mean std", "RMSE", "std/RMSE"]
        rows = [[m.name] + [f"{c.coverage[k]:.1%}" for k in ks] + [format_cell(c.mean_std), format_cell(c.rmse),
                                                                    format_cell(c.std_to_rmse)]
                for m in unc for c in [m.uncertainty]]
        tables.append(("Uncertainty calibration: fraction of voxels whose error lies within ±k × predicted std",
                       header, rows))
    return tables


def _definitions(result: EvaluationResult) -> str:
    """How the report's numbers and images are defined, in one paragraph."""
    units = image_units(result.modality)
    bias = "HU bias" if result.modality == "CT" else "Bias"
    return (f"Values in {units}. NPS: AAPM TG-233 (2D axial, radially averaged, of image − reference); its peak and "
            "mean frequencies describe the texture of the remaining noise, best kept close to the noisy input's "
            "(lower means blotchier noise). MTF: slanted-edge method (ISO 12233). "
            f"{bias}: mean(image − reference) in an ROI, in {units}; headline = the largest |bias| over the ROIs "
            f"(the mean over the mask without ROIs). Images: {display_window(result)[2]}.")


def _html(result: EvaluationResult, figures: list[Path], folder: Path) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>medden evaluation</title>",
             "<style>body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;"
             "margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px;text-align:right}"
             "th{background:#eee}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;"
             "border:1px solid #ddd;margin:4px}.note{color:#a50}figure.bar{display:inline-block;vertical-align:top;"
             "margin:0 8px 8px 0}</style></head><body>",
             "<h1>medden evaluation</h1>",
             f"<p>Reference <b>{e(result.reference_name)}</b>: shape {e(str(result.shape))}, spacing "
             f"{' × '.join(f'{s:.3g}' for s in result.spacing)} mm, modality {e(result.modality)}. PSNR and SSIM use "
             f"data range {result.data_range:.5g}. NPS region: {e(result.nps_region)}.</p>",
             f"<p>{e(_definitions(result))}</p>"]
    for note in result.notes:
        parts.append(f"<p class='note'>Note: {e(note)}</p>")
    for title, header, rows in _tables(result):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("<h2>Figures</h2>")
    for f in figures:
        rel = f.relative_to(folder).as_posix()
        kind = " class='bar'" if f.stem.startswith("bar_") else ""
        parts.append(f"<figure{kind}><img src='{e(rel)}' alt='{e(f.stem)}'><figcaption>{e(f.stem)}</figcaption>"
                     "</figure>")
    parts.append("<p>Raw numbers: <a href='metrics.json'>metrics.json</a></p></body></html>")
    return "\n".join(parts)


def _markdown(result: EvaluationResult, figures: list[Path], folder: Path) -> str:
    lines = ["# medden evaluation", "",
             f"Reference **{result.reference_name}**: shape {result.shape}, spacing "
             f"{' × '.join(f'{s:.3g}' for s in result.spacing)} mm, modality {result.modality}; PSNR/SSIM data range "
             f"{result.data_range:.5g}; NPS region: {result.nps_region}.", "", _definitions(result), ""]
    lines += [f"> Note: {n}" for n in result.notes]
    for title, header, rows in _tables(result):
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    lines += ["", "## Figures", ""]
    lines += [f"![{f.stem}]({f.relative_to(folder).as_posix()})" for f in figures]
    return "\n".join(lines) + "\n"


def write_report(result: EvaluationResult, out_dir: str | Path, figures: bool = True) -> ReportFiles:
    """Write ``metrics.json``, ``report.html``, ``report.md`` and ``figures/*.png`` into ``out_dir``.

    Figures: central axial/coronal/sagittal slices of every image with the reference's window, difference maps
    (image − reference) with one symmetric window, NPS curves, MTF curves and one bar chart per headline metric.
    """
    folder = Path(out_dir)
    try:
        (folder / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create report folder {folder}: {exc}") from None
    figs: list[Path] = []
    if figures and result.images:
        fdir = folder / "figures"
        for p in (_fig_slices(result, fdir / "slices.png", difference=False),
                  _fig_slices(result, fdir / "differences.png", difference=True),
                  _fig_nps(result, fdir / "nps.png"), _fig_mtf(result, fdir / "mtf.png"),
                  _fig_reliability(result, fdir / "reliability.png")):
            if p is not None:
                figs.append(p)
        figs += _fig_bars(result, fdir)
    paths = ReportFiles(json=folder / "metrics.json", html=folder / "report.html", markdown=folder / "report.md",
                        figures=tuple(figs))
    try:
        result.to_json(paths.json)
        paths.html.write_text(_html(result, figs, folder), encoding="utf-8")
        paths.markdown.write_text(_markdown(result, figs, folder), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the report into {folder}: {exc}") from None
    return paths
