"""Writing a volume as a derived DICOM series that validates (``dciodvfy``: no errors).

The common modules (Patient, General Study, General Series, General Equipment, SOP Common) are built by highdicom's
``SOPClass``, which writes every Type 2 attribute (empty when unknown); the image modules of the CT and MR Image IODs
(PS3.3 A.3, A.4: Frame of Reference, General Image, Image Plane, Image Pixel, CT/MR Image) are filled here, keeping the
source's acquisition attributes when there is a DICOM source. Rules a reader can rely on:

* **SeriesNumber** of a derived series is the source's plus :data:`SERIES_NUMBER_OFFSET` (series 3 → 1003; a
  volume with no DICOM source → 1001), so it never collides with the series it came from.
* Each output slice lists the source images it was computed from in **SourceImageSequence** (SOP Class and
  Instance UIDs; the slice at the same position when the geometry is unchanged, every source slice otherwise).
* Voxels are stored as 16-bit integers with RescaleSlope/RescaleIntercept per slice: the source's where the values
  fit, otherwise a slope fitted to that slice — values are never clipped.
* Private elements longer than :data:`MAX_PRIVATE_BYTES` are never copied into a derived series.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import warnings
from pathlib import Path

import numpy as np

from medden.volume import Volume

#: SeriesNumber of a derived series = the source's SeriesNumber + this offset.
SERIES_NUMBER_OFFSET = 1000
#: Private elements larger than this (bytes) are dropped from derived series (vendor blobs, embedded raw data).
MAX_PRIVATE_BYTES = 64 * 1024
#: PurposeOfReferenceCodeSequence of each SourceImageSequence item (DICOM PS3.16 CID 7202).
SOURCE_IMAGE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
#: Attributes of the source that describe its own pixels or lineage, not the derived image's.
_STALE = ("SmallestImagePixelValue", "LargestImagePixelValue", "SourceImageSequence", "IconImageSequence",
          "DerivationCodeSequence", "SliceLocation", "PixelPaddingRangeLimit", "SmallestPixelValueInSeries",
          "LargestPixelValueInSeries", "DataSetTrailingPadding")
#: Provenance fields that may be written into an anonymised DerivationDescription (no paths, no source UIDs).
ANONYMOUS_PROVENANCE = ("method", "model", "model_version", "params", "sigma", "sigma_source", "device", "modality")

_CT_TYPE2 = ("KVP", "AcquisitionNumber")
_MR_TYPE2 = ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength")
_PT_TYPE2 = ("CollimatorType", "RadiopharmaceuticalInformationSequence", "PatientOrientationCodeSequence",
             "PatientGantryRelationshipCodeSequence")


def derived_series_number(source_number) -> int:
    """The SeriesNumber of a series derived from one numbered ``source_number`` (None: no DICOM source)."""
    try:
        number = int(source_number)
    except (TypeError, ValueError):
        number = 1
    return min(max(number, 0) + SERIES_NUMBER_OFFSET, 2**31 - 1)


def derivation_text(volume: Volume, provenance: dict | None, anonymize: bool) -> str:
    """DerivationDescription: the processing history plus the provenance record. When anonymising, only the
    path-free provenance fields are kept and any trace of the input path is cut, so no file or folder name (which
    often names the patient) reaches the output."""
    text = "; ".join(volume.history) or "written by medden"
    if provenance:
        record = {k: v for k, v in provenance.items() if k != "dicom_derivation_code"}
        if anonymize:
            record = {k: record[k] for k in ANONYMOUS_PROVENANCE if k in record}
        text += " | " + json.dumps(record, separators=(",", ":"), default=str)
    if anonymize and volume.meta.get("source_path"):
        source = Path(volume.meta["source_path"])
        for trace in sorted({str(source), *source.parts[1:]}, key=len, reverse=True):
            if len(trace) >= 3:
                text = text.replace(trace, "[removed]")
    return text[:1024]


def source_instances(volume: Volume) -> list:
    """The source's image headers in output slice order (classic series), or its one dataset (multi-frame)."""
    fmt = volume.meta.get("format")
    if fmt == "dicom-series":
        return list(volume.meta["headers"])
    if fmt == "dicom-multiframe":
        return [volume.meta["dataset"]]
    return []


