"""Noise power spectrum (NPS): the texture of noise, following AAPM Report 233 (TG-233, Samei et al. 2019, §5.2).

The NPS tells "how much noise at which spatial frequency". Its integral is the noise variance, so two images can have
the same noise SD and very different textures: a denoiser that leaves a waxy, "plastic" look moves the NPS towards
low frequencies (lower peak and mean frequency). Here the 2D axial NPS is computed from square ROIs of noise-only
data (a uniform region, or a difference image) in each axial slice::

    NPS(fx, fy) = Δx Δy / (Nx Ny) · < |DFT(ROI - trend)|² >     (HU² · mm²)

averaged over ROIs and slices, then radially averaged in bins of ``1 / (N Δ)`` (1/mm). :class:`NoisePowerSpectrum` is
the one NPS type of medden: the CT noise estimate (:func:`medden.noise.ct_nps`) builds it with this function too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from medden.errors import InputError
from medden.metrics.inputs import ArrayOrVolume, as_array, as_mask, check_pair, resolve_spacing

DETRENDS = ("mean", "plane", "poly2")


@dataclass(frozen=True)
class NoisePowerSpectrum:
    """A 2D axial noise power spectrum and its radial average: the one NPS type of medden (the CT noise estimate's
    :func:`medden.noise.ct_nps` and the metric :func:`noise_power_spectrum` both return it).

    Attributes
    ----------
    values : ndarray
        The 2D NPS ``[n, n]`` in units² · mm² (HU² · mm² for CT), **centred** (``np.fft.fftshift`` order: zero
        frequency at ``[n//2, n//2]``); ``∑ values · Δf_x · Δf_y`` is the noise variance.
    freqs_x, freqs_y : ndarray
        Its frequencies in cycles/mm (centred), along the two in-plane axes.
    pixel_mm : (float, float)
        In-plane voxel size.
    n_rois : int
        Number of 2D ROIs averaged.

    Derived: :attr:`integral` (= :attr:`variance`, units²), :attr:`noise_std`, the radial average
    (:attr:`frequencies`, :attr:`nps`, bins of ``1 / (n·Δ)`` with Δ the coarser pixel size, up to that axis's Nyquist
    frequency), :attr:`peak_frequency` (DC bin excluded) and :attr:`mean_frequency` (TG-233 ``f_av``), 1/mm.
    """

    values: np.ndarray = field(repr=False)
    freqs_x: np.ndarray = field(repr=False)
    freqs_y: np.ndarray = field(repr=False)
    pixel_mm: tuple[float, float]
    n_rois: int

    @property
    def nps_2d(self) -> np.ndarray:
        return self.values

    @property
    def spacing(self) -> tuple[float, float]:
        return self.pixel_mm

    @property
    def roi_size(self) -> int:
        return int(self.values.shape[0])

    @property
    def integral(self) -> float:
        """∫ NPS df: the noise variance (units², HU² for CT) the spectrum accounts for."""
        return float(self.values.sum() * abs(self.freqs_x[1] - self.freqs_x[0]) * abs(self.freqs_y[1] - self.freqs_y[0]))

    variance = integral

    @property
    def noise_std(self) -> float:
        """Noise standard deviation implied by the NPS integral (units, HU for CT)."""
        return float(np.sqrt(self.integral))

    def _radius(self) -> np.ndarray:
        return np.hypot(*np.meshgrid(self.freqs_x, self.freqs_y, indexing="ij"))

    @cached_property
    def _radial(self) -> tuple[np.ndarray, np.ndarray]:
        d0, d1 = self.pixel_mm
        n = self.roi_size
        df = 1.0 / (n * max(d0, d1))  # radial bin width: the coarser in-plane frequency step
        idx = np.floor(self._radius() / df + 0.5).astype(int)
        nbins = int(idx.max()) + 1
        counts = np.bincount(idx.ravel(), minlength=nbins)
        sums = np.bincount(idx.ravel(), weights=self.values.ravel(), minlength=nbins)
        keep = counts > 0
        freqs = (np.arange(nbins) * df)[keep]
        radial = sums[keep] / counts[keep]
        # keep the bins inside the Nyquist circle of the coarser axis: beyond it the annuli are incomplete
        inside = freqs <= 0.5 / max(d0, d1) + 1e-12
        return freqs[inside], radial[inside]

    def radial(self) -> tuple[np.ndarray, np.ndarray]:
        """The radially averaged NPS: ``(frequencies in 1/mm, NPS in units² · mm²)``."""
        return self._radial

    @property
    def frequencies(self) -> np.ndarray:
        return self._radial[0]

    @property
    def nps(self) -> np.ndarray:
        return self._radial[1]

    @property
    def peak_frequency(self) -> float:
        f, radial = self._radial
        return float(f[1:][np.argmax(radial[1:])]) if len(f) > 1 else 0.0

    @property
    def mean_frequency(self) -> float:
        total = self.values.sum()
        return float((self._radius() * self.values).sum() / total) if total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with the radial curve (the 2D NPS left out)."""
        return {"frequencies_per_mm": self.frequencies.tolist(), "nps": self.nps.tolist(),
                "integral": self.integral, "noise_std": self.noise_std, "peak_frequency_per_mm": self.peak_frequency,
                "mean_frequency_per_mm": self.mean_frequency, "roi_size": self.roi_size, "n_rois": self.n_rois}


def _detrend(roi: np.ndarray, how: str) -> np.ndarray:
    if how == "mean":
        return roi - roi.mean()
    n0, n1 = roi.shape
    if how == "plane":  # first-order fit in pixel units (IEC 62220-1)
        ii, jj = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")
        a = np.stack([np.ones(n0 * n1), ii.ravel(), jj.ravel()], axis=1)
    else:
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
    a = np.arange(0, n0 - size + 1, stride)[:, None]
    b = np.arange(0, n1 - size + 1, stride)[None, :]
    full = sat[a + size, b + size] - sat[a, b + size] - sat[a + size, b] + sat[a, b] == size * size
    return [(int(a[i, 0]), int(b[0, j])) for i, j in zip(*np.nonzero(full))]


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
    detrend : {"mean", "plane", "poly2"}
        Trend removed from each ROI: its mean, a plane (first order), or a 2nd-order polynomial (TG-233, for slowly
        varying backgrounds).
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

    return NoisePowerSpectrum(values=nps2d, freqs_x=np.fft.fftshift(np.fft.fftfreq(chosen, d0)),
                              freqs_y=np.fft.fftshift(np.fft.fftfreq(chosen, d1)), pixel_mm=(float(d0), float(d1)),
                              n_rois=len(corners))
