"""Denoisers: one registry, one calling convention, and :func:`denoise`, the call every front end uses."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from medden.denoisers.registry import DenoiserSpec, Param, default_method, get_method, list_methods, register
from medden.errors import ParameterError
from medden.inference import resolve_device
from medden.noise.estimate import estimate_noise
from medden.volume import Volume

# One import line per family registers its methods.
from medden.denoisers import classical  # noqa: E402,F401
from medden.denoisers import block_matching  # noqa: E402,F401
from medden.denoisers import deep  # noqa: E402,F401
from medden.denoisers import diffusion  # noqa: E402,F401

__all__ = ["denoise", "list_methods", "get_method", "default_method", "register", "Param", "DenoiserSpec",
           "estimate_sigma"]


def estimate_sigma(volume: Volume) -> float:
    """The noise standard deviation (volume units) that ``sigma='auto'`` uses, chosen by modality."""
    return float(estimate_noise(volume).sigma)


def denoise(volume: Volume, method: str = "auto", sigma: float | str = "auto", device: str = "auto",
            **params: Any) -> Volume:
    """Denoise a volume with a registered method and return a new volume with the same geometry.

    Parameters
    ----------
    volume : the scan to denoise.
    method : a registry name (see :func:`list_methods`) or ``"auto"`` for the best available method suiting the
        volume's modality.
    sigma : noise standard deviation in the volume's units (HU for CT), or ``"auto"`` to estimate it.
    device : ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``; used by methods that can run on a GPU.
    **params : method parameters (see ``medden methods``); unknown names raise :class:`ParameterError`.

    Returns
    -------
    Volume
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
    spec = default_method(volume.modality) if method in (None, "auto") else get_method(method)
    resolved = spec.resolve_params(params)
    dev = resolve_device(device) if spec.gpu else "cpu"
    extra: dict[str, Any] = {}
    if isinstance(sigma, str):
        if sigma.strip().lower() != "auto":
            raise ParameterError(f"sigma must be 'auto' or a number, got {sigma!r}")
        estimate = estimate_noise(volume)
        sigma_value, sigma_source = float(estimate.sigma), f"estimated ({estimate.method})"
        if spec.uses_noise_estimate:
            extra["noise"] = estimate
    else:
        sigma_value, sigma_source = float(sigma), "given"
        if not np.isfinite(sigma_value) or sigma_value < 0:
            raise ParameterError(f"sigma must be a finite number ≥ 0, got {sigma!r}")
    if spec.uses_modality:
        extra["modality"] = volume.modality
    start = time.perf_counter()
    out = spec.fn(volume.data, sigma_value, spacing=volume.spacing, device=dev, **extra, **resolved)
    seconds = time.perf_counter() - start
    out = np.asarray(out, dtype=np.float32)
    if out.shape != volume.shape:
        raise RuntimeError(f"denoiser {spec.name} returned shape {out.shape} for input {volume.shape}")
    record = {"method": spec.name, "params": resolved, "sigma": sigma_value, "sigma_source": sigma_source,
              "device": dev, "seconds": round(seconds, 3)}
    if "noise" in extra and extra["noise"].nps is not None:
        record["noise_psd"] = "CT noise power spectrum estimated from the scan"
    shown = ", ".join(f"{k}={v}" for k, v in resolved.items())
    step = f"denoised with medden {spec.name} (sigma={sigma_value:.4g} {sigma_source}{', ' + shown if shown else ''})"
    return volume.with_data(out, step=step, denoise=record)