def quantise_slices(values: np.ndarray, rescale: list[tuple[float, float]] | None,
                    dtypes: list[str] | None, zero_intercept: bool = False
                    ) -> list[tuple[np.ndarray, float, float, np.dtype]]:
    """Per slice (last axis of ``values``): stored integers, slope, intercept and type.

    The source's slope/intercept and 16-bit type are kept where the slice's values fit; otherwise that slice gets its
    own slope and intercept spread over the type's range (PS3.3 allows a RescaleSlope per image), so nothing is
    clipped. Without a source, one slope/intercept for the whole volume (integer-valued CT keeps slope 1).
    ``zero_intercept``: fitted slopes keep RescaleIntercept 0 (the PET Image module requires it).
    """
    n = values.shape[2]
    out = []
    if rescale is None:
        lo, hi = float(values.min()), float(values.max())
        if np.array_equal(values, np.rint(values)) and lo >= -32768 and hi <= 32767:
            common = (1.0, 0.0)
        else:
            common = _fit(lo, hi, np.dtype(np.int16), zero_intercept)
    for k in range(n):
        plane = values[:, :, k].T.astype(np.float64)
        dtype = np.dtype(dtypes[k]).newbyteorder("=") if dtypes else np.dtype(np.int16)
        if dtype.itemsize != 2 or not np.issubdtype(dtype, np.integer):
            dtype = np.dtype(np.int16)  # CT/MR images store 16 bits; 8-bit (JPEG) sources widen
        if zero_intercept and np.issubdtype(dtype, np.unsignedinteger) and plane.min() < 0:
            dtype = np.dtype(np.int16)  # negative values with RescaleIntercept 0 need a signed type
        slope, inter = rescale[k] if rescale is not None else common
        stored = np.rint((plane - inter) / slope)
        info = np.iinfo(dtype)
        if stored.min() < info.min or stored.max() > info.max:
            slope, inter = _fit(float(plane.min()), float(plane.max()), dtype, zero_intercept)
            stored = np.rint((plane - inter) / slope)
        clipped = int(np.count_nonzero((stored < info.min) | (stored > info.max)))
        if clipped:  # cannot happen after the refit above; said out loud if it ever does
            warnings.warn(f"slice {k + 1}: {clipped} voxel(s) clipped to the stored type's range", UserWarning,
                          stacklevel=2)
        out.append((np.clip(stored, info.min, info.max).astype(dtype), slope, inter, dtype))
    return out


def _fit(lo: float, hi: float, dtype: np.dtype, zero_intercept: bool = False) -> tuple[float, float]:
    """Slope and intercept mapping [lo, hi] into ``dtype``'s range with a small margin, as 10-digit DS values."""
    info = np.iinfo(dtype)
    if zero_intercept:
        bound = max(hi / (info.max - 250) if hi > 0 else 0.0, lo / (info.min + 250) if lo < 0 else 0.0)
        return float(f"{max(bound, 1e-6) * 1.0001:.9g}"), 0.0
    span = float(info.max) - float(info.min) - 500.0
    slope = max((hi - lo) / span, 1e-6)
    slope = float(f"{slope:.9g}")
    inter = float(f"{lo - (float(info.min) + 250.0) * slope:.9g}")
    if np.rint((hi - inter) / slope) > info.max or np.rint((lo - inter) / slope) < info.min:
        slope = float(f"{slope * 1.001:.9g}")
    return slope, inter


