"""Full-reference metrics: PSNR, 3D SSIM, RMSE and MAE, each with an optional mask.

All take ``(reference, estimate, mask=None, spacing=None)`` as NumPy arrays or :class:`~medden.volume.Volume`\\ s of the
same shape (and, for two volumes, the same geometry) and return a float in the images' units (HU for CT).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from medden.errors import InputError
from medden.metrics.inputs import ArrayOrVolume, as_mask, check_pair, resolve_spacing

#: Truncation of the Gaussian SSIM window in standard deviations (scikit-image's choice: 1.5 σ → 11 voxels).
SSIM_TRUNCATE = 3.5


def _select(ref: np.ndarray, est: np.ndarray, mask: ArrayOrVolume | None) -> tuple[np.ndarray, np.ndarray]:
    m = as_mask(mask, ref.shape)
    return (ref, est) if m is None else (ref[m], est[m])


def rmse(reference: ArrayOrVolume, estimate: ArrayOrVolume, mask: ArrayOrVolume | None = None,
         spacing: Sequence[float] | None = None) -> float:
    """Root-mean-square error, in the images' units (HU for CT), over ``mask`` (non-zero voxels) or all voxels.

    Examples
    --------
    >>> import numpy as np
    >>> rmse(np.zeros((2, 2, 2)), np.full((2, 2, 2), 3.0))
    3.0
    """
    r, e = _select(*check_pair(reference, estimate), mask)
    return float(np.sqrt(np.mean((e - r) ** 2)))


def mae(reference: ArrayOrVolume, estimate: ArrayOrVolume, mask: ArrayOrVolume | None = None,
        spacing: Sequence[float] | None = None) -> float:
    """Mean absolute error, in the images' units (HU for CT), over ``mask`` or all voxels."""
    r, e = _select(*check_pair(reference, estimate), mask)
    return float(np.mean(np.abs(e - r)))


def reference_range(reference: ArrayOrVolume, mask: ArrayOrVolume | None = None) -> float:
    """The data range ``max - min`` of the reference (over ``mask``), the default peak for PSNR and SSIM."""
    ref, _ = check_pair(reference, reference)
    m = as_mask(mask, ref.shape)
    vals = ref if m is None else ref[m]
    rng = float(vals.max() - vals.min())
    if rng <= 0:
        raise InputError("the reference is constant: give data_range explicitly")
    return rng


def psnr(reference: ArrayOrVolume, estimate: ArrayOrVolume, mask: ArrayOrVolume | None = None,
         spacing: Sequence[float] | None = None, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range² / MSE)``.

    Parameters
    ----------
    reference, estimate : ndarray or Volume
        Same shape; values in physical units (HU for CT).
    mask : ndarray or Volume, optional
        Voxels to use (non-zero); all voxels when None.
    spacing : sequence of float, optional
        Unused (PSNR is voxel-wise); accepted for a uniform metric signature.
    data_range : float, optional
        The peak in the images' units, e.g. 4095 HU for 12-bit CT or 2000 HU for a [-1000, 1000] window. State it:
        PSNR values are comparable only at the same ``data_range``. Default: ``max - min`` of the reference (over the
        mask), as :func:`skimage.metrics.peak_signal_noise_ratio` does for float images.

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the images are identical.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.zeros((4, 4, 4)); est = ref + 1.0
    >>> round(psnr(ref, est, data_range=100.0), 6)
    40.0
    """
    ref, est = check_pair(reference, estimate)
    peak = float(data_range) if data_range is not None else reference_range(ref, mask)
    if not peak > 0:
        raise InputError(f"data_range must be positive, got {data_range!r}")
    r, e = _select(ref, est, mask)
    mse = float(np.mean((e - r) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def ssim_3d(reference: ArrayOrVolume, estimate: ArrayOrVolume, mask: ArrayOrVolume | None = None,
            spacing: Sequence[float] | None = None, *, data_range: float | None = None,
            window_sigma: float = 1.5, window_sigma_mm: float | None = None, k1: float = 0.01, k2: float = 0.03,
            return_map: bool = False) -> float | tuple[float, np.ndarray]:
    """Structural similarity (Wang et al. 2004) in 3D with a Gaussian window that has the same size in mm on every
    axis.

    The local means, variances and covariance are Gaussian-weighted (population statistics, as scikit-image with
    ``gaussian_weights=True, use_sample_covariance=False`` and MONAI's ``SSIMMetric``). The SSIM map is averaged over
    the voxels whose full window lies inside the volume, intersected with ``mask``.

    Parameters
    ----------
    reference, estimate : ndarray or Volume
        Same shape; values in physical units.
    mask : ndarray or Volume, optional
        Voxels over which the SSIM map is averaged.
    spacing : sequence of float, optional
        Voxel size in mm (i, j, k); taken from a Volume when not given, else 1 mm.
    data_range : float, optional
        Dynamic range in the images' units; default ``max - min`` of the reference.
    window_sigma : float
        Window standard deviation in voxels **of the finest axis** (1.5, the standard, by default). Along a coarser
        axis the window is proportionally narrower in voxels, so it covers the same millimetres; for isotropic
        voxels this is the standard SSIM of scikit-image and MONAI.
    window_sigma_mm : float, optional
        Window standard deviation in mm; overrides ``window_sigma``.
    k1, k2 : float
        Stability constants (0.01, 0.03).
    return_map : bool
        Also return the full SSIM map.

    Returns
    -------
    float or (float, ndarray)
        Mean SSIM in [-1, 1]; 1 for identical images.
    """
    ref, est = check_pair(reference, estimate)
    sp = np.asarray(resolve_spacing(reference, estimate, spacing=spacing))
    peak = float(data_range) if data_range is not None else reference_range(ref)
    if not peak > 0:
        raise InputError(f"data_range must be positive, got {data_range!r}")
    sigma_mm = float(window_sigma_mm) if window_sigma_mm is not None else float(window_sigma) * sp.min()
    if not sigma_mm > 0:
        raise InputError("the SSIM window width must be positive")
    sigmas = sigma_mm / sp
    radii = [int(SSIM_TRUNCATE * s + 0.5) for s in sigmas]

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigmas, truncate=SSIM_TRUNCATE, mode="reflect")

    mu_r, mu_e = blur(ref), blur(est)
    var_r = blur(ref * ref) - mu_r**2
    var_e = blur(est * est) - mu_e**2
    cov = blur(ref * est) - mu_r * mu_e
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    smap = ((2 * mu_r * mu_e + c1) * (2 * cov + c2)) / ((mu_r**2 + mu_e**2 + c1) * (var_r + var_e + c2))

    valid = np.zeros(ref.shape, bool)
    inner = tuple(slice(r, n - r) for r, n in zip(radii, ref.shape))
    valid[inner] = True
    if not valid.any():
        valid[:] = True  # volume thinner than the window: average the whole (reflect-padded) map
    m = as_mask(mask, ref.shape)
    if m is not None:
        valid = (valid & m) if (valid & m).any() else m
    value = float(smap[valid].mean())
    return (value, smap) if return_map else value
