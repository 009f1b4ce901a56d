"""Training medden's deep denoisers: a typed config validated up front (:mod:`~medden.training.config`), patches with
on-the-fly physics noise (:mod:`~medden.training.data`), supervised and self-supervised losses and the resumable loop
(:mod:`~medden.training.loop`). Entry points: :func:`train` and ``medden train CONFIG``."""
from medden.training.config import ConfigError, DataSpec, NoiseSpec, TrainConfig, load_config, validate_config
from medden.training.folder import folder_config, shipped_weights_for
from medden.training.loop import export, train

__all__ = ["ConfigError", "DataSpec", "NoiseSpec", "TrainConfig", "load_config", "validate_config", "train", "export",
           "folder_config", "shipped_weights_for"]
