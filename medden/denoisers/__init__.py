"""Denoisers: one registry, one calling convention, and :func:`denoise`, the call every front end uses."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from medden.denoisers.registry import (Denoised, DenoiserSpec, Param, default_method, explain_auto, get_method,
                                       list_methods, register)
from medden.errors import InputError, ParameterError
from medden.inference import resolve_device
from medden.noise.estimate import NoiseEstimate, as_noise, estimate_noise
from medden.volume import Volume

# One import line per family registers its methods.
from medden.denoisers import classical  # noqa: E402,F401
from medden.denoisers import block_matching  # noqa: E402,F401
from medden.denoisers import deep  # noqa: E402,F401
from medden.denoisers import diffusion  # noqa: E402,F401

__all__ = ["denoise", "list_methods", "get_method", "default_method", "explain_auto", "register", "Param",
           "DenoiserSpec", "Denoised", "estimate_sigma", "noise_of"]

#: Voxel magnitudes above this overflow the squares and sums of float32 arithmetic inside the methods.
MAX_ABS_VALUE = 1e15
#: A given sigma above this multiple of the data's range is not a noise level of these data.
MAX_SIGMA_PER_RANGE = 100.0


def estimate_sigma(volume: Volume) -> float:
    """The noise standard deviation (volume units) that ``sigma='auto'`` uses, chosen by modality."""
    return float(estimate_noise(volume).sigma)


def noise_of(volume: Volume, sigma: Any = "auto") -> NoiseEstimate:
    """The :class:`~medden.noise.estimate.NoiseEstimate` a denoiser receives: estimated by modality for ``"auto"``,
    else the given level (a number in the volume's units, ``"N%"`` of the 99.9th percentile of the non-zero voxels,
    a noise map, or a NoiseEstimate), checked against the data:
    a level far above the data's range is refused as non-physical."""
    if isinstance(sigma, str):
        if sigma.strip().lower() == "auto":
            return estimate_noise(volume)
        from medden.noise.simulate import resolve_sigma  # "N%" of the 99.9th percentile, as medden.simulate reads it

        sigma = resolve_sigma(volume.data, sigma)
    noise = as_noise(sigma)
    if noise.noise_map is not None and noise.noise_map.shape != volume.shape:
        raise ParameterError(f"noise map shape {noise.noise_map.shape} differs from the volume's {volume.shape}")
    span = max(float(np.ptp(volume.data)), float(np.abs(volume.data).max()))
    if span > 0 and noise.sigma > MAX_SIGMA_PER_RANGE * span:
        raise ParameterError(f"sigma {noise.sigma:.4g} is not a noise level of these data: more than "
                             f"{MAX_SIGMA_PER_RANGE:g}× their range ({span:.4g}); give it in the volume's units")
    return noise


def _check_volume(volume: Volume) -> None:
    if not isinstance(volume, Volume):
        raise InputError(f"denoise needs a medden Volume, got {type(volume).__name__}")
    peak = float(np.abs(volume.data).max()) if volume.data.size else 0.0
    if peak > MAX_ABS_VALUE:
        raise InputError(f"voxel values up to {peak:.3g} are too large to denoise in float32 arithmetic (limit "
                         f"{MAX_ABS_VALUE:.0e}): rescale the data first")


def denoise(volume: Volume, method: str = "auto", sigma: Any = "auto", device: str = "auto",
            return_std: bool = False, progress: Callable[[int, int], None] | None = None, **params: Any):
    """Denoise a volume with a registered method and return a new volume with the same geometry.

    Parameters
    ----------
    volume : the scan to denoise.
    method : a registry name (see :func:`list_methods`) or ``"auto"``: the best-ranked available, permissively
        licensed method for the volume's modality (:func:`explain_auto` says which and why).
    sigma : noise standard deviation in the volume's units (HU for CT), a noise map of the volume's shape, a
        :class:`~medden.noise.estimate.NoiseEstimate`, or ``"auto"`` to estimate it.
    device : ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``; used by methods that can run on a GPU.
    return_std : also return the per-voxel standard deviation of the estimate's error as a second volume (None for
        methods that give none, e.g. every method but ``diffusion``).
    progress : called as ``progress(done, total)`` by methods that report progress.
    **params : method parameters (see ``medden methods``); unknown names or bad values raise
        :class:`ParameterError`.

    Returns
    -------
    Volume, or (Volume, Volume or None) with ``return_std``
        Same shape, affine and metadata; ``meta['denoise']`` records method, parameters, sigma and seconds, and a
        line is added to ``history``.

    Examples
    --------
    >>> import numpy as np, medden
    >>> rng = np.random.default_rng(0)
    >>> v = medden.Volume(rng.normal(100, 5, (32, 32, 16)).astype("float32"), np.eye(4), modality="MR")
    >>> out = medden.denoise(v, method="gaussian")
    >>> bool(out.data.std() < v.data.std())
    True
    """
    _check_volume(volume)
    spec = default_method(volume.modality) if method in (None, "auto") else get_method(method)
    resolved = spec.resolve_params(params)
    dev = resolve_device(device) if spec.gpu else "cpu"
    noise = noise_of(volume, sigma)
    start = time.perf_counter()
    result = spec.fn(volume.data, noise, spacing=volume.spacing, modality=volume.modality, device=dev,
                     progress=progress, **resolved)
    seconds = time.perf_counter() - start
    if not isinstance(result, Denoised):
        raise TypeError(f"denoiser {spec.name} returned {type(result).__name__}, not medden.denoisers.Denoised")
    mean = _checked(spec, result.mean, volume)
    record = {"method": spec.name, "params": resolved, "sigma": noise.sigma, "sigma_source": noise.source,
              "device": dev, "seconds": round(seconds, 3), **result.record}
    shown = ", ".join(f"{k}={v}" for k, v in resolved.items())
    step = f"denoised with medden {spec.name} (sigma={noise.sigma:.4g} {noise.source}{', ' + shown if shown else ''})"
    out = volume.with_data(mean, step=step, denoise=record)
    if not return_std:
        return out
    return out, (None if result.std is None else _std_volume(out, _checked(spec, result.std, volume)))


def _checked(spec: DenoiserSpec, array, volume: Volume) -> np.ndarray:
    out = np.asarray(array, dtype=np.float32)
    if out.shape != volume.shape:
        raise RuntimeError(f"denoiser {spec.name} returned shape {out.shape} for input {volume.shape}")
    if not np.isfinite(out).all():
        raise InputError(f"denoiser {spec.name} produced non-finite values on this volume (values up to "
                         f"{float(np.abs(volume.data).max()):.3g}): rescale the data or give a smaller sigma")
    return out


def _std_volume(mean: Volume, std: np.ndarray) -> Volume:
    """The standard deviation map as a volume of ``mean``'s geometry and units, always stored as float32."""
    import dataclasses

    rec = mean.meta["denoise"]
    samples = rec["params"].get("samples")
    step = (f"posterior standard deviation of medden {rec['method']} "
            f"({f'{samples} samples, ' if samples else ''}sigma={rec['sigma']:.4g})")
    std_vol = mean.with_data(std, step=step, denoise={**rec, "output": "posterior std"})
    # a standard deviation of a few units must not be rounded into the source's integer type: NIfTI and ITK outputs
    # of the map are float32 (DICOM keeps the series' stored type and rescale)
    meta = {k: v for k, v in std_vol.meta.items() if k not in ("scl_slope", "scl_inter", "stored_pixel_id")}
    if "stored_dtype" in meta:
        meta["stored_dtype"] = "float32"
    return dataclasses.replace(std_vol, meta=meta)
