"""Sharpness: edge spread → line spread → modulation transfer function from a straight edge.

Implements the slanted-edge method of ISO 12233 (e-SFR) in each axial slice of an edge ROI: the edge position is
found row by row (centroid of the derivative), a line (a plane across slices) is fitted, every voxel is projected onto
the edge normal, and the values are binned at a quarter voxel into an oversampled edge spread function (ESF). Its
derivative is the line spread function (LSF); the modulus of the LSF's Fourier transform, normalised at zero
frequency and corrected for the finite-difference derivative, is the MTF. A slight slant (2–10°) of the edge against
the voxel grid gives the sub-voxel sampling; an edge aligned with the grid is measured at one-voxel bins.

For a nonlinear denoiser the MTF depends on the edge contrast and on the noise: report the contrast with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from medden.errors import InputError
from medden.metrics.inputs import ArrayOrVolume, as_array, resolve_spacing


@dataclass(frozen=True)
class EdgeMTF:
    """Result of an edge MTF measurement.

    Attributes
    ----------
    frequencies : ndarray
        Spatial frequency in 1/mm (cycles per mm).
    mtf : ndarray
        MTF, 1 at zero frequency.
    distance, esf : ndarray
        Oversampled edge spread function: signed distance to the edge (mm) and mean value (image units).
    lsf : ndarray
        Line spread function (derivative of the ESF, units/mm), at ``distance``.
    mtf50, mtf10 : float
        Frequencies (1/mm) where the MTF falls to 50 % and 10 % (``nan`` if it never does below the Nyquist frequency).
    edge_angle_deg : float
        Angle of the edge to the voxel grid, degrees.
    contrast : float
        Edge contrast (plateau difference) in image units (HU for CT).
    """

    frequencies: np.ndarray
    mtf: np.ndarray
    distance: np.ndarray = field(repr=False)
    esf: np.ndarray = field(repr=False)
    lsf: np.ndarray = field(repr=False)
    mtf50: float = math.nan
    mtf10: float = math.nan
    edge_angle_deg: float = 0.0
    contrast: float = 0.0
    bin_width_mm: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with the MTF curve."""
        return {"frequencies_per_mm": self.frequencies.tolist(), "mtf": self.mtf.tolist(),
                "mtf50_per_mm": _num(self.mtf50), "mtf10_per_mm": _num(self.mtf10),
                "edge_angle_deg": self.edge_angle_deg, "contrast": self.contrast, "bin_width_mm": self.bin_width_mm}


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def mtf_at(frequencies: np.ndarray, mtf: np.ndarray, level: float) -> float:
    """First frequency (1/mm) at which ``mtf`` falls to ``level``, linearly interpolated; ``nan`` if it never does."""
    below = np.nonzero(mtf <= level)[0]
    if below.size == 0:
        return math.nan
    i = int(below[0])
    if i == 0:
        return float(frequencies[0])
    f0, f1, m0, m1 = frequencies[i - 1], frequencies[i], mtf[i - 1], mtf[i]
    return float(f0 + (m0 - level) * (f1 - f0) / (m0 - m1)) if m0 != m1 else float(f1)


def mtf50(result: EdgeMTF) -> float:
    """Frequency in 1/mm where the MTF is 0.5."""
    return result.mtf50


def mtf10(result: EdgeMTF) -> float:
    """Frequency in 1/mm where the MTF is 0.1."""
    return result.mtf10


