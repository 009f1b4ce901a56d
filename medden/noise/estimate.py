"""Noise-level estimation from a single volume.

``sigma_wavelet_mad`` is the robust Gaussian estimate of Donoho & Johnstone (1994): the median absolute value of the
finest diagonal (HHH) Haar wavelet coefficients divided by 0.6745. In 3D the HHH band of a smooth image is almost
pure noise, so the estimate is insensitive to anatomy; blocks that are exactly constant (zeroed background, padding)
are left out because they carry no noise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Callable

import numpy as np

from medden import conventions
from medden.errors import InputError

if TYPE_CHECKING:
    from medden.metrics.nps import NoisePowerSpectrum

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


# ---------------------------------------------------------------------------------------------------------------------
# Estimators that know the physics of a modality
# ---------------------------------------------------------------------------------------------------------------------
_RAYLEIGH_MEDIAN = 1.1774100225154747  # sqrt(2 ln 2): median of a Rayleigh(σ=1)
#: mean/SD of Rayleigh noise, √(π/(4 − π)); integer-rounded Rayleigh noise without its zeros only reads higher
_RAYLEIGH_MEAN_TO_SD = 1.9131
#: below this the background is not raw magnitude noise of one level: a noise floor subtracted, or a level that
#: varies by more than about ±35 % across it (a mix of Rayleigh levels reads lower). On the MR volumes of our data
#: the Prisma scans (1.26–1.54), the SCT lumbar (1.46) and the niivue TSE (1.63) fall below it, and their Rayleigh
#: readings were 3–8× under the noise inside the object; PAM50 (1.85) and the TCIA T1 (1.86) pass
RAYLEIGH_MIN_MEAN_TO_SD = 1.75


def _corner_blocks(x: np.ndarray, fraction: float = 0.12) -> np.ndarray:
    """The voxels of the eight corner blocks (``fraction`` of each axis), where a head or body scan has background."""
    n = [max(2, int(round(s * fraction))) for s in x.shape]
    parts = [x[sl0, sl1, sl2] for sl0 in (slice(0, n[0]), slice(-n[0], None))
             for sl1 in (slice(0, n[1]), slice(-n[1], None)) for sl2 in (slice(0, n[2]), slice(-n[2], None))]
    return np.concatenate([p.ravel() for p in parts])


def background_is_zeroed(data: np.ndarray) -> bool:
    """True when most background (corner) voxels are exactly 0, as after skull stripping or masking."""
    corners = _corner_blocks(np.asarray(data))
    return bool(np.mean(corners == 0) > 0.5)


def sigma_rician_background(data: np.ndarray, mask: np.ndarray | None = None) -> float:
    """σ of magnitude-MR noise from the signal-free background, where the Rician distribution becomes Rayleigh.

    The background magnitude is Rayleigh with median ``σ·√(2 ln 2)``, so ``σ = median / 1.1774`` (the Rician
    correction for zero signal: the magnitude's mean or median overstates nothing but is not σ itself; Gudbjartsson &
    Patz 1995, Sijbers et al. 2007). Background is ``mask`` if given, else the eight 12 % corner blocks; exact zeros
    (masked voxels) and voxels above 5 σ (anatomy or ghosts reaching the corners) are left out, iterating twice.

    Returns
    -------
    float
        σ in data units (per real/imaginary channel).
    """
    x = np.asarray(data, dtype=np.float32)
    if x.ndim != 3:
        raise InputError(f"noise estimation needs a 3D array, got shape {x.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != x.shape:
            raise InputError(f"mask shape {m.shape} differs from data shape {x.shape}")
        values = x[m]
    else:
        values = _corner_blocks(x)
        nonzero = values[values > 0]
        # Corners that hold tissue (a crop with no air around the object) are not Rayleigh noise. Tissue is told
        # apart by its level (a Rayleigh median of 1.18 σ stays below a quarter of the 99th percentile up to ~20 %
        # noise) or by its mean/std ratio (√(π/(4−π)) ≈ 1.91 for Rayleigh noise, far higher for tissue).
        bright = float(np.percentile(x[x > 0], 99)) if np.any(x > 0) else 0.0
        if nonzero.size >= 100 and (float(np.median(nonzero)) > 0.25 * bright
                                    or float(nonzero.mean()) > 3.0 * float(nonzero.std())):
            raise InputError("the corners of the volume hold tissue, not background air; cannot use the Rician "
                             "background estimate")
    values = values[values > 0]
    if values.size < 100:
        raise InputError("too few non-zero background voxels to estimate Rician noise (is the background masked?)")
    sigma = float(np.median(values)) / _RAYLEIGH_MEDIAN
    for _ in range(2):
        kept = values[values <= 5 * sigma]
        if kept.size < 100:
            break
        sigma = float(np.median(kept)) / _RAYLEIGH_MEDIAN
    kept = values[values <= 5 * sigma]
    ratio = float(kept.mean()) / max(float(kept.std()), 1e-12)
    if ratio < RAYLEIGH_MIN_MEAN_TO_SD:
        raise InputError(f"the background is not Rayleigh noise (mean/SD {ratio:.2f}, {_RAYLEIGH_MEAN_TO_SD:.2f} "
                         "expected): the scanner filtered or suppressed it, so it does not measure the image's noise")
    return sigma


def mr_foreground(data: np.ndarray) -> np.ndarray:
    """Voxels whose 3×3×3 mean is above 10 % of the 99th percentile of the non-zero voxels: the object, without the
    background (where a scanner may have filtered, clipped or zeroed the noise)."""
    from scipy import ndimage as ndi

    x = np.asarray(data, dtype=np.float32)
    positive = x[x > 0]
    if positive.size == 0:
        return np.zeros(x.shape, bool)
    return ndi.uniform_filter(x, 3) > 0.1 * float(np.percentile(positive, 99))


def sigma_mr_foreground(data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> float:
    """σ of MR noise measured inside the object: the finest-wavelet MAD (:func:`sigma_wavelet_mad`) over the flatter
    half of the object (:func:`mr_foreground` eroded by 2 voxels; voxels below the median gradient of the volume
    smoothed at 1.5 mm), where fine anatomy adds least. Within −10 % / +8 % of the true σ for Rician noise of 1–9 %
    on the Shepp–Logan head and the MNI152 template (the whole object read up to +20 %); on a Siemens Prisma
    T1 (1 × 1 × 4.8 mm) the whole object reads 0.85 % of its 99.9th percentile, its flatter half 0.51 %."""
    from scipy import ndimage as ndi

    x = np.asarray(data, dtype=np.float32)
    whole = mr_foreground(x)
    inside = ndi.binary_erosion(whole, iterations=2)
    if inside.sum() < 512:  # a thin or tiny object: take all of it
        inside = whole if whole.sum() >= 64 else x > 0
    smooth = ndi.gaussian_filter(x, [1.5 / s for s in spacing])
    gradient = np.sqrt(sum(np.square(g / s) for g, s in zip(np.gradient(smooth), spacing)))
    flat = inside & (gradient < np.percentile(gradient[inside], 50)) if inside.any() else inside
    return sigma_wavelet_mad(x, mask=flat if flat.sum() >= 64 else inside)


def _axial_window(spacing: tuple[float, float, float] | None, window_mm: float) -> tuple[int, int, int]:
    sp = spacing or (1.0, 1.0, 1.0)
    return tuple(max(5, int(round(window_mm / s)) // 2 * 2 + 1) for s in sp[:2]) + (1,)  # type: ignore[return-value]


def _mode(values: np.ndarray, upper: float, bins: int = 200) -> float:
    """Mode of ``values`` in ``[0, upper]`` from a lightly smoothed histogram (robust to a tail of edge windows)."""
    from scipy import ndimage

    hist, edges = np.histogram(values, bins=bins, range=(0.0, upper))
    hist = ndimage.gaussian_filter1d(hist.astype(np.float64), 2.0)
    k = int(np.argmax(hist))
    return float(0.5 * (edges[k] + edges[k + 1]))


def _upsample_linear(grid: np.ndarray, shape: tuple[int, ...], stride: int) -> np.ndarray:
    """``grid`` (samples at every ``stride``-th voxel of the first two axes) linearly interpolated to ``shape``."""
    out = grid
    for axis in (0, 1):
        n, g = shape[axis], out.shape[axis]
        c = np.arange(n, dtype=np.float32) / stride
        i0 = np.minimum(c.astype(np.intp), g - 1)
        i1 = np.minimum(i0 + 1, g - 1)
        w = (c - i0).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        lo, hi = np.take(out, i0, axis=axis), np.take(out, i1, axis=axis)
        hi -= lo
        hi *= w
        lo += hi
        out = lo
    return out.astype(np.float32, copy=False)


def ct_noise_map(data: np.ndarray, spacing: tuple[float, float, float] | None = None, window_mm: float = 10.0,
                 hu_range: tuple[float, float] = (-100.0, 200.0), mask: np.ndarray | None = None
                 ) -> tuple[np.ndarray, float]:
    """Local noise standard deviation of a CT scan, measured in homogeneous soft tissue and spread across the body.

    Following the global-noise method of Christianson et al. (Radiology 2015): the standard deviation in a sliding
    in-plane window (``window_mm`` wide, one slice thick) is taken only where the window's mean and the voxel lie in
    ``hu_range`` (soft tissue, water) and holds no edge (the means of the window's halves, one window apart, agree
    within three standard errors; the local value stays below 2.5 × the median). The global level is the mode of
    those local values (windows that straddle an edge only add a tail above it); the map is their normalised Gaussian
    smoothing (≈ 3 windows wide), so regions without soft tissue (air, bone, lung) take the level of the nearest
    tissue.

    Neighbouring windows share most of their voxels, so the windows are centred on every ``s``-th voxel in-plane
    (``s`` ≈ a quarter window) rather than on every voxel, the smoothing runs on that grid and the map is
    interpolated back (linearly): the map is ≈ 3 windows smooth, so this changes it by far less than its own
    uncertainty, and costs ``1/s²`` of the work (a 512×512×300 CT: 47 s → a few seconds).

    Parameters
    ----------
    data : ``(X, Y, Z)`` in HU, axial slices along the last axis.
    spacing : voxel size in mm (default 1 mm).
    window_mm : side of the square in-plane window.
    hu_range : HU limits of the homogeneous tissue used.
    mask : optional boolean mask restricting the measurement (e.g. a water ROI).

    Returns
    -------
    (noise_map, sigma)
        ``noise_map``: float32 array of the data's shape, in HU; ``sigma``: the global level in HU.
    """
    from scipy import ndimage

    x = np.asarray(data, dtype=np.float32)
    if x.ndim != 3:
        raise InputError(f"a CT noise map needs a 3D array, got shape {x.shape}")
    size = _axial_window(spacing, window_mm)
    stride = max(1, min(size[:2]) // 4)
    # window sums at the grid centres: filter along axis 1 at every voxel, keep every stride-th column, then axis 0
    mean = ndimage.uniform_filter1d(x, size[1], axis=1, mode="reflect")[:, ::stride]
    sq = ndimage.uniform_filter1d(x * x, size[1], axis=1, mode="reflect")[:, ::stride]
    mean = ndimage.uniform_filter1d(mean, size[0], axis=0, mode="reflect")[::stride]
    sq = ndimage.uniform_filter1d(sq, size[0], axis=0, mode="reflect")[::stride]
    centre = x[::stride, ::stride]
    n = size[0] * size[1]
    local = np.sqrt(np.clip(sq - mean * mean, 0, None) * (n / (n - 1)))
    del sq
    lo, hi = hu_range
    use = (mean >= lo) & (mean <= hi) & (centre >= lo - 300) & (centre <= hi + 300) & (local > 0)
    # a window straddling an edge shows a step between the means of its two halves; pure noise keeps that step
    # within ~3 standard errors (the mean of n voxels varies by local/√n)
    for axis, h in ((0, size[0] // 2), (1, size[1] // 2)):
        shift = max(1, int(round(h / stride)))
        step = np.abs(np.roll(mean, -shift, axis=axis) - np.roll(mean, shift, axis=axis))
        use &= step <= 3.0 * np.sqrt(2.0 / n) * local
    del mean
    if mask is not None:
        use &= np.asarray(mask, dtype=bool)[::stride, ::stride]
    if use.sum() * stride * stride < 10 * n:
        raise InputError(f"too little homogeneous tissue between {lo:g} and {hi:g} HU to measure CT noise "
                         "(is the volume in HU?)")
    sigma = float(np.median(local[use]))
    use &= local <= 2.5 * sigma
    sigma = _mode(local[use], upper=2.5 * sigma)
    smooth = [3 * s / 2.355 / stride for s in size[:2]] + [1.0]
    weight = ndimage.gaussian_filter(use.astype(np.float32), smooth)
    level = ndimage.gaussian_filter(np.where(use, local, 0).astype(np.float32), smooth)
    grid = np.where(weight > 0.05, level / np.maximum(weight, 1e-6), sigma).astype(np.float32)
    return _upsample_linear(grid, x.shape, stride), sigma


def poisson_gaussian_params(data: np.ndarray, mask: np.ndarray | None = None, bins: int = 24) -> tuple[float, float]:
    """Parameters ``(a, b)`` of signal-dependent noise with variance ``a·mean + b`` (Poisson–Gaussian).

    Each 2×2×2 block gives a local mean (its average) and a noise sample (its finest Haar HHH coefficient, blind to
    any locally linear signal). Blocks are grouped in ``bins`` quantile bins of the mean; each bin's variance is the
    squared robust MAD estimate, and a weighted least-squares line through (mean, variance) gives ``a`` and ``b``
    (in the spirit of Foi et al., IEEE TIP 2008). For :func:`medden.noise.poisson_gaussian` noise,
    ``a = 1 / counts_per_unit`` and ``b = sigma²``.

    Returns
    -------
    (a, b)
        ``a`` in data units (variance per unit mean), ``b`` in data units squared (may be slightly negative when the
        electronic noise is negligible).
    """
    x = np.asarray(data, dtype=np.float32)
    if x.ndim != 3:
        raise InputError(f"noise estimation needs a 3D array, got shape {x.shape}")
    hhh, informative = haar_hhh(x)
    n0, n1, n2 = hhh.shape
    means = x[: 2 * n0, : 2 * n1, : 2 * n2].reshape(n0, 2, n1, 2, n2, 2).mean(axis=(1, 3, 5))
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != x.shape:
            raise InputError(f"mask shape {m.shape} differs from data shape {x.shape}")
        informative &= m[: 2 * n0, : 2 * n1, : 2 * n2].reshape(n0, 2, n1, 2, n2, 2).all(axis=(1, 3, 5))
    mu, d = means[informative], hhh[informative]
    if mu.size < 50 * bins:
        raise InputError("too few informative voxels to fit a variance-against-mean line")
    edges = np.unique(np.quantile(mu, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, mu, side="right") - 1, 0, len(edges) - 2)
    level, var, weight = [], [], []
    for k in range(len(edges) - 1):
        sel = idx == k
        if sel.sum() < 50:
            continue
        level.append(float(np.median(mu[sel])))
        var.append(float(np.median(np.abs(d[sel])) / _MAD_TO_SIGMA) ** 2)
        weight.append(float(sel.sum()))
    if len(level) < 2 or np.ptp(level) == 0:
        raise InputError("the data hold a single intensity level: cannot separate signal-dependent noise")
    w = np.sqrt(np.asarray(weight)) / np.maximum(np.asarray(var), 1e-12)  # weight ~ 1/sd(var estimate)
    design = np.stack([np.asarray(level), np.ones(len(level))], axis=1)
    a, b = np.linalg.lstsq(design * w[:, None], np.asarray(var) * w, rcond=None)[0]
    return float(a), float(b)


def ct_nps(data: np.ndarray, spacing: tuple[float, float, float] | None = None, roi_size: int = 64,
           mask: np.ndarray | None = None, reference: np.ndarray | None = None,
           hu_range: tuple[float, float] = (-100.0, 200.0)) -> NoisePowerSpectrum:
    """Axial noise power spectrum of a CT scan from square ROIs in homogeneous regions (IEC 62220-1 style).

    ``NPS(f) = Δx·Δy / (n²) · ⟨|DFT₂(ROI − fit)|²⟩`` over ROIs of ``roi_size``² pixels, each with its mean plane
    (first-order fit) removed. ROIs tile every axial slice without overlap and are kept where all their pixels lie in
    ``mask`` (default: ``hu_range``, after a 5-pixel erosion so edges are avoided). With ``reference`` (the noise-free
    or full-dose volume) the difference ``data − reference`` is analysed instead, which removes anatomy entirely.

    Returns
    -------
    NoisePowerSpectrum
        medden's one NPS type (:class:`medden.metrics.nps.NoisePowerSpectrum`), built by
        :func:`medden.metrics.nps.noise_power_spectrum` with non-overlapping ROIs and a plane removed from each.
    """
    from scipy import ndimage

    from medden.metrics.nps import noise_power_spectrum

    x = np.asarray(data, dtype=np.float32)
    if x.ndim != 3:
        raise InputError(f"an NPS needs a 3D array, got shape {x.shape}")
    sp = spacing or (1.0, 1.0, 1.0)
    if mask is None:
        lo, hi = hu_range
        smooth = ndimage.uniform_filter(x, size=(5, 5, 1))
        # an 11×11 erosion in each slice (a box minimum, separable: ~10× faster than binary_erosion)
        inside = ((smooth >= lo) & (smooth <= hi)).view(np.uint8)
        mask = ndimage.minimum_filter(inside, size=(11, 11, 1), mode="constant", cval=0).astype(bool)
    else:
        mask = np.asarray(mask, dtype=bool)
    noise = x - np.asarray(reference, dtype=np.float32) if reference is not None else x
    nps = None
    for size in (roi_size, roi_size // 2):
        try:
            nps = noise_power_spectrum(noise, mask, sp, roi_size=size, overlap=0.0, detrend="plane")
        except InputError:  # no ROI of this size fits
            nps = None
        if (nps is not None and nps.n_rois >= 4) or size < 32:
            break
    if nps is None:
        raise InputError(f"no {roi_size // 2}-pixel square of homogeneous tissue to measure the noise power spectrum")
    return nps


def nps_to_sigma_psd(nps: NoisePowerSpectrum, shape: tuple[int, ...], axial_axis: int = 2) -> np.ndarray:
    """The NPS as the ``sigma_psd`` argument of ``bm3d.bm3d`` (2D ``shape``) or ``bm4d.bm4d`` (3D ``shape``).

    Both packages take the noise PSD as an array of the image's shape in **unshifted** FFT order (index 0 = zero
    frequency), scaled as ``E|DFT(noise)|²`` so that white noise of σ reads ``σ² · image.size``. The NPS is
    interpolated (bilinearly, centred) to the image's frequencies and scaled by ``M·N / (Δx·Δy)``; in 3D it is
    repeated along ``axial_axis`` (noise taken as uncorrelated between slices) and multiplied by the slice count.
    The image must have the NPS's pixel size.
    """
    from scipy.interpolate import RegularGridInterpolator

    if len(shape) not in (2, 3):
        raise InputError(f"sigma_psd is for a 2D or 3D image, got shape {shape}")
    if len(shape) == 3:
        plane = tuple(s for a, s in enumerate(shape) if a != axial_axis)
    else:
        plane = tuple(shape)
    dx, dy = nps.pixel_mm
    fx, fy = np.fft.fftfreq(plane[0], dx), np.fft.fftfreq(plane[1], dy)
    interp = RegularGridInterpolator((nps.freqs_x, nps.freqs_y), nps.values, bounds_error=False, fill_value=None)
    gx, gy = np.meshgrid(fx, fy, indexing="ij")
    psd = np.clip(interp(np.stack([gx, gy], -1)), 0, None) * plane[0] * plane[1] / (dx * dy)
    if len(shape) == 2:
        return psd.astype(np.float64)
    psd3 = np.expand_dims(psd, axial_axis) * shape[axial_axis]
    return np.broadcast_to(psd3, shape).astype(np.float64)


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise of a volume, as given or as :func:`estimate_noise` found it: what every denoiser receives.

    ``sigma``: a global standard deviation in the volume's units; ``method``: how it was obtained (``"given"``, or
    the estimator used); ``noise_map``: an optional array of the volume's shape (local σ, e.g. CT); ``nps``: an
    optional axial noise power spectrum (CT), whose :meth:`sigma_psd` gives bm3d/bm4d their ``sigma_psd``;
    ``axial_axis``: the voxel axis across the spectrum's planes.
    """

    sigma: float
    method: str
    noise_map: np.ndarray | None = None
    #: how to measure the spectrum, run on first use of :attr:`nps` (or None: no spectrum)
    nps_source: Callable[[], NoisePowerSpectrum | None] | None = field(default=None, repr=False, compare=False)
    axial_axis: int = 2

    @cached_property
    def nps(self) -> NoisePowerSpectrum | None:
        """The axial noise power spectrum, measured on first use: only bm3d/bm4d use it, and it costs ~7 s on a
        512×512×300 CT that a deep model would otherwise spend waiting."""
        return self.nps_source() if self.nps_source is not None else None

    @classmethod
    def given(cls, sigma) -> "NoiseEstimate":
        """A level given by the user: a number ≥ 0, or a noise map (array of local σ; its median is the level)."""
        from medden.errors import ParameterError

        if np.ndim(sigma):
            noise_map = np.asarray(sigma, dtype=np.float32)
            if noise_map.ndim != 3 or not np.isfinite(noise_map).all() or (noise_map < 0).any():
                raise ParameterError("a noise map must be a 3D array of finite values ≥ 0")
            return cls(float(np.median(noise_map)), "given", noise_map=noise_map)
        try:
            value = float(sigma)
        except (TypeError, ValueError):
            raise ParameterError(f"sigma must be 'auto' or a number, got {sigma!r}") from None
        if not np.isfinite(value) or value < 0:
            raise ParameterError(f"sigma must be a finite number ≥ 0, got {sigma!r}")
        return cls(value, "given")

    @property
    def estimated(self) -> bool:
        return self.method != "given"

    @property
    def source(self) -> str:
        """``"given"`` or ``"estimated (METHOD)"``: how the level was obtained, for records and messages."""
        return f"estimated ({self.method})" if self.estimated else "given"

    @property
    def level(self):
        """The noise map when there is one, else ``sigma``."""
        return self.noise_map if self.noise_map is not None else self.sigma

    def white(self) -> "NoiseEstimate":
        """The same level without a spectrum (white noise)."""
        return dataclasses.replace(self, nps_source=None)

    def sigma_psd(self, shape: tuple[int, ...]) -> np.ndarray | float:
        """``sigma_psd`` for bm3d (2D ``shape``) / bm4d (3D ``shape``): the NPS when known, else ``sigma``.

        The NPS is rescaled so its total variance equals ``sigma²`` (the ROI-based spectrum carries the texture, the
        tissue-wide estimate the level)."""
        if self.nps is None:
            return self.sigma
        psd = nps_to_sigma_psd(self.nps, shape, self.axial_axis)
        return psd * (self.sigma ** 2 / max(self.nps.variance, 1e-12))


