"""Magnitude MR noise: Rician (one receive channel, or SENSE/adaptive-combine reconstructions) and noncentral χ
(root-sum-of-squares over ``L`` coils).

The complex signal in each channel carries independent Gaussian noise of standard deviation σ on its real and
imaginary parts. The magnitude of one channel is Rician (Gudbjartsson & Patz, MRM 34(6), 1995); the root sum of
squares of ``L`` channels with equal noise and no correlation is noncentral χ with ``2L`` degrees of freedom
(Constantinides, Atalar & McVeigh, MRM 38(5), 1997). Both depend on the total signal only, so the signal is placed on
one channel.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medden.errors import InputError, ParameterError
from medden.noise.arrays import GeneratorLike, make_generator, randn_like, to_tensor


def reference_signal(data: Any, reference: float | np.ndarray = 99.9) -> float:
    """The signal an SNR refers to: the mean over a tissue mask, or a percentile (0–100) of the non-zero voxels."""
    x = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if isinstance(reference, np.ndarray) and reference.dtype == bool:
        if reference.shape != x.shape or not reference.any():
            raise InputError("the SNR reference mask must have the data's shape and select at least one voxel")
        return float(np.mean(x[reference]))
    q = float(reference)
    if not 0 < q <= 100:
        raise ParameterError(f"the SNR reference percentile must be in (0, 100], got {q}")
    nonzero = x[x != 0]
    if nonzero.size == 0:
        raise InputError("cannot set noise relative to the signal: the data are all zero")
    if nonzero.size > 2_000_000:  # a strided subsample gives the same percentile to well under 1 %
        nonzero = nonzero[:: nonzero.size // 1_000_000]
    return float(np.percentile(nonzero, q))


def _resolve_sigma(x: torch.Tensor, sigma: float | None, snr: float | None, reference: float | np.ndarray) -> float:
    if (sigma is None) == (snr is None):
        raise ParameterError("give exactly one of sigma (signal units) or snr")
    if snr is not None:
        if not snr > 0:
            raise ParameterError(f"SNR must be > 0, got {snr}")
        return reference_signal(x, reference) / float(snr)
    if not sigma >= 0:
        raise ParameterError(f"noise sigma must be >= 0, got {sigma}")
    return float(sigma)


def rician(data: Any, *, sigma: float | None = None, snr: float | None = None, snr_reference: float | np.ndarray = 99.9,
           generator: GeneratorLike = None) -> Any:
    """Rician noise of a magnitude image: ``y = |x + σ(n₁ + i n₂)|``.

    Parameters
    ----------
    data : non-negative magnitude (noise-free) in scanner units, any shape.
    sigma : standard deviation of the Gaussian noise on each of the real and imaginary channels, in data units.
    snr : instead of ``sigma``: ``σ = S / snr`` where ``S`` is the reference signal.
    snr_reference : the reference ``S``: a percentile (0–100) of the non-zero voxels (default 99.9), or a boolean
        tissue mask of the data's shape whose mean is ``S``.
    generator : ``torch.Generator``, an int seed, or None.

    Returns
    -------
    The noisy magnitude, same type and device. Its mean is ``σ√(π/2)·L_{1/2}(−x²/2σ²)`` and ``E[y²] = x² + 2σ²``.
    """
    x, restore = to_tensor(data)
    s = _resolve_sigma(x, sigma, snr, snr_reference)
    g = make_generator(generator, x.device)
    re = x + s * randn_like(x, g)
    im = s * randn_like(x, g)
    return restore(torch.sqrt(re * re + im * im))


def noncentral_chi(data: Any, *, sigma: float | None = None, coils: int = 8, snr: float | None = None,
                   snr_reference: float | np.ndarray = 99.9, generator: GeneratorLike = None) -> Any:
    """Noncentral-χ noise of a root-sum-of-squares reconstruction over ``coils`` receive channels.

    ``y = sqrt(Σ_l |s_l + σ(n_l + i m_l)|²)`` with ``Σ|s_l|² = x²``; ``y/σ`` is noncentral χ with ``2·coils`` degrees of
    freedom and noncentrality ``x/σ``, so ``E[y²] = x² + 2·coils·σ²``. ``coils=1`` is the Rician case.

    Parameters
    ----------
    data : non-negative noise-free magnitude, any shape.
    sigma : per-channel, per-component Gaussian standard deviation in data units (or give ``snr``).
    coils : number of receive channels ``L`` (≥ 1), assumed uncorrelated with equal noise.
    snr, snr_reference, generator : as in :func:`rician`.
    """
    if int(coils) != coils or coils < 1:
        raise ParameterError(f"coils must be a positive integer, got {coils}")
    x, restore = to_tensor(data)
    s = _resolve_sigma(x, sigma, snr, snr_reference)
    g = make_generator(generator, x.device)
    re = x + s * randn_like(x, g)
    power = re * re
    del re
    for _ in range(2 * int(coils) - 1):  # the other 2L − 1 real components carry noise only
        n = randn_like(x, g)
        power.addcmul_(n, n, value=s * s)
    return restore(torch.sqrt(power))
