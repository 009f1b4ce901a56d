"""DICOM: classic series (one file per slice), enhanced/multi-frame single files, and writing derived series.

Geometry follows DICOM PS3.3 C.7.6.2: ImageOrientationPatient gives the row and column direction cosines (LPS+),
PixelSpacing is (row spacing, column spacing) = (Δj, Δi), and slices are ordered by the projection of
ImagePositionPatient on the slice normal (row × column), never by file name or InstanceNumber. Voxel values are
converted to physical units with RescaleSlope/RescaleIntercept (Hounsfield units for CT).
"""
from __future__ import annotations

import copy
import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medden.errors import InputError, OutputError
from medden.volume import RAS_TO_LPS, Volume

#: Relative tolerance on slice spacing before a series is called inconsistent (missing or duplicated slices).
SPACING_TOLERANCE = 0.01
SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass
class _Slice:
    path: Path
    header: Any  # pydicom Dataset without pixel data


# ---------------------------------------------------------------------------------------------------------- reading
def is_dicom_file(path: Path) -> bool:
    """True when the file carries the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def scan_folder(folder: Path, recursive: bool = True, errors: list | None = None) -> dict[str, list[_Slice]]:
    """Headers of every DICOM image file in (or below) ``folder``, grouped by SeriesInstanceUID.

    A file whose header cannot be read raises :class:`InputError`, or, when ``errors`` is a list, is appended to it
    as ``(path, message)`` and left out."""
    import pydicom

    series: dict[str, list[_Slice]] = {}
    walk = os.walk(folder) if recursive else [(str(folder), [], [p.name for p in Path(folder).iterdir()
                                                                 if p.is_file()])]
    for root, _dirs, files in walk:
        for name in sorted(files):
            path = Path(root) / name
            if name.upper() == "DICOMDIR" or not is_dicom_file(path):
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:  # truncated or corrupt header
                _broken(errors, path, f"cannot read DICOM file {path}: {_first_sentence(exc)}")
                continue
            if "Rows" not in header or "Columns" not in header:
                sop = header.get("SOPClassUID")
                if sop is None or "Image" in getattr(sop, "name", ""):
                    _broken(errors, path, f"{path}: incomplete DICOM image header (truncated file?)")
                continue  # not an image (structured report, presentation state ...)
            uid = str(header.get("SeriesInstanceUID", "unknown"))
            series.setdefault(uid, []).append(_Slice(path, header))
    return series


def _broken(errors: list | None, path: Path, message: str) -> None:
    if errors is None:
        raise InputError(message) from None
    errors.append((path, message))


def describe_series(series: dict[str, list[_Slice]]) -> str:
    parts = []
    for uid, slices in series.items():
        h = slices[0].header
        desc = str(h.get("SeriesDescription", "")).strip() or "no description"
        parts.append(f"{uid} ({h.get('Modality', '?')}, {desc}, {len(slices)} file(s))")
    return "; ".join(parts)


def load_dicom(path: Path, series_uid: str | None = None) -> Volume:
    """Load a DICOM series folder or a single multi-frame DICOM file as one :class:`Volume`."""
    path = Path(path)
    if path.is_file():
        import pydicom

        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise InputError(f"cannot read DICOM file {path}: {_first_sentence(exc)}") from None
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            return _load_multiframe(path)
        raise InputError(f"{path} is a single 2D DICOM slice; pass the folder that holds the whole series")
    series = scan_folder(path, errors=[] if series_uid is not None else None)  # a chosen series: others' broken
    if not series:                                                               # files are not its concern
        raise InputError(f"no DICOM image files found in {path}")
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"series {series_uid} not found in {path}; it holds: {describe_series(series)}")
        slices = series[series_uid]
    elif len(series) > 1:
        raise InputError(f"{path} holds {len(series)} series, pick one with --series-uid: {describe_series(series)}")
    else:
        slices = next(iter(series.values()))
    if len(slices) == 1 and int(slices[0].header.get("NumberOfFrames", 1) or 1) > 1:
        return _load_multiframe(slices[0].path)
    return _load_classic(path, slices)


def _load_classic(folder: Path, slices: list[_Slice]) -> Volume:
    import pydicom

    if len(slices) < 2:
        raise InputError(f"{folder} holds a single 2D DICOM slice; medden needs a 3D series")
    first = slices[0].header
    for s in slices:
        h = s.header
        if "ImagePositionPatient" not in h or "ImageOrientationPatient" not in h:
            raise InputError(f"{s.path} has no ImagePositionPatient/ImageOrientationPatient; cannot place the slice")
        if (h.Rows, h.Columns) != (first.Rows, first.Columns):
            raise InputError(f"{folder}: slices differ in size ({first.Rows}×{first.Columns} vs "
                             f"{h.Rows}×{h.Columns} in {s.path.name})")
        if not np.allclose(_floats(h.ImageOrientationPatient), _floats(first.ImageOrientationPatient), atol=1e-4):
            raise InputError(f"{folder}: slices differ in orientation ({s.path.name}); not one 3D volume")
        if int(h.get("SamplesPerPixel", 1)) != 1:
            raise InputError(f"{s.path} is a colour image; medden needs greyscale volumes")
    row_cos, col_cos = _orientation(first.ImageOrientationPatient)
    normal = np.cross(row_cos, col_cos)
    positions = np.array([_floats(s.header.ImagePositionPatient) for s in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    _check_spacing(folder, positions @ normal, [s.path.name for s in slices])

    planes, slopes, inters, headers, dtypes = [], [], [], [], []
    for s in slices:
        try:
            ds = pydicom.dcmread(s.path)
            pixels = ds.pixel_array
        except Exception as exc:
            raise InputError(f"cannot decode pixel data of {s.path}: {_first_sentence(exc)}") from None
        if pixels.shape != (first.Rows, first.Columns):
            raise InputError(f"{s.path}: pixel data shape {pixels.shape} does not match Rows×Columns")
        slope, inter = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        planes.append(pixels.T.astype(np.float32) * np.float32(slope) + np.float32(inter))
        dtypes.append(str(pixels.dtype))
        slopes.append(slope)
        inters.append(inter)
        del ds.PixelData
        headers.append(ds)
    data = np.stack(planes, axis=2)
    affine = _affine_lps(first, positions[0], (positions[-1] - positions[0]) / (len(slices) - 1))
    meta = {"format": "dicom-series", "source_path": str(folder), "headers": headers, "stored_dtypes": dtypes,
            "rescale": list(zip(slopes, inters)), "series_uid": str(first.get("SeriesInstanceUID", "")),
            "source_affine_lps": affine}
    return Volume(data, RAS_TO_LPS @ affine, modality=str(first.get("Modality", "OT")), meta=meta)


def _load_multiframe(path: Path) -> Volume:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:
        raise InputError(f"cannot read multi-frame DICOM {path}: {_first_sentence(exc)}") from None
    n = int(ds.NumberOfFrames)
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n:
        raise InputError(f"{path}: multi-frame DICOM without per-frame geometry (not an enhanced CT/MR image)")

    def group(i: int, name: str):
        for source in (per_frame[i], shared):
            if source is not None and name in source:
                return source[name][0]
        raise InputError(f"{path}: frame {i + 1} has no {name}")

    iop = group(0, "PlaneOrientationSequence").ImageOrientationPatient
    spacing = group(0, "PixelMeasuresSequence").PixelSpacing
    positions = np.array([_floats(group(i, "PlanePositionSequence").ImagePositionPatient) for i in range(n)])
    rescale = []
    for i in range(n):
        try:
            t = group(i, "PixelValueTransformationSequence")
            rescale.append((float(t.RescaleSlope), float(t.RescaleIntercept)))
        except InputError:
            rescale.append((1.0, 0.0))
    row_cos, col_cos = _orientation(iop)
    order = np.argsort(positions @ np.cross(row_cos, col_cos), kind="stable")
    _check_spacing(path, positions[order] @ np.cross(row_cos, col_cos), [f"frame {i + 1}" for i in order])
    frames = pixels.reshape(n, int(ds.Rows), int(ds.Columns))
    data = np.stack([frames[i].T.astype(np.float32) * np.float32(rescale[i][0]) + np.float32(rescale[i][1])
                     for i in order], axis=2)
    step = (positions[order[-1]] - positions[order[0]]) / (n - 1)
    affine = _affine_lps(ds, positions[order[0]], step, iop=iop, pixel_spacing=spacing)
    stored_dtype = str(pixels.dtype)
    del ds.PixelData
    meta = {"format": "dicom-multiframe", "source_path": str(path), "dataset": ds, "frame_order": order.tolist(),
            "rescale": rescale, "stored_dtypes": [stored_dtype], "series_uid": str(ds.get("SeriesInstanceUID", "")),
            "source_affine_lps": affine}
    return Volume(data, RAS_TO_LPS @ affine, modality=str(ds.get("Modality", "OT")), meta=meta)


def _first_sentence(exc: Exception) -> str:
    """The first sentence of a library's error message (pydicom's run on over several clauses)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(" - ")[0].split("; ")[0][:200]


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values], dtype=np.float64)


