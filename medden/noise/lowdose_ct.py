"""Low-dose CT simulated in the projection domain, where CT noise is born.

Pipeline per axial slice (batched over slices, in torch on the input's device):

1. HU → linear attenuation ``μ = μ_water · (1 + HU/1000)`` at the beam's effective energy (values below −1000 HU are
   air, ``μ = 0``).
2. Forward projection to line integrals ``p`` (ray-driven, fan or parallel beam, :mod:`medden.noise.ct_projector`).
3. Transmitted counts ``N = Poisson(I₀·dose·e^{−p}) + N(0, σ_e²)`` (quantum plus electronic noise), clipped to at
   least one photon, then ``p̃ = −log(N / (I₀·dose))``.
4. Fan → parallel rebinning and filtered back projection (ramp × apodisation window) back to μ, then to HU.

:func:`lowdose_ct` by default (``keep_resolution=True``) adds ``FBP(p̃ − p)`` to the input: exactly the noise the
reconstruction of step 4 carries (FBP is linear), without the reconstruction's own blur, so only noise differs
from the input; with ``keep_resolution=False`` it returns ``FBP(p̃)`` itself. Either way the input is treated as the
noise-free object. :func:`lowdose_ct_insertion` instead treats the input as a real full-dose scan that already holds
the full-dose noise and adds only the missing variance for the target dose (Yu et al., Med Phys 39(5), 2012):

    σ²_add(p) = (1 − a)/a · e^{p}/I₀ · (1 + (1 + a)/a · σ_e² e^{p}/I₀),   a = dose.

Defaults and where they come from
---------------------------------
* ``i0_photons = 1e5`` unattenuated photons per detector channel per view at full dose, for a scanner taking
  ``views_reference = 1152`` views per rotation. 1e5 is the full-dose blank-scan level used in many low-dose
  simulation studies (e.g. Zeng et al., IEEE TNS 62(5), 2015); 1152 views per rotation is the Siemens SOMATOM
  Definition sampling in the AAPM/Mayo projection library (Chen et al., Proc SPIE 9783, 2016). When fewer views are
  simulated the photons per view are scaled up by ``views_reference / n_views`` so the dose, and the noise, stay
  those of the reference scan.
* ``sigma_electronic = √10 ≈ 3.16`` photons (electronic noise variance 10), the order measured on a clinical scanner
  by Ma et al. (Med Phys 39(9), 2012) and used by Zeng et al. (2015).
* ``mu_water_per_mm = 0.0194`` mm⁻¹: water at an effective energy of 70 keV (typical of a 120 kVp beam), log-log
  interpolated between 0.2059 cm²/g at 60 keV and 0.1837 cm²/g at 80 keV in the NIST table of Hubbell & Seltzer.
* Fan geometry: source–isocentre 595 mm and source–detector 1085.6 mm (Siemens SOMATOM Definition, as recorded in the
  AAPM/Mayo projection data, Chen et al. 2016). The detector pitch defaults to the image's pixel size magnified to
  the detector (the Definition's is 1.2858 mm, ≈0.70 mm at the isocentre), and the channel count to what covers the
  image's circumscribed circle, so the noise texture matches the image grid at any pixel size.
* ``n_views = 576`` per rotation: half the clinical 1152 keeps a 512×512×100 volume near 20 s on two CPU cores. View
  aliasing of the noise starts beyond a radius of about ``n_views/(2π)`` pixels (≈ 90 pixels); pass
  ``n_views=1152`` for exact clinical sampling at twice the cost.
* ``filter = "shepp-logan"`` at the Nyquist cutoff: the classic FBP default, a noise power spectrum that vanishes at
  zero frequency and peaks at mid–high frequency. ``"hann"`` or ``"cosine"`` give smoother, soft-tissue-like noise.
* ``projection_downsample``: with ``keep_resolution=True`` the line integrals, which only set the noise variance of
  each ray, are computed on an image pooled at least 2× and to about 128 pixels wide, then interpolated to the full
  detector; the noise itself is drawn for every full-resolution channel.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from medden.errors import InputError, ParameterError
from medden.noise.arrays import GeneratorLike, make_generator, randn_like, to_tensor
from medden.noise.ct_projector import (FILTERS, FanBeam, ParallelBeam, fbp_parallel, forward_project, fov_radius_mm,
                                       rebin_fan_to_parallel)

from medden.noise.ct_constants import (I0_PHOTONS, MIN_COUNTS, MU_WATER_PER_MM, N_VIEWS,  # noqa: E402,F401
                                       SIGMA_ELECTRONIC, SOURCE_TO_DETECTOR_MM, SOURCE_TO_ISOCENTER_MM,
                                       VIEWS_REFERENCE)


def check_hu(x: torch.Tensor) -> None:
    """Raise :class:`InputError` unless ``x`` looks like CT in Hounsfield units (air near −1000 HU somewhere)."""
    lo, hi = float(x.min()), float(x.max())
    if lo > -500 or hi > 40000:
        raise InputError(f"the low-dose CT model needs a volume in Hounsfield units (air ≈ -1000 HU, water 0 HU); "
                         f"this one spans {lo:g} … {hi:g}")


def _check_common(x: torch.Tensor, dose: float, spacing_mm: tuple[float, ...], i0: float, sigma_e: float) -> None:
    if x.ndim != 3:
        raise InputError(f"low-dose CT simulation needs a 3D volume (x, y, axial slices), got shape {tuple(x.shape)}")
    if min(x.shape[:2]) < 8:
        raise InputError(f"axial slices of {tuple(x.shape[:2])} pixels are too small to project")
    if not 0 < dose <= 1:
        raise ParameterError(f"dose must be a fraction of the full dose in (0, 1], got {dose}")
    if len(spacing_mm) < 2 or min(spacing_mm[:2]) <= 0:
        raise ParameterError(f"spacing_mm must give positive in-plane pixel sizes, got {spacing_mm}")
    if not i0 > 0:
        raise ParameterError(f"i0_photons must be > 0, got {i0}")
    if not sigma_e >= 0:
        raise ParameterError(f"sigma_electronic must be >= 0 photons, got {sigma_e}")
    check_hu(x)


def make_geometry(shape: tuple[int, int], pixel_mm: tuple[float, float], geometry: str, n_views: int,
                  source_to_isocenter_mm: float, source_to_detector_mm: float,
                  detector_pitch_mm: float | None, n_detectors: int | None) -> FanBeam | ParallelBeam:
    """The acquisition geometry, with the defaults documented in this module filled in."""
    if int(n_views) != n_views or n_views < 16:
        raise ParameterError(f"n_views must be an integer >= 16, got {n_views}")
    radius = fov_radius_mm(shape, pixel_mm)
    if geometry == "parallel":
        pitch = detector_pitch_mm or min(pixel_mm)
        n = n_detectors or 2 * math.ceil(radius / pitch) + 1
        return ParallelBeam(float(pitch), int(n), int(n_views))
    if geometry != "fan":
        raise ParameterError(f"unknown CT geometry {geometry!r} (use 'fan' or 'parallel')")
    if n_views % 2:
        raise ParameterError(f"fan-beam n_views must be even, got {n_views}")
    r, d = float(source_to_isocenter_mm), float(source_to_detector_mm)
    if not 0 < r < d:
        raise ParameterError(f"need 0 < source_to_isocenter_mm ({r}) < source_to_detector_mm ({d})")
    if radius >= r:
        raise ParameterError(f"the image (radius {radius:.0f} mm) does not fit inside the source circle ({r:.0f} mm)")
    pitch = detector_pitch_mm or min(pixel_mm) * d / r
    half_fan = math.asin(radius / r)
    n = n_detectors or 2 * math.ceil(half_fan / (pitch / d)) + 1
    return FanBeam(r, d, float(pitch), int(n), int(n_views))


def _line_integrals(mu: torch.Tensor, pixel_mm: tuple[float, float], geo: FanBeam | ParallelBeam,
                    downsample: int) -> torch.Tensor:
    """``[B, V, n]`` line integrals; with ``downsample > 1`` on a pooled image and coarser channels, interpolated."""
    if downsample <= 1:
        theta, t = geo.rays(mu.device)
        return forward_project(mu, pixel_mm, theta, t)
    b, nx, ny = mu.shape
    cx, cy = math.ceil(nx / downsample), math.ceil(ny / downsample)
    coarse = F.interpolate(mu[:, None], size=(cx, cy), mode="area")[:, 0]
    coarse_mm = (pixel_mm[0] * nx / cx, pixel_mm[1] * ny / cy)
    n_coarse = max(8, math.ceil(geo.n_detectors / downsample))
    theta, t = geo.rays(mu.device)
    # channels of the coarse detector: an evenly spaced subset spanning the same first and last channel
    idx = torch.linspace(0, geo.n_detectors - 1, n_coarse, device=mu.device)
    lo = idx.floor().long().clamp(max=geo.n_detectors - 2)
    w = idx - lo
    th_c = theta[:, lo] * (1 - w) + theta[:, lo + 1] * w
    t_c = t[:, lo] * (1 - w) + t[:, lo + 1] * w
    p = forward_project(coarse, coarse_mm, th_c, t_c, step_mm=min(coarse_mm))
    return F.interpolate(p, size=geo.n_detectors, mode="linear", align_corners=True)


def _reconstruct(sino: torch.Tensor, geo: FanBeam | ParallelBeam, shape: tuple[int, int], pixel_mm: tuple[float, float],
                 window: str, cutoff: float) -> torch.Tensor:
    if isinstance(geo, FanBeam):
        sino, pitch = rebin_fan_to_parallel(sino, geo)
    else:
        pitch = geo.detector_pitch_mm
    return fbp_parallel(sino, pitch, shape, pixel_mm, window, cutoff)


def _run(data: Any, insertion: bool, *, dose: float, spacing_mm: tuple[float, ...], generator: GeneratorLike,
         i0_photons: float, sigma_electronic: float, mu_water_per_mm: float, geometry: str, n_views: int,
         views_reference: int, source_to_isocenter_mm: float, source_to_detector_mm: float,
         detector_pitch_mm: float | None, n_detectors: int | None, filter: str, cutoff: float,
         keep_resolution: bool, projection_downsample: int | None, slices_per_batch: int) -> Any:
    x, restore = to_tensor(data)
    _check_common(x, dose, spacing_mm, i0_photons, sigma_electronic)
    if filter not in FILTERS:
        raise ParameterError(f"unknown FBP filter {filter!r} (known: {', '.join(FILTERS)})")
    if not mu_water_per_mm > 0:
        raise ParameterError(f"mu_water_per_mm must be > 0, got {mu_water_per_mm}")
    g = make_generator(generator, x.device)
    nx, ny, nz = x.shape
    pixel_mm = (float(spacing_mm[0]), float(spacing_mm[1]))
    geo = make_geometry((nx, ny), pixel_mm, geometry, n_views, source_to_isocenter_mm, source_to_detector_mm,
                        detector_pitch_mm, n_detectors)
    # photons per channel per view at full dose for this view count: the total per rotation is the reference's
    i0_view = float(i0_photons) * views_reference / geo.n_views
    if projection_downsample is None:
        projection_downsample = max(2, round(max(nx, ny) / 128)) if (keep_resolution or insertion) else 1
    out = torch.empty_like(x)
    for z0 in range(0, nz, slices_per_batch):
        hu = x[:, :, z0:z0 + slices_per_batch].permute(2, 0, 1)  # [B, Nx, Ny]
        mu = (mu_water_per_mm * (1 + hu / 1000)).clamp_min(0)
        p = _line_integrals(mu, pixel_mm, geo, int(projection_downsample))
        if insertion:
            a, e = float(dose), torch.exp(p) / i0_view
            var = (1 - a) / a * e * (1 + (1 + a) / a * sigma_electronic ** 2 * e)
            delta = torch.sqrt(var) * randn_like(p, g)
        else:
            expected = (i0_view * dose) * torch.exp(-p)
            counts = torch.poisson(expected, generator=g)
            if sigma_electronic > 0:
                counts += sigma_electronic * randn_like(counts, g)
            noisy = torch.log((i0_view * dose) / counts.clamp_min(MIN_COUNTS))
            delta = noisy - p if keep_resolution else noisy
        rec = _reconstruct(delta, geo, (nx, ny), pixel_mm, filter, cutoff)
        if insertion or keep_resolution:
            res = hu + rec * (1000 / mu_water_per_mm)
        else:
            res = (rec / mu_water_per_mm - 1) * 1000
        out[:, :, z0:z0 + slices_per_batch] = res.permute(1, 2, 0)
    return restore(out)


def lowdose_ct(data: Any, *, dose: float, spacing_mm: tuple[float, ...], generator: GeneratorLike = None,
               i0_photons: float = I0_PHOTONS, sigma_electronic: float = SIGMA_ELECTRONIC,
               mu_water_per_mm: float = MU_WATER_PER_MM, geometry: str = "fan", n_views: int = N_VIEWS,
               views_reference: int = VIEWS_REFERENCE, source_to_isocenter_mm: float = SOURCE_TO_ISOCENTER_MM,
               source_to_detector_mm: float = SOURCE_TO_DETECTOR_MM, detector_pitch_mm: float | None = None,
               n_detectors: int | None = None, filter: str = "shepp-logan", cutoff: float = 1.0,
               keep_resolution: bool = True, projection_downsample: int | None = None,
               slices_per_batch: int = 64) -> Any:
    """Simulate a CT scan of the (noise-free) object ``data`` at ``dose`` × the full dose, in the projection domain.

    Parameters
    ----------
    data : ``(X, Y, Z)`` array or tensor in HU, axial slices along the last axis.
    dose : fraction of the full dose, in (0, 1]; photons per ray scale with it.
    spacing_mm : voxel size in mm (the first two entries, the in-plane pixel size, are used).
    generator : ``torch.Generator``, an int seed, or None.
    i0_photons : unattenuated photons per detector channel per view at full dose with ``views_reference`` views.
    sigma_electronic : electronic noise standard deviation, in photons.
    mu_water_per_mm : linear attenuation of water at the effective energy (mm⁻¹).
    geometry : ``"fan"`` (360°, third generation) or ``"parallel"`` (180°).
    n_views : views per rotation (fan) or per 180° (parallel).
    views_reference : views per rotation of the scanner ``i0_photons`` refers to.
    source_to_isocenter_mm, source_to_detector_mm : fan geometry distances (mm).
    detector_pitch_mm : channel pitch on the detector (mm); default: the pixel size magnified to the detector.
    n_detectors : channels; default: enough to cover the image's circumscribed circle.
    filter : FBP apodisation window, one of ``ram-lak, shepp-logan, cosine, hamming, hann``.
    cutoff : window cutoff as a fraction of the detector Nyquist frequency, in (0, 1].
    keep_resolution : True: input + reconstructed noise; False: the FBP reconstruction of the noisy sinogram.
    projection_downsample : pooling factor for the line integrals that set the noise variance (default: automatic
        when ``keep_resolution``, else 1).
    slices_per_batch : axial slices projected together (memory vs. speed).

    Returns
    -------
    Noisy data in HU, same type, shape and device. See the module docstring for the model and the defaults' sources.
    """
    return _run(data, False, dose=dose, spacing_mm=spacing_mm, generator=generator, i0_photons=i0_photons,
                sigma_electronic=sigma_electronic, mu_water_per_mm=mu_water_per_mm, geometry=geometry,
                n_views=n_views, views_reference=views_reference, source_to_isocenter_mm=source_to_isocenter_mm,
                source_to_detector_mm=source_to_detector_mm, detector_pitch_mm=detector_pitch_mm,
                n_detectors=n_detectors, filter=filter, cutoff=cutoff, keep_resolution=keep_resolution,
                projection_downsample=projection_downsample, slices_per_batch=slices_per_batch)


def lowdose_ct_insertion(data: Any, *, dose: float, spacing_mm: tuple[float, ...], generator: GeneratorLike = None,
                         i0_photons: float = I0_PHOTONS, sigma_electronic: float = SIGMA_ELECTRONIC,
                         mu_water_per_mm: float = MU_WATER_PER_MM, geometry: str = "fan", n_views: int = N_VIEWS,
                         views_reference: int = VIEWS_REFERENCE,
                         source_to_isocenter_mm: float = SOURCE_TO_ISOCENTER_MM,
                         source_to_detector_mm: float = SOURCE_TO_DETECTOR_MM, detector_pitch_mm: float | None = None,
                         n_detectors: int | None = None, filter: str = "shepp-logan", cutoff: float = 1.0,
                         projection_downsample: int | None = None, slices_per_batch: int = 64) -> Any:
    """Lower the dose of a real full-dose CT scan by adding only the missing noise (Yu et al., Med Phys 2012).

    The full-dose scan already carries the noise of ``i0_photons``; Gaussian noise of variance
    ``σ²_add(p) = (1 − a)/a · e^{p}/I₀ · (1 + (1 + a)/a · σ_e² e^{p}/I₀)`` is added to each log-domain ray and
    reconstructed by FBP, so the result carries the noise of dose ``a``. ``dose=1`` returns the input unchanged.
    Parameters as in :func:`lowdose_ct`; ``i0_photons`` and ``sigma_electronic`` describe the full-dose scan.
    """
    return _run(data, True, dose=dose, spacing_mm=spacing_mm, generator=generator, i0_photons=i0_photons,
                sigma_electronic=sigma_electronic, mu_water_per_mm=mu_water_per_mm, geometry=geometry,
                n_views=n_views, views_reference=views_reference, source_to_isocenter_mm=source_to_isocenter_mm,
                source_to_detector_mm=source_to_detector_mm, detector_pitch_mm=detector_pitch_mm,
                n_detectors=n_detectors, filter=filter, cutoff=cutoff, keep_resolution=True,
                projection_downsample=projection_downsample, slices_per_batch=slices_per_batch)
