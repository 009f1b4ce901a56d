"""The diffusion prior: a small 2.5D denoising diffusion model of axial slices, and its weights.

:class:`SlicePrior` is MONAI's :class:`~monai.networks.nets.DiffusionModelUNet` in 2D. Its input is a stack of
``2·neighbours + 1`` adjacent slices, all at the **same** diffusion time ``t`` (``x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε`` with
independent ``ε`` per slice); it predicts the noise ``ε`` of the centre slice. The neighbouring slices are
conditioning channels that carry the through-plane context, so sampling a whole volume slice by slice (every slice's
stack taken from the same ``x_t`` volume) stays coherent across slices while each network call is a cheap 2D one.
2D priors applied slice-wise to 3D problems are the approach of Chung et al. (DiffusionMBIR, CVPR 2023) and Lee et
al. (NeurIPS 2023, "Improving 3D imaging with 2D diffusion models"); here the coupling between slices is simply in
the input channels.

The noise schedule is that of DDPM (Ho et al., NeurIPS 2020): ``T = 1000`` steps, linear β from 1e-4 to 0.02, computed
by MONAI's :class:`~monai.networks.schedulers.DDPMScheduler`. The network is only trained for ``t < t_max`` (the
low-noise end that denoising needs): the largest noise it knows is ``σ̄(t_max) = √((1−ᾱ)/ᾱ)`` in its units, recorded on
the card.

Units: the volume is mapped to ``[-1, 1]`` by ``z = 2·(x − offset)/scale − 1`` with ``offset = 0`` and ``scale`` the
99.9th percentile of the non-zero voxels (MR; the card's :class:`~medden.models.Normalisation`), so a zeroed
background is ``−1`` and a noise σ in data units is ``2σ/scale`` in network units.

Weights are stored like every medden model (:mod:`medden.models.card`): ``NAME.safetensors`` plus the JSON card.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medden.models.card import (SHIPPED_PRIOR, SHIPPED_PRIORS, ModelCard, ModelError,  # noqa: F401  (re-exported)
                                load_weights_into, prior_available, read_card, shipped_prior_path)

ARCHITECTURE = "diffusion-unet2.5d"


class SlicePrior(nn.Module):
    """ε-prediction network of a 2.5D diffusion prior (see the module docstring).

    Parameters
    ----------
    neighbours : slices on each side given as conditioning channels (input channels ``2·neighbours + 1``).
    channels : feature channels per U-Net level (MONAI ``DiffusionModelUNet``); the number of levels sets the size
        multiple (``2**(levels−1)``) that the sampler pads slices to.
    num_res_blocks : residual blocks per level.
    norm_num_groups : group-norm groups (must divide every entry of ``channels``).
    num_train_timesteps, beta_start, beta_end : the DDPM linear-β schedule.
    t_max : training drew ``t`` uniformly in ``[0, t_max)``; the sampler never starts above it.
    """

    architecture = ARCHITECTURE

    def __init__(self, neighbours: int = 1, channels: tuple[int, ...] = (16, 32, 64), num_res_blocks: int = 1,
                 norm_num_groups: int = 8, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, t_max: int = 200) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        if neighbours < 0:
            raise ModelError(f"neighbours must be >= 0, got {neighbours}")
        if not 0 < t_max <= num_train_timesteps:
            raise ModelError(f"t_max must be in (0, {num_train_timesteps}], got {t_max}")
        self.config = {"neighbours": int(neighbours), "channels": [int(c) for c in channels],
                       "num_res_blocks": int(num_res_blocks), "norm_num_groups": int(norm_num_groups),
                       "num_train_timesteps": int(num_train_timesteps), "beta_start": float(beta_start),
                       "beta_end": float(beta_end), "t_max": int(t_max)}
        self.neighbours = int(neighbours)
        self.in_channels = 2 * self.neighbours + 1
        self.t_max = int(t_max)
        self.multiple = 2 ** (len(channels) - 1)
        self.unet = DiffusionModelUNet(spatial_dims=2, in_channels=self.in_channels, out_channels=1,
                                       channels=tuple(channels), attention_levels=(False,) * len(channels),
                                       num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups,
                                       # the middle block's self-attention through torch's fused attention: memory
                                       # linear in the tokens (the plain form needs tokens² per slice: 32 GiB for a
                                       # batch of 256² slices), same weights
                                       use_flash_attention=True)
        # ᾱ_t of the schedule: not a weight (recomputed from the config), so kept out of the state dict
        self.register_buffer("alphas_cumprod", self.make_scheduler().alphas_cumprod.float().clone(), persistent=False)

    def make_scheduler(self):
        """The MONAI DDPM scheduler of this prior (used for ``add_noise`` in training and for ``ᾱ_t``)."""
        from monai.networks.schedulers import DDPMScheduler

        c = self.config
        return DDPMScheduler(num_train_timesteps=c["num_train_timesteps"], schedule="linear_beta",
                             beta_start=c["beta_start"], beta_end=c["beta_end"], prediction_type="epsilon")

    def sigma_bar(self, t: torch.Tensor | int) -> torch.Tensor:
        """Noise level of ``x_t/√ᾱ_t`` around ``x₀`` in network units: ``√((1 − ᾱ_t)/ᾱ_t)``."""
        a = self.alphas_cumprod[torch.as_tensor(t, device=self.alphas_cumprod.device).long()]
        return torch.sqrt((1 - a) / a)

    @property
    def sigma_max(self) -> float:
        """The largest noise level (network units) the prior was trained for: ``σ̄(t_max − 1)``."""
        return float(self.sigma_bar(self.t_max - 1))

    def forward(self, stack: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``stack``: ``[B, 2n+1, H, W]`` slices at step ``t`` (``[B]`` integers); returns ``ε̂``, ``[B, 1, H, W]``."""
        if stack.shape[1] != self.in_channels:
            raise ValueError(f"the prior takes {self.in_channels} slices per stack, got {stack.shape[1]}")
        return self.unet(stack, timesteps=t.long())


def build_prior(**config: Any) -> SlicePrior:
    """A fresh (untrained) :class:`SlicePrior`; a bad ``config`` raises :class:`ModelError`."""
    try:
        return SlicePrior(**config)
    except TypeError as exc:
        raise ModelError(f"bad configuration for {ARCHITECTURE}: {exc}") from None


def load_prior(path: str | Path | None = None, device: str = "cpu") -> tuple[SlicePrior, ModelCard]:
    """Load a saved diffusion prior: ``(network in eval mode on device, card)``.

    Raises :class:`~medden.models.ModelError` when the file or its card is missing, when the file is corrupt, when the
    card names another architecture, or when the tensors do not fit the card's configuration.
    """
    path = Path(path) if path else shipped_prior_path()
    if not path.is_file():
        raise ModelError(f"diffusion prior weights {path} not found"
                         + (" (train one: medden train medden/training/configs/diffusion_mr_prior.json "
                            "--data-root DATA)" if not path.exists() else ""))
    card = read_card(path)
    if card.architecture != ARCHITECTURE:
        raise ModelError(f"{path} holds a {card.architecture} model, not a diffusion prior ({ARCHITECTURE})")
    net = build_prior(**card.config)
    state = load_weights_into(net, path, card)
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise ModelError(f"weights in {path} hold NaN or Inf values")
    return net.to(device).eval(), card


def t_for_sigma(net: SlicePrior, sigma: float) -> int:
    """The step ``t`` whose noise level ``σ̄_t`` is nearest to ``sigma`` (network units), at most ``t_max − 1``."""
    levels = net.sigma_bar(torch.arange(net.t_max))
    return int(torch.argmin((levels - float(sigma)).abs()))
