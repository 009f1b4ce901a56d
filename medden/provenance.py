"""Provenance: what was done to a scan, as one JSON-ready record.

The same record is the manifest row of a study run, the JSON sidecar beside a NIfTI/NRRD/MHA output and the
DerivationDescription of a DICOM output; the single-file command and the study pipeline both build it here.
A model-based method's record names the model (card name and version) and the sha256 of its weights file, so a
retrained model is never mistaken for the old one (the study pipeline's resume key uses :func:`model_identity`).
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from medden._version import __version__
from medden.conventions import sha256_paths

DICOM_DERIVATION_CODE = ("113087", "DCM", "Smoothing")  # DICOM CID 7203 Image Derivation


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=32)
def _weights_sha256(path: str, mtime_ns: int, size: int) -> str:
    return sha256_paths([path])


def _model_files(method: str, params: dict[str, Any]) -> list[Path]:
    """The weights files ``method`` may run with these parameters: the one given, the shipped one, or (``auto``
    and methods whose shipped model depends on the modality) every shipped weights file."""
    if params.get("weights"):
        return [Path(str(params["weights"]))]
    if method != "auto":
        from medden.denoisers import get_method

        if "weights" not in {p.name for p in get_method(method).params}:
            return []
    from medden.models import SHIPPED, WEIGHTS_DIR

    if method in SHIPPED:
        return [WEIGHTS_DIR / SHIPPED[method]]
    return sorted(WEIGHTS_DIR.glob("*.safetensors"))


def model_identity(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"model", "model_version", "weights_sha256"}`` of the model ``method`` runs with ``params``.

    Classical methods have no weights: the model is the method at this medden version and ``weights_sha256`` is
    None. A model-based method gives its card's name and version and the sha256 of the weights file (for ``auto``,
    a digest over every shipped weights file, since the choice depends on each scan's modality).
    """
    files = [f for f in _model_files(method, dict(params or {})) if f.is_file()]
    if not files:
        return {"model": method, "model_version": __version__, "weights_sha256": None}
    digests = [_weights_sha256(str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files]
    if len(files) > 1:
        return {"model": method, "model_version": __version__,
                "weights_sha256": hashlib.sha256("".join(digests).encode()).hexdigest()}
    from medden.models import read_card

    try:
        card = read_card(files[0])
        name, version = card.name, card.version
    except Exception:  # noqa: BLE001 - a missing or broken card is reported when the model loads, not here
        name, version = files[0].stem, None
    return {"model": name, "model_version": version, "weights_sha256": digests[0]}


def denoise_record(source, result, *, input_path: str | os.PathLike, output_path: str | os.PathLike | None,
                   series_uid: str | None = None, input_sha256: str | None = None) -> dict[str, Any]:
    """What :func:`medden.denoise` did to ``source`` (giving ``result``): the manifest row, sidecar and DICOM
    derivation record. ``result.meta['denoise']`` supplies method, parameters, sigma, device and seconds."""
    rec = result.meta.get("denoise", {})
    method = rec.get("method")
    return {
        "GeneratedBy": [{"Name": "medden", "Version": __version__,
                         "Description": result.history[-1] if result.history else ""}],
        "Sources": [str(input_path)],
        "input": str(input_path), "series_uid": series_uid, "output": str(output_path) if output_path else None,
        "method": method, **model_identity(method, rec.get("params", {})),
        "params": rec.get("params", {}), "sigma": rec.get("sigma"), "sigma_source": rec.get("sigma_source"),
        "device": rec.get("device"), "modality": source.modality,
        "modality_source": source.meta.get("modality_source"), "seconds": rec.get("seconds"),
        "input_sha256": input_sha256, "finished": now(),
        "dicom_derivation_code": DICOM_DERIVATION_CODE,
    }


def simulation_record(result, *, input_path: str | os.PathLike) -> dict[str, Any]:
    """What :func:`medden.simulate` did (its ``meta['simulation']``), as the output's sidecar record."""
    return {"GeneratedBy": [{"Name": "medden", "Version": __version__,
                             "Description": result.history[-1] if result.history else ""}],
            "Sources": [str(input_path)], "Modality": result.modality,
            "MeddenSimulation": result.meta["simulation"], "finished": now()}