def _orientation(iop) -> tuple[np.ndarray, np.ndarray]:
    v = _floats(iop)
    row_cos, col_cos = v[:3], v[3:]
    if abs(np.linalg.norm(row_cos) - 1) > 1e-3 or abs(np.linalg.norm(col_cos) - 1) > 1e-3:
        raise InputError(f"ImageOrientationPatient {list(v)} is not made of unit vectors")
    return row_cos / np.linalg.norm(row_cos), col_cos / np.linalg.norm(col_cos)


def _check_spacing(where: Path, along_normal: np.ndarray, names: list[str]) -> None:
    gaps = np.diff(along_normal)
    if gaps.size == 0:
        return
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise InputError(f"{where}: two slices at the same position ({names[i]}, {names[i + 1]}); "
                         f"several acquisitions mixed in one series?")
    mean = gaps.mean()
    worst = int(np.argmax(np.abs(gaps - mean)))
    if abs(gaps[worst] - mean) > SPACING_TOLERANCE * mean:
        raise InputError(f"{where}: inconsistent slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm, "
                         f"near {names[worst + 1]}); a slice missing?")


def _affine_lps(header, position, step, iop=None, pixel_spacing=None) -> np.ndarray:
    row_cos, col_cos = _orientation(iop if iop is not None else header.ImageOrientationPatient)
    dj, di = _floats(pixel_spacing if pixel_spacing is not None else header.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_cos * di
    affine[:3, 1] = col_cos * dj
    affine[:3, 2] = step
    affine[:3, 3] = position
    return affine


# ---------------------------------------------------------------------------------------------------------- writing
def save_dicom(volume: Volume, path: Path, description: str = "medden", provenance: dict | None = None,
               anonymize: bool = False) -> None:
    """Write ``volume`` as a derived DICOM series into folder ``path`` (or one multi-frame file if ``path`` ends
    in .dcm and the source was multi-frame).

    The series gets a new SeriesInstanceUID and SOPInstanceUIDs, ImageType DERIVED\\SECONDARY, a SeriesDescription
    and a DerivationDescription that say what was done; patient and study identifiers and the per-slice geometry
    of the source are kept (``anonymize=True`` replaces the patient identifiers). Pixel data are stored in the
    source's stored type with its rescale slope/intercept. ``provenance`` (a JSON-ready record) is appended to the
    DerivationDescription; its optional ``dicom_derivation_code`` (value, scheme, meaning) fills
    DerivationCodeSequence.
    """
    import pydicom.uid

    fmt = volume.meta.get("format")
    same_geometry = fmt in ("dicom-series", "dicom-multiframe") and np.allclose(
        volume.affine_lps, volume.meta["source_affine_lps"], atol=1e-5)
    series_uid = pydicom.uid.generate_uid()
    derivation = "; ".join(volume.history) or "written by medden"
    if provenance:
        import json

        derivation += " | " + json.dumps({k: v for k, v in provenance.items() if k != "dicom_derivation_code"},
                                         separators=(",", ":"), default=str)
    extras = {"code": (provenance or {}).get("dicom_derivation_code"), "anonymize": anonymize}
    if fmt == "dicom-multiframe" and same_geometry:
        if path.suffix.lower() in SUFFIXES:
            _write_multiframe(volume, path, series_uid, derivation, description, extras)
            return
    if fmt == "dicom-series" and same_geometry:
        headers = volume.meta["headers"]
        rescale = volume.meta["rescale"]
        dtypes = volume.meta["stored_dtypes"]
    else:
        template = _template_from(volume)
        headers, rescale, dtypes = _new_headers(volume, template)
    path.mkdir(exist_ok=True)
    for k, header in enumerate(headers):
        ds = copy.deepcopy(header)
        slope, inter = rescale[k]
        _set_pixels(ds, _to_stored(volume.data[:, :, k].T, slope, inter, np.dtype(dtypes[k])))
        _mark_derived(ds, series_uid, derivation, description, stored=np.dtype(dtypes[k]), **extras)
        ds.save_as(path / f"IM{k + 1:05d}.dcm", enforce_file_format=True)


def _to_stored(values: np.ndarray, slope: float, inter: float, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.rint((values.astype(np.float64) - inter) / slope), info.min, info.max).astype(dtype)


def _set_pixels(ds, stored: np.ndarray) -> None:
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds["PixelData"].VR = "OB" if stored.dtype.itemsize == 1 else "OW"


_PATIENT_IDENTIFIERS = ("PatientBirthDate", "PatientBirthTime", "PatientAddress", "OtherPatientIDs",
                        "OtherPatientNames", "PatientTelephoneNumbers", "PatientMotherBirthName", "MilitaryRank",
                        "EthnicGroup", "PatientComments", "ReferringPhysicianName", "InstitutionName",
                        "InstitutionAddress", "AccessionNumber", "OperatorsName", "PerformingPhysicianName")


def _mark_derived(ds, series_uid: str, derivation: str, description: str, stored: np.dtype, code=None,
                  anonymize: bool = False) -> None:
    import hashlib

    import pydicom.uid
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from medden import __version__

    sop_uid = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.ImplementationVersionName = f"MEDDEN_{__version__}"[:16]
    image_type = [str(v) for v in (ds.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "SECONDARY"] + image_type[2:]
    old = str(ds.get("SeriesDescription", "")).strip()
    ds.SeriesDescription = (f"{old} [{description}]" if old else description)[:64]
    ds.DerivationDescription = derivation[:1024]
    versions = [str(v) for v in (ds.get("SoftwareVersions") or [])] if "SoftwareVersions" in ds else []
    ds.SoftwareVersions = [v for v in versions if not v.startswith("medden")] + [f"medden {__version__}"]
    ds.BitsAllocated = ds.BitsStored = stored.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(np.issubdtype(stored, np.signedinteger))
    now = _dt.datetime.now()
    ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for stale in ("SmallestImagePixelValue", "LargestImagePixelValue", "LossyImageCompression"):
        if stale in ds:
            delattr(ds, stale)
    if code:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
        ds.DerivationCodeSequence = Sequence([item])
    if anonymize:
        pseudo = hashlib.sha256(str(ds.get("PatientID", "")).encode()).hexdigest()[:16]
        ds.PatientName, ds.PatientID = "Anonymous", f"ANON-{pseudo}"
        for key in _PATIENT_IDENTIFIERS:
            if key in ds:
                delattr(ds, key)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "medden --anonymize: patient identifiers removed"


def _write_multiframe(volume: Volume, path: Path, series_uid: str, derivation: str, description: str,
                      extras: dict) -> None:
    ds = copy.deepcopy(volume.meta["dataset"])
    order = volume.meta["frame_order"]
    dtype = np.dtype(volume.meta["stored_dtypes"][0])
    frames = [None] * len(order)
    for k, frame_index in enumerate(order):
        slope, inter = volume.meta["rescale"][frame_index]
        frames[frame_index] = _to_stored(volume.data[:, :, k].T, slope, inter, dtype)
    _set_pixels(ds, np.stack(frames))
    _mark_derived(ds, series_uid, derivation, description, stored=dtype, **extras)
    ds.save_as(path, enforce_file_format=True)


def _template_from(volume: Volume):
    """Patient/study identifiers to keep when the geometry changed or the source was not DICOM."""
    if volume.meta.get("format") == "dicom-series":
        return volume.meta["headers"][0]
    if volume.meta.get("format") == "dicom-multiframe":
        return volume.meta["dataset"]
    return None


_KEEP = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
         "StudyID", "AccessionNumber", "StudyDescription", "ReferringPhysicianName", "FrameOfReferenceUID",
         "Manufacturer", "InstitutionName", "PatientPosition")


def _new_headers(volume: Volume, template) -> tuple[list, list, list]:
    """Fresh CT/MR image headers for a volume whose geometry no source header describes."""
    import pydicom.uid
    from pydicom.dataset import Dataset, FileMetaDataset

    sop_class = {"CT": pydicom.uid.CTImageStorage, "MR": pydicom.uid.MRImageStorage}.get(
        volume.modality, pydicom.uid.SecondaryCaptureImageStorage)
    lps = volume.affine_lps
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_cos, col_cos = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    lo, hi = float(volume.data.min()), float(volume.data.max())
    if volume.modality == "CT" and lo >= -32768 and hi <= 32767:
        slope, inter = 1.0, 0.0
    else:  # spread the value range over int16 with a linear rescale
        slope = max((hi - lo) / 65000.0, 1e-6)
        inter = lo + 32500.0 * slope
    study_uid = pydicom.uid.generate_uid()
    frame_uid = pydicom.uid.generate_uid()
    headers = []
    for k in range(volume.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPClassUID = sop_class
        ds.Modality = volume.modality if volume.modality != "OT" else "OT"
        ds.PatientName, ds.PatientID = "Anonymous", "medden"
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study_uid, frame_uid
        if template is not None:
            for key in _KEEP:
                if key in template:
                    setattr(ds, key, template.data_element(key).value)
        ds.SeriesNumber = 1001
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]
        ds.SliceThickness = f"{spacing[2]:.10g}"
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in (lps[:3, 3] + k * lps[:3, 2])]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{inter:.10g}"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        headers.append(ds)
    return headers, [(float(f"{slope:.10g}"), float(f"{inter:.10g}"))] * volume.shape[2], ["int16"] * volume.shape[2]
