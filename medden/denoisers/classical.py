"""Classical denoisers: Gaussian smoothing (width chosen by SURE), 3D total variation (spacing-aware, Chambolle–Pock
on CPU or GPU), 3D non-local means and wavelet shrinkage.

All follow the registry's convention (:mod:`medden.denoisers.registry`): ``(data, noise, *, spacing, modality,
device, progress, **params) -> Denoised`` with ``data`` a 3D float32 array in physical units and ``noise`` a
:class:`~medden.noise.estimate.NoiseEstimate` whose global ``sigma`` (same units) they use.
"""
from __future__ import annotations

import numpy as np

from medden.denoisers.registry import Denoised, Param, register


@register("gaussian", family="classical",
          summary="Gaussian smoothing; width chosen by Stein's unbiased risk estimate unless given",
          params=(Param("fwhm_mm", None, "mm", "full width at half maximum; None = chosen by SURE from sigma",
                        minimum=0.0),),
          gpu=False)
def gaussian(data: np.ndarray, noise, *, spacing=(1.0, 1.0, 1.0), modality="OT", device="cpu", progress=None,
             fwhm_mm=None) -> Denoised:
    """Gaussian filter. Without ``fwhm_mm`` the width minimises SURE (Stein 1981) for additive white noise of
    standard deviation ``sigma``: ``‖y − Hy‖² − Nσ² + 2σ² tr(H)``, with ``tr(H) = N·h(0)``."""
    return Denoised(_gaussian(data, noise.sigma, spacing, fwhm_mm))


def _gaussian(data: np.ndarray, s: float, spacing, fwhm_mm) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    spacing = np.asarray(spacing, dtype=float)
    fwhm_to_sd = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    if fwhm_mm is not None:
        return gaussian_filter(data, fwhm_mm * fwhm_to_sd / spacing).astype(np.float32)
    if s <= 0:
        return data.copy()
    best, best_risk = data.copy(), data.size * s ** 2  # the identity filter: ‖0‖² − Nσ² + 2σ²N
    for fwhm in min(spacing) * np.array([0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0]):
        sd_vox = fwhm * fwhm_to_sd / spacing
        out = gaussian_filter(data, sd_vox)
        # centre weight of the separable sampled kernel: product of the 1D centre weights
        centre = np.prod([_centre_weight(sd) for sd in sd_vox])
        risk = float(np.sum((data - out) ** 2, dtype=np.float64)) - data.size * s ** 2 + 2 * s ** 2 * data.size * centre
        if risk < best_risk:
            best, best_risk = out, risk
    return best.astype(np.float32)


def _centre_weight(sd: float, truncate: float = 4.0) -> float:
    radius = int(truncate * sd + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sd) ** 2) if sd > 0 else (x == 0).astype(float)
    return float(w[radius] / w.sum())


@register("tv", family="classical", gpu=True,
          summary="3D total-variation denoising (Chambolle–Pock), gradient in mm so anisotropic voxels are handled",
          params=(Param("weight", 1.0, "× sigma·mm", "regularisation λ = weight · sigma · (smallest spacing)",
                        minimum=0.0),
                  Param("iterations", 100, "", "primal-dual iterations", minimum=0, maximum=100_000)))
def tv(data: np.ndarray, noise, *, spacing=(1.0, 1.0, 1.0), modality="OT", device="cpu", progress=None, weight=1.0,
       iterations=100) -> Denoised:
    """Solve ``min_u ½‖u − f‖² + λ Σ |∇u|`` (isotropic TV, forward differences divided by the voxel size in mm)
    with the Chambolle–Pock primal-dual algorithm (J. Math. Imaging Vis. 2011), in torch on ``device``."""
    return Denoised(_tv(data, noise.sigma, spacing, device, weight, iterations))