def as_noise(sigma) -> NoiseEstimate:
    """Whatever form a noise level arrives in — a :class:`NoiseEstimate`, a number, a noise map — as a
    :class:`NoiseEstimate` (numbers and maps are ``"given"``)."""
    return sigma if isinstance(sigma, NoiseEstimate) else NoiseEstimate.given(sigma)


def estimate_noise(volume) -> NoiseEstimate:
    """The noise level of ``volume`` by the estimator that suits its modality.

    * MR: :func:`sigma_rician_background` when the background holds raw (Rayleigh) noise, else
      :func:`sigma_mr_foreground`, inside the object (a zeroed, filtered or suppressed background does not carry the
      image's noise).
    * CT: :func:`ct_noise_map` (local standard deviation in homogeneous soft tissue; FBP noise is correlated, so the
      finest wavelet band would underestimate it) and, where room allows, :func:`ct_nps` for bm3d/bm4d.
    * Others: :func:`sigma_wavelet_mad`.

    Parameters
    ----------
    volume : a :class:`medden.volume.Volume`.
    """
    data = volume.data
    if volume.modality == "MR":
        if not background_is_zeroed(data):
            try:
                return NoiseEstimate(sigma_rician_background(data), "rician-background")
            except InputError:  # no air around the object (a crop), or a background that is not raw noise
                pass
        # a zeroed, filtered or suppressed background carries none of the image's noise: measure it inside
        return NoiseEstimate(sigma_mr_foreground(data, tuple(volume.spacing)), "wavelet-mad-foreground")
    if volume.modality == "CT":
        axis = conventions.axial_axis(volume.direction)
        axial = np.moveaxis(data, axis, 2)
        spacing = tuple(volume.spacing[a] for a in [a for a in range(3) if a != axis] + [axis])
        try:
            noise_map, sigma = ct_noise_map(axial, spacing)
        except InputError:  # no soft tissue in range: fall back to the generic estimate
            return NoiseEstimate(sigma_wavelet_mad(data), "wavelet-mad")

        def spectrum() -> NoisePowerSpectrum | None:
            try:
                return ct_nps(axial, spacing, roi_size=32)
            except InputError:
                return None

        return NoiseEstimate(sigma, "ct-local-std", noise_map=np.moveaxis(noise_map, 2, axis), nps_source=spectrum,
                             axial_axis=axis)
    return NoiseEstimate(sigma_wavelet_mad(data), "wavelet-mad")
