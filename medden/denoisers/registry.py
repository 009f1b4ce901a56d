"""The one registry of denoisers and their calling convention.

A denoiser is a function::

    fn(data, noise, *, spacing, modality, device, progress, **params) -> Denoised(mean, std=None)

``data`` is a 3D float32 NumPy array in the volume's physical units; ``noise`` a
:class:`~medden.noise.estimate.NoiseEstimate` (a global σ in the same units, optionally a noise map or a CT noise
power spectrum, and how it was obtained: given or estimated by which method); ``spacing`` the voxel size in mm;
``modality`` the DICOM code; ``device`` ``"cpu"`` or ``"cuda"``; ``progress`` None or ``progress(done, total)``.
It returns :class:`Denoised`: the estimate (same shape) and, for methods that have one, a per-voxel standard
deviation of its error. It never reads or writes files.

Adding a method is one new file with a function decorated by :func:`register` plus one import line in
``medden/denoisers/__init__.py``. Its licence, modalities and measured quality and speed (``ranking.json``, from the
benchmarks) travel with it: ``auto`` picks the best-ranked *permissively licensed* available method for the
modality (:func:`default_method`, :func:`explain_auto`); non-commercial methods run only when named.

This module imports no numerical package, so listing methods is cheap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from medden.conventions import ALL_MODALITIES
from medden.errors import ParameterError
from medden.registry import Param, Registry, Spec

__all__ = ["Denoised", "DenoiserSpec", "Param", "register", "get_method", "list_methods", "default_method",
           "explain_auto", "ALL_MODALITIES", "PERMISSIVE_LICENCES"]

#: Licences that allow any use (commercial included); ``auto`` chooses only among methods under one of these.
PERMISSIVE_LICENCES = ("Apache-2.0", "BSD-3-Clause", "BSD-2-Clause", "MIT")
NON_COMMERCIAL = "non-commercial (Tampere University licence)"
_RANKING_FILE = Path(__file__).with_name("ranking.json")


@dataclass(frozen=True)
class Denoised:
    """What a denoiser returns: the estimate and, when the method gives one, the per-voxel standard deviation of its
    error (same shape, data units); ``record`` adds what the method wants recorded in ``meta['denoise']`` (e.g. that
    it used a CT noise power spectrum)."""

    mean: Any
    std: Any = None
    record: dict = field(default_factory=dict)


@lru_cache(maxsize=1)
def ranking() -> dict[str, Any]:
    """The measured quality and speed of the methods (``medden/denoisers/ranking.json``)."""
    return json.loads(_RANKING_FILE.read_text())


def _rank_key(modality: str) -> str:
    return modality if modality in ranking()["rank"] else "other"


@dataclass(frozen=True)
class DenoiserSpec(Spec):
    """What the registry knows of a denoiser (see the module docstring for ``fn``)."""

    family: str = ""
    gpu: bool = False
    extra: str | None = None  # pip extra needed (e.g. "bm"), or None
    licence: str | Callable[[], str] = "Apache-2.0"  # of the code (and of the weights, for a model: from its card)
    availability: Callable[[], bool] = field(default=lambda: True, repr=False)
    label: str = field(default="method", repr=False)

    @property
    def available(self) -> bool:
        return bool(self.availability())

    @property
    def licence_text(self) -> str:
        return self.licence() if callable(self.licence) else self.licence

    @property
    def permissive(self) -> bool:
        """Free for any use, commercial included (``auto`` chooses only among these)."""
        return self.licence_text.split(" ")[0] in PERMISSIVE_LICENCES

    def rank(self, modality: str = "OT") -> int:
        """Position in the measured ranking for ``modality`` (0 = best); unranked methods come last."""
        order = ranking()["rank"][_rank_key(modality)]
        return order.index(self.name) if self.name in order else len(order)

    @property
    def quality_rank(self) -> int:
        """Rank over all modalities (the ``other`` list): the order :func:`list_methods` uses."""
        return self.rank("other")

    @property
    def measured(self) -> dict[str, Any]:
        """Measured figures from ``ranking.json``: ``d_psnr_db`` (PSNR − BM4D's, per modality), ``cases``,
        ``voxels_per_second`` (2 CPU threads); empty when not benchmarked."""
        return dict(ranking()["methods"].get(self.name, {}))

    @property
    def voxels_per_second(self) -> float | None:
        return self.measured.get("voxels_per_second")

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (``medden methods --json``): name, family, summary, licence, modalities, GPU,
        availability, extra, measured speed and quality, parameters."""
        return {"name": self.name, "family": self.family, "summary": self.summary, "licence": self.licence_text,
                "permissive": self.permissive, "modalities": list(self.modalities), "gpu": self.gpu,
                "available": self.available, "extra": self.extra, "voxels_per_second": self.voxels_per_second,
                "d_psnr_vs_bm4d_db": self.measured.get("d_psnr_db", {}),
                "params": [{"name": p.name, "default": p.default, "unit": p.unit, "help": p.help}
                           for p in self.params]}


REGISTRY: Registry[DenoiserSpec] = Registry("method", order=lambda s: (s.quality_rank, s.name))


def register(name: str, *, family: str, summary: str, params: tuple[Param, ...] = (),
             modalities: tuple[str, ...] = ALL_MODALITIES, gpu: bool = False, extra: str | None = None,
             licence: str | Callable[[], str] = "Apache-2.0",
             availability: Callable[[], bool] | None = None) -> Callable:
    """Decorator registering a denoiser function under ``name``."""

    def wrap(fn: Callable) -> Callable:
        REGISTRY.register(DenoiserSpec(name=name, fn=fn, summary=summary, params=params, modalities=modalities,
                                       family=family, gpu=gpu, extra=extra, licence=licence,
                                       availability=availability or (lambda: True)))
        return fn

    return wrap


def get_method(name: str) -> DenoiserSpec:
    """The registered denoiser called ``name``; an unknown name raises :class:`ParameterError` listing the known."""
    return REGISTRY.get(name)


def list_methods() -> list[DenoiserSpec]:
    """All registered denoisers, best-ranked first."""
    return REGISTRY.list()


def _auto_candidates(modality: str) -> list[DenoiserSpec]:
    return sorted((s for s in REGISTRY.list() if modality in s.modalities and s.permissive),
                  key=lambda s: (s.rank(modality), s.name))


def default_method(modality: str = "OT") -> DenoiserSpec:
    """What ``method="auto"`` runs: the best-ranked available, permissively licensed denoiser suited to ``modality``
    (BM3D/BM4D, free for non-commercial use only, run only when named)."""
    for spec in _auto_candidates(modality):
        if spec.available:
            return spec
    raise ParameterError(f"no available denoiser suits modality {modality!r}")


def explain_auto(modality: str = "OT") -> str:
    """One or two sentences saying which method ``auto`` picks for ``modality`` and why (for the CLI to print)."""
    spec = default_method(modality)
    key = _rank_key(modality)
    gap = spec.measured.get("d_psnr_db", {}).get(modality if key != "other" else "", None)
    figure = f"{gap:+.1f} dB PSNR vs BM4D on {spec.measured['cases'][modality]} clean-reference cases, " \
        if gap is not None else ""
    speed = spec.voxels_per_second
    speed_text = f"{speed / 1e6:.2g} M voxels/s on 2 CPU threads" if speed else "speed not measured"
    skipped = [s.name for s in _auto_candidates(modality) if s.rank(modality) < spec.rank(modality)
               and not s.available]
    text = (f"auto: {spec.name} for {modality} — the best-ranked permissively licensed ({spec.licence_text}) method "
            f"available ({figure}{speed_text}).")
    if skipped:
        text += f" Better-ranked but not available here: {', '.join(skipped)}."
    best_nc = [s for s in REGISTRY.list() if modality in s.modalities and not s.permissive
               and s.rank(modality) < spec.rank(modality)]
    if best_nc:
        names = " and ".join(s.name for s in best_nc)
        text += (f" {names} {'rank' if len(best_nc) > 1 else 'ranks'} higher but "
                 f"{'are' if len(best_nc) > 1 else 'is'} licensed for non-commercial use only: name "
                 f"{'one' if len(best_nc) > 1 else 'it'} with --method to use it.")
    return text
