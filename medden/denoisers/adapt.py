"""Per-scan adaptation: a short self-supervised fine-tune of a denoising network on the very scan it is about to
denoise (``medden denoise ... --method deep-mr --param adapt_seconds=N``).

The scan ``y = x + n`` is its own training data through Recorrupted-to-Recorrupted (Pang et al., CVPR 2021): input
``y + α·σ·z``, target ``y − σ·z/α`` with ``σ`` the estimated noise level and ``z`` unit noise **with the scan's noise
covariance**; then the input's and the target's noise are uncorrelated and the expected loss is the loss against the
noise-free ``x`` plus a constant — no clean reference needed. MR noise is white, so ``z`` is standard normal. CT noise
is correlated in-plane (its noise power spectrum, NPS): ``z`` is white noise shaped by the scan's measured NPS (white
``z`` would leave the scan's low-frequency noise correlated between input and target, and the network would learn to
keep it). For magnitude (MR) data the loss is taken where the local mean is well above the level, where the noise is
Gaussian as R2R assumes. The network is a copy: the shipped weights are never changed. The budget is wall-clock
seconds, spent on the device the denoiser runs on (patches cropped and noise made there).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from medden.errors import ParameterError

#: patch side (voxels) for adaptation; smaller volumes are refused
ADAPT_PATCH = 32
#: CT patches: in-plane (where the noise is correlated) up to 64 voxels, 16 along the slice axis, as in training;
#: a thick-slice scan with fewer slices (down to the minimum) is padded to 16 and scored on its own slices only
CT_ADAPT_PATCH = (64, 16)
CT_MIN_SLICES = 8


def adapt_patch(shape: tuple[int, ...], ct: bool, axial_axis: int = 2) -> tuple[int, int, int]:
    """The region adaptation crops: :data:`ADAPT_PATCH`³ (MR) or, for CT, :data:`CT_ADAPT_PATCH` (in-plane sides cut
    to the volume's in multiples of 16, the network's, never below :data:`ADAPT_PATCH`; along the slice axis 16, or
    all the slices of a thinner volume)."""
    if not ct:
        return (ADAPT_PATCH,) * 3
    side, slices = CT_ADAPT_PATCH
    return tuple(min(slices, n) if a == axial_axis else max(ADAPT_PATCH, min(side, n) // 16 * 16)
                 for a, n in enumerate(shape))


def _minimum(ct: bool, axial_axis: int) -> tuple[int, int, int]:
    return tuple(CT_MIN_SLICES if ct and a == axial_axis else ADAPT_PATCH for a in range(3))


def check_adaptable(x: np.ndarray, sigma, seconds: float, ct: bool = False, axial_axis: int = 2) -> float:
    """The scalar noise level to adapt with, or :class:`ParameterError` (one clear line) for a budget that is not a
    number ≥ 0, a volume smaller than its :func:`adapt_patch` on a side, a constant volume, or no noise."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ParameterError(f"adapt_seconds must be a number of seconds ≥ 0, got {seconds}")
    need = _minimum(ct, axial_axis)
    if x.ndim != 3 or any(n < p for n, p in zip(x.shape, need)):
        raise ParameterError(f"adapt_seconds: the volume {tuple(x.shape)} is too small to adapt on "
                             f"(needs at least {'×'.join(map(str, need))} voxels)")
    if not np.isfinite(x).all() or float(np.ptp(x)) == 0:
        raise ParameterError("adapt_seconds: the volume is constant (or not finite): nothing to adapt on")
    level = float(np.median(sigma)) if np.ndim(sigma) else float(sigma)
    if not (math.isfinite(level) and level > 0):
        raise ParameterError(f"adapt_seconds: needs a positive noise level, got {level}")
    return level


