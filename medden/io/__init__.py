"""Loading and saving volumes: NIfTI, DICOM (series folders and multi-frame files) and ITK formats (NRRD, MHA/MHD).

``load_volume`` picks the reader from the path (a folder is a DICOM series); ``save_volume`` picks the writer from
the output path and writes through a temporary name, so a failure never leaves a partial output.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from medden.errors import InputError, OutputError
from medden.io import dicom, itk, nifti
from medden.io.anonymize import anonymize_dataset
from medden.io.atomic import atomic_path, check_output_path
from medden.io.dicom import walk
from medden.io.dicom_write import ANONYMOUS_PROVENANCE
from medden.volume import Volume

__all__ = ["load_volume", "save_volume", "output_format", "default_output_path", "sidecar_path", "check_output",
           "VOLUME_SUFFIXES", "DicomSeries", "find_dicom_series", "foreign_files", "restore_padding",
           "anonymize_dataset", "atomic_path", "walk"]

#: Suffixes of the single-file volume formats (NIfTI, NRRD, MetaImage).
VOLUME_SUFFIXES = nifti.SUFFIXES + itk.SUFFIXES


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def load_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Load a 3D scan as a :class:`~medden.volume.Volume` (float32, physical units, RAS+ affine).

    Parameters
    ----------
    path : a ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd`` file, a multi-frame DICOM file, or a
        folder holding one DICOM series.
    series_uid : the SeriesInstanceUID to load when the folder holds several series.

    Raises
    ------
    InputError
        Missing path, empty or unreadable file, no DICOM in a folder, several series, inconsistent slice spacing,
        a 2D or 4D image, NaN/Inf voxels.

    Examples
    --------
    >>> vol = load_volume("samples/mr_ixi002_t2_head.nii.gz")  # doctest: +SKIP
    >>> vol.shape, vol.spacing, vol.modality  # doctest: +SKIP
    """
    volume = _read(Path(path), series_uid)
    if volume.modality == "OT":
        modality, why = infer_modality(volume.data)
        volume = dataclasses.replace(volume, modality=modality,
                                     meta={**volume.meta, "modality_source": f"inferred: {why}"})
    else:
        volume.meta.setdefault("modality_source", "recorded in the file")
    return volume


