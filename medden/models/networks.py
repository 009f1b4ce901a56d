"""Noise-level-conditioned 3D denoising networks.

Both networks take a normalised volume ``x`` (``[B, 1, D, H, W]``) and the noise standard deviation ``sigma`` in the
same normalised units (a ``[B]`` tensor of levels or a ``[B, 1, D, H, W]`` noise map), feed the level to the network
as a second input channel (as FFDNet, Zhang et al., IEEE TIP 2018), and learn the residual.

By default they are *bias-free* (Mohan et al., "Robust and interpretable blind image denoising via bias-free
convolutional neural networks", ICLR 2020): no additive constants and positively homogeneous activations (leaky
ReLU, max pooling), so ``f(a·x, a·σ) = a·f(x, σ)`` for every ``a > 0``. The output ``x + f(x, σ)`` therefore equals
``σ·g(x/σ)``-style processing in units of the noise: exactly scale-equivariant, and one model generalises over the
noise range (Rician noise is itself scale-free in ``x/σ``). With ``bias=True`` the residual is instead scaled by the
level, ``x + σ·r(x, σ)``.

* :class:`ConditionedUNet` — MONAI's :class:`~monai.networks.nets.BasicUNet` (4 poolings) with the level as a channel.
  The poolings make it cheap per voxel, the fastest of the two on CPU for a given quality.
* :class:`DnCNN3D` — the residual DnCNN of Zhang et al. (IEEE TIP 2017) in 3D, with the level as a channel.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _split_input(x: torch.Tensor, sigma: torch.Tensor | float | None) -> tuple[torch.Tensor, torch.Tensor | float]:
    """``(image, level)``; with ``sigma`` None, ``x`` is one ``[B, 2, D, H, W]`` tensor holding the image and its
    noise-level map (the single input MONAI's bundle tools feed a ``network_def``)."""
    return (x[:, :1], x[:, 1:2]) if sigma is None else (x, sigma)


def _level_map(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``sigma`` broadcast to a ``[B, 1, D, H, W]`` map like ``x``."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.ndim == 1:
        s = s.view(-1, 1, 1, 1, 1)
    return s.expand_as(x)


class ConditionedUNet(nn.Module):
    """A 3D U-Net (MONAI ``BasicUNet``) conditioned on the noise level, predicting the noise residual.

    Parameters
    ----------
    features : the six feature counts of ``BasicUNet`` (four encoder levels, bottleneck, last decoder).
    norm : MONAI norm name for the conv blocks; ``"none"`` (default) keeps the network homogeneous.
    bias : additive biases; False (default) makes the network bias-free and homogeneous of degree one.
    """

    architecture = "conditioned-unet3d"

    def __init__(self, features: tuple[int, ...] = (8, 16, 32, 64, 128, 8), norm: str = "none",
                 bias: bool = False) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.config = {"features": [int(f) for f in features], "norm": norm, "bias": bool(bias)}
        self.net = BasicUNet(spatial_dims=3, in_channels=2, out_channels=1, features=tuple(features),
                             norm=None if norm == "none" else norm, act=("LeakyReLU", {"negative_slope": 0.1,
                                                                                         "inplace": True}),
                             upsample="deconv", bias=bias)
        if not bias:  # BasicUNet keeps biases on its transposed convolutions and its final 1×1 convolution
            for m in self.net.modules():
                if isinstance(m, (nn.ConvTranspose3d, nn.Conv3d)) and m.bias is not None:
                    m.register_parameter("bias", None)
        self.bias = bool(bias)
        self.multiple = 16  # spatial sizes must be multiples of 2**4

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        x, sigma = _split_input(x, sigma)
        s = _level_map(x, sigma)
        r = self.net(torch.cat([x, s], dim=1)).to(x.dtype)
        return x + (s * r if self.bias else r)


class DnCNN3D(nn.Module):
    """3D DnCNN (residual learning) conditioned on the noise level.

    Parameters
    ----------
    depth : number of 3×3×3 convolutions (≥ 3).
    width : feature channels.
    bias : additive biases (False: bias-free, homogeneous of degree one).
    """

    architecture = "conditioned-dncnn3d"

    def __init__(self, depth: int = 8, width: int = 32, bias: bool = False) -> None:
        super().__init__()
        self.config = {"depth": int(depth), "width": int(width), "bias": bool(bias)}
        layers: list[nn.Module] = [nn.Conv3d(2, width, 3, padding=1, bias=bias), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv3d(width, width, 3, padding=1, bias=bias), nn.ReLU(inplace=True)]
        layers.append(nn.Conv3d(width, 1, 3, padding=1, bias=bias))
        self.net = nn.Sequential(*layers)
        self.bias = bool(bias)
        self.multiple = 1

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        x, sigma = _split_input(x, sigma)
        s = _level_map(x, sigma)
        r = self.net(torch.cat([x, s], dim=1)).to(x.dtype)
        return x + (s * r if self.bias else r)


def widen_unet(net: ConditionedUNet, state: dict[str, torch.Tensor], features: list[int]) -> ConditionedUNet:
    """Load into ``net`` the weights ``state`` of a narrower :class:`ConditionedUNet` (``features`` ≤ ``net``'s at
    every level), preserving its function (Net2Net-style, Chen et al., ICLR 2016): the old channels keep their
    weights, the new channels start from ``net``'s random initialisation, and the weights from new channels into old
    ones are zero, so the output is unchanged until training uses the new capacity. The concatenated skip
    connections (``[encoder channels, upsampled channels]``) keep each part's old channels first."""
    old_f, new_f = [int(f) for f in features], net.config["features"]
    if len(old_f) != len(new_f) or any(o > n for o, n in zip(old_f, new_f)):
        raise ValueError(f"cannot widen features {old_f} to {new_f}")
    out = {}
    for key, w in net.state_dict().items():
        old = state[key]
        if old.shape == w.shape:
            out[key] = old
            continue
        w = w.clone()
        o_ax, i_ax = (1, 0) if "deconv" in key else (0, 1)
        n_out = old.shape[o_ax]
        i_idx = torch.arange(old.shape[i_ax])
        if "upcat_" in key and ".convs.conv_0." in key:  # input = cat([skip (features[level-1]), upsampled])
            level = int(key.split("upcat_")[1][0])
            i_idx = torch.where(i_idx < old_f[level - 1], i_idx, i_idx - old_f[level - 1] + new_f[level - 1])
        new_in = torch.ones(w.shape[i_ax], dtype=torch.bool)
        new_in[i_idx] = False
        if o_ax == 0:
            w[:n_out, new_in] = 0
            w[:n_out, i_idx] = old
        else:
            w[new_in, :n_out] = 0
            w[i_idx, :n_out] = old
        out[key] = w
    net.load_state_dict(out)
    return net


ARCHITECTURES: dict[str, type[nn.Module]] = {
    ConditionedUNet.architecture: ConditionedUNet,
    DnCNN3D.architecture: DnCNN3D,
}


def build_network(architecture: str, **config: Any) -> nn.Module:
    """A fresh network of a known ``architecture`` (see :data:`ARCHITECTURES`) with its keyword ``config``."""
    from medden.errors import ModelError

    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise ModelError(f"unknown network architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})") from None
    try:
        return cls(**config)
    except TypeError as exc:
        raise ModelError(f"bad configuration for {architecture}: {exc}") from None