def build_slice(volume: Volume, k: int, *, header, template, stored: np.ndarray, slope: float, inter: float,
                series_uid: str, series_number: int, description: str, derivation: str, code,
                sources: list, position: np.ndarray, now: _dt.datetime, padding: int | None, cache: dict):
    """One derived image (a pydicom Dataset) for output slice ``k``; ``cache`` (one dict per series) keeps the
    common modules, which are the same for every slice but the SOP Instance UID and Instance Number."""
    import pydicom.uid
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from medden._version import __version__

    base = _copy_source(header if header is not None else template)
    modality = volume.modality if volume.modality != "OT" else str(base.get("Modality", "OT") or "OT")
    sop_class = _sop_class(modality, header, template)
    src = template if template is not None else Dataset()
    if "common" not in cache:
        cache["common"] = common_modules(src, sop_class=sop_class, modality=modality, series_uid=series_uid,
                                         series_number=series_number, description=description, now=now)
    common = copy.deepcopy(cache["common"])
    common.SOPInstanceUID = common.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    common.InstanceNumber = k + 1
    for element in common:
        base[element.tag] = element
    base.file_meta = common.file_meta
    base.file_meta.ImplementationVersionName = f"MEDDEN_{__version__}"[:16]
    base.preamble = common.preamble

    # Frame of Reference, General Series (2C), General Image, Image Plane
    base.FrameOfReferenceUID = str(src.get("FrameOfReferenceUID") or "") or cache.setdefault(
        "frame_uid", pydicom.uid.generate_uid())
    _ensure(base, "PositionReferenceIndicator", *(("PatientPosition",) if modality in ("CT", "MR") else ()))
    _laterality(base)
    image_type = [str(v) for v in (base.get("ImageType") or [])]
    value3 = {"CT": ["AXIAL"], "MR": ["OTHER"]}.get(modality, [])  # the CT/MR Image modules require value 3
    value2 = "PRIMARY" if sop_class == pydicom.uid.PositronEmissionTomographyImageStorage else "SECONDARY"
    base.ImageType = ["DERIVED", value2, *(image_type[2:] or value3)]  # PET Image: value 2 is PRIMARY only
    base.DerivationDescription = derivation
    if code:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
        base.DerivationCodeSequence = Sequence([item])
    if sources:
        base.SourceImageSequence = Sequence([_source_item(s) for s in sources])
    lps = volume.affine_lps
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_cos, col_cos = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    base.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]
    base.ImageOrientationPatient = [f"{v:.10g}" for v in (*row_cos, *col_cos)]
    base.ImagePositionPatient = [f"{v:.10g}" for v in position]
    if not str(base.get("SliceThickness", "")).strip():
        base.SliceThickness = f"{spacing[2]:.10g}"

    # Image Pixel and the modality image module
    base.Rows, base.Columns = int(stored.shape[0]), int(stored.shape[1])
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.BitsAllocated = base.BitsStored = stored.dtype.itemsize * 8
    base.HighBit = base.BitsStored - 1
    base.PixelRepresentation = int(np.issubdtype(stored.dtype, np.signedinteger))
    for attr in ("PlanarConfiguration", "NumberOfFrames", "PixelAspectRatio"):
        if attr in base:
            delattr(base, attr)
    base.RescaleSlope, base.RescaleIntercept = f"{slope:.10g}", f"{inter:.10g}"
    if modality == "CT":
        base.RescaleType = base.get("RescaleType") or "HU"
        _ensure(base, *_CT_TYPE2)
    elif modality == "MR":
        if not str(base.get("ScanningSequence", "")).strip():
            base.ScanningSequence = "RM"  # research mode: the acquisition is unknown (volume from a non-DICOM file)
        if not str(base.get("SequenceVariant", "")).strip():
            base.SequenceVariant = "NONE"
        _ensure(base, *_MR_TYPE2)
    elif sop_class == pydicom.uid.PositronEmissionTomographyImageStorage:
        base.NumberOfSlices = volume.shape[2]
        _ensure(base, *_PT_TYPE2)
    elif sop_class == pydicom.uid.SecondaryCaptureImageStorage:
        base.ConversionType = base.get("ConversionType") or "WSD"
        base.RescaleType = base.get("RescaleType") or "US"  # unspecified units
        _ensure(base, "PatientOrientation")
    if padding is not None:
        base.PixelPaddingValue = int(padding)
        base["PixelPaddingValue"].VR = "SS" if base.PixelRepresentation else "US"
    elif "PixelPaddingValue" in base:
        del base.PixelPaddingValue
    base.PixelData = np.ascontiguousarray(stored).tobytes()
    base["PixelData"].VR = "OW"
    return base


def common_modules(src, *, sop_class: str, modality: str, series_uid: str, series_number: int,
                   description: str, now: _dt.datetime):
    """Patient, General Study, General Series, General Equipment and SOP Common modules, by highdicom's SOPClass
    (every Type 2 attribute present, empty when the source does not know it)."""
    import highdicom as hd
    import pydicom.uid

    from medden._version import __version__

    versions = []
    if src.get("SoftwareVersions"):
        element = src["SoftwareVersions"]
        versions = [str(element.value)] if element.VM == 1 else [str(v) for v in element.value]  # one value: whole
    versions = [v for v in versions if v and not v.startswith("medden")] + [f"medden {__version__}"]
    with warnings.catch_warnings():  # the source's PatientName is kept as it is, even a one-component one
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        return _sop_class_object(hd, src, sop_class=sop_class, modality=modality, series_uid=series_uid,
                                 series_number=series_number, description=description, now=now, versions=versions)


