"""Block-matching collaborative filtering: BM3D slice by slice (Dabov et al., IEEE TIP 2007) and BM4D on the whole
volume (Maggioni et al., IEEE TIP 2013), through the reference implementations of Tampere University.

Both packages are free for non-commercial use only (bm4d ships a closed binary), so they live in the optional
``bm`` extra: ``pip install "medden[bm]"``.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from medden.denoisers.registry import Param, register
from medden.errors import MissingDependencyError

_EXTRA_HINT = ('needs the optional "bm" extra (BM3D/BM4D, free for non-commercial use only): '
               'pip install "medden[bm]"')


def _installed(module: str):
    return lambda: importlib.util.find_spec(module) is not None


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependencyError(f"method {module!r} {_EXTRA_HINT}") from None


def _normalise(data: np.ndarray, sigma) -> tuple[np.ndarray, float, float, object]:
    """Map the data to roughly [0, 1] (the packages' parameters are tuned for that range) and scale sigma alike."""
    lo, hi = np.percentile(data, [0.1, 99.9])
    scale = float(hi - lo) or 1.0
    psd = np.asarray(sigma, dtype=np.float64)
    if psd.ndim == 0:
        scaled = float(psd) / scale
    elif psd.shape == data.shape:  # a noise map: the packages take one level (or a PSD), use its median
        scaled = float(np.median(psd)) / scale
    else:  # a noise power spectrum in the packages' convention (|FFT|² units of the data)
        scaled = psd / scale ** 2
    return ((data - lo) / scale).astype(np.float32), float(lo), scale, scaled


@register("bm4d", family="block matching", quality_rank=10, extra="bm", availability=_installed("bm4d"),
          summary="BM4D: 3D block matching with collaborative filtering (reference implementation)",
          params=(Param("profile", "np", "", "BM4D profile", choices=("np", "refilter")),))
def bm4d(data: np.ndarray, sigma, *, spacing=(1.0, 1.0, 1.0), device="cpu", profile="np") -> np.ndarray:
    """BM4D on the whole volume. ``sigma`` is a white-noise standard deviation or a noise PSD of the data's shape."""
    module = _require("bm4d")
    x, lo, scale, s = _normalise(data, sigma)
    if np.ndim(s) == 0 and s <= 0:
        return data.copy()
    out = module.bm4d(x, s, profile=profile)
    return (np.asarray(out, dtype=np.float32).reshape(data.shape) * scale + lo).astype(np.float32)


@register("bm3d", family="block matching", quality_rank=20, extra="bm", availability=_installed("bm3d"),
          summary="BM3D on each axial slice (reference implementation)",
          params=(Param("profile", "np", "", "BM3D profile", choices=("np", "refilter", "vn", "high", "deb")),))
def bm3d(data: np.ndarray, sigma, *, spacing=(1.0, 1.0, 1.0), device="cpu", profile="np") -> np.ndarray:
    """BM3D applied slice by slice along the third (usually axial) axis."""
    module = _require("bm3d")
    x, lo, scale, s = _normalise(data, sigma)
    if np.ndim(s) == 0 and s <= 0:
        return data.copy()
    out = np.empty_like(x)
    for k in range(x.shape[2]):
        sk = s if np.ndim(s) == 0 else s[:, :, k] if np.ndim(s) == 3 else s
        out[:, :, k] = module.bm3d(x[:, :, k], sk, profile=profile)
    return (out * scale + lo).astype(np.float32)
