"""Block-matching collaborative filtering: BM3D slice by slice (Dabov et al., IEEE TIP 2007) and BM4D on the whole
volume (Maggioni et al., IEEE TIP 2013), through the reference implementations of Tampere University.

Both packages are free for non-commercial use only (bm4d ships a closed binary), so they live in the optional
``bm`` extra: ``pip install "medden[bm]"``.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from medden.denoisers.registry import NON_COMMERCIAL, Denoised, Param, register
from medden.errors import MissingDependencyError, ParameterError

_EXTRA_HINT = ('needs the optional "bm" extra (BM3D/BM4D, free for non-commercial use only): '
               'pip install "medden[bm]"')


def _installed(module: str):
    return lambda: importlib.util.find_spec(module) is not None


def _require(module: str):
    try:
        imported = __import__(module)
    except ImportError:
        raise MissingDependencyError(f"method {module!r} {_EXTRA_HINT}") from None
    if not hasattr(np, "trapz"):  # bm3d 4.0 / bm4d 4.2 call np.trapz (removed in NumPy 2.4) on the PSD path
        np.trapz = np.trapezoid
    return imported


def _normalise(data: np.ndarray, noise, shape) -> tuple[np.ndarray, float, float, object]:
    """Map the data to roughly [0, 1] (the packages' parameters are tuned for that range) and scale the noise alike.

    The noise is the packages' ``sigma_psd``: a white standard deviation, or — when ``noise`` (a
    :class:`~medden.noise.estimate.NoiseEstimate`) carries a CT noise power spectrum — the PSD for ``shape`` in
    their convention (unshifted FFT order, ``E|DFT(noise)|²``), which scales with the square of the data.
    """
    lo, hi = np.percentile(data, [0.1, 99.9])
    scale = float(hi - lo) or 1.0
    if noise.nps is not None:
        return ((data - lo) / scale).astype(np.float32), float(lo), scale, noise.sigma_psd(shape) / scale ** 2
    return ((data - lo) / scale).astype(np.float32), float(lo), scale, float(noise.sigma) / scale


#: The smallest slice (both in-plane axes, voxels) each package handles: smaller ones raise inside it or, at some
#: sizes just below (BM3D 8×8, BM4D 5×5), crash the Python process (measured with bm3d 4.0.3 and bm4d 4.2.5).
MIN_SLICE = {"bm3d": 9, "bm4d": 8}


def _check_size(data: np.ndarray, method: str) -> None:
    n = MIN_SLICE[method]
    if min(data.shape[:2]) < n:
        raise ParameterError(f"the volume ({'×'.join(map(str, data.shape))} voxels) is too small for {method}: it "
                             f"needs at least {n}×{n} voxels in each slice (its block size); use another method")


def _psd_record(noise) -> dict:
    return {"noise_psd": "CT noise power spectrum estimated from the scan"} if noise.nps is not None else {}


def _magnitude(out: np.ndarray, data: np.ndarray, modality: str) -> np.ndarray:
    """MR magnitude data stay non-negative: the filters' ringing can dip below 0 next to a zero background."""
    if modality == "MR" and float(data.min()) >= 0:
        np.maximum(out, 0, out=out)
    return out


@register("bm4d", family="block matching", extra="bm", availability=_installed("bm4d"), licence=NON_COMMERCIAL,
          summary="BM4D: 3D block matching with collaborative filtering (reference implementation)",
          params=(Param("profile", "np", "", "BM4D profile", choices=("np", "refilter")),))
def bm4d(data: np.ndarray, noise, *, spacing=(1.0, 1.0, 1.0), modality="OT", device="cpu", progress=None,
         profile="np") -> Denoised:
    """BM4D on the whole volume, with white noise ``sigma`` or, for CT with ``sigma='auto'``, the estimated noise
    power spectrum (FBP noise is correlated: a white σ would leave its texture)."""
    _check_size(data, "bm4d")
    module = _require("bm4d")
    x, lo, scale, s = _normalise(data, noise, data.shape)
    if np.ndim(s) == 0 and s <= 0:
        return Denoised(data.copy())
    out = module.bm4d(x, s, profile=profile)
    out = (np.asarray(out, dtype=np.float32).reshape(data.shape) * scale + lo).astype(np.float32)
    return Denoised(_magnitude(out, data, modality), record=_psd_record(noise))


@register("bm3d", family="block matching", extra="bm", availability=_installed("bm3d"), licence=NON_COMMERCIAL,
          summary="BM3D on each axial slice (reference implementation)",
          params=(Param("profile", "np", "", "BM3D profile", choices=("np", "refilter", "vn", "high", "deb")),))
def bm3d(data: np.ndarray, noise, *, spacing=(1.0, 1.0, 1.0), modality="OT", device="cpu", progress=None,
         profile="np") -> Denoised:
    """BM3D applied slice by slice along the third (usually axial) axis; for CT with ``sigma='auto'`` each slice
    gets the estimated axial noise power spectrum."""
    _check_size(data, "bm3d")
    module = _require("bm3d")
    if noise.axial_axis != 2:
        noise = noise.white()  # the NPS describes other planes than the slices BM3D filters: use the white level
    x, lo, scale, s = _normalise(data, noise, data.shape[:2])
    if np.ndim(s) == 0 and s <= 0:
        return Denoised(data.copy())
    out = np.empty_like(x)
    for k in range(x.shape[2]):
        out[:, :, k] = module.bm3d(x[:, :, k], s, profile=profile)
        if progress is not None:
            progress(k + 1, x.shape[2])
    return Denoised(_magnitude((out * scale + lo).astype(np.float32), data, modality), record=_psd_record(noise))
