"""Benchmark harness: run registered denoisers over (volume, noise setting) cases and measure them all the same way.

Every run includes **bm4d** as the reference baseline, in the same run on the same cases, so the table reads as
differences to it. Each (case, method) is denoised with :func:`medden.denoise` at the *true* noise level of the case
(the standard deviation of ``noisy - reference`` in the case's noise region; ``sigma="auto"`` is available) and
measured with :func:`medden.metrics.evaluate`.

Recorded per (case, method): PSNR (dB), SSIM, HU bias (the largest |mean(estimate − reference)| over the case's ROIs,
signed, in volume units), NPS peak shift and NPS mean-frequency shift (1/mm; peak or ``f_av`` of the residual noise
``estimate − reference`` minus that of the input noise ``noisy − reference``, TG-233 NPS in the case's noise region;
negative = coarser, "plastic" texture), MTF50 ratio (MTF50 of the estimate over that of the reference, slanted-edge
cases only), wall-clock seconds of the ``denoise`` call, and peak memory in MB: the larger of (a) the peak of Python/NumPy
allocations traced by ``tracemalloc`` during the call and (b) the peak increase of the process's resident set size,
sampled every 5 ms by a psutil thread. (a) misses native allocations of compiled back ends (the bm4d binary, torch's
CPU allocator); (b) sees them but misses memory re-used from earlier calls, so the maximum is a lower bound of the
call's true peak. tracemalloc slows pure-Python allocation a little; the methods here allocate large arrays, where its
cost is negligible.

Usage::

    from benchmarks.harness import phantom_cases, run_benchmark, format_table
    result = run_benchmark(["bm4d", "nlm", "gaussian"], phantom_cases(), name="classical")
    print(format_table(result))
"""
from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

import medden
from medden.metrics import Roi, RoiSet, evaluate
from medden.volume import Volume

BASELINE = "bm4d"
RESULTS_DIR = Path(__file__).parent / "results"
#: The data folder when neither ``--data-root`` nor ``MEDDEN_DATA`` names one: ``../shared/data`` beside the repository.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_root(given: str | os.PathLike | None = None) -> Path:
    """The benchmarks' data folder: ``given`` (``--data-root``), else ``$MEDDEN_DATA``, else ``../shared/data``
    relative to the repository. Volumes are named relative to it (``mri/…``, ``ct/…``)."""
    return Path(given or os.environ.get("MEDDEN_DATA") or SHARED_DATA).expanduser()


@dataclass
class Case:
    """One benchmark input: a clean reference, its noisy version and how it was made."""

    name: str
    reference: Volume
    noisy: Volume
    noise: dict[str, Any]  #: model and physical parameters, e.g. {"model": "rician", "sigma": 0.03}
    rois: RoiSet = field(default_factory=RoiSet)
    sigma: float = 0.0  #: true noise SD in the noise region (volume units)
    mask: np.ndarray | None = None  #: voxels for PSNR/SSIM/RMSE (e.g. the head for MR), all when None
    data_range: float | None = None


# -- noise -------------------------------------------------------------------------------------------------------
def simulate_noise(volume: Volume, model: str, seed: int, **params: Any) -> Volume:
    """``medden.noise.simulate`` when the noise module provides it, else a local NumPy Gaussian/Rician model."""
    try:
        from medden.noise import simulate  # type: ignore[attr-defined]
    except ImportError:
        simulate = None
    if simulate is not None:
        return simulate(volume, model, seed=seed, **params)
    rng = np.random.default_rng(seed)
    x = volume.data.astype(np.float64)
    if model == "gaussian":
        out = x + rng.normal(0, params["sigma"], x.shape)
    elif model == "rician":
        s = params["sigma"]
        out = np.hypot(x + rng.normal(0, s, x.shape), rng.normal(0, s, x.shape))
    else:
        raise ValueError(f"noise model {model!r} needs medden.noise.simulate, which is not available yet")
    return volume.with_data(out.astype(np.float32), step=f"noise {model} {params} (benchmark fallback)")


def has_noise_model(model: str) -> bool:
    """Whether ``medden.noise`` can simulate ``model`` (e.g. "lowdose-ct")."""
    try:
        from medden import noise

        names = getattr(noise, "list_models", lambda: [])()
        return model in [getattr(n, "name", n) for n in names]
    except Exception:  # noqa: BLE001 - the noise module is being written in parallel
        return False


