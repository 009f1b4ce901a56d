"""Additive white Gaussian noise: the model behind most denoiser benchmarks and the electronic noise of detectors."""
from __future__ import annotations

from typing import Any

from medden.errors import ParameterError
from medden.noise.arrays import GeneratorLike, make_generator, randn_like, to_tensor


def gaussian(data: Any, *, sigma: float, generator: GeneratorLike = None) -> Any:
    """Add white Gaussian noise: ``y = x + σ·n`` with ``n ~ N(0, 1)`` independent per voxel.

    Parameters
    ----------
    data : array or tensor of any shape, in physical units.
    sigma : noise standard deviation in the units of ``data`` (≥ 0).
    generator : ``torch.Generator``, an int seed, or None for torch's global generator.

    Returns
    -------
    Noisy data of the same type, shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> y = gaussian(np.zeros((64, 64, 64)), sigma=2.0, generator=0)
    >>> round(float(y.std()), 1)
    2.0
    """
    if not sigma >= 0:
        raise ParameterError(f"Gaussian sigma must be >= 0, got {sigma}")
    x, restore = to_tensor(data)
    g = make_generator(generator, x.device)
    return restore(x + float(sigma) * randn_like(x, g))
