"""The one registry of denoisers.

A denoiser is a function ``fn(data, sigma, *, spacing, device, **params) -> array`` where ``data`` is a 3D float32
NumPy array in the volume's physical units, ``sigma`` the noise standard deviation in the same units (a float, or an
array of the data's shape for a noise map), ``spacing`` the voxel size in mm and ``device`` ``"cpu"`` or ``"cuda"``.
It returns an array of the same shape. It never reads or writes files.

Adding a method is one new file with a function decorated by :func:`register` plus one import line in
``medden/denoisers/__init__.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from medden.errors import ParameterError

ALL_MODALITIES = ("CT", "MR", "PT", "NM", "DX", "CR", "OT")


@dataclass(frozen=True)
class Param:
    """One tunable parameter: its default, its physical unit ('' when dimensionless) and what it does."""

    name: str
    default: Any
    unit: str = ""
    help: str = ""
    choices: tuple[Any, ...] | None = None

    def parse(self, value: Any) -> Any:
        """Convert ``value`` (possibly a CLI string) to the default's type and check the allowed choices."""
        kind = type(self.default)
        try:
            if isinstance(value, str) and kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("1", "true", "yes")
            elif isinstance(value, str) and self.default is None:
                value = float(value) if value.lower() != "none" else None
            elif self.default is not None and not isinstance(value, kind):
                value = kind(value)
        except (TypeError, ValueError):
            what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a text",
                    "NoneType": "a number or none"}.get(kind.__name__, kind.__name__)
            raise ParameterError(f"parameter {self.name!r} needs {what}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}")
        return value


@dataclass(frozen=True)
class DenoiserSpec:
    """What the registry knows of a denoiser."""

    name: str
    fn: Callable[..., Any]
    family: str
    summary: str
    params: tuple[Param, ...] = ()
    modalities: tuple[str, ...] = ALL_MODALITIES
    gpu: bool = False
    extra: str | None = None  # pip extra needed (e.g. "bm"), or None
    quality_rank: int = 100  # lower is better; the default method is the best-ranked available one
    uses_noise_estimate: bool = False  # fn takes ``noise=NoiseEstimate`` (e.g. a CT noise power spectrum)
    uses_modality: bool = False  # fn takes ``modality=`` (the volume's: e.g. to pick a model trained on it)
    availability: Callable[[], bool] = field(default=lambda: True, repr=False)

    @property
    def available(self) -> bool:
        return bool(self.availability())

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``; unknown names raise :class:`ParameterError`."""
        by_name = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(by_name))
        if unknown:
            allowed = ", ".join(by_name) or "none"
            raise ParameterError(f"method {self.name!r} has no parameter {', '.join(map(repr, unknown))} "
                                 f"(parameters: {allowed})")
        return {**self.defaults(), **{k: by_name[k].parse(v) for k, v in given.items()}}


_REGISTRY: dict[str, DenoiserSpec] = {}


def register(name: str, *, family: str, summary: str, params: tuple[Param, ...] = (),
             modalities: tuple[str, ...] = ALL_MODALITIES, gpu: bool = False, extra: str | None = None,
             quality_rank: int = 100, uses_noise_estimate: bool = False, uses_modality: bool = False,
             availability: Callable[[], bool] | None = None) -> Callable:
    """Decorator registering a denoiser function under ``name``."""

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise RuntimeError(f"denoiser {name!r} registered twice")
        _REGISTRY[name] = DenoiserSpec(name=name, fn=fn, family=family, summary=summary, params=params,
                                       modalities=modalities, gpu=gpu, extra=extra, quality_rank=quality_rank,
                                       uses_noise_estimate=uses_noise_estimate, uses_modality=uses_modality,
                                       availability=availability or (lambda: True))
        return fn

    return wrap


def get_method(name: str) -> DenoiserSpec:
    """The registered denoiser called ``name``; an unknown name raises :class:`ParameterError` listing the known."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(f"unknown method {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def list_methods() -> list[DenoiserSpec]:
    """All registered denoisers, best-ranked first."""
    return sorted(_REGISTRY.values(), key=lambda s: (s.quality_rank, s.name))


def default_method(modality: str = "OT") -> DenoiserSpec:
    """The best-ranked available denoiser suited to ``modality``."""
    for spec in list_methods():
        if spec.available and modality in spec.modalities:
            return spec
    raise ParameterError(f"no available denoiser suits modality {modality!r}")