def _tv(data: np.ndarray, s: float, spacing, device: str, weight: float, iterations: int) -> np.ndarray:
    import torch

    if s <= 0:
        return data.copy()
    h = torch.tensor(spacing, dtype=torch.float32, device=device)
    # λ in HU·mm: with the smallest spacing the in-plane smoothing equals voxel-wise TV, and thick slices (larger
    # spacing, smaller gradients in mm) are smoothed less across, not more in-plane
    lam = float(weight * s * float(np.min(spacing)))
    f = torch.as_tensor(data, dtype=torch.float32, device=device)

    def grad(u):
        g = torch.zeros((3,) + u.shape, dtype=u.dtype, device=u.device)
        g[0, :-1] = (u[1:] - u[:-1]) / h[0]
        g[1, :, :-1] = (u[:, 1:] - u[:, :-1]) / h[1]
        g[2, :, :, :-1] = (u[:, :, 1:] - u[:, :, :-1]) / h[2]
        return g

    def div(p):  # negative adjoint of grad
        d = torch.zeros_like(p[0])
        d[:-1] += p[0, :-1] / h[0]
        d[1:] -= p[0, :-1] / h[0]
        d[:, :-1] += p[1, :, :-1] / h[1]
        d[:, 1:] -= p[1, :, :-1] / h[1]
        d[:, :, :-1] += p[2, :, :, :-1] / h[2]
        d[:, :, 1:] -= p[2, :, :, :-1] / h[2]
        return d

    lip = float(torch.sqrt(4.0 * torch.sum(1.0 / h ** 2)))  # ‖∇‖ ≤ sqrt(4 Σ 1/h²)
    tau = sigma_dual = 1.0 / lip
    u = f.clone()
    u_bar = u.clone()
    p = torch.zeros((3,) + f.shape, dtype=f.dtype, device=f.device)
    with torch.no_grad():
        for _ in range(int(iterations)):
            p = p + sigma_dual * grad(u_bar)
            p = p / torch.clamp(torch.linalg.vector_norm(p, dim=0) / lam, min=1.0)
            u_old = u
            u = (u + tau * div(p) + tau * f) / (1.0 + tau)
            u_bar = 2 * u - u_old
    return u.cpu().numpy().astype(np.float32)


@register("nlm", family="classical",
          summary="3D non-local means (scikit-image, fast mode)",
          params=(Param("patch_size", 3, "voxels", "side of the compared patches", minimum=1, maximum=15),
                  Param("patch_distance", 3, "voxels", "search radius", minimum=1, maximum=15),
                  Param("h", 0.8, "× sigma", "filtering strength relative to sigma", minimum=0.0)))
def nlm(data: np.ndarray, noise, *, spacing=(1.0, 1.0, 1.0), modality="OT", device="cpu", progress=None,
        patch_size=3, patch_distance=3, h=0.8) -> Denoised:
    """Non-local means (Buades et al. 2005) in 3D, with the noise-variance-corrected weights of scikit-image."""
    from skimage.restoration import denoise_nl_means

    s = float(noise.sigma)
    if s <= 0:
        return Denoised(data.copy())
    if min(data.shape) < patch_size:
        from medden.errors import ParameterError

        raise ParameterError(f"the volume ({'×'.join(map(str, data.shape))} voxels) is smaller than nlm's "
                             f"{patch_size}-voxel patches along an axis")
    out = denoise_nl_means(data, patch_size=int(patch_size), patch_distance=int(patch_distance), h=h * s, sigma=s,
                           fast_mode=True, channel_axis=None, preserve_range=True)
    return Denoised(out.astype(np.float32))


@register("wavelet", family="classical",
          summary="3D wavelet shrinkage (BayesShrink, soft thresholds, db2)",
          params=(Param("wavelet", "db2", "", "PyWavelets wavelet name"),
                  Param("mode", "soft", "", "thresholding", choices=("soft", "hard")),
                  Param("levels", 3, "", "decomposition levels", minimum=1, maximum=16)))
def wavelet(data: np.ndarray, noise, *, spacing=(1.0, 1.0, 1.0), modality="OT", device="cpu", progress=None,
            wavelet="db2", mode="soft", levels=3) -> Denoised:
    """Subband-adaptive BayesShrink (Chang, Yu & Vetterli 2000) on a 3D discrete wavelet transform."""
    import pywt
    from skimage.restoration import denoise_wavelet

    s = float(noise.sigma)
    if s <= 0:
        return Denoised(data.copy())
    if wavelet not in pywt.wavelist(kind="discrete"):
        from medden.errors import ParameterError

        raise ParameterError(f"parameter 'wavelet' must be a discrete PyWavelets wavelet (e.g. db2, haar, sym4), "
                             f"got {wavelet!r}")
    levels = max(1, min(int(levels), pywt.dwtn_max_level(data.shape, wavelet)))
    out = denoise_wavelet(data, sigma=s, wavelet=wavelet, mode=mode, wavelet_levels=levels, method="BayesShrink",
                          rescale_sigma=False, channel_axis=None)
    return Denoised(out.astype(np.float32))
