"""One call that measures every denoised image the same way: :func:`evaluate`.

The CLI (``medden evaluate``), notebooks and the benchmark harness all call it; :func:`medden.metrics.write_report`
turns its result into ``metrics.json``, an HTML and a Markdown report with figures.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from medden.errors import InputError
from medden.metrics.inputs import ArrayOrVolume, as_array, as_mask, check_pair, resolve_spacing
from medden.metrics.nps import NoisePowerSpectrum, noise_power_spectrum
from medden.metrics.reference import mae, psnr, reference_range, rmse, ssim_3d
from medden.metrics.residual import MethodNoise, method_noise
from medden.metrics.roi import HuBias, Roi, RoiSet, RoiStats, cnr, hu_bias, load_rois, parse_rois, roi_mask, roi_stats
from medden.metrics.sharpness import EdgeMTF, edge_mtf
from medden.metrics.uncertainty import UncertaintyCalibration, uncertainty_calibration
from medden.volume import Volume

#: Scalar metrics shown as bar charts and table columns: unit (``IMAGE_UNITS``: the image's own, HU for CT) and
#: which value is better. The NPS frequencies describe the texture of the remaining noise: a denoiser that keeps it
#: stays close to the noisy input's (lower means blotchier noise), so neither higher nor lower is better.
SCALARS: dict[str, tuple[str, str]] = {
    "psnr": ("dB", "higher"), "ssim": ("", "higher"), "rmse": ("IMAGE_UNITS", "lower"),
    "mae": ("IMAGE_UNITS", "lower"), "hu_bias": ("HU", "closer to 0"), "bias": ("IMAGE_UNITS", "closer to 0"),
    "noise_std": ("IMAGE_UNITS", "lower"), "nps_peak_frequency": ("1/mm", "closer to the noisy input's"),
    "nps_mean_frequency": ("1/mm", "closer to the noisy input's"), "mtf50": ("1/mm", "higher"),
    "mtf50_ratio": ("", "closer to 1"),
}


def image_units(modality: str) -> str:
    """Units of an image's voxel values, for labels: HU for CT, otherwise the scanner's own."""
    return "HU" if modality == "CT" else "image units"


def scalar_unit(key: str, modality: str) -> str:
    """The unit of the scalar ``key`` (see :data:`SCALARS`) for an image of ``modality``."""
    unit = SCALARS[key][0]
    return image_units(modality) if unit == "IMAGE_UNITS" else unit


@dataclass(frozen=True)
class MetricsTable(Sequence):
    """The headline scalars of every image: prints as a text table (Markdown, columns aligned, units in the
    header), renders as a table in a notebook, and is a sequence of records (one dict per image, all of
    :data:`SCALARS` with None where not measured) for code."""

    records: tuple[dict[str, Any], ...]
    modality: str = "OT"

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # type: ignore[override]
        return self.records[i]

    @property
    def columns(self) -> list[str]:
        """The scalars measured on at least one image, in :data:`SCALARS` order."""
        return [k for k in SCALARS if any(_f(r.get(k)) is not None for r in self.records)]

    def to_markdown(self) -> str:
        cols = self.columns
        head = ["image"] + [f"{k} [{u}]" if (u := scalar_unit(k, self.modality)) else k for k in cols]
        rows = [[str(r["name"])] + [format_cell(r.get(k)) for k in cols] for r in self.records]
        widths = [max(len(row[c]) for row in [head] + rows) for c in range(len(head))]
        line = lambda cells: "| " + " | ".join(  # noqa: E731
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
        rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
        return "\n".join([line(head), rule] + [line(r) for r in rows])

    __str__ = __repr__ = _repr_markdown_ = to_markdown


def format_cell(v: Any) -> str:
    """A table cell: 4 significant digits, "–" for not measured."""
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        return "inf" if math.isinf(v) else ("–" if math.isnan(v) else f"{v:.4g}")
    return str(v)


@dataclass
class ImageMetrics:
    """Everything measured on one image (a denoised estimate, or the noisy input) against the reference."""

    name: str
    psnr: float
    ssim: float
    rmse: float
    mae: float
    bias: float  #: largest |bias| over the ROIs (signed), or the mean bias over the mask when no ROI is given
    roi_stats: dict[str, RoiStats] = field(default_factory=dict)
    roi_bias: dict[str, HuBias] = field(default_factory=dict)
    cnr: dict[str, float] = field(default_factory=dict)
    nps: NoisePowerSpectrum | None = None  #: NPS of (image - reference) in the uniform region
    mtf: dict[str, EdgeMTF] = field(default_factory=dict)
    method_noise: MethodNoise | None = None
    seconds: float | None = None
    #: calibration of the estimate's uncertainty map (posterior standard deviation), when one was given
    uncertainty: UncertaintyCalibration | None = None
    modality: str = "OT"  #: the reference's: the bias is an HU bias for CT only

    @property
    def hu_bias(self) -> float | None:
        """The bias in HU, for CT; None for other modalities (their bias is in the scanner's units)."""
        return self.bias if self.modality == "CT" else None

    @property
    def noise_std(self) -> float | None:
        return self.nps.noise_std if self.nps is not None else None

    @property
    def mtf50(self) -> float | None:
        vals = [m.mtf50 for m in self.mtf.values() if math.isfinite(m.mtf50)]
        return float(np.mean(vals)) if vals else None

    def scalars(self, reference_mtf50: float | None = None) -> dict[str, float | None]:
        """The headline numbers (see :data:`SCALARS`)."""
        m50 = self.mtf50
        return {"psnr": self.psnr, "ssim": self.ssim, "rmse": self.rmse, "mae": self.mae, "hu_bias": self.hu_bias,
                "bias": None if self.modality == "CT" else self.bias, "noise_std": self.noise_std,
                "nps_peak_frequency": self.nps.peak_frequency if self.nps else None,
                "nps_mean_frequency": self.nps.mean_frequency if self.nps else None, "mtf50": m50,
                "mtf50_ratio": (m50 / reference_mtf50) if (m50 and reference_mtf50) else None}

    def to_dict(self, reference_mtf50: float | None = None) -> dict[str, Any]:
        return {"scalars": _clean(self.scalars(reference_mtf50)),
                "rois": {k: {"stats": asdict(s), "hu_bias": {**asdict(self.roi_bias[k]), "z": _f(self.roi_bias[k].z)}}
                         for k, s in self.roi_stats.items()},
                "cnr": _clean(self.cnr),
                "nps": self.nps.to_dict() if self.nps else None,
                "mtf": {k: v.to_dict() for k, v in self.mtf.items()},
                "method_noise": self.method_noise.to_dict() if self.method_noise else None,
                "uncertainty": self.uncertainty.to_dict() if self.uncertainty else None}


@dataclass
class EvaluationResult:
    """Metrics of every estimate (and the noisy input) against one reference; :meth:`to_json` writes them."""

    reference_name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    modality: str
    data_range: float
    methods: dict[str, ImageMetrics]
    noisy: ImageMetrics | None = None
    reference_roi_stats: dict[str, RoiStats] = field(default_factory=dict)
    reference_mtf: dict[str, EdgeMTF] = field(default_factory=dict)
    rois: RoiSet = field(default_factory=RoiSet)
    nps_region: str = ""
    notes: list[str] = field(default_factory=list)
    #: the images themselves (reference, noisy, estimates) for the report's figures; not written to JSON
    images: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    affine: np.ndarray | None = field(default=None, repr=False)

    @property
    def reference_mtf50(self) -> float | None:
        vals = [m.mtf50 for m in self.reference_mtf.values() if math.isfinite(m.mtf50)]
        return float(np.mean(vals)) if vals else None

    def all_images(self) -> list[ImageMetrics]:
        """The noisy input (if any) then the estimates."""
        return ([self.noisy] if self.noisy else []) + list(self.methods.values())

    def records(self) -> list[dict[str, Any]]:
        """One dict per image (noisy input first) with the headline scalars of :data:`SCALARS`."""
        return [{"name": m.name, **m.scalars(self.reference_mtf50)} for m in self.all_images()]

    def table(self) -> MetricsTable:
        """The headline scalars as a table: ``print(result.table())`` shows it as text, a notebook as a table;
        it is also a sequence of the :meth:`records`."""
        return MetricsTable(tuple(self.records()), self.modality)

    def to_dict(self) -> dict[str, Any]:
        ref50 = self.reference_mtf50
        return {
            "medden_metrics_version": 1,
            "reference": {"name": self.reference_name, "shape": list(self.shape), "spacing_mm": list(self.spacing),
                          "modality": self.modality, "data_range": self.data_range,
                          "rois": {k: asdict(v) for k, v in self.reference_roi_stats.items()},
                          "mtf": {k: v.to_dict() for k, v in self.reference_mtf.items()},
                          "mtf50_per_mm": _f(ref50) if ref50 else None},
            "rois": [r.describe() for r in self.rois.rois],
            "nps_region": self.nps_region,
            "noisy": self.noisy.to_dict(ref50) if self.noisy else None,
            "methods": {k: v.to_dict(ref50) for k, v in self.methods.items()},
            "table": [_clean(r) for r in self.records()],
            "notes": list(self.notes),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The result as JSON text (NaN/Inf written as null); also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        if path is not None:
            Path(path).write_text(text)
        return text


def _f(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _clean(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_f(v) if isinstance(v, (float, int, np.floating)) and not isinstance(v, bool) else v)
            for k, v in d.items()}


def uniform_mask(reference: np.ndarray, axis: int = 2, margin: int = 3, tolerance: float = 1e-3) -> np.ndarray:
    """Voxels of ``reference`` in flat regions (in-plane gradient below ``tolerance`` × range), eroded by
    ``margin`` voxels in-plane: where the NPS of a difference image measures noise, not lost structure."""
    rng = float(reference.max() - reference.min()) or 1.0
    plane = [i for i in range(3) if i != axis]
    g = np.zeros(reference.shape)
    for ax in plane:
        g = np.maximum(g, np.abs(np.gradient(reference, axis=ax)))
    flat = g <= tolerance * rng
    st = np.zeros((3, 3, 3), bool)
    sl = [slice(None)] * 3
    sl[axis] = 1
    st[tuple(sl)] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_erosion(flat, st, iterations=margin) if margin > 0 else flat


def _as_roiset(rois: Any, load_mask: Any = None) -> RoiSet:
    if rois is None:
        return RoiSet()
    if isinstance(rois, RoiSet):
        return rois
    if isinstance(rois, (str, Path)):
        return load_rois(rois, load_mask=load_mask)
    if isinstance(rois, dict):
        return parse_rois(rois, load_mask=load_mask)
    if isinstance(rois, Sequence) and all(isinstance(r, Roi) for r in rois):
        return RoiSet(tuple(rois))
    raise InputError(f"rois must be a RoiSet, a list of Roi, a rois.json path or its dict, got {type(rois).__name__}")


def evaluate(reference: ArrayOrVolume, estimates: Mapping[str, ArrayOrVolume], noisy: ArrayOrVolume | None = None,
             rois: RoiSet | Sequence[Roi] | str | Path | dict | None = None, *, mask: ArrayOrVolume | None = None,
             spacing: Sequence[float] | None = None, data_range: float | None = None, axis: int = 2,
             nps_roi_size: int | None = None, load_mask: Any = None,
             reference_name: str = "reference",
             uncertainty: Mapping[str, ArrayOrVolume] | None = None) -> EvaluationResult:
    """Measure denoised images against a reference: PSNR, SSIM, RMSE, MAE, ROI statistics and HU bias, CNR, noise
    power spectrum (TG-233), edge MTF (ISO 12233) and, with the noisy input, the method noise.

    Parameters
    ----------
    reference : Volume or ndarray
        The clean (or reference-dose) image, physical units (HU for CT).
    estimates : mapping of name to Volume or ndarray
        The images to compare, e.g. ``{"bm4d": v1, "dncnn": v2}``; each must have the reference's shape and, for
        volumes, its geometry.
    noisy : Volume or ndarray, optional
        The denoisers' input: measured too (as ``"noisy"``), and enables the method-noise analysis.
    rois : RoiSet, list of Roi, path to rois.json or its dict, optional
        ROIs for statistics and HU bias; ``role: "noise"`` ROIs define the NPS region, ``role: "edge"`` ROIs the MTF
        edges, ``cnr`` pairs (or signal/background roles) the CNRs (format: :mod:`medden.metrics.roi`).
    mask : Volume or ndarray, optional
        Voxels for PSNR/SSIM/RMSE/MAE and the method noise (e.g. the body); all when None.
    spacing : sequence of float, optional
        Voxel size in mm for arrays; taken from the reference Volume otherwise.
    data_range : float, optional
        Peak for PSNR and SSIM, image units; default ``max - min`` of the reference. Recorded in the result.
    axis : int
        Slice axis for the 2D NPS and MTF (2: axial for usual scans).
    nps_roi_size : int, optional
        NPS ROI side in voxels (default: chosen to fit the region, see :func:`noise_power_spectrum`).
    load_mask : callable, optional
        Reader for mask files named in a rois.json (e.g. ``medden.load_volume``).
    reference_name : str
        Label of the reference in the report.
    uncertainty : mapping of estimate name to Volume or ndarray, optional
        Per-voxel predicted standard deviation of that estimate (e.g. ``medden denoise --method diffusion
        --uncertainty``): its coverage and reliability curve are measured over the mask
        (:mod:`medden.metrics.uncertainty`).

    Returns
    -------
    EvaluationResult
    """
    if not estimates:
        raise InputError("evaluate needs at least one estimate to compare with the reference")
    ref = as_array(reference, "reference")
    sp = resolve_spacing(reference, spacing=spacing)
    checked: dict[str, np.ndarray] = {}
    for name, img in estimates.items():
        if not isinstance(name, str) or not name:
            raise InputError(f"estimate names must be non-empty strings, got {name!r}")
        if name in ("noisy", "reference"):
            raise InputError(f"estimate name {name!r} is reserved; rename it")
        checked[name] = check_pair(reference, img, "reference", f"estimate {name!r}")[1]
    noisy_a = check_pair(reference, noisy, "reference", "noisy image")[1] if noisy is not None else None
    stds: dict[str, np.ndarray] = {}
    for name, img in (uncertainty or {}).items():
        if name not in checked:
            raise InputError(f"uncertainty map given for {name!r}, which is not one of the estimates "
                             f"({', '.join(checked)})")
        stds[name] = check_pair(reference, img, "reference", f"uncertainty map of {name!r}")[1]
    m = as_mask(mask, ref.shape)
    roiset = _as_roiset(rois, load_mask)
    grid = reference if isinstance(reference, Volume) else ref
    masks = {r.name: roi_mask(grid, r) for r in roiset.rois}  # raises InputError for an ROI outside the volume
    peak = float(data_range) if data_range is not None else reference_range(ref, m)
    modality = reference.modality if isinstance(reference, Volume) else "OT"
    notes: list[str] = []

    noise_rois = roiset.with_role("noise")
    if noise_rois:
        nps_mask = np.logical_or.reduce([masks[r.name] for r in noise_rois])
        nps_region = "ROIs " + ", ".join(r.name for r in noise_rois)
    else:
        nps_mask = uniform_mask(ref, axis=axis)
        nps_region = "flat regions of the reference (auto)"
        if not nps_mask.any():
            nps_mask, nps_region = np.ones(ref.shape, bool), "whole volume (no flat region found)"
            notes.append("no uniform region found: the NPS of differences includes structure removed by the method")
    edges = roiset.with_role("edge")
    if not edges:
        notes.append("no ROI with role 'edge': MTF not measured")

    def mtfs(img: np.ndarray, label: str) -> dict[str, EdgeMTF]:
        out = {}
        for r in edges:
            try:
                out[r.name] = edge_mtf(img, masks[r.name], spacing=sp, axis=axis)
            except InputError as exc:
                notes.append(f"MTF of {label} in ROI {r.name!r} failed: {exc}")
        return out

    def nps_of(img: np.ndarray, label: str) -> NoisePowerSpectrum | None:
        try:
            return noise_power_spectrum(img, nps_mask, spacing=sp, reference=ref, roi_size=nps_roi_size, axis=axis)
        except InputError as exc:
            notes.append(f"NPS of {label} failed: {exc}")
            return None

    def measure(name: str, img: np.ndarray) -> ImageMetrics:
        stats = {r.name: roi_stats(img, masks[r.name]) for r in roiset.rois}
        bias = {r.name: hu_bias(ref, img, masks[r.name]) for r in roiset.rois}
        if bias:
            worst = max(bias.values(), key=lambda b: abs(b.bias)).bias
        else:
            worst = float(np.mean((img - ref)[m] if m is not None else img - ref))
        c = {f"{a}|{b}": cnr(img, masks[a], masks[b]) for a, b in roiset.pairs()}
        mn = method_noise(noisy_a, img, ref, mask=m, spacing=sp) if noisy_a is not None and name != "noisy" else None
        return ImageMetrics(name=name, psnr=psnr(ref, img, m, data_range=peak),
                            ssim=ssim_3d(ref, img, m, spacing=sp, data_range=peak), rmse=rmse(ref, img, m),
                            mae=mae(ref, img, m), bias=worst, roi_stats=stats, roi_bias=bias, cnr=c,
                            nps=nps_of(img, name), mtf=mtfs(img, name), method_noise=mn, modality=modality)

    result = EvaluationResult(
        reference_name=reference_name, shape=tuple(ref.shape), spacing=tuple(sp),  # type: ignore[arg-type]
        modality=modality, data_range=peak,
        methods={}, rois=roiset, nps_region=nps_region, notes=notes,
        reference_roi_stats={r.name: roi_stats(ref, masks[r.name]) for r in roiset.rois},
        affine=reference.affine if isinstance(reference, Volume) else np.diag([*sp, 1.0]))
    result.reference_mtf = mtfs(ref, "the reference")
    if result.reference_mtf and result.reference_mtf50 is None:
        notes.append("the reference's MTF stays above 0.5 up to the Nyquist frequency (an ideal edge): "
                     "MTF50 ratios are undefined")
    result.images["reference"] = ref
    if noisy_a is not None:
        result.noisy = measure("noisy", noisy_a)
        result.images["noisy"] = noisy_a
    for name, img in checked.items():
        result.methods[name] = measure(name, img)
        result.images[name] = img
        if name in stds:
            result.methods[name].uncertainty = uncertainty_calibration(ref, img, stds[name], m)
    return result


__all__ = ["evaluate", "EvaluationResult", "ImageMetrics", "MetricsTable", "uniform_mask", "SCALARS", "image_units",
           "scalar_unit"]