def edge_mtf(image: ArrayOrVolume, roi: Any = None, spacing: Sequence[float] | None = None, *, axis: int = 2,
             across: int | None = None, oversample: int = 4, window: bool = True) -> EdgeMTF:
    """ESF, LSF and MTF of the straight edge in ``roi`` by the slanted-edge method (ISO 12233).

    Parameters
    ----------
    image : ndarray or Volume
        The image (values in physical units).
    roi : Roi, tuple of slices or bool mask, optional
        Box holding one straight edge and both plateaus (whole image when None). A mask is reduced to its bounding
        box. The edge should cross the box along the ``across`` axis in every slice.
    spacing : sequence of float, optional
        Voxel size in mm; from a Volume when not given.
    axis : int
        The slice axis (2: ``k``); the MTF is measured in the plane of the other two (in-plane resolution).
    across : int, optional
        The in-plane axis crossing the edge; by default the one with the larger mean gradient.
    oversample : int
        ESF bins per voxel (4, as ISO 12233).
    window : bool
        Apply a Hann window to the LSF to damp noise in its tails.

    Returns
    -------
    EdgeMTF
    """
    from medden.metrics.roi import Roi  # local: roi.py imports nothing from here, keep the graph acyclic either way

    data = as_array(image, "image")
    sp = resolve_spacing(image, spacing=spacing)
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis!r}")
    if roi is None:
        box = tuple(slice(0, n) for n in data.shape)
    elif isinstance(roi, tuple) and all(isinstance(s, slice) for s in roi):
        box = roi
    else:
        if isinstance(roi, Roi):
            mask = roi.to_mask(data.shape, getattr(image, "affine", None))
        else:
            mask = np.asarray(getattr(roi, "data", roi)) != 0
            if mask.shape != data.shape:
                raise InputError(f"shape mismatch: edge ROI mask has shape {mask.shape}, image {data.shape}")
        idx = np.nonzero(mask)
        if idx[0].size == 0:
            raise InputError("edge ROI selects no voxel")
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    sub = np.moveaxis(data[box], axis, 0)  # [slice, a, b]
    plane = [i for i in range(3) if i != axis]
    if across is None:
        g = np.gradient(sub, axis=(1, 2)) if min(sub.shape[1:]) > 1 else None
        if g is None:
            raise InputError("edge ROI must be at least 2 voxels wide in-plane")
        across = plane[0] if np.abs(g[0]).mean() >= np.abs(g[1]).mean() else plane[1]
    if across not in plane:
        raise InputError(f"'across' must be one of the in-plane axes {plane}, got {across}")
    if across == plane[1]:  # sub is [slice, along, across] already
        along = plane[0]
    else:
        sub = np.swapaxes(sub, 1, 2)  # [slice, across, along] → [slice, along, across]
        along = plane[1]
    du, dv = sp[across], sp[along]
    ns, nv, nu = sub.shape
    if nu < 8:
        raise InputError(f"edge ROI is only {nu} voxels across the edge; need at least 8")

    # 1. edge position per row: centroid of the derivative (ISO 12233); 2. fit a plane u = a + b v + c s.
    # A second pass windows each row's derivative around the first fit so noise far from the edge cannot pull the
    # centroids towards the middle of the ROI.
    deriv = np.diff(sub, axis=2)
    deriv = np.clip(deriv * np.sign(deriv.sum()), 0, None)  # the derivative oriented along the edge's contrast
    if not (deriv.sum(axis=2) > 0).all():
        raise InputError("no edge found in the edge ROI (a flat row); place the ROI across one straight edge")
    s_idx, v_idx = np.mgrid[0:ns, 0:nv]
    cols = [np.ones(ns * nv), v_idx.ravel()] + ([s_idx.ravel()] if ns > 1 else [])
    design = np.stack(cols, 1)
    centres = np.arange(nu - 1) + 0.5
    weight = np.ones_like(deriv)
    for _ in range(3):
        wd = deriv * weight
        w = wd.sum(axis=2)
        if not (w > 0).all():
            break
        pos = (wd * centres).sum(axis=2) / w  # [slice, row]
        coef, *_ = np.linalg.lstsq(design, pos.ravel(), rcond=None)
        fit = (design @ coef).reshape(ns, nv, 1)
        half = max(4.0, (nu - 1) / 4)
        weight = 0.5 + 0.5 * np.cos(np.pi * np.clip((centres - fit) / half, -1, 1))  # Hann window around the edge
    a, b = coef[0], coef[1]
    c = coef[2] if ns > 1 else 0.0
    # 3. project: signed distance (mm) of each voxel to the edge line in its slice
    slope = b * du / dv  # mm across per mm along
    cos = 1.0 / math.sqrt(1.0 + slope**2)
    u_idx = np.arange(nu)[None, None, :]
    edge_u = a + b * np.arange(nv)[None, :, None] + c * np.arange(ns)[:, None, None]
    dist = ((u_idx - edge_u) * du * cos).ravel()
    vals = sub.ravel()
    # 4. bin into the oversampled ESF; fall back to one bin per voxel when the slant is too small to fill bins
    angle = math.degrees(math.atan(slope))
    for os_ in (int(oversample), 1):
        h = du * cos / os_
        k = np.floor(dist / h + 0.5).astype(int)
        k -= k.min()
        counts = np.bincount(k)
        core = counts[len(counts) // 4: 3 * len(counts) // 4]
        if os_ == 1 or (core > 0).mean() > 0.9:
            break
    sums = np.bincount(k, weights=vals)
    filled = counts > 0
    centers = np.arange(len(counts)) * h + dist.min()
    esf = np.interp(centers, centers[filled], sums[filled] / counts[filled])
    # keep the span where every row contributes (both plateaus, no ragged ends)
    d_lo = max(np.min(((0 - edge_u) * du * cos)), dist.min())
    d_hi = min(np.max(((nu - 1 - edge_u) * du * cos)), dist.max())
    span = (centers >= d_lo) & (centers <= d_hi)
    centers, esf = centers[span], esf[span]
    if esf.size < 8:
        raise InputError("edge ROI too small to sample the edge spread function")
    n_pl = max(2, esf.size // 8)
    contrast = float(np.mean(esf[-n_pl:]) - np.mean(esf[:n_pl]))
    if contrast < 0:  # a bright-to-dark edge: flip so the LSF is positive
        esf, contrast = -esf, -contrast
    if contrast == 0:
        raise InputError("edge ROI has no contrast across the edge")

    # 5. LSF by central differences; window; MTF
    lsf = np.gradient(esf, h)
    if window:
        centre = float(np.sum(centers * np.abs(lsf)) / np.sum(np.abs(lsf)))
        half = max(centre - centers[0], centers[-1] - centre)
        lsf_w = lsf * (0.5 + 0.5 * np.cos(np.pi * np.clip((centers - centre) / half, -1, 1)))
    else:
        lsf_w = lsf
    n = lsf_w.size
    spec = np.abs(np.fft.rfft(lsf_w))
    freqs = np.fft.rfftfreq(n, h)
    mtf = spec / spec[0]
    # correct for the central-difference derivative (transfer sin(2πfh)/(2πfh)), up to its first null's half
    x = 2 * np.pi * freqs * h
    corr = np.where(x > 0, np.sin(x) / np.where(x > 0, x, 1), 1.0)
    usable = freqs <= 0.5 / du + 1e-12  # up to the Nyquist frequency of the voxel grid
    freqs, mtf = freqs[usable], mtf[usable] / np.maximum(corr[usable], 0.1)
    return EdgeMTF(frequencies=freqs, mtf=mtf, distance=centers, esf=esf, lsf=lsf, mtf50=mtf_at(freqs, mtf, 0.5),
                   mtf10=mtf_at(freqs, mtf, 0.1), edge_angle_deg=angle, contrast=contrast, bin_width_mm=h)


def gaussian_mtf(frequencies: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Analytic MTF of a Gaussian blur of standard deviation ``sigma_mm``: ``exp(-2 π² σ² f²)`` (f in 1/mm)."""
    return np.exp(-2.0 * np.pi**2 * sigma_mm**2 * np.asarray(frequencies) ** 2)
