"""Noise power spectrum (NPS): the texture of noise, following AAPM Report 233 (TG-233, Samei et al. 2019, §5.2).

The NPS tells "how much noise at which spatial frequency". Its integral is the noise variance, so two images can have
the same noise SD and very different textures: a denoiser that leaves a waxy, "plastic" look moves the NPS towards
low frequencies (lower peak and mean frequency). Here the 2D axial NPS is computed from square ROIs of noise-only
data (a uniform region, or a difference image) in each axial slice::

    NPS(fx, fy) = Δx Δy / (Nx Ny) · < |DFT(ROI - trend)|² >     (HU² · mm²)

averaged over ROIs and slices, then radially averaged in bins of ``1 / (N Δ)`` (1/mm).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from medden.errors import InputError
from medden.metrics.inputs import ArrayOrVolume, as_array, as_mask, check_pair, resolve_spacing

DETRENDS = ("mean", "poly2")


@dataclass(frozen=True)
class NoisePowerSpectrum:
    """A radially averaged 2D axial noise power spectrum.

    Attributes
    ----------
    frequencies : ndarray
        Radial bin centres in 1/mm (cycles per mm).
    nps : ndarray
        Radially averaged NPS in units² · mm² (HU² · mm² for CT).
    integral : float
        Integral of the 2D NPS over frequency, in units² (HU²): equals the noise variance.
    peak_frequency : float
        Frequency of the radial NPS maximum (DC bin excluded), in 1/mm.
    mean_frequency : float
        NPS-weighted mean frequency ``f_av`` (TG-233), in 1/mm.
    roi_size : int
        Side of the square ROIs in voxels.
    n_rois : int
        Number of 2D ROIs averaged.
    nps_2d : ndarray
        The 2D NPS (fftshifted, DC at the centre), HU² · mm².
    """

    frequencies: np.ndarray
    nps: np.ndarray
    integral: float
    peak_frequency: float
    mean_frequency: float
    roi_size: int
    n_rois: int
    spacing: tuple[float, float]
    nps_2d: np.ndarray = field(repr=False)

    @property
    def noise_std(self) -> float:
        """Noise standard deviation implied by the NPS integral (units, HU for CT)."""
        return float(np.sqrt(self.integral))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with the radial curve (the 2D NPS left out)."""
        return {"frequencies_per_mm": self.frequencies.tolist(), "nps": self.nps.tolist(),
                "integral": self.integral, "noise_std": self.noise_std, "peak_frequency_per_mm": self.peak_frequency,
                "mean_frequency_per_mm": self.mean_frequency, "roi_size": self.roi_size, "n_rois": self.n_rois}


def _detrend(roi: np.ndarray, how: str) -> np.ndarray:
    if how == "mean":
        return roi - roi.mean()
    n0, n1 = roi.shape
    y, x = np.mgrid[0:n0, 0:n1]
    x, y = x.ravel() / n1 - 0.5, y.ravel() / n0 - 0.5
    a = np.c_[np.ones_like(x), x, y, x * x, x * y, y * y]
    coef, *_ = np.linalg.lstsq(a, roi.ravel(), rcond=None)
    return roi - (a @ coef).reshape(roi.shape)


