"""Training medden's deep models with one trainer: a typed config validated up front
(:mod:`~medden.training.config` — :class:`TrainConfig` for the denoising U-Nets, :class:`PriorConfig` for the
diffusion priors), patches made on the device with on-the-fly physics noise (:mod:`~medden.training.data`), the
shared engine (:mod:`~medden.training.engine`: run folders named by config and data, resume, schedule, progress),
the U-Net loop (:mod:`~medden.training.loop`), the prior's (:mod:`~medden.training.diffusion`) and per-scan
adaptation (:mod:`~medden.denoisers.adapt`, at inference). Entry points: :func:`train` and ``medden train CONFIG``."""
from __future__ import annotations

from typing import Callable

from medden.training.config import (
    ConfigError, DataSpec, NoiseSpec, PriorConfig, TrainConfig, load_config, validate_config)
from medden.training.engine import TrainingError
from medden.training.folder import folder_config, shipped_weights_for
from medden.training.loop import export


def train(cfg: TrainConfig | PriorConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or resume the same run of) what ``cfg`` describes: a denoising network or a diffusion prior."""
    if isinstance(cfg, PriorConfig):
        from medden.training.diffusion import train_prior

        return train_prior(cfg, log)
    from medden.training.loop import train as train_denoiser

    return train_denoiser(cfg, log)


__all__ = ["ConfigError", "DataSpec", "NoiseSpec", "PriorConfig", "TrainConfig", "TrainingError", "load_config",
           "validate_config", "train", "export", "folder_config", "shipped_weights_for"]
