"""A small 2D CT projector in torch: ray-driven forward projection, fan-to-parallel rebinning and filtered back
projection (FBP), batched over axial slices so one call serves a whole volume on CPU or GPU.

Conventions
-----------
* An axial slice is a tensor ``[B, Nx, Ny]`` (a batch of ``B`` slices); pixel ``(i, j)`` is centred at
  ``x = (i − (Nx−1)/2)·dx``, ``y = (j − (Ny−1)/2)·dy`` in mm, the isocentre at the image centre.
* A ray is the line ``{p : p·(cos θ, sin θ) = t}`` (angle ``θ`` in radians, signed distance ``t`` in mm); its line
  integral of μ (mm⁻¹) is dimensionless.
* Fan beam (third generation, cylindrical detector centred on the source): source at angle ``β`` on a circle of
  radius ``R`` (``source_to_isocenter_mm``); detector channel at fan angle ``γ``. That ray is the parallel ray
  ``θ = β + γ + π/2``, ``t = −R·sin γ`` — the identity used both to project and to rebin.
* Reconstruction rebins fan data to parallel rays (as clinical scanners do), merges conjugate rays and applies
  parallel FBP (Kak & Slaney, *Principles of Computerized Tomographic Imaging*, 1988, ch. 3): the band-limited
  ramp of their eq. 61 times an apodisation window, then linear-interpolation back projection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medden.errors import ParameterError

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


@dataclass(frozen=True)
class ParallelBeam:
    """Parallel-beam acquisition over 180°.

    ``detector_pitch_mm``: detector sampling (mm); ``n_detectors``: channels, None to cover the image's circumscribed
    circle; ``n_views``: projections over 180°.
    """

    detector_pitch_mm: float
    n_detectors: int
    n_views: int

    def rays(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(θ, t)`` of every measured ray, each ``[n_views, n_detectors]``."""
        theta = torch.arange(self.n_views, device=device, dtype=torch.float64) * (math.pi / self.n_views)
        t = (torch.arange(self.n_detectors, device=device, dtype=torch.float64) - (self.n_detectors - 1) / 2)
        t = t * self.detector_pitch_mm
        return theta[:, None].expand(-1, self.n_detectors).float(), t[None, :].expand(self.n_views, -1).float()