def _sop_class_object(hd, src, *, sop_class, modality, series_uid, series_number, description, now, versions):
    import pydicom.uid

    return hd.base.SOPClass(
        study_instance_uid=str(src.get("StudyInstanceUID") or "") or pydicom.uid.generate_uid(),
        series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=pydicom.uid.generate_uid(), sop_class_uid=sop_class, instance_number=1,
        modality=modality, manufacturer=_text(src, "Manufacturer"),
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        patient_id=_text(src, "PatientID") if "PatientID" in src else "medden",
        patient_name=_text(src, "PatientName") if "PatientName" in src else "Anonymous^",
        patient_birth_date=_date(src, "PatientBirthDate"),
        patient_sex=_text(src, "PatientSex") if _text(src, "PatientSex") in ("M", "F", "O") else None,
        accession_number=_text(src, "AccessionNumber"), study_id=_text(src, "StudyID"),
        study_date=_date(src, "StudyDate"), study_time=_time(src, "StudyTime"),
        referring_physician_name=_text(src, "ReferringPhysicianName"),
        series_description=_series_description(src, description),
        manufacturer_model_name=_text(src, "ManufacturerModelName"),
        software_versions=versions[0] if len(versions) == 1 else versions,
        device_serial_number=_text(src, "DeviceSerialNumber"), institution_name=_text(src, "InstitutionName"),
        series_date=now.date(), series_time=now.time().replace(microsecond=0),
        content_date=now.date(), content_time=now.time().replace(microsecond=0),
    )


def _copy_source(header):
    """A deep copy of a source header without its pixels, stale lineage and oversized private elements."""
    from pydicom.dataset import Dataset

    if header is None:
        return Dataset()
    ds = Dataset()
    for element in copy.deepcopy(header):  # decoded with the source's own encoding (a big-endian source too), so
        ds.add(element)                    # the output is written fresh in Explicit VR Little Endian
    for attr in _STALE + ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if attr in ds:
            delattr(ds, attr)
    for tag in [e.tag for e in ds if e.tag.is_private and _nbytes(e) > MAX_PRIVATE_BYTES]:
        del ds[tag]
    for tag in [e.tag for e in ds if e.tag.group in range(0x6000, 0x6020, 2)]:  # overlays drawn on the source
        del ds[tag]
    return ds


def _nbytes(element) -> int:
    value = element.value
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if element.VR == "SQ":
        return sum(_nbytes(e) for item in value for e in item)
    return 0


def _ensure(ds, *keywords: str) -> None:
    """Type 2: present, empty if unknown."""
    for keyword in keywords:
        if keyword not in ds:
            setattr(ds, keyword, None)


#: Body parts with a left and a right (DICOM PS3.16 CID 4031 terms), for which Laterality is required.
_PAIRED_PARTS = ("BREAST", "EYE", "EAR", "KIDNEY", "LUNG", "OVARY", "TESTIS", "ADRENAL", "PAROTID", "SHOULDER",
                 "ELBOW", "WRIST", "HAND", "FINGER", "THUMB", "HIP", "KNEE", "ANKLE", "FOOT", "TOE", "HEEL", "ARM",
                 "FOREARM", "LEG", "THIGH", "CLAVICLE", "SCAPULA", "HUMERUS", "FEMUR", "TIBIA", "FIBULA", "ORBIT",
                 "TMJ", "IAC", "EXTREMITY")


def _laterality(ds) -> None:
    """Laterality is Type 2C: required (empty when unknown) for a paired body part or an unknown one, and absent for
    an unpaired part such as BRAIN (an empty value there is an error to a validator)."""
    part = str(ds.get("BodyPartExamined", "") or "").upper()
    if part and not any(p in part for p in _PAIRED_PARTS):
        if "Laterality" in ds and not str(ds.Laterality or "").strip():
            del ds.Laterality
    else:
        _ensure(ds, "Laterality")


