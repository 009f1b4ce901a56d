"""Writes small DICOM series and multi-frame files with pydicom, so the tests make their own DICOM data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence


def _base(modality: str, sop_class: str, study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "MEDDEN-TEST-001"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.SeriesDescription = "test series"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def write_series(folder: Path, values: np.ndarray, affine_lps: np.ndarray, *, modality: str = "CT",
                 slope: float | list[float] = 1.0, intercept: float = -1024.0, dtype=np.int16, shuffle_seed: int | None = 0,
                 series_uid: str | None = None, study_uid: str | None = None, prefix: str = "slice") -> list[Path]:
    """Write ``values`` ([i, j, k], physical units) as one file per slice; file names are shuffled against the
    slice order so that a reader sorting by name gets it wrong. ``slope`` may be one per slice (as PET stores)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or pydicom.uid.generate_uid()
    study_uid = study_uid or pydicom.uid.generate_uid()
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    row_cos, col_cos = affine_lps[:3, 0] / spacing[0], affine_lps[:3, 1] / spacing[1]
    sop_class = {"CT": pydicom.uid.CTImageStorage, "PT": pydicom.uid.PositronEmissionTomographyImageStorage}.get(
        modality, pydicom.uid.MRImageStorage)
    n = values.shape[2]
    frame_uid = pydicom.uid.generate_uid()  # one frame of reference for the whole series
    names = np.random.default_rng(shuffle_seed).permutation(n) if shuffle_seed is not None else np.arange(n)
    paths = []
    slopes = list(slope) if np.ndim(slope) else [slope] * n
    for k in range(n):
        slope = slopes[k]
        ds = _base(modality, sop_class, study_uid, series_uid)
        ds.FrameOfReferenceUID = frame_uid
        uid = pydicom.uid.generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = int(names[k]) + 1
        ds.Rows, ds.Columns = values.shape[1], values.shape[0]
        ds.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]
        ds.SliceThickness = f"{spacing[2]:.10g}"
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in affine_lps[:3, 3] + k * affine_lps[:3, 2]]
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        info = np.iinfo(dtype)
        stored = np.clip(np.rint((values[:, :, k].T - intercept) / slope), info.min, info.max).astype(dtype)
        ds.BitsAllocated = ds.BitsStored = stored.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(np.issubdtype(dtype, np.signedinteger))
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        path = folder / f"{prefix}_{names[k]:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_multiframe(path: Path, values: np.ndarray, affine_lps: np.ndarray, *, slope: float = 1.0,
                     intercept: float = -1024.0, frame_order: list[int] | None = None) -> Path:
    """Write an enhanced CT image (one file, per-frame positions) of ``values`` ([i, j, k], HU)."""
    series_uid, study_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds = _base("CT", pydicom.uid.EnhancedCTImageStorage, study_uid, series_uid)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    n = values.shape[2]
    order = frame_order if frame_order is not None else list(range(n))
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    row_cos, col_cos = affine_lps[:3, 0] / spacing[0], affine_lps[:3, 1] / spacing[1]
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = values.shape[1], values.shape[0]
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]
    pm.SliceThickness = f"{spacing[2]:.10g}"
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = [f"{v:.10g}" for v in (*row_cos, *col_cos)]
    shared.PlaneOrientationSequence = Sequence([po])
    pv = Dataset()
    pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = f"{slope:.10g}", f"{intercept:.10g}", "HU"
    shared.PixelValueTransformationSequence = Sequence([pv])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames, per_frame = [], []
    for k in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [f"{v:.10g}" for v in affine_lps[:3, 3] + k * affine_lps[:3, 2]]
        item.PlanePositionSequence = Sequence([pos])
        per_frame.append(item)
        frames.append(np.rint((values[:, :, k].T - intercept) / slope).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.stack(frames).tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def oblique_affine_lps(spacing=(0.7, 0.8, 2.5), origin=(-120.0, -95.0, 40.0), angles=(0.3, -0.2, 0.15)) -> np.ndarray:
    """An LPS affine with oblique direction cosines and non-isotropic spacing."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def assert_dciodvfy_clean(path: Path) -> None:
    """Run dciodvfy (Debian dicom3tools) on ``path`` (a file, or every file of a folder); fail on any "Error" line.

    Skips the test only when dciodvfy is not installed (``.ci/run`` installs it)."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    assert files, f"no DICOM file in {path}"
    for f in files:
        run = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"dciodvfy: {len(errors)} error(s) in {f.name}:\n" + "\n".join(errors)


def set_tags(paths: list[Path], **tags) -> None:
    """Set DICOM attributes (by keyword) in every file of ``paths``."""
    for p in paths:
        ds = pydicom.dcmread(p)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(p, enforce_file_format=True)


def to_jpeg_baseline(paths: list[Path]) -> None:
    """Re-encode 8-bit-range slices as JPEG Baseline (Process 1), lossy, as some exports and PACS send them."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate

    for p in paths:
        ds = pydicom.dcmread(p)
        buf = io.BytesIO()
        Image.fromarray(ds.pixel_array.astype(np.uint8)).save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.LossyImageCompression, ds.LossyImageCompressionRatio, ds.LossyImageCompressionMethod = "01", "5", "ISO_10918_1"
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
        ds.save_as(p, enforce_file_format=True)


def to_big_endian(paths: list[Path]) -> None:
    """Rewrite the files in Explicit VR Big Endian (retired, still found in old archives)."""
    from pydicom.filewriter import dcmwrite

    for p in paths:
        ds = pydicom.dcmread(p)
        pixels = ds.pixel_array
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
        dcmwrite(p, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)