@dataclass(frozen=True)
class FanBeam:
    """Fan-beam acquisition over 360° with a cylindrical detector centred on the source.

    ``source_to_isocenter_mm`` (R), ``source_to_detector_mm`` (D), ``detector_pitch_mm`` (channel width on the
    detector arc), ``n_detectors`` channels, ``n_views`` projections per rotation (even).
    """

    source_to_isocenter_mm: float
    source_to_detector_mm: float
    detector_pitch_mm: float
    n_detectors: int
    n_views: int

    @property
    def fan_angle_step(self) -> float:
        """Angle (rad) between neighbouring channels."""
        return self.detector_pitch_mm / self.source_to_detector_mm

    def gammas(self, device: torch.device) -> torch.Tensor:
        idx = torch.arange(self.n_detectors, device=device, dtype=torch.float64) - (self.n_detectors - 1) / 2
        return idx * self.fan_angle_step

    def rays(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(θ, t)`` of every measured ray, each ``[n_views, n_detectors]``."""
        beta = torch.arange(self.n_views, device=device, dtype=torch.float64) * (2 * math.pi / self.n_views)
        gamma = self.gammas(device)
        theta = beta[:, None] + gamma[None, :] + math.pi / 2
        t = (-self.source_to_isocenter_mm * torch.sin(gamma))[None, :].expand(self.n_views, -1)
        return theta.float(), t.float()


def fov_radius_mm(shape: tuple[int, int], pixel_mm: tuple[float, float]) -> float:
    """Radius (mm) of the circle circumscribing the image."""
    return 0.5 * math.hypot(shape[0] * pixel_mm[0], shape[1] * pixel_mm[1])


def forward_project(mu: torch.Tensor, pixel_mm: tuple[float, float], theta: torch.Tensor, t: torch.Tensor,
                    step_mm: float | None = None, max_samples: int = 2 ** 25) -> torch.Tensor:
    """Line integrals of ``mu`` along the rays ``(θ, t)``.

    Parameters
    ----------
    mu : ``[B, Nx, Ny]`` attenuation (mm⁻¹); zero outside the image.
    pixel_mm : ``(dx, dy)`` pixel size in mm.
    theta, t : ``[V, n]`` ray angles (rad) and signed distances (mm).
    step_mm : sampling step along each ray (default half the smaller pixel side); values between pixels are
        bilinearly interpolated (a Joseph-type ray-driven projector).

    Returns
    -------
    ``[B, V, n]`` dimensionless line integrals.
    """
    b, nx, ny = mu.shape
    dx, dy = pixel_mm
    step = step_mm or 0.5 * min(dx, dy)
    radius = fov_radius_mm((nx, ny), pixel_mm)
    n_s = int(math.ceil(2 * radius / step)) + 1
    s = (torch.arange(n_s, device=mu.device, dtype=torch.float32) - (n_s - 1) / 2) * step
    # normalised (align_corners=True) coordinates: grid[..., 0] indexes Ny (y), grid[..., 1] indexes Nx (x)
    half_x, half_y = (nx - 1) / 2 * dx, (ny - 1) / 2 * dy
    image = mu[None]
    v, n = theta.shape
    chunk = max(1, min(v, max_samples // max(1, b * n * n_s)))
    out = []
    for v0 in range(0, v, chunk):
        th, tt = theta[v0:v0 + chunk], t[v0:v0 + chunk]
        c, sn = torch.cos(th)[..., None], torch.sin(th)[..., None]
        px = tt[..., None] * c - s * sn  # [Vc, n, S]
        py = tt[..., None] * sn + s * c
        grid = torch.stack((py / half_y, px / half_x), dim=-1).reshape(1, -1, n_s, 2)
        vals = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out.append(vals.sum(-1).reshape(b, th.shape[0], n) * step)
    return torch.cat(out, dim=1)


def rebin_fan_to_parallel(sino: torch.Tensor, fan: FanBeam) -> tuple[torch.Tensor, float]:
    """Rebin a 360° fan-beam sinogram ``[B, V, n]`` to a 180° parallel one and average conjugate rays.

    Returns the parallel sinogram ``[B, V/2, n]`` (views ``θ_m = π m/(V/2)``, channels ``t_k`` centred with pitch
    ``R·Δγ``) and that pitch in mm. Values are bilinear in (view, channel), periodic in view.
    """
    b, v, n = sino.shape
    device = sino.device
    r = fan.source_to_isocenter_mm
    dgamma = fan.fan_angle_step
    pitch = r * dgamma
    theta = torch.arange(v, device=device, dtype=torch.float64) * (2 * math.pi / v)
    t = (torch.arange(n, device=device, dtype=torch.float64) - (n - 1) / 2) * pitch
    gamma = -torch.asin((t / r).clamp(-1, 1))
    beta = torch.remainder(theta[:, None] - gamma[None, :] - math.pi / 2, 2 * math.pi)
    view_idx = beta / (2 * math.pi / v)  # in [0, V); row V is a copy of row 0 (periodicity)
    chan_idx = gamma / dgamma + (n - 1) / 2
    grid = torch.stack((2 * chan_idx[None, :].expand(v, -1) / (n - 1) - 1, 2 * view_idx / v - 1), dim=-1)
    padded = torch.cat((sino, sino[:, :1]), dim=1)[None]  # [1, B, V+1, n]
    par = F.grid_sample(padded, grid[None].float(), mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    half = v // 2
    # the ray (θ + π, −t) is the ray (θ, t): average the two measurements, as a full-rotation scan does
    par = 0.5 * (par[:, :half] + par[:, half:].flip(-1))
    return par, pitch


def ramp_filter(n: int, pitch_mm: float, window: str = "shepp-logan", cutoff: float = 1.0,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """Frequency response (length ``P``, a power of two ≥ 2n, FFT order) of the apodised ramp, scaled by the pitch."""
    if window not in FILTERS:
        raise ParameterError(f"unknown FBP filter {window!r} (known: {', '.join(FILTERS)})")
    if not 0 < cutoff <= 1:
        raise ParameterError(f"FBP filter cutoff must be in (0, 1] (fraction of Nyquist), got {cutoff}")
    p = 1 << int(math.ceil(math.log2(2 * n)))
    k = torch.arange(p, device=device, dtype=torch.float64)
    k = torch.where(k < p // 2, k, k - p)  # signed lag, circular layout
    h = torch.zeros(p, device=device, dtype=torch.float64)
    h[k == 0] = 1 / (4 * pitch_mm ** 2)
    odd = (k.abs() % 2) == 1
    h[odd] = -1 / (math.pi * k[odd] * pitch_mm) ** 2
    response = torch.fft.fft(h).real * pitch_mm
    f = torch.fft.fftfreq(p, device=device, dtype=torch.float64).abs() * 2 / cutoff  # 1 = cutoff
    win = {"ram-lak": torch.ones_like(f),
           "shepp-logan": torch.sinc(f / 2),
           "cosine": torch.cos(math.pi * f / 2),
           "hamming": 0.54 + 0.46 * torch.cos(math.pi * f),
           "hann": 0.5 + 0.5 * torch.cos(math.pi * f)}[window]
    response = response * torch.where(f <= 1, win, torch.zeros_like(win))
    return response.float(), p


def fbp_parallel(sino: torch.Tensor, pitch_mm: float, shape: tuple[int, int], pixel_mm: tuple[float, float],
                 window: str = "shepp-logan", cutoff: float = 1.0, slice_chunk: int = 16) -> torch.Tensor:
    """Filtered back projection of a 180° parallel sinogram ``[B, V, n]`` (views ``θ_m = π m/V``, centred channels)
    onto a ``[B, Nx, Ny]`` grid. Input line integrals give μ in mm⁻¹."""
    b, v, n = sino.shape
    response, p = ramp_filter(n, pitch_mm, window, cutoff, sino.device)
    q = torch.fft.irfft(torch.fft.rfft(sino, n=p, dim=-1) * response[: p // 2 + 1], n=p, dim=-1)[..., :n]
    q = q.permute(1, 0, 2).contiguous()  # [V, B, n]: one view is a contiguous block
    nx, ny = shape
    dx, dy = pixel_mm
    x = (torch.arange(nx, device=sino.device, dtype=torch.float32) - (nx - 1) / 2) * dx
    y = (torch.arange(ny, device=sino.device, dtype=torch.float32) - (ny - 1) / 2) * dy
    t_half = (n - 1) / 2 * pitch_mm
    out = torch.zeros((1, b, nx, ny), device=sino.device, dtype=torch.float32)
    grid = torch.zeros((1, nx, ny, 2), device=sino.device, dtype=torch.float32)  # second coordinate stays 0
    u = grid[0, :, :, 0]
    for m in range(v):
        th = math.pi * m / v
        torch.add((x * (math.cos(th) / t_half))[:, None], (y * (math.sin(th) / t_half))[None, :], out=u)
        # a few slices at a time keep the accumulator in cache; the grid is shared by all of them
        for c0 in range(0, b, slice_chunk):
            qc = q[m, c0:c0 + slice_chunk]
            out[:, c0:c0 + slice_chunk] += F.grid_sample(qc.view(1, -1, 1, n), grid, mode="bilinear",
                                                         padding_mode="zeros", align_corners=True)
    return out[0] * (math.pi / v)
