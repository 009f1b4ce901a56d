"""Training losses. Supervised and Noise2Noise: the error in units of the noise level, ``(est − target)/σ``, so every
noise level weighs alike (a plain loss lets the highest levels dominate and under-smooths the low ones). Noise2Void:
the same, on the blind-spot (masked) voxels only.

``lowpass_weight`` adds the same error after averaging over ``lowpass_size``³ blocks (in units of σ, rescaled by the
block size so that a white error weighs as in the voxel term): local means are what HU-bias measurements read, and
this term makes the network learn them first. The conditional mean minimises both terms, so it changes what is
learned fastest, not the optimum."""
from __future__ import annotations

import math

import torch


def training_loss(est: torch.Tensor, target: torch.Tensor, level: torch.Tensor, mask: torch.Tensor | None = None,
                  kind: str = "mse", lowpass_weight: float = 0.0, lowpass_size: int = 8) -> torch.Tensor:
    """Mean of ``((est − target)/σ)²`` (``kind="mse"``) or ``|est − target|/σ`` (``"l1"``) per sample, averaged;
    with ``mask``, over the masked voxels only."""
    s = level.view(-1, *([1] * (est.ndim - 1)))
    r = (est - target) / s
    e = r * r if kind == "mse" else r.abs()
    if mask is None:
        loss = e.mean()
        if lowpass_weight > 0 and min(r.shape[2:]) >= lowpass_size:
            lp = torch.nn.functional.avg_pool3d(r, lowpass_size) * lowpass_size ** 1.5  # white: unit variance again
            loss = loss + lowpass_weight * (lp * lp if kind == "mse" else lp.abs()).mean()
        return loss
    return (e * mask).sum() / mask.sum().clamp_min(1)


def recorrupted_pair(y: torch.Tensor, sigma: float, alpha: float, z: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Recorrupted-to-Recorrupted (Pang et al., CVPR 2021) from a noisy ``y`` of level ``sigma`` and a standard normal
    ``z``: input ``y + α·σ·z``, target ``y − σ·z/α`` (their noises are uncorrelated, so the target is unbiased for the
    noise-free signal) and the input's level ``σ·√(1 + α²)``."""
    return y + alpha * sigma * z, y - sigma * z / alpha, sigma * math.sqrt(1 + alpha * alpha)
