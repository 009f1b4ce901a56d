"""Training losses. Supervised and Noise2Noise: the error in units of the noise level, ``(est − target)/σ``, so every
noise level weighs alike (a plain loss lets the highest levels dominate and under-smooths the low ones). Noise2Void:
the same, on the blind-spot (masked) voxels only."""
from __future__ import annotations

import torch


def training_loss(est: torch.Tensor, target: torch.Tensor, level: torch.Tensor, mask: torch.Tensor | None = None,
                  kind: str = "mse") -> torch.Tensor:
    """Mean of ``((est − target)/σ)²`` (``kind="mse"``) or ``|est − target|/σ`` (``"l1"``) per sample, averaged;
    with ``mask``, over the masked voxels only."""
    s = level.view(-1, *([1] * (est.ndim - 1)))
    r = (est - target) / s
    e = r * r if kind == "mse" else r.abs()
    if mask is None:
        return e.mean()
    return (e * mask).sum() / mask.sum().clamp_min(1)
