"""Deep denoisers: the shipped noise-level-conditioned 3D U-Nets, one for MR (Rician noise) and one for low-dose CT.

Each runs the network over the whole volume in overlapping windows (:func:`medden.inference.sliding_window`) after
the intensity normalisation its model card records: MR by the 99.9th percentile of the input's non-zero voxels (so
``denoise(a·x, a·σ) = a·denoise(x, σ)`` for any ``a > 0``), CT by the fixed map ``HU / 1000``. ``sigma`` — the noise
standard deviation in the data's units, as :func:`medden.denoise` estimates it — is divided by the same scale and
given to the network as its conditioning level.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from medden.denoisers.registry import Denoised, Param, register

# Where the shipped models rank against the other methods is data, not code: medden/denoisers/ranking.json (from
# benchmarks/bench_deep.py; deep-mr is 1.2 dB below BM4D on held-out MR, above NLM). Editing the ranks there makes a
# model the ``auto`` choice once it beats the others.

_PARAMS = (
    Param("weights", "", "", "a weights file (.safetensors with its .json card); empty = the shipped model"),
    Param("overlap", 0.125, "", "fraction of a sliding window shared with its neighbour (Gaussian-blended)",
          minimum=0.0, maximum=0.95),
    Param("precision", "auto", "", "autocast precision", choices=("auto", "fp32", "bf16", "fp16")),
    Param("fidelity_mm", None, "mm", "local-mean fidelity scale (medden.denoisers.fidelity): the input's local means "
          "at scales above it are kept; 0 = off; none = the value tuned on validation data and recorded on the card",
          minimum=0.0),
    Param("adapt_seconds", 0.0, "s", "per-scan adaptation: fine-tune a copy of the model on this scan for this long "
          "(self-supervised, medden.denoisers.adapt) before denoising; 0 = off", minimum=0.0),
)


def _shipped_available(name: str):
    def check() -> bool:
        from medden.models.card import shipped_path

        p = shipped_path(name)
        return p.is_file() and p.with_suffix(".json").is_file()

    return check


def _shipped_licence(name: str):
    def licence() -> str:
        from medden.models.card import card_licence, shipped_path

        return card_licence(shipped_path(name))

    return licence


@lru_cache(maxsize=4)
def _cached_model(path: str, mtime: float, device: str):
    from medden.models import load_model

    return load_model(path, device=device)


def card_fidelity(card) -> dict:
    """The local-mean fidelity a model card records (``noise.fidelity``: ``scale_mm``, ``domain``), or off."""
    tuned = card.noise.get("fidelity", {}) if isinstance(card.noise, dict) else {}
    return {"scale_mm": float(tuned.get("scale_mm", 0.0)), "domain": tuned.get("domain", "linear"),
            "coils": int(card.noise.get("coils", 1))}


def run_model(data: np.ndarray, sigma, weights: str | Path, *, device: str = "cpu", overlap: float = 0.125,
              precision: str = "auto", spacing=(1.0, 1.0, 1.0), fidelity_mm: float | None = None,
              adapt_seconds: float = 0.0, noise_psd=None, axial_axis: int = 2) -> np.ndarray:
    """Denoise ``data`` (3D, physical units) with the model in ``weights``, at noise level ``sigma`` (data units, or
    a noise map of the data's shape), then apply the card's local-mean fidelity (:mod:`medden.denoisers.fidelity`)
    at ``fidelity_mm`` mm (None: the card's tuned scale; 0: off). ``noise_psd`` (a CT scan's spectrum for a patch
    shape, planes across ``axial_axis``) shapes the recorrupting noise of per-scan adaptation."""
    from medden.denoisers.fidelity import local_mean_fidelity
    from medden.errors import ParameterError
    from medden.inference import sliding_window
    from medden.models import ModelError

    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    if not 0 <= overlap < 1:
        raise ParameterError(f"overlap must be in [0, 1), got {overlap}")
    if fidelity_mm is not None and not (np.isfinite(fidelity_mm) and fidelity_mm >= 0):
        raise ParameterError(f"fidelity_mm must be a number of mm ≥ 0 (0: off), got {float(fidelity_mm)}")
    net, card = _cached_model(str(path.resolve()), path.stat().st_mtime, device)
    if np.ndim(sigma) == 0 and float(sigma) <= 0:
        return np.asarray(data, dtype=np.float32).copy()
    norm = card.normalisation.fitted(data)
    x = norm.apply(np.asarray(data, dtype=np.float32))
    s = norm.apply_sigma(np.asarray(sigma, dtype=np.float32) if np.ndim(sigma) else float(sigma))
    if adapt_seconds:  # per-scan adaptation on a copy (medden.denoisers.adapt)
        from medden.denoisers.adapt import adapt_network

        if card.modality == "CT" and noise_psd is None:
            raise ParameterError("adapt_seconds on CT needs the scan's noise spectrum, and none was measured (a given "
                                 "sigma, or too little homogeneous soft tissue): white recorrupting noise teaches the "
                                 "network to keep CT noise")

        net = adapt_network(net, x, s, seconds=adapt_seconds, device=device, magnitude=card.modality == "MR",
                            psd=noise_psd, axial_axis=axial_axis)
    out = sliding_window(net, x, s, device=device, overlap=overlap, precision=precision)
    del x
    out = norm.invert(out)
    fid = card_fidelity(card)
    if fidelity_mm is not None:
        fid["scale_mm"] = float(fidelity_mm)
    if fid["scale_mm"] > 0:
        out = local_mean_fidelity(out, data, sigma, scale_mm=fid["scale_mm"], spacing=spacing, domain=fid["domain"],
                                  coils=fid["coils"])
    return out


def _deep(name: str):
    def fn(data: np.ndarray, noise, *, spacing=(1.0, 1.0, 1.0), modality="OT", device="cpu", progress=None,
           weights="", overlap=0.125, precision="auto", fidelity_mm=None, adapt_seconds=0.0) -> Denoised:
        from medden.models.card import shipped_path

        # adaptation recorrupts with the scan's measured CT noise texture (measured here, on first use); white when
        # there is none (MR, or a level given by the user)
        psd = noise.sigma_psd if adapt_seconds and noise.nps is not None else None
        return Denoised(run_model(data, noise.sigma, weights or shipped_path(name), device=device, overlap=overlap,
                                  precision=precision, spacing=spacing, fidelity_mm=fidelity_mm,
                                  adapt_seconds=adapt_seconds, noise_psd=psd, axial_axis=noise.axial_axis))

    fn.__name__ = name.replace("-", "_")
    fn.__doc__ = f"The shipped {name} model (see ``medden/models/weights/``) over the whole volume."
    return fn


deep_mr = register("deep-mr", family="deep", gpu=True, modalities=("MR",), licence=_shipped_licence("deep-mr"),
                   availability=_shipped_available("deep-mr"), params=_PARAMS,
                   summary="3D U-Net conditioned on the noise level, trained for MR magnitude (Rician) noise"
                   )(_deep("deep-mr"))
deep_ct = register("deep-ct", family="deep", gpu=True, modalities=("CT",), licence=_shipped_licence("deep-ct"),
                   availability=_shipped_available("deep-ct"), params=_PARAMS,
                   summary="3D U-Net conditioned on the noise level, trained for low-dose CT (projection-domain noise)"
                   )(_deep("deep-ct"))
