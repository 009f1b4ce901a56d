"""The one registry of noise models: name → function, physical parameters with units, suitable modalities.

A noise model is ``fn(data, *, generator, **physical_params) -> noisy data`` (same type, shape and device). Models
whose physics needs the voxel size (``needs_spacing``) also take ``spacing_mm``. Adding a model is one function plus
one :func:`register_model` call below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from medden.errors import ParameterError
from medden.noise.counting import poisson, poisson_gaussian
from medden.noise.gaussian import gaussian
from medden.noise.lowdose_ct import (I0_PHOTONS, MU_WATER_PER_MM, N_VIEWS, SIGMA_ELECTRONIC, SOURCE_TO_DETECTOR_MM,
                                     SOURCE_TO_ISOCENTER_MM, VIEWS_REFERENCE, lowdose_ct, lowdose_ct_insertion)
from medden.noise.mri import noncentral_chi, rician


@dataclass(frozen=True)
class NoiseParam:
    """A physical parameter: default (None when required or derived), unit, and meaning."""

    name: str
    default: Any
    unit: str = ""
    help: str = ""
    required: bool = False


@dataclass(frozen=True)
class NoiseModelSpec:
    """What the registry knows of a noise model."""

    name: str
    fn: Callable[..., Any]
    summary: str
    params: tuple[NoiseParam, ...]
    modalities: tuple[str, ...]
    needs_spacing: bool = False
    needs_axial: bool = False  # axial slices must lie along the last axis (projection models)

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Only the given parameters, checked: unknown names and missing required ones raise ParameterError."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ParameterError(f"noise model {self.name!r} has no parameter {', '.join(map(repr, unknown))} "
                                 f"(parameters: {', '.join(known)})")
        missing = [p.name for p in self.params if p.required and given.get(p.name) is None]
        if missing:
            raise ParameterError(f"noise model {self.name!r} needs {', '.join(missing)}")
        return {k: v for k, v in given.items() if v is not None}


_MODELS: dict[str, NoiseModelSpec] = {}


def register_model(name: str, fn: Callable[..., Any], summary: str, params: tuple[NoiseParam, ...],
                   modalities: tuple[str, ...] = ("CT", "MR", "PT", "NM", "DX", "CR", "OT"),
                   needs_spacing: bool = False, needs_axial: bool = False) -> None:
    """Register ``fn`` as the noise model ``name``."""
    if name in _MODELS:
        raise RuntimeError(f"noise model {name!r} registered twice")
    _MODELS[name] = NoiseModelSpec(name, fn, summary, params, modalities, needs_spacing, needs_axial)


def get_model(name: str) -> NoiseModelSpec:
    """The registered noise model ``name``; an unknown name raises :class:`ParameterError` listing the known."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ParameterError(f"unknown noise model {name!r} (known: {', '.join(sorted(_MODELS))})") from None


def list_models() -> list[NoiseModelSpec]:
    """All registered noise models, by name."""
    return [_MODELS[k] for k in sorted(_MODELS)]


_SIGMA = NoiseParam("sigma", None, "data units", "noise standard deviation (or 'N%' of the 99.9th percentile of the "
                    "non-zero voxels in simulate)")
_COUNTS = NoiseParam("counts_per_unit", None, "counts per unit intensity", "detected counts per unit of intensity "
                     "(the dose knob)", required=True)
_CT = (
    NoiseParam("dose", None, "fraction of full dose", "target dose in (0, 1]", required=True),
    NoiseParam("i0_photons", I0_PHOTONS, "photons", "unattenuated photons per channel per view at full dose"),
    NoiseParam("sigma_electronic", SIGMA_ELECTRONIC, "photons", "electronic noise standard deviation"),
    NoiseParam("mu_water_per_mm", MU_WATER_PER_MM, "1/mm", "water attenuation at the effective energy"),
    NoiseParam("geometry", "fan", "", "'fan' (360°) or 'parallel' (180°)"),
    NoiseParam("n_views", N_VIEWS, "views", "views per rotation (fan) or per 180° (parallel)"),
    NoiseParam("views_reference", VIEWS_REFERENCE, "views", "views per rotation i0_photons refers to"),
    NoiseParam("source_to_isocenter_mm", SOURCE_TO_ISOCENTER_MM, "mm", "fan geometry"),
    NoiseParam("source_to_detector_mm", SOURCE_TO_DETECTOR_MM, "mm", "fan geometry"),
    NoiseParam("detector_pitch_mm", None, "mm", "channel pitch on the detector (default: pixel size magnified)"),
    NoiseParam("n_detectors", None, "channels", "detector channels (default: cover the image)"),
    NoiseParam("filter", "shepp-logan", "", "FBP window: ram-lak, shepp-logan, cosine, hamming, hann"),
    NoiseParam("cutoff", 1.0, "fraction of Nyquist", "FBP window cutoff"),
    NoiseParam("projection_downsample", None, "", "pooling for the variance-setting line integrals"),
    NoiseParam("slices_per_batch", 64, "slices", "axial slices processed together"),
)

register_model("gaussian", gaussian, "additive white Gaussian noise",
               (NoiseParam("sigma", None, "data units", _SIGMA.help, required=True),))
register_model("poisson", poisson, "Poisson (shot) noise of counting data; variance = mean / counts",
               (_COUNTS,), modalities=("PT", "NM", "DX", "CR", "OT"))
register_model("poisson-gaussian", poisson_gaussian, "Poisson plus Gaussian electronic noise",
               (_COUNTS, NoiseParam("sigma", 0.0, "data units", "electronic noise standard deviation")),
               modalities=("PT", "NM", "DX", "CR", "OT"))
_MR = (_SIGMA, NoiseParam("snr", None, "", "instead of sigma: reference signal / sigma"),
       NoiseParam("snr_reference", 99.9, "percentile", "percentile of the non-zero voxels the SNR refers to"))
register_model("rician", rician, "Rician noise of a single-channel magnitude MR image", _MR, modalities=("MR",))
register_model("noncentral-chi", noncentral_chi, "noncentral-chi noise of an L-coil sum-of-squares MR image",
               _MR + (NoiseParam("coils", 8, "coils", "receive channels L"),), modalities=("MR",))
register_model("lowdose-ct", lowdose_ct, "low-dose CT simulated in the projection domain (Poisson + "
               "electronic noise, FBP) from a noise-free object",
               _CT + (NoiseParam("keep_resolution", True, "", "add the reconstructed noise to the input (True) or "
                                                                 "return the FBP reconstruction (False)"),),
               modalities=("CT",), needs_spacing=True, needs_axial=True)
register_model("lowdose-ct-insertion", lowdose_ct_insertion, "lower the dose of a real full-dose CT by "
               "adding the missing projection noise (Yu et al. 2012)", _CT, modalities=("CT",), needs_spacing=True,
               needs_axial=True)
