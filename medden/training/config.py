"""The typed training configuration, validated in full before any work starts (CAREamics-style).

A config is a JSON (or YAML, when PyYAML is installed) file; every field is checked by pydantic, unknown fields are
errors, and the data files must exist. :func:`load_config` turns every problem into one :class:`ConfigError` line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from medden.errors import MeddenError


class ConfigError(MeddenError, ValueError):
    """A training configuration is malformed: unknown or missing field, wrong type, missing data file."""


def data_root(given: str | Path | None = None) -> Optional[Path]:
    """The folder relative data paths are read from: ``given`` (``--data-root``), else ``$MEDDEN_DATA``, else None
    (the current folder)."""
    import os

    root = given or os.environ.get("MEDDEN_DATA")
    return Path(root).expanduser() if root else None


def resolve_data_path(path: str, root: str | Path | None) -> Path:
    """``path`` as given when absolute, else under ``root`` (when given)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or root is None else Path(root) / p


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """One training volume. ``pair`` (Noise2Noise) is a second, independently noisy scan of the same object."""

    path: str
    licence: str = "unknown"
    pair: Optional[str] = None
    #: average-pool the in-plane axes (and isotropic ones) by this factor to make a cleaner target (noise / √(f²..f³))
    downsample: int = Field(1, ge=1, le=4)
    #: keep only these slices along the last axis (start, stop), e.g. to split one volume into train and validation
    slices: Optional[tuple[int, int]] = None
    #: ``clean``: a noise-free reference, the supervised target; ``noisy``: a real scan with its own noise, trained on
    #: at native resolution by Recorrupted-to-Recorrupted with its estimated noise level (supervised configs; on CT
    #: the recorrupting noise is the scan's simulated projection-domain noise)
    target: Literal["clean", "noisy"] = "clean"
    #: relative sampling weight
    weight: float = Field(1.0, gt=0)
    #: a ``noisy`` volume's own noise level as a fraction of its 99.9th percentile, when known better than medden's
    #: estimator gives it (R2R is unbiased only with the right level: too low keeps noise, too high over-smooths)
    noise_level: Optional[float] = Field(None, gt=0, lt=1)
    #: CT: train on a noise-free, piecewise-smooth version of this scan (:func:`medden.phantoms.piecewise_smooth`: its
    #: tissue classes by HU, each filled with its own local mean over this many mm) as a ``clean`` target: real
    #: anatomy whose truth is known, so flat tissue is taught as flat (a real scan's R2R target cannot say which of
    #: its textures are anatomy)
    piecewise_smooth_mm: Optional[float] = Field(None, gt=0, le=10)

    @field_validator("path", "pair")
    @classmethod
    def _exists(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if v is None:
            return v
        root = (info.context or {}).get("data_root")
        path = resolve_data_path(v, root)
        if not path.exists():
            raise ValueError(f"data file {v} does not exist" + (f" under the data root {root}" if path != Path(v) else
                                                                 " (relative paths: give --data-root or MEDDEN_DATA)"))
        return str(path)

    @model_validator(mode="after")
    def _smooth_is_clean(self) -> "DataSpec":
        if self.piecewise_smooth_mm is not None and (self.target != "clean" or self.pair is not None):
            raise ValueError("piecewise_smooth_mm makes a noise-free target: it needs target 'clean' and no pair")
        return self


class NoiseSpec(_Strict):
    """On-the-fly noise. MR: ``rician`` or ``noncentral-chi`` with σ drawn log-uniformly in ``sigma_range`` (a fraction
    of the volume's 99.9th percentile). CT: projection-domain low-dose insertion at a dose drawn log-uniformly in
    ``dose_range`` (fraction of the scan's dose)."""

    model: Literal["rician", "noncentral-chi", "lowdose-ct"] = "rician"
    sigma_range: tuple[float, float] = (0.005, 0.2)
    coils: int = Field(1, ge=1, le=64)
    dose_range: tuple[float, float] = (0.05, 0.5)
    #: the network's level is the true level times a factor in [1 − jitter, 1 + jitter]: robustness to estimation error
    level_jitter: float = Field(0.1, ge=0, lt=1)
    #: noise realisations simulated per CT volume (then rescaled to each drawn dose)
    ct_realisations: int = Field(2, ge=1, le=16)
    #: Recorrupted-to-Recorrupted: bounds of the factor α (the input gets α·σ more noise, the target σ/α less). Kept
    #: small: the added noise is Gaussian, so at large α the network would learn Gaussian, not Rician, inputs (no
    #: Rician bias to remove: measured −1.2 to −1.5 dB at 7–9 % without the fidelity step with α up to 100)
    r2r_alpha: tuple[float, float] = (0.5, 2.0)

    @model_validator(mode="after")
    def _ranges(self) -> "NoiseSpec":
        lo, hi = self.sigma_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"sigma_range must satisfy 0 < low <= high <= 1, got {self.sigma_range}")
        lo, hi = self.dose_range
        if not 0 < lo <= hi < 1:
            raise ValueError(f"dose_range must satisfy 0 < low <= high < 1, got {self.dose_range}")
        return self