def _roi_corners(valid: np.ndarray, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners (on a ``stride`` grid) of ``size``² squares lying fully inside the 2D mask ``valid``."""
    n0, n1 = valid.shape
    if n0 < size or n1 < size:
        return []
    # summed-area table: a square is inside when it holds size² valid pixels
    sat = np.pad(valid.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    out = []
    for a in range(0, n0 - size + 1, stride):
        for b in range(0, n1 - size + 1, stride):
            if sat[a + size, b + size] - sat[a, b + size] - sat[a + size, b] + sat[a, b] == size * size:
                out.append((a, b))
    return out


def noise_power_spectrum(noise: ArrayOrVolume, mask: ArrayOrVolume | None = None,
                         spacing: Sequence[float] | None = None, *, reference: ArrayOrVolume | None = None,
                         roi_size: int | None = None, axis: int = 2, detrend: str = "mean",
                         overlap: float = 0.5) -> NoisePowerSpectrum:
    """The 2D axial noise power spectrum of noise-only data, radially averaged (AAPM TG-233).

    Parameters
    ----------
    noise : ndarray or Volume
        A noise-only volume (a uniform phantom region or a difference image). With ``reference``, the noise is
        ``noise - reference`` (e.g. a denoised or noisy image minus the clean reference). For the difference of two
        independent noisy acquisitions divide the returned NPS by 2.
    mask : ndarray or Volume, optional
        Where the noise is stationary (e.g. inside a uniform cylinder). Only square ROIs fully inside the mask are
        used. Default: every slice, tiled.
    spacing : sequence of float, optional
        Voxel size in mm; from a Volume when not given.
    reference : ndarray or Volume, optional
        Subtracted from ``noise`` first.
    roi_size : int, optional
        Side of the square ROIs in voxels. Default: the largest of 64, 48, 32, 24, 16 that yields at least 8 ROIs
        (TG-233 suggests ROIs of about 64 voxels and many of them).
    axis : int
        The slice axis (2: ``k``, axial for usual scans); the NPS is computed in the plane of the other two.
    detrend : {"mean", "poly2"}
        Trend removed from each ROI: its mean, or a 2nd-order polynomial (TG-233, for slowly varying backgrounds).
    overlap : float
        Fractional overlap of neighbouring ROIs in [0, 1) (0.5 by default).

    Returns
    -------
    NoisePowerSpectrum
        Radial NPS (units² · mm²) with its integral (= variance, units²) and peak and mean frequencies (1/mm).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> nps = noise_power_spectrum(rng.normal(0, 10, (64, 64, 8)), spacing=(0.5, 0.5, 1.0), roi_size=32)
    >>> abs(nps.integral / 100 - 1) < 0.05
    True
    """
    if reference is not None:
        ref, data = check_pair(reference, noise, "reference", "noise image")
        data = data - ref
    else:
        data = as_array(noise, "noise image")
    if detrend not in DETRENDS:
        raise InputError(f"detrend must be one of {DETRENDS}, got {detrend!r}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis!r}")
    if not 0 <= overlap < 1:
        raise InputError(f"overlap must be in [0, 1), got {overlap!r}")
    sp = resolve_spacing(noise, reference, spacing=spacing)
    m = as_mask(mask, data.shape, name="NPS mask")
    data = np.moveaxis(data, axis, 0)
    m = np.ones(data.shape, bool) if m is None else np.moveaxis(m, axis, 0)
    d0, d1 = [s for i, s in enumerate(sp) if i != axis]

    sizes = [int(roi_size)] if roi_size is not None else [64, 48, 32, 24, 16]
    if roi_size is not None and roi_size < 4:
        raise InputError(f"roi_size must be at least 4 voxels, got {roi_size}")
    chosen, corners = 0, []
    for size in sizes:
        stride = max(1, int(round(size * (1 - overlap))))
        corners = [(z, a, b) for z in range(data.shape[0]) for a, b in _roi_corners(m[z], size, stride)]
        chosen = size
        if len(corners) >= 8 or roi_size is not None:
            break
    if not corners:
        raise InputError(f"no {chosen}×{chosen} ROI fits inside the NPS mask in any slice; give a larger uniform "
                         f"region or a smaller roi_size")

    acc = np.zeros((chosen, chosen))
    for z, a, b in corners:
        roi = _detrend(data[z, a:a + chosen, b:b + chosen], detrend)
        acc += np.abs(np.fft.fft2(roi)) ** 2
    nps2d = np.fft.fftshift(acc / len(corners) * d0 * d1 / (chosen * chosen))

    f0 = np.fft.fftshift(np.fft.fftfreq(chosen, d0))
    f1 = np.fft.fftshift(np.fft.fftfreq(chosen, d1))
    fr = np.hypot(*np.meshgrid(f0, f1, indexing="ij"))
    df = 1.0 / (chosen * max(d0, d1))  # radial bin width: the coarser in-plane frequency step
    idx = np.floor(fr / df + 0.5).astype(int)
    nbins = int(idx.max()) + 1
    counts = np.bincount(idx.ravel(), minlength=nbins)
    sums = np.bincount(idx.ravel(), weights=nps2d.ravel(), minlength=nbins)
    keep = counts > 0
    freqs = (np.arange(nbins) * df)[keep]
    radial = sums[keep] / counts[keep]
    # keep the bins inside the Nyquist circle of the coarser axis: beyond it the annuli are incomplete
    nyq = 0.5 / max(d0, d1)
    inside = freqs <= nyq + 1e-12
    freqs, radial = freqs[inside], radial[inside]

    integral = float(nps2d.sum() / (chosen * d0 * chosen * d1))
    peak = float(freqs[1:][np.argmax(radial[1:])]) if len(freqs) > 1 else 0.0
    total = nps2d.sum()
    mean_f = float((fr * nps2d).sum() / total) if total > 0 else 0.0
    return NoisePowerSpectrum(frequencies=freqs, nps=radial, integral=integral, peak_frequency=peak,
                              mean_frequency=mean_f, roi_size=chosen, n_rois=len(corners), spacing=(d0, d1),
                              nps_2d=nps2d)
