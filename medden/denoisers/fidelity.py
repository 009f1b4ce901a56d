"""Local-mean fidelity: give a denoised volume back the local means that the noisy input measured.

A denoiser that shrinks contrast leaves a systematic error at low spatial frequencies — a shift of the mean in a
tissue region (HU bias on CT, a loss of contrast on MR). The noise itself has known local means, so the input's
low-pass part is an unbiased measurement of the truth's: replacing the output's low-pass part by the input's removes
the bias at scales above ``scale_mm`` and costs only the little noise left after a wide low-pass filter.

* ``domain="linear"`` (CT, Gaussian and Poisson noise, whose mean is the signal)::

      out = d + G * (y − d)

* ``domain="power"`` (MR magnitude, Rician / noncentral-χ with ``coils`` receive channels, whose second moment is
  ``E[y²] = A² + 2·coils·σ²``; Gudbjartsson & Patz, MRM 1995)::

      out = sqrt(max(d² + G * (y² − 2·coils·σ² − d²), 0))

``G`` is a Gaussian of standard deviation ``scale_mm`` in millimetres (so anisotropic voxels are filtered alike in
space), ``y`` the noisy input and ``d`` the denoiser's output, both in the data's units.
"""
from __future__ import annotations

import numpy as np

from medden.errors import ParameterError

DOMAINS = ("linear", "power")


def local_mean_fidelity(denoised: np.ndarray, noisy: np.ndarray, sigma, *, scale_mm: float,
                        spacing=(1.0, 1.0, 1.0), domain: str = "linear", coils: int = 1) -> np.ndarray:
    """``denoised`` with its local means (Gaussian, ``scale_mm`` mm) replaced by those of ``noisy``.

    Parameters
    ----------
    denoised, noisy : 3D arrays of one shape, in the data's units.
    sigma : noise standard deviation (data units; a float or a map of the data's shape); used by ``power`` only.
    scale_mm : standard deviation of the Gaussian low-pass filter in mm; 0 returns ``denoised`` unchanged.
    spacing : voxel size in mm along each axis.
    domain : ``"linear"`` (noise with zero mean: CT, Gaussian, Poisson) or ``"power"`` (MR magnitude).
    coils : receive channels of the noncentral-χ model (``power`` only).

    Returns
    -------
    float32 array of the data's shape (a new array; the inputs are not modified).

    Examples
    --------
    >>> import numpy as np
    >>> y = np.random.default_rng(0).normal(100.0, 10.0, (32, 32, 32)).astype("float32")
    >>> out = local_mean_fidelity(np.full_like(y, 90.0), y, 10.0, scale_mm=4.0)
    >>> bool(abs(out.mean() - y.mean()) < 0.1)
    True
    """
    from scipy.ndimage import gaussian_filter

    if domain not in DOMAINS:
        raise ParameterError(f"unknown fidelity domain {domain!r} (use {' or '.join(DOMAINS)})")
    if not np.isfinite(scale_mm) or scale_mm < 0:
        raise ParameterError(f"fidelity scale must be a number of mm ≥ 0, got {scale_mm!r}")
    d = np.asarray(denoised, dtype=np.float32)
    if scale_mm == 0:
        return d.copy()
    y = np.asarray(noisy, dtype=np.float32)
    if y.shape != d.shape:
        raise ParameterError(f"noisy {y.shape} and denoised {d.shape} volumes differ in shape")
    width = [scale_mm / float(s) for s in spacing]
    if domain == "linear":
        gap = y - d
        gaussian_filter(gap, width, output=gap, mode="nearest", truncate=3.0)
        gap += d
        return gap
    s2 = np.square(np.asarray(sigma, dtype=np.float32))
    power = np.square(d)
    gap = np.square(y) - 2.0 * coils * s2 - power
    gaussian_filter(gap, width, output=gap, mode="nearest", truncate=3.0)
    gap += power
    np.maximum(gap, 0.0, out=gap)
    return np.sqrt(gap, out=gap)