class ResampleSpec(_Strict):
    """Random voxel sizes for clean volumes: with ``probability`` a patch is resampled from its native grid to an
    isotropic voxel drawn log-uniformly in ``voxel_mm`` (mm), and with ``thick_probability`` one axis to a slice
    spacing drawn in ``slice_mm`` (area averaging when coarser: a thick slice's profile)."""

    probability: float = Field(0.5, ge=0, le=1)
    voxel_mm: tuple[float, float] = (0.5, 2.0)
    thick_probability: float = Field(0.3, ge=0, le=1)
    slice_mm: tuple[float, float] = (2.0, 6.0)


class TrainConfig(_Strict):
    """Everything a denoising network's training run needs. See ``bundles/*/configs/medden_train.json`` in the repository for the shipped models' configs."""

    kind: Literal["denoiser"] = "denoiser"
    name: str = Field(..., min_length=1)
    modality: Literal["MR", "CT"]
    mode: Literal["supervised", "n2n", "n2v"] = "supervised"
    data: list[DataSpec] = Field(..., min_length=1)
    validation: list[DataSpec] = []
    synthetic_volumes: int = Field(0, ge=0, le=256)
    architecture: Literal["conditioned-unet3d", "conditioned-dncnn3d"] = "conditioned-unet3d"
    network: dict[str, Any] = {}
    noise: NoiseSpec = NoiseSpec()
    intensity_scale: tuple[float, float] = (0.6, 1.4)
    resample: Optional[ResampleSpec] = None
    patch_size: tuple[int, int, int] = (48, 48, 48)
    batch_size: int = Field(4, ge=1, le=256)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    loss: Literal["mse", "l1"] = "mse"
    #: weight of the same loss on 8³ block means (see medden.models.losses): against local bias (HU bias in CT)
    lowpass_weight: float = Field(0.0, ge=0)
    epochs: int = Field(30, ge=1)
    steps_per_epoch: int = Field(200, ge=1)
    wall_minutes: Optional[float] = Field(None, gt=0)
    val_patches: int = Field(8, ge=1, le=256)
    n2v_mask_fraction: float = Field(0.005, gt=0, lt=0.5)
    augment: bool = True
    amp: bool = True
    device: str = "auto"
    threads: Optional[int] = Field(None, ge=1)
    #: processes that draw patches and make their noise in parallel (0: in the training process); use several on a
    #: GPU, where one CPU process cannot feed it
    workers: int = Field(0, ge=0, le=64)
    seed: int = 0
    #: a progress line (loss, steps/s, voxels/s) every this many steps
    progress_every: int = Field(10, ge=1)
    #: a model worse than its input on validation at the end: ``refuse`` (error, nothing exported) or ``warn``
    on_worse: Literal["refuse", "warn"] = "refuse"
    #: where runs keep their checkpoints: each run in its own sub-folder named by the hash of its config and data
    #: (see :func:`medden.training.loop.run_dir`); default ``$XDG_CACHE_HOME/medden/training`` (``~/.cache/...``)
    checkpoint_dir: Optional[str] = None
    export: Optional[str] = None
    docs_dir: Optional[str] = None
    init_weights: Optional[str] = None
    #: a committed training state (``medden/models/training_state/*.pt``) to start from when the run folder holds
    #: none: the same run continues at its step, another run takes its weights
    resume_from: Optional[str] = None
    command: str = ""

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 8:
            raise ValueError(f"patch sides must be >= 8 voxels, got {v}")
        return v

    @field_validator("init_weights", "resume_from")
    @classmethod
    def _init(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"{info.field_name} file {v} does not exist")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        lo, hi = self.intensity_scale
        if not 0 < lo <= hi:
            raise ValueError(f"intensity_scale must satisfy 0 < low <= high, got {self.intensity_scale}")
        if self.modality == "CT" and self.mode == "supervised" and self.noise.model != "lowdose-ct":
            raise ValueError("a supervised CT model needs noise.model = 'lowdose-ct'")
        if self.modality == "MR" and self.noise.model == "lowdose-ct":
            raise ValueError("noise.model 'lowdose-ct' needs modality CT")
        if self.mode == "n2n" and any(d.pair is None for d in self.data):
            raise ValueError("mode n2n needs a 'pair' (second noisy scan) for every data entry")
        if self.modality != "CT" and any(d.piecewise_smooth_mm for d in self.data):
            raise ValueError("piecewise_smooth_mm classes tissue by CT numbers: it needs modality CT")
        if self.architecture == "conditioned-unet3d" and any(p % 16 for p in self.patch_size):
            raise ValueError(f"the U-Net needs patch sides that are multiples of 16, got {self.patch_size}")
        return self