def _sop_class(modality: str, header, template) -> str:
    import pydicom.uid

    classic = {"CT": pydicom.uid.CTImageStorage, "MR": pydicom.uid.MRImageStorage}
    source = header if header is not None else template
    if source is not None and str(source.get("SOPClassUID", "")) in (
            pydicom.uid.CTImageStorage, pydicom.uid.MRImageStorage, pydicom.uid.PositronEmissionTomographyImageStorage):
        return str(source.SOPClassUID)
    return classic.get(modality, pydicom.uid.SecondaryCaptureImageStorage)


def _source_item(source):
    """A SourceImageSequence item: a source header, or ``(dataset, frame number)`` for a frame of a multi-frame."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    source, frame = source if isinstance(source, tuple) else (source, None)
    item = Dataset()
    item.ReferencedSOPClassUID = str(source.SOPClassUID)
    item.ReferencedSOPInstanceUID = str(source.SOPInstanceUID)
    if frame is not None:
        item.ReferencedFrameNumber = frame
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = SOURCE_IMAGE_PURPOSE
    item.PurposeOfReferenceCodeSequence = Sequence([purpose])
    return item


def _series_description(src, description: str) -> str:
    old = _text(src, "SeriesDescription") or ""
    return (f"{old} [{description}]" if old else description)[:64]


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip() or None


def _date(ds, keyword: str):
    value = _text(ds, keyword)
    if value is None:
        return None
    try:
        return _dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _time(ds, keyword: str):
    value = _text(ds, keyword)
    if value is None:
        return None
    try:
        digits = value.split(".")[0]
        return _dt.datetime.strptime(digits.ljust(6, "0")[:6], "%H%M%S").time()
    except ValueError:
        return None


def complete_after_anonymization(ds) -> None:
    """Put back, empty, the Type 2 attributes the confidentiality profile removed (X where the IOD wants Z), and
    empty the library's dummy dates (0001-01-01, which is not a valid DICOM date)."""
    def blank_dummy_dates(dataset, element) -> None:
        if element.VR in ("DA", "DT") and str(element.value or "").startswith("00010101"):
            element.value = ""

    ds.walk(blank_dummy_dates)
    _ensure(ds, "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
            "AccessionNumber", "Manufacturer", "PositionReferenceIndicator", "PatientID")
    _laterality(ds)
    modality = str(ds.get("Modality", ""))
    _ensure(ds, *{"CT": _CT_TYPE2, "MR": _MR_TYPE2, "PT": _PT_TYPE2}.get(modality, ()))


def write_multiframe(datasets: list, path: Path, *, series_uid: str, series_number: int, source=None,
                     key: str | None = None) -> None:
    """Write the derived slices as one Legacy Converted Enhanced CT/MR/PET image (highdicom's converter)."""
    import highdicom as hd
    import pydicom.uid

    modality = str(datasets[0].Modality)
    converter = {"CT": hd.legacy.LegacyConvertedEnhancedCTImage, "MR": hd.legacy.LegacyConvertedEnhancedMRImage,
                 "PT": hd.legacy.LegacyConvertedEnhancedPETImage}.get(modality)
    if converter is None:
        from medden.errors import OutputError

        raise OutputError(f"{path}: a multi-frame DICOM file can be written for CT, MR or PET only (got {modality}); "
                          f"give a folder name to write a DICOM series")
    with warnings.catch_warnings():  # highdicom questions a one-component PatientName such as "Anonymous"
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        image = converter(datasets, series_instance_uid=series_uid, series_number=series_number,
                          sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)
    _ensure(image, "PositionReferenceIndicator")
    _laterality(image)
    if source is not None:  # the Enhanced image modules want the referenced source listed as evidence too
        image.SourceImageEvidenceSequence = evidence_sequence(source, datasets[0], key)
    image.save_as(path, enforce_file_format=True)


def evidence_sequence(source, derived, key: str | None = None):
    """A Hierarchical SOP Instance Reference item naming ``source`` (study → series → instance), with the UIDs as
    they are in ``derived`` (anonymised with ``key``: remapped the same way)."""
    from medden.io.anonymize import remap_uid

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ref = derived.SourceImageSequence[0]
    instance, series, study = Dataset(), Dataset(), Dataset()
    instance.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
    instance.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
    series.SeriesInstanceUID = str(source.SeriesInstanceUID) if key is None else remap_uid(source.SeriesInstanceUID, key)
    series.ReferencedSOPSequence = Sequence([instance])
    study.StudyInstanceUID = str(derived.StudyInstanceUID)
    study.ReferencedSeriesSequence = Sequence([series])
    return Sequence([study])