def shaped_noise(psd: np.ndarray, batch: int, generator: torch.Generator, device: str) -> torch.Tensor:
    """``batch`` unit-variance noise patches ``[batch, 1, *psd.shape]`` whose power spectrum is ``psd`` (unshifted
    FFT order, any scale; symmetric, as a real noise's is): white noise filtered by ``√(psd / mean psd)``."""
    shape = psd.shape
    gain = torch.as_tensor(np.sqrt(psd / max(float(np.mean(psd)), 1e-30))[..., : shape[-1] // 2 + 1],
                           dtype=torch.float32, device=device)
    w = torch.randn((batch, 1, *shape), generator=generator, device=device)
    return torch.fft.irfftn(torch.fft.rfftn(w, dim=(-3, -2, -1)) * gain, s=shape, dim=(-3, -2, -1))


def adapt_network(net: torch.nn.Module, x: np.ndarray, sigma, *, seconds: float, device: str = "cpu",
                  magnitude: bool = True, psd: Callable[[tuple], np.ndarray] | None = None, axial_axis: int = 2,
                  batch: int = 2, lr: float = 5e-5, alpha: float = 0.5, seed: int = 0,
                  log: Callable[[str], None] | None = None) -> torch.nn.Module:
    """A copy of ``net`` fine-tuned for ``seconds`` on ``x`` (already in the network's units, level ``sigma`` in the
    same units) by Recorrupted-to-Recorrupted; returns it in eval mode. ``magnitude``: MR magnitude data (the loss
    is masked to where the signal is above 3× the input level; otherwise CT, on :func:`adapt_patch`'s CT patches).
    ``psd``: the scan's noise spectrum for a patch shape (:meth:`medden.noise.NoiseEstimate.sigma_psd`, planes across
    ``axial_axis``), which the recorrupting noise gets; None: white noise."""
    from medden.inference import resolve_device
    from medden.models.losses import recorrupted_pair, training_loss

    ct = not magnitude  # CT: its patch shape (slice axis short); its noise texture when ``psd`` is given
    level = check_adaptable(x, sigma, seconds, ct=ct, axial_axis=axial_axis)
    device = resolve_device(device)
    net = copy.deepcopy(net).to(device).train()
    if seconds == 0:
        return net.eval()
    start = time.perf_counter()
    vol = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    patch = adapt_patch(vol.shape, ct, axial_axis)
    short = CT_ADAPT_PATCH[1] - patch[axial_axis] if ct else 0  # slices to pad (replicated; not scored)
    shape = tuple(p + (short if a == axial_axis else 0) for a, p in enumerate(patch))
    spectrum = psd(shape) if psd is not None else None
    spectrum = None if spectrum is None or np.ndim(spectrum) == 0 else np.asarray(spectrum)  # a scalar: white
    in_level = level * math.sqrt(1 + alpha * alpha)
    levels = torch.full((batch,), in_level, device=device)
    steps, losses = 0, []
    while steps == 0 or time.perf_counter() - start < seconds:  # at least one step
        ys = []
        for _ in range(batch):
            for _ in range(8):  # prefer patches mostly inside the object
                c = [int(rng.integers(0, n - p + 1)) for n, p in zip(vol.shape, patch)]
                y = vol[c[0]:c[0] + patch[0], c[1]:c[1] + patch[1], c[2]:c[2] + patch[2]]
                if not magnitude or float((y > 3 * in_level).float().mean()) > 0.3:
                    break
            ys.append(y)
        y = torch.stack(ys)[:, None]
        if short:
            pad = [0] * 6
            pad[2 * (2 - axial_axis) + 1] = short  # F.pad lists the last axis first
            y = F.pad(y, pad, mode="replicate")
        if spectrum is not None:
            z = shaped_noise(spectrum, batch, gen, device)
        else:
            z = torch.randn(y.shape, generator=gen, device=device)
        mask = None
        if magnitude:
            mask = (F.avg_pool3d(y, 3, stride=1, padding=1, count_include_pad=False) > 3 * in_level).float()
            if float(mask.sum()) == 0:
                mask = None
        elif short:  # the replicated slices share the scan's noise, which R2R's recorrupting noise does not match
            mask = torch.ones_like(y)
            mask.narrow(2 + axial_axis, patch[axial_axis], short).zero_()
        noisier, target, _ = recorrupted_pair(y, level, alpha, z)
        loss = training_loss(net(noisier, levels), target, levels, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        steps += 1
        losses.append(float(loss.detach()))
    if log:
        log(f"adapted on the scan for {time.perf_counter() - start:.1f} s: {steps} steps of {batch}×"
            f"{'×'.join(map(str, shape))} ({'NPS-shaped' if spectrum is not None else 'white'} recorrupting noise), "
            f"loss {np.mean(losses[-10:]) if losses else float('nan'):.4f}")
    return net.eval()
