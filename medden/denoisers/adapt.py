"""Per-scan adaptation: a short self-supervised fine-tune of a denoising network on the very scan it is about to
denoise (``medden denoise ... --method deep-mr --param adapt_seconds=N``).

The scan ``y = x + n`` is its own training data through Recorrupted-to-Recorrupted (Pang et al., CVPR 2021): input
``y + α·σ·z``, target ``y − σ·z/α`` with ``z`` standard normal and ``σ`` the estimated noise level, whose expected
loss is the loss against the noise-free ``x`` plus a constant — no clean reference needed. For magnitude (MR) data
the loss is taken where the local mean is well above the level, where the noise is Gaussian as R2R assumes. The
network is a copy: the shipped weights are never changed. The budget is wall-clock seconds, spent on the device the
denoiser runs on (patches cropped and noise made there).
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


def check_adaptable(x: np.ndarray, sigma, seconds: float) -> float:
    """The scalar noise level to adapt with, or :class:`ParameterError` (one clear line) for a budget that is not a
    number ≥ 0, a volume smaller than :data:`ADAPT_PATCH` on a side, a constant volume, or no noise."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ParameterError(f"adapt_seconds must be a number of seconds ≥ 0, got {seconds}")
    if x.ndim != 3 or min(x.shape) < ADAPT_PATCH:
        raise ParameterError(f"adapt_seconds: the volume {tuple(x.shape)} is too small to adapt on "
                             f"(needs at least {ADAPT_PATCH} voxels on each side)")
    if not np.isfinite(x).all() or float(np.ptp(x)) == 0:
        raise ParameterError("adapt_seconds: the volume is constant (or not finite): nothing to adapt on")
    level = float(np.median(sigma)) if np.ndim(sigma) else float(sigma)
    if not (math.isfinite(level) and level > 0):
        raise ParameterError(f"adapt_seconds: needs a positive noise level, got {level}")
    return level


def adapt_network(net: torch.nn.Module, x: np.ndarray, sigma, *, seconds: float, device: str = "cpu",
                  magnitude: bool = True, batch: int = 2, lr: float = 5e-5, alpha: float = 0.5, seed: int = 0,
                  log: Callable[[str], None] | None = None) -> torch.nn.Module:
    """A copy of ``net`` fine-tuned for ``seconds`` on ``x`` (already in the network's units, level ``sigma`` in the
    same units) by Recorrupted-to-Recorrupted; returns it in eval mode. ``magnitude``: MR magnitude data (the loss
    is masked to where the signal is above 3× the input level)."""
    from medden.inference import resolve_device
    from medden.models.losses import recorrupted_pair, training_loss

    level = check_adaptable(x, sigma, seconds)
    device = resolve_device(device)
    net = copy.deepcopy(net).to(device).train()
    if seconds == 0:
        return net.eval()
    start = time.perf_counter()
    vol = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    p = ADAPT_PATCH
    in_level = level * math.sqrt(1 + alpha * alpha)
    levels = torch.full((batch,), in_level, device=device)
    steps, losses = 0, []
    while steps == 0 or time.perf_counter() - start < seconds:  # at least one step
        ys = []
        for _ in range(batch):
            for _ in range(8):  # prefer patches mostly inside the object
                c = [int(rng.integers(0, n - p + 1)) for n in vol.shape]
                y = vol[c[0]:c[0] + p, c[1]:c[1] + p, c[2]:c[2] + p]
                if not magnitude or float((y > 3 * in_level).float().mean()) > 0.3:
                    break
            ys.append(y)
        y = torch.stack(ys)[:, None]
        z = torch.randn(y.shape, generator=gen, device=device)
        mask = None
        if magnitude:
            mask = (F.avg_pool3d(y, 3, stride=1, padding=1, count_include_pad=False) > 3 * in_level).float()
            if float(mask.sum()) == 0:
                mask = None
        noisier, target, _ = recorrupted_pair(y, level, alpha, z)
        loss = training_loss(net(noisier, levels), target, levels, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        steps += 1
        losses.append(float(loss.detach()))
    if log:
        log(f"adapted on the scan for {time.perf_counter() - start:.1f} s: {steps} steps of {batch}×{p}³, "
            f"loss {np.mean(losses[-10:]) if losses else float('nan'):.4f}")
    return net.eval()