def _true_sigma(ref: Volume, noisy: Volume, mask: np.ndarray | None) -> float:
    d = noisy.data.astype(np.float64) - ref.data
    return float(d[mask].std() if mask is not None else d.std())


def _mask_roi(name: str, mask: np.ndarray, role: str | None = None) -> Roi:
    return Roi.from_mask(name, mask, role=role)


# -- cases -------------------------------------------------------------------------------------------------------
def phantom_cases(seed: int = 0, scale: float = 1.0) -> list[Case]:
    """The default set, from phantoms alone: CT water cylinder with inserts (HU bias, NPS), CT slanted edge (MTF),
    MR Shepp–Logan with Rician noise. ``scale`` multiplies the in-plane size (1.0: 96 voxels)."""
    from medden import phantoms

    n = max(32, int(round(96 * scale)))
    cases = []
    ct_noise = ({"model": "lowdose-ct", "dose": 0.25} if has_noise_model("lowdose-ct")
                else {"model": "gaussian", "sigma": 25.0})

    cyl = phantoms.water_cylinder((n, n, 16), (0.8, 0.8, 2.0))
    params = {k: v for k, v in ct_noise.items() if k != "model"}
    noisy = simulate_noise(cyl.volume, ct_noise["model"], seed, **params)
    rois = RoiSet(tuple(_mask_roi(k, m, "noise" if k == "water" else None) for k, m in cyl.rois.items()))
    cases.append(Case("ct_cylinder", cyl.volume, noisy, ct_noise, rois,
                      _true_sigma(cyl.volume, noisy, cyl.rois["water"]), data_range=2000.0))

    edge = phantoms.slanted_edge((n, n, 8), (0.5, 0.5, 1.0), low_hu=-1000.0, high_hu=0.0)  # air | water
    # the scanner's own resolution: a Gaussian PSF of 0.6 mm, so the reference has a finite MTF50 to compare with
    blurred = edge.volume.with_data(ndimage.gaussian_filter(edge.volume.data, (1.2, 1.2, 0)), step="psf 0.6 mm")
    noisy = simulate_noise(blurred, ct_noise["model"], seed + 1, **params)
    box = np.zeros(blurred.shape, bool)
    box[n // 8: n - n // 8, n // 4: n - n // 4] = True
    rois = RoiSet((_mask_roi("edge", box, "edge"), _mask_roi("air", edge.rois["low"]),
                   _mask_roi("water", edge.rois["high"], "noise")))
    cases.append(Case("ct_edge", blurred, noisy, ct_noise, rois, _true_sigma(blurred, noisy, edge.rois["high"]),
                      data_range=2000.0))

    sl = phantoms.shepp_logan_3d((n * 2 // 3, n * 2 // 3, n // 2), (1.0, 1.0, 1.5), modality="MR")
    sigma = 0.05 * float(np.percentile(sl.data, 99.9))
    noisy = simulate_noise(sl, "rician", seed + 2, sigma=sigma)
    cases.append(Case("mr_shepp_logan_rician5", sl, noisy, {"model": "rician", "sigma": sigma, "percent": 5},
                      RoiSet(), sigma, data_range=float(sl.data.max() - sl.data.min()), mask=sl.data > 0))
    return cases


def _centre_crop(vol: Volume, size: int) -> Volume:
    """A centred crop of at most ``size`` voxels per in-plane axis (all slices up to ``size`` too), geometry kept."""
    sl = tuple(slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + min(n, size)) for n in vol.shape)
    aff = vol.affine.copy()
    aff[:3, 3] = (vol.affine @ np.array([s.start for s in sl] + [1.0]))[:3]
    return Volume(vol.data[sl], aff, modality=vol.modality, meta={"source_path": vol.meta.get("source_path")},
                  history=vol.history + (f"crop {[(s.start, s.stop) for s in sl]}",))


def shared_cases(data_dir: str | Path | None = None, size: int = 96, seed: int = 0,
                 rician_percent: Sequence[float] = (1, 3, 9)) -> list[Case]:
    """Cropped real volumes from ``../shared/data`` with simulated noise: Rician 1–9 % (of the 99.9th percentile)
    for MR; low-dose CT (25 % dose) when the noise module has it, else Gaussian 25 HU, for CT. Empty when the folder
    is missing."""
    data_dir = data_root(data_dir)
    cases: list[Case] = []
    picks = [("mri", "mni152_2009a_sym_t1_1mm.nii.gz"), ("mri", "niivue_t2w_tse_1x1x2mm.nii.gz"),
             ("ct", "totalseg_abdomen_pelvis_3mm.nii.gz"), ("ct", "pyradiomics_lung1_chest.nii.gz")]
    for sub, fname in picks:
        path = data_dir / sub / fname
        if not path.exists():
            continue
        vol = _centre_crop(medden.load_volume(path), size)
        stem = fname.split(".")[0]
        if vol.modality == "CT" or sub == "ct":
            model = ({"model": "lowdose-ct", "dose": 0.25} if has_noise_model("lowdose-ct")
                     else {"model": "gaussian", "sigma": 25.0})
            noisy = simulate_noise(vol, model["model"], seed, **{k: v for k, v in model.items() if k != "model"})
            body = vol.data > -300
            cases.append(Case(f"{stem}_{model['model']}", vol, noisy, model, RoiSet(), _true_sigma(vol, noisy, body),
                              data_range=2000.0))
        else:
            p999 = float(np.percentile(vol.data[vol.data > 0], 99.9))
            for pct in rician_percent:
                noisy = simulate_noise(vol, "rician", seed, sigma=pct / 100 * p999)
                cases.append(Case(f"{stem}_rician{pct:g}", vol, noisy,
                                  {"model": "rician", "sigma": pct / 100 * p999, "percent": pct}, RoiSet(),
                                  pct / 100 * p999, data_range=p999, mask=vol.data > 0))
    return cases


# -- measuring ---------------------------------------------------------------------------------------------------
class PeakMemory:
    """Context manager: ``peak_mb`` is the larger of the tracemalloc peak and the peak increase of the resident set
    size (psutil, sampled every ``interval`` s) during the block."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc, self._interval, self.peak_mb = psutil.Process(), interval, 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> PeakMemory:
        import tracemalloc

        tracemalloc.start()
        self._start = self._peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import tracemalloc

        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = max(self._peak - self._start, traced) / 2**20


@dataclass
class BenchmarkResult:
    name: str
    rows: list[dict[str, Any]]
    methods: list[str]
    cases: list[dict[str, Any]]
    environment: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "baseline": BASELINE, "methods": self.methods, "cases": self.cases,
                "environment": self.environment, "rows": self.rows}

    def write(self, folder: str | Path = RESULTS_DIR) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return path


def _num(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def run_benchmark(methods: Sequence[str], cases: Sequence[Case], name: str = "benchmark", *,
                  sigma: str = "true", device: str = "cpu", params: dict[str, dict[str, Any]] | None = None,
                  log: Callable[[str], None] | None = print, write: bool = True) -> BenchmarkResult:
    """Denoise every case with every method (bm4d always added first) and measure it.

    Parameters
    ----------
    methods : registry names; unknown names raise :class:`medden.errors.ParameterError`.
    cases : from :func:`phantom_cases` / :func:`shared_cases`.
    name : results go to ``benchmarks/results/<name>.json``.
    sigma : ``"true"`` (the case's known noise SD) or ``"auto"`` (each method's estimate).
    device : passed to :func:`medden.denoise`.
    params : optional per-method parameters, ``{"nlm": {"h": 0.6}}``.
    """
    from medden.denoisers import get_method

    methods = [BASELINE] + [m for m in dict.fromkeys(methods) if m != BASELINE]
    for m in methods:
        spec = get_method(m)
        if not spec.available:
            raise medden.MeddenError(f"method {m!r} is not installed (pip install 'medden[{spec.extra}]')")
    rows: list[dict[str, Any]] = []
    for case in cases:
        estimates, timing = {}, {}
        for m in methods:
            if log:
                log(f"  {case.name}: {m} ...")
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                out = medden.denoise(case.noisy, method=m, sigma=case.sigma if sigma == "true" else "auto",
                                     device=device, **(params or {}).get(m, {}))
                seconds = time.perf_counter() - t0
            estimates[m], timing[m] = out, (seconds, mem.peak_mb)
        res = evaluate(case.reference, estimates, noisy=case.noisy, rois=case.rois, data_range=case.data_range,
                       mask=case.mask, reference_name=case.name)
        nz = res.noisy
        ref50 = res.reference_mtf50
        for m in methods:
            im = res.methods[m]
            sc = im.scalars(ref50)
            shift = (lambda key: _num(getattr(im.nps, key) - getattr(nz.nps, key))
                     if (im.nps is not None and nz.nps is not None) else None)
            rows.append({"case": case.name, "method": m, "psnr": _num(sc["psnr"]), "ssim": _num(sc["ssim"]),
                         "hu_bias": _num(sc["hu_bias"]), "nps_peak_shift": shift("peak_frequency"),
                         "nps_mean_shift": shift("mean_frequency"), "noise_std": _num(sc["noise_std"]),
                         "mtf50_ratio": _num(sc["mtf50_ratio"]), "seconds": timing[m][0],
                         "peak_mem_mb": timing[m][1], "input_psnr": _num(nz.psnr), "sigma": case.sigma})
    for r in rows:  # differences to the baseline on the same case
        base = next(b for b in rows if b["case"] == r["case"] and b["method"] == BASELINE)
        for k in ("psnr", "ssim", "nps_peak_shift", "nps_mean_shift", "mtf50_ratio"):
            r[f"d_{k}"] = (r[k] - base[k]) if r[k] is not None and base[k] is not None else None
        r["d_abs_hu_bias"] = (abs(r["hu_bias"]) - abs(base["hu_bias"])) if r["hu_bias"] is not None else None
        r["time_ratio"] = r["seconds"] / base["seconds"] if base["seconds"] > 0 else None
    env = {"medden": medden.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "device": device, "sigma": sigma,
           "memory": "max(tracemalloc peak, peak RSS increase sampled by psutil every 5 ms) during denoise()",
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    case_info = [{"name": c.name, "shape": list(c.reference.shape), "spacing_mm": list(c.reference.spacing),
                  "modality": c.reference.modality, "noise": c.noise, "sigma": c.sigma,
                  "data_range": c.data_range,
                  "metric_mask": "object (reference > 0)" if c.mask is not None else "all voxels"} for c in cases]
    result = BenchmarkResult(name, rows, methods, case_info, env)
    if write:
        result.write()
    return result


def format_table(result: BenchmarkResult) -> str:
    """A plain-text table: absolute values for bm4d, differences to bm4d (Δ) for every other method."""
    cols = [("method", 9), ("PSNR dB", 13), ("SSIM", 14), ("HU bias", 14), ("NPS peak shift", 15),
            ("NPS f_av shift", 15), ("MTF50 ratio", 13), ("seconds", 13), ("peak MB", 8)]
    lines = []

    def f(v: Any, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    for case in dict.fromkeys(r["case"] for r in result.rows):
        rows = [r for r in result.rows if r["case"] == case]
        lines.append(f"\n{case}   (input PSNR {f(rows[0]['input_psnr'], '.2f')} dB, σ {rows[0]['sigma']:.4g}; "
                     f"bm4d absolute, others: value (Δ vs bm4d))")
        lines.append("  ".join(name.ljust(w) for name, w in cols))
        for r in rows:
            base = r["method"] == BASELINE

            def cell(k: str, fmt: str, dk: str | None = None) -> str:
                if base or r.get(dk or f"d_{k}") is None:
                    return f(r[k], fmt)
                return f"{f(r[k], fmt)} ({f(r[dk or f'd_{k}'], '+' + fmt)})"

            vals = [r["method"], cell("psnr", ".2f"), cell("ssim", ".3f"), cell("hu_bias", ".3g", "d_abs_hu_bias"),
                    cell("nps_peak_shift", ".2f"), cell("nps_mean_shift", ".2f"), cell("mtf50_ratio", ".2f"),
                    f(r["seconds"], ".1f") + ("" if base else f" (×{r['time_ratio']:.2f})"),
                    f(r["peak_mem_mb"], ".0f")]
            lines.append("  ".join(v.ljust(w) for v, (_, w) in zip(vals, cols)))
    lines.append("\nHU bias: largest |mean(estimate − reference)| over the case's ROIs (signed; Δ compares |bias|). "
                 "NPS shifts: residual-noise NPS (TG-233) minus input-noise NPS, 1/mm; negative = coarser texture. "
                 "MTF50 ratio: estimate / reference (slanted edge, ISO 12233). Peak MB: max(tracemalloc peak, RSS increase).")
    return "\n".join(lines)
