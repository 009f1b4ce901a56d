"""Method noise: what a denoiser removed (Buades, Coll & Morel 2005).

The residual ``noisy - estimate`` should be noise only: no structure of the object (uncorrelated with the reference
and with its edges) and the same texture as the input noise (white for white input noise). Structure in the residual
means the denoiser blurred or erased anatomy — a small lesion, an edge.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from medden.metrics.inputs import ArrayOrVolume, as_mask, check_pair, resolve_spacing


@dataclass(frozen=True)
class MethodNoise:
    """Residual ("method noise") analysis of one denoised image.

    Attributes
    ----------
    residual_std : float
        Standard deviation of ``noisy - estimate`` (image units, HU for CT).
    removed_noise_fraction : float or None
        ``residual_std / std(noisy - reference)``: 1 when exactly the noise power was removed (needs the reference).
    noise_correlation : float or None
        Pearson correlation of the residual with the true noise ``noisy - reference`` (1 is ideal).
    structure_correlation : float or None
        Pearson correlation of the residual with the reference's detail layer (reference minus its Gaussian blur at
        ``detail_sigma_mm``): 0 is ideal, positive means edges and fine structure were removed.
    reference_correlation : float or None
        Pearson correlation of the residual with the reference itself (0 is ideal).
    autocorrelation_lag1 : tuple of float
        Normalised autocorrelation of the residual at one voxel along i, j, k: 0 for a white residual.
    spectral_flatness : float
        Geometric over arithmetic mean of the residual's 3D power spectrum: 1 for white noise, → 0 when the residual
        is structured or strongly coloured.
    """

    residual_std: float
    removed_noise_fraction: float | None
    noise_correlation: float | None
    structure_correlation: float | None
    reference_correlation: float | None
    autocorrelation_lag1: tuple[float, float, float]
    spectral_flatness: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else None


def _lag1(r: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    out = []
    rc = np.where(mask, r - r[mask].mean(), 0.0)
    var = float((rc[mask] ** 2).mean())
    for ax in range(3):
        a = np.take(rc, np.arange(rc.shape[ax] - 1), axis=ax)
        b = np.take(rc, np.arange(1, rc.shape[ax]), axis=ax)
        both = np.take(mask, np.arange(rc.shape[ax] - 1), axis=ax) & np.take(mask, np.arange(1, rc.shape[ax]), axis=ax)
        out.append(float((a * b)[both].mean() / var) if var > 0 and both.any() else 0.0)
    return tuple(out)  # type: ignore[return-value]


def _flatness(r: np.ndarray, mask: np.ndarray) -> float:
    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    sub = np.where(mask, r - r[mask].mean(), 0.0)[box]
    p = np.abs(np.fft.rfftn(sub)) ** 2
    p = p.ravel()[1:]  # drop DC
    p = p[p > 0]
    return float(np.exp(np.mean(np.log(p))) / np.mean(p)) if p.size else 0.0


def method_noise(noisy: ArrayOrVolume, estimate: ArrayOrVolume, reference: ArrayOrVolume | None = None,
                 mask: ArrayOrVolume | None = None, spacing: Sequence[float] | None = None, *,
                 detail_sigma_mm: float | None = None) -> MethodNoise:
    """Analyse the residual ``noisy - estimate`` of a denoiser.

    Parameters
    ----------
    noisy, estimate : ndarray or Volume
        The denoiser's input and output (same shape and geometry).
    reference : ndarray or Volume, optional
        The clean image; enables the correlations with the true noise and with the reference's structure.
    mask : ndarray or Volume, optional
        Voxels to analyse (e.g. the body); all when None.
    spacing : sequence of float, optional
        Voxel size in mm, for the detail layer's blur.
    detail_sigma_mm : float, optional
        Blur (mm) separating the reference's detail layer; default one voxel of the finest axis.

    Returns
    -------
    MethodNoise
    """
    noisy_a, est = check_pair(noisy, estimate, "noisy image", "estimate")
    m = as_mask(mask, noisy_a.shape)
    m = np.ones(noisy_a.shape, bool) if m is None else m
    r = noisy_a - est
    res_std = float(r[m].std())
    frac = noise_corr = struct_corr = ref_corr = None
    if reference is not None:
        ref, _ = check_pair(reference, noisy, "reference", "noisy image")
        noise = noisy_a - ref
        nstd = float(noise[m].std())
        frac = res_std / nstd if nstd > 0 else None
        noise_corr = _corr(r[m], noise[m])
        sp = np.asarray(resolve_spacing(reference, noisy, estimate, spacing=spacing))
        sig = (detail_sigma_mm if detail_sigma_mm is not None else sp.min()) / sp
        detail = ref - ndimage.gaussian_filter(ref, sig)
        struct_corr = _corr(r[m], detail[m])
        ref_corr = _corr(r[m], ref[m])
    return MethodNoise(residual_std=res_std, removed_noise_fraction=frac, noise_correlation=noise_corr,
                       structure_correlation=struct_corr, reference_correlation=ref_corr,
                       autocorrelation_lag1=_lag1(r, m), spectral_flatness=_flatness(r, m))
