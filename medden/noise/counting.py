"""Noise of counting detectors: Poisson (photon or event counts) and Poisson–Gaussian (counts plus electronic noise).

The image is read as an expected count per voxel scaled by ``counts_per_unit``: a voxel of value ``x`` collects
``Poisson(x · counts_per_unit)`` events and is divided back, so the noisy image keeps the units of ``data`` with
variance ``x / counts_per_unit``. ``counts_per_unit`` is the dose (or acquisition-time) knob: halving it doubles the
variance. The Poisson–Gaussian form adds detector read-out noise, giving the affine variance ``a·x + b`` with
``a = 1/counts_per_unit`` and ``b = sigma²`` (Foi et al., IEEE TIP 17(10), 2008).
"""
from __future__ import annotations

from typing import Any

import torch

from medden.errors import InputError, ParameterError
from medden.noise.arrays import GeneratorLike, make_generator, randn_like, to_tensor


def _check_counts(x: torch.Tensor, counts_per_unit: float) -> None:
    if not counts_per_unit > 0:
        raise ParameterError(f"counts per unit intensity must be > 0, got {counts_per_unit}")
    lowest = float(x.min()) if x.numel() else 0.0
    if lowest < 0:
        raise InputError(f"Poisson noise needs non-negative data (expected counts), but the minimum is {lowest:g}")


def poisson(data: Any, *, counts_per_unit: float, generator: GeneratorLike = None) -> Any:
    """Poisson (shot) noise: ``y = Poisson(x · c) / c`` with ``c = counts_per_unit``.

    Parameters
    ----------
    data : non-negative array or tensor (any shape) of expected intensities.
    counts_per_unit : detected counts per unit of intensity (> 0); the dose knob. Mean of ``y`` is ``x`` and its
        variance ``x / c``.
    generator : ``torch.Generator``, an int seed, or None.

    Returns
    -------
    Noisy data of the same type, shape and device.

    Examples
    --------
    >>> import numpy as np
    >>> y = poisson(np.full((100, 100, 10), 4.0), counts_per_unit=25.0, generator=0)
    >>> round(float(y.mean()), 1), round(float(y.var()), 2)
    (4.0, 0.16)
    """
    x, restore = to_tensor(data)
    _check_counts(x, counts_per_unit)
    g = make_generator(generator, x.device)
    c = float(counts_per_unit)
    return restore(torch.poisson(x * c, generator=g) / c)


def poisson_gaussian(data: Any, *, counts_per_unit: float, sigma: float, generator: GeneratorLike = None) -> Any:
    """Poisson–Gaussian noise: ``y = Poisson(x · c) / c + σ · n``, variance ``x / c + σ²``.

    Parameters
    ----------
    data : non-negative array or tensor of expected intensities.
    counts_per_unit : detected counts per unit intensity (> 0).
    sigma : standard deviation of the signal-independent (electronic) noise, in the units of ``data`` (≥ 0).
    generator : ``torch.Generator``, an int seed, or None.
    """
    if not sigma >= 0:
        raise ParameterError(f"electronic noise sigma must be >= 0, got {sigma}")
    x, restore = to_tensor(data)
    _check_counts(x, counts_per_unit)
    g = make_generator(generator, x.device)
    c = float(counts_per_unit)
    y = torch.poisson(x * c, generator=g) / c
    return restore(y + float(sigma) * randn_like(y, g))