def infer_modality(data: np.ndarray) -> tuple[str, str]:
    """Guess CT or MR from the values of a file that does not record its modality.

    CT in Hounsfield units has air near −1000 HU and soft tissue near 0–100 HU; MR magnitude images are ≥ 0.
    Returns the modality code and the reason, for the user to read.
    """
    p1, p99 = np.percentile(data.ravel()[:: max(1, data.size // 2_000_000)], [1, 99])
    lo = float(data.min())
    if -1100 <= p1 <= -850 and lo >= -3100 and p99 < 4000:
        return "CT", f"air at {p1:.0f} (1st percentile) and values from {lo:.0f}: Hounsfield units"
    if lo >= 0:
        return "MR", f"non-negative values ({lo:.4g} … {float(data.max()):.4g}) with no air at −1000: magnitude MR"
    return "OT", f"values {lo:.4g} … {float(data.max()):.4g} fit neither CT in HU nor magnitude MR"


def _read(path: Path, series_uid: str | None) -> Volume:
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if series_uid is not None and path.is_file() and _suffix(path) in VOLUME_SUFFIXES:
        raise InputError(f"a series UID selects one DICOM series of a folder; {path.name} is a single volume file")
    if path.is_dir():
        return dicom.load_dicom(path, series_uid=series_uid)
    if path.stat().st_size == 0:
        raise InputError(f"{path} is an empty file")
    suffix = _suffix(path)
    if suffix in nifti.SUFFIXES:
        return nifti.load_nifti(path)
    if suffix in itk.SUFFIXES:
        return itk.load_itk(path)
    if suffix in dicom.SUFFIXES or dicom.is_dicom_file(path):
        return dicom.load_dicom(path, series_uid=series_uid)
    raise InputError(f"{path}: unknown format '{suffix or path.name}' (expected .nii, .nii.gz, .nrrd, .nhdr, .mha, "
                     f".mhd, a multi-frame .dcm or a DICOM folder)")


def output_format(path: Path, like: Volume | None = None) -> str:
    """The writer for ``path``: 'nifti', 'itk' or 'dicom' (a path with no image suffix is a DICOM folder)."""
    suffix = _suffix(Path(path))
    if suffix in nifti.SUFFIXES:
        return "nifti"
    if suffix in itk.SUFFIXES:
        return "itk"
    if suffix in dicom.SUFFIXES:
        if like is None or like.meta.get("format") != "dicom-multiframe":
            raise OutputError(f"{path}: a single .dcm file can only be written for a multi-frame DICOM source; "
                              f"give a folder name to write a DICOM series")
        return "dicom"
    if suffix == "" or suffix[1:].isdigit():  # no suffix, or a UID-like folder name such as 1.2.840.1
        return "dicom"
    raise OutputError(f"{path}: unknown output format '{suffix}' (use .nii.gz, .nii, .nrrd, .mha, .mhd or a folder "
                      f"name for a DICOM series)")


def check_output(path: str | os.PathLike, *, like: Volume | None = None, overwrite: bool = False,
                 protect: tuple[str | os.PathLike, ...] = ()) -> str:
    """Refuse, before any work, what :func:`save_volume` would refuse for ``path``; returns the output format."""
    check_output_path(Path(path), overwrite=overwrite, inputs=tuple(Path(p) for p in protect))
    if like is None and _suffix(Path(path)) in dicom.SUFFIXES:
        return "dicom"  # whether the source allows a .dcm file is known once it is loaded
    return output_format(Path(path), like=like)


@dataclasses.dataclass(frozen=True)
class DicomSeries:
    """The DICOM files of one series found in a folder (``multiframe``: one multi-frame file holds the volume);
    or one file that could not be read (``error`` says why, ``uid`` is None)."""

    uid: str | None
    files: tuple[Path, ...]
    multiframe: bool = False
    error: str | None = None


def find_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """Every DICOM series directly in ``folder`` (not below). A series holding a file that cannot be read carries
    ``error`` naming it (a file whose series cannot even be told is a series of its own): one broken file spoils no
    other series."""
    found = dicom.scan_folder(Path(folder), recursive=False)
    out = []
    for uid, slices in sorted(found.items()):
        files = tuple(sorted(s.path for s in slices))
        broken = [s.error for s in slices if s.error]
        if broken:
            more = f" (and {len(broken) - 1} more file(s) of this series)" if len(broken) > 1 else ""
            out.append(DicomSeries(None if uid.startswith("unreadable-") else uid, files, error=broken[0] + more))
            continue
        out.append(DicomSeries(uid, files, multiframe=len(slices) == 1
                               and int(slices[0].header.get("NumberOfFrames", 1) or 1) > 1))
    return out


def foreign_files(path: str | os.PathLike) -> list[Path]:
    """The files in an existing DICOM output folder that medden did not write (empty for a file or a missing path):
    ``--overwrite`` may replace only medden's own outputs."""
    import pydicom

    path = Path(path)
    if not path.is_dir():
        return []
    foreign = []
    for p in sorted(path.rglob("*")):
        try:
            ours = p.is_file() and "medden" in str(pydicom.dcmread(p, stop_before_pixels=True).get(
                "SoftwareVersions", ""))
        except Exception:  # noqa: BLE001 - unreadable or not DICOM: not ours
            ours = False
        if not ours and not p.is_dir():
            foreign.append(p)
    return foreign


def default_output_path(source: Path, tag: str = "denoised") -> Path:
    """``scan.nii.gz`` → ``scan_denoised.nii.gz``; a DICOM folder ``ser/`` → ``ser_denoised/`` beside it."""
    source = Path(source)
    if source.is_dir():
        return source.with_name(f"{source.name}_{tag}")
    suffix = _suffix(source)
    stem = source.name[: -len(suffix)] if suffix else source.name
    return source.with_name(f"{stem}_{tag}{suffix}")


def sidecar_path(path: Path) -> Path:
    """The BIDS-style JSON sidecar of a NIfTI/ITK output: ``scan_denoised.nii.gz`` → ``scan_denoised.json``."""
    suffix = _suffix(Path(path))
    return Path(path).with_name(Path(path).name[: -len(suffix)] + ".json")


def save_volume(volume: Volume, path: str | os.PathLike, *, overwrite: bool = False,
                description: str = "medden", protect: tuple[str | os.PathLike, ...] = (),
                provenance: dict | None = None, anonymize: bool | str = False) -> Path:
    """Write ``volume`` to ``path`` atomically, in the format its suffix names (no suffix: a DICOM series folder).

    The volume's source file (``volume.meta['source_path']``) and every path in ``protect`` are never overwritten.
    ``description`` goes into the DICOM SeriesDescription. ``provenance`` (a JSON-ready record of what was done) is
    written as a BIDS-style JSON sidecar beside NIfTI/NRRD/MHA outputs and into the DerivationDescription of DICOM
    outputs. ``anonymize`` (True, or a secret key string shared by every run that must map one study's UIDs the
    same way) de-identifies DICOM outputs with the PS3.15 Basic Application Level Confidentiality Profile
    (:func:`medden.io.anonymize.anonymize_dataset`). Padding voxels (``meta['padding_mask']``, from a CT
    PixelPaddingValue) are written back as exactly the padding value. DICOM outputs are derived series that
    validate (see :mod:`medden.io.dicom_write`). Files and folders get the permissions of a plain write under the
    umask. Returns the path written.

    Raises
    ------
    OutputError
        The output exists (and ``overwrite`` is False), equals an input, its folder is missing or not writable, or
        the write failed (disk full ...): one line, and no partial output or temporary file is left.
    """
    path = Path(path)
    inputs = tuple(Path(p) for p in protect)
    if volume.meta.get("source_path"):
        inputs += (Path(volume.meta["source_path"]),)
    fmt = check_output(path, like=volume, overwrite=overwrite, protect=inputs)
    is_dir = fmt == "dicom" and _suffix(path) not in dicom.SUFFIXES
    sidecar = sidecar_path(path) if provenance is not None and fmt != "dicom" else None
    if sidecar is not None and anonymize:  # no input path (which often names the patient) in the sidecar either
        provenance = {k: provenance[k] for k in ANONYMOUS_PROVENANCE if k in provenance}
    if sidecar is not None:
        check_output_path(sidecar, overwrite=overwrite, inputs=inputs)
    volume = restore_padding(volume)
    try:
        with atomic_path(path, is_dir=is_dir) as tmp:
            if fmt == "nifti":
                nifti.save_nifti(volume, tmp)
            elif fmt == "itk":
                itk.save_itk(volume, tmp)
            else:
                dicom.save_dicom(volume, tmp, description=description, provenance=provenance, anonymize=anonymize)
            if sidecar is not None:
                with atomic_path(sidecar) as tmp_json:
                    tmp_json.write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None
    return path


def os_reason(exc: OSError) -> str:
    """One line saying why the system refused a write ("No space left on device (disk full)"), even when a library
    re-raised the error with its own text around the ``[Errno N]`` (pydicom does)."""
    import errno
    import re

    number = exc.errno
    if number is None:
        found = re.search(r"\[Errno (\d+)\]", str(exc))
        number = int(found.group(1)) if found else None
    if number is not None:
        text = os.strerror(number)
        return text + (" (disk full)" if number == errno.ENOSPC else " (quota exceeded)" if number == errno.EDQUOT
                       else "")
    first = str(exc).strip().splitlines()
    return first[0][:200] if first else type(exc).__name__


def restore_padding(volume: Volume) -> Volume:
    """The volume with its padding voxels (``meta['padding_mask']``, from a CT PixelPaddingValue) set back to exactly
    the padding value, whatever a denoiser left there."""
    mask = volume.meta.get("padding_mask")
    if mask is None or np.shape(mask) != volume.shape or "padding_value" not in volume.meta:
        return volume
    data = volume.data.copy()
    data[np.asarray(mask, dtype=bool)] = np.float32(volume.meta["padding_value"])
    return dataclasses.replace(volume, data=data)