class PriorConfig(_Strict):
    """A diffusion prior's training run (:mod:`medden.training.diffusion`): stacks of adjacent slices of clean
    volumes, DDPM ε-prediction, an EMA of the weights validated and exported. See
    ``medden/training/configs/diffusion_*_prior.json`` for the shipped priors' configs."""

    kind: Literal["diffusion-prior"]
    name: str = Field(..., min_length=1)
    modality: Literal["MR", "CT"] = "MR"
    data: list[DataSpec] = Field(..., min_length=1)
    #: validation volumes; when empty, the top ``validation_fraction`` of the last data entry's slices (last axis)
    validation: list[DataSpec] = []
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    #: file-name prefixes that must never be trained on (held-out test volumes)
    held_out: list[str] = []
    #: :func:`medden.models.diffusion.build_prior` keywords, e.g. ``{"channels": [16, 32, 64]}``
    network: dict[str, Any] = {}
    patch: int = Field(64, ge=16)
    batch_size: int = Field(16, ge=1, le=1024)
    learning_rate: float = Field(5e-4, gt=0, lt=1)
    ema: float = Field(0.995, ge=0, lt=1)
    max_steps: int = Field(100_000, ge=1)
    wall_minutes: Optional[float] = Field(28.0, gt=0)
    log_every: int = Field(100, ge=1)
    progress_every: int = Field(10, ge=1)
    threads: Optional[int] = Field(2, ge=1)
    seed: int = 0
    device: str = "auto"
    checkpoint_dir: Optional[str] = None
    export: Optional[str] = None
    docs_dir: Optional[str] = None
    command: str = ""

    @model_validator(mode="after")
    def _not_held_out(self) -> "PriorConfig":
        for d in self.data:
            if Path(d.path).name.startswith(tuple(self.held_out)):
                raise ValueError(f"{Path(d.path).name} is a held-out test volume and must not be trained on")
        return self


def _format(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def validate_config(raw: dict[str, Any], source: str = "config", data_root_dir: str | Path | None = None
                    ) -> TrainConfig | PriorConfig:
    """A :class:`TrainConfig` (or, with ``"kind": "diffusion-prior"``, a :class:`PriorConfig`) from a dict, or
    :class:`ConfigError` naming every bad field. Relative data paths are resolved against :func:`data_root`
    (``data_root_dir``, else ``$MEDDEN_DATA``)."""
    model = PriorConfig if isinstance(raw, dict) and raw.get("kind") == "diffusion-prior" else TrainConfig
    try:
        return model.model_validate(raw, context={"data_root": data_root(data_root_dir)})
    except ValidationError as exc:
        raise ConfigError(f"invalid training config {source}: {_format(exc)}") from None


def load_config(path: str | Path, data_root_dir: str | Path | None = None, **overrides: Any
                ) -> TrainConfig | PriorConfig:
    """Read and validate a JSON/YAML training config; ``overrides`` replace top-level fields; relative data paths
    are read under ``data_root_dir`` (``--data-root``) or ``$MEDDEN_DATA``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config {path} not found")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError("YAML configs need PyYAML (pip install pyyaml); or write the config as JSON") from None
            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training config {path} cannot be parsed: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"training config {path} must hold a mapping of fields")
    if raw.get("kind") == "diffusion-prior":  # the U-Net-only overrides of `medden train` do not apply
        overrides = {k: v for k, v in overrides.items() if k in PriorConfig.model_fields}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("init_weights", "resume_from"):  # a repository file named from the repository's root
        if isinstance(raw.get(key), str):
            raw[key] = _beside_config(raw[key], path)
    return validate_config(raw, str(path), data_root_dir)


def _beside_config(name: str, config: Path) -> str:
    """A relative weights/state path as given when it exists from the current folder, else the first match from the
    config file's folder upwards (so a bundle's config names ``medden/models/...`` and runs from any folder)."""
    p = Path(name)
    if p.is_absolute() or p.exists():
        return name
    for folder in config.resolve().parents:
        if (folder / p).exists():
            return str(folder / p)
    return name
