"""Noise-level estimation from a single volume.

``sigma_wavelet_mad`` is the robust Gaussian estimate of Donoho & Johnstone (1994): the median absolute value of the
finest diagonal (HHH) Haar wavelet coefficients divided by 0.6745. In 3D the HHH band of a smooth image is almost
pure noise, so the estimate is insensitive to anatomy; blocks that are exactly constant (zeroed background, padding)
are left out because they carry no noise.
"""
from __future__ import annotations

import numpy as np

from medden.errors import InputError

_MAD_TO_SIGMA = 0.6744897501960817  # Φ⁻¹(3/4): median(|N(0, 1)|)


def haar_hhh(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finest 3D Haar HHH coefficients (orthonormal, so white noise keeps its σ) and a mask of the informative ones.

    A coefficient is informative unless all 8 voxels of its 2×2×2 block are equal (masked or saturated regions).
    """
    x = np.asarray(data, dtype=np.float32)
    n0, n1, n2 = (s - s % 2 for s in x.shape)
    x = x[:n0, :n1, :n2]
    d = (x[1::2] - x[0::2]) / np.sqrt(2.0)
    d = (d[:, 1::2] - d[:, 0::2]) / np.sqrt(2.0)
    d = (d[:, :, 1::2] - d[:, :, 0::2]) / np.sqrt(2.0)
    blocks = x.reshape(n0 // 2, 2, n1 // 2, 2, n2 // 2, 2)
    informative = blocks.max(axis=(1, 3, 5)) > blocks.min(axis=(1, 3, 5))
    return d, informative


def sigma_wavelet_mad(data: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Standard deviation of additive white Gaussian noise, estimated by the 3D wavelet MAD.

    Parameters
    ----------
    data : (X, Y, Z) array in physical units.
    mask : optional boolean array of the same shape; only 2×2×2 blocks wholly inside it are used.

    Returns
    -------
    float
        σ in the units of ``data``; 0.0 when the volume is constant.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(sigma_wavelet_mad(rng.normal(0, 5.0, (64, 64, 64))), 1)
    5.0
    """
    x = np.asarray(data)
    if x.ndim != 3:
        raise InputError(f"noise estimation needs a 3D array, got shape {x.shape}")
    hhh, informative = haar_hhh(x)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != x.shape:
            raise InputError(f"mask shape {m.shape} differs from data shape {x.shape}")
        n0, n1, n2 = hhh.shape
        m = m[: 2 * n0, : 2 * n1, : 2 * n2].reshape(n0, 2, n1, 2, n2, 2).all(axis=(1, 3, 5))
        informative &= m
    coeffs = hhh[informative]
    if coeffs.size == 0:
        return 0.0
    return float(np.median(np.abs(coeffs)) / _MAD_TO_SIGMA)
