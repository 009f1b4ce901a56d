"""The one registry of noise models: name → function, physical parameters with units, suitable modalities.

A noise model is ``fn(data, *, generator, **physical_params) -> noisy data`` (same type, shape and device). Models
whose physics needs the voxel size (``needs_spacing``) also take ``spacing_mm``. Adding a model is one function plus
one :func:`register_model` call below. Entries and parameters are the generic :class:`medden.registry.Spec` and
:class:`medden.registry.Param` the denoisers use too; the functions are imported (with torch) only when called.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from medden.conventions import ALL_MODALITIES
from medden.errors import ParameterError
from medden.noise.ct_constants import (I0_PHOTONS, MU_WATER_PER_MM, N_VIEWS, SIGMA_ELECTRONIC, SOURCE_TO_DETECTOR_MM,
                                       SOURCE_TO_ISOCENTER_MM, VIEWS_REFERENCE)
from medden.registry import Param, Registry, Spec

__all__ = ["NoiseModelSpec", "Param", "register_model", "get_model", "list_models", "REGISTRY"]


@dataclass(frozen=True)
class NoiseModelSpec(Spec):
    """What the registry knows of a noise model."""

    needs_spacing: bool = False
    needs_axial: bool = False  # axial slices must lie along the last axis (projection models)
    label: str = field(default="noise model", repr=False)


class _Lazy:
    """``module.name``, imported on first call (the models need torch; the registry does not)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.__name__ = module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.__name__)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"{self.module}.{self.__name__}"


REGISTRY: Registry[NoiseModelSpec] = Registry("noise model")


def register_model(name: str, fn: Callable[..., Any], summary: str, params: tuple[Param, ...],
                   modalities: tuple[str, ...] = ALL_MODALITIES, needs_spacing: bool = False,
                   needs_axial: bool = False) -> None:
    """Register ``fn`` as the noise model ``name``."""
    REGISTRY.register(NoiseModelSpec(name=name, fn=fn, summary=summary, params=params, modalities=modalities,
                                     needs_spacing=needs_spacing, needs_axial=needs_axial))


def get_model(name: str) -> NoiseModelSpec:
    """The registered noise model ``name``; an unknown name raises :class:`ParameterError` listing the known."""
    return REGISTRY.get(name)


def list_models() -> list[NoiseModelSpec]:
    """All registered noise models, by name."""
    return REGISTRY.list()


def noise_level(value: Any) -> float | str:
    """A noise level: a number ≥ 0 in data units, or ``"N%"`` (kept as text; :func:`medden.noise.simulate` resolves it
    against the data)."""
    text = value.strip() if isinstance(value, str) else None
    try:
        if text is not None and text.endswith("%"):
            if not float(text[:-1]) >= 0 or not math.isfinite(float(text[:-1])):
                raise ValueError
            return text
        number = float(text if text is not None else value)
    except (TypeError, ValueError):
        raise ParameterError(f"sigma must be a number or a percentage like '3%', got {value!r}") from None
    if not (math.isfinite(number) and number >= 0):
        raise ParameterError(f"sigma must be a finite number >= 0, got {value!r}")
    return number


def _percentile_or_mask(value: Any) -> Any:
    """The SNR reference: a percentile (number) or a boolean tissue mask (array), passed on as it is."""
    if isinstance(value, np.ndarray) and value.dtype == bool:
        return value
    return float(value)


def _m(module: str, name: str) -> _Lazy:
    return _Lazy(f"medden.noise.{module}", name)


_SIGMA = Param("sigma", None, "data units", "noise standard deviation (or 'N%' of the 99.9th percentile of the "
               "non-zero voxels in simulate)", kind=noise_level)
_COUNTS = Param("counts_per_unit", None, "counts per unit intensity", "detected counts per unit of intensity "
                "(the dose knob)", required=True, minimum=0.0)
_CT = (
    Param("dose", None, "fraction of full dose", "target dose in (0, 1]", required=True),
    Param("i0_photons", I0_PHOTONS, "photons", "unattenuated photons per channel per view at full dose"),
    Param("sigma_electronic", SIGMA_ELECTRONIC, "photons", "electronic noise standard deviation", minimum=0.0),
    Param("mu_water_per_mm", MU_WATER_PER_MM, "1/mm", "water attenuation at the effective energy"),
    Param("geometry", "fan", "", "'fan' (360°) or 'parallel' (180°)"),
    Param("n_views", N_VIEWS, "views", "views per rotation (fan) or per 180° (parallel)"),
    Param("views_reference", VIEWS_REFERENCE, "views", "views per rotation i0_photons refers to"),
    Param("source_to_isocenter_mm", SOURCE_TO_ISOCENTER_MM, "mm", "fan geometry"),
    Param("source_to_detector_mm", SOURCE_TO_DETECTOR_MM, "mm", "fan geometry"),
    Param("detector_pitch_mm", None, "mm", "channel pitch on the detector (default: pixel size magnified)"),
    Param("n_detectors", None, "channels", "detector channels (default: cover the image)", kind=int),
    Param("filter", "shepp-logan", "", "FBP window: ram-lak, shepp-logan, cosine, hamming, hann"),
    Param("cutoff", 1.0, "fraction of Nyquist", "FBP window cutoff"),
    Param("projection_downsample", None, "", "pooling for the variance-setting line integrals", kind=int),
    Param("slices_per_batch", 64, "slices", "axial slices processed together", minimum=1),
)

register_model("gaussian", _m("gaussian", "gaussian"), "additive white Gaussian noise",
               (Param("sigma", None, "data units", _SIGMA.help, required=True, kind=noise_level),))
register_model("poisson", _m("counting", "poisson"), "Poisson (shot) noise of counting data; variance = mean / counts",
               (_COUNTS,), modalities=("PT", "NM", "DX", "CR", "OT"))
register_model("poisson-gaussian", _m("counting", "poisson_gaussian"), "Poisson plus Gaussian electronic noise",
               (_COUNTS, Param("sigma", 0.0, "data units", "electronic noise standard deviation", kind=noise_level)),
               modalities=("PT", "NM", "DX", "CR", "OT"))
_MR = (_SIGMA, Param("snr", None, "", "instead of sigma: reference signal / sigma"),
       Param("snr_reference", 99.9, "percentile", "percentile of the non-zero voxels the SNR refers to",
             kind=_percentile_or_mask))
register_model("rician", _m("mri", "rician"), "Rician noise of a single-channel magnitude MR image", _MR,
               modalities=("MR",))
register_model("noncentral-chi", _m("mri", "noncentral_chi"), "noncentral-chi noise of an L-coil sum-of-squares MR "
               "image", _MR + (Param("coils", 8, "coils", "receive channels L"),), modalities=("MR",))
register_model("lowdose-ct", _m("lowdose_ct", "lowdose_ct"), "low-dose CT simulated in the projection domain (Poisson "
               "+ electronic noise, FBP) from a noise-free object",
               _CT + (Param("keep_resolution", True, "", "add the reconstructed noise to the input (True) or "
                                                         "return the FBP reconstruction (False)"),),
               modalities=("CT",), needs_spacing=True, needs_axial=True)
register_model("lowdose-ct-insertion", _m("lowdose_ct", "lowdose_ct_insertion"), "lower the dose of a real full-dose "
               "CT by adding the missing projection noise (Yu et al. 2012)", _CT, modalities=("CT",),
               needs_spacing=True, needs_axial=True)
