"""DICOM: classic series (one file per slice), enhanced/multi-frame single files, and writing derived series.

Geometry follows DICOM PS3.3 C.7.6.2: ImageOrientationPatient gives the row and column direction cosines (LPS+),
PixelSpacing is (row spacing, column spacing) = (Δj, Δi), and slices are ordered by the projection of
ImagePositionPatient on the slice normal (row × column), never by file name or InstanceNumber. Voxel values are
converted to physical units with RescaleSlope/RescaleIntercept (Hounsfield units for CT).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medden.errors import InputError
from medden.volume import RAS_TO_LPS, Volume

#: Relative tolerance on slice spacing before a series is called inconsistent (missing or duplicated slices).
SPACING_TOLERANCE = 0.01
SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass
class _Slice:
    path: Path
    header: Any  # pydicom Dataset without pixel data
    error: str | None = None  # set for a file that cannot be read (truncated, corrupt): loading its series fails


# ---------------------------------------------------------------------------------------------------------- reading
def is_dicom_file(path: Path) -> bool:
    """True when the file carries the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def walk(root: Path):
    """``os.walk`` that also enters symbolically linked folders (a linked series is read like a linked file),
    each real folder once, so a link cycle cannot loop."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield folder, dirs, files


def scan_folder(folder: Path, recursive: bool = True) -> dict[str, list[_Slice]]:
    """Headers of every DICOM image file in (or below) ``folder``, grouped by SeriesInstanceUID.

    A file that cannot be read does not stop the scan: it joins its series (when its SeriesInstanceUID can still be
    read) or a series of its own named ``unreadable-<file name>``, as a slice whose ``error`` names the file, so that
    loading that series fails clearly and every other series of a flat export still loads.
    """
    import pydicom

    series: dict[str, list[_Slice]] = {}
    walker = walk(folder) if recursive else [(str(folder), [], [p.name for p in Path(folder).iterdir()
                                                                   if p.is_file()])]
    for root, _dirs, files in walker:
        for name in sorted(files):
            path = Path(root) / name
            if name.upper() == "DICOMDIR" or name.startswith("._") or not is_dicom_file(path):
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:  # truncated or corrupt header
                _add_broken(series, path, f"cannot read DICOM file {path}: {_first_sentence(exc)}", None)
                continue
            if "Rows" not in header or "Columns" not in header:
                sop = header.get("SOPClassUID")
                if sop is None or "Image" in getattr(sop, "name", ""):
                    _add_broken(series, path, f"{path}: incomplete DICOM image header (truncated file?)", header)
                continue  # not an image (structured report, presentation state ...)
            uid = str(header.get("SeriesInstanceUID", "unknown"))
            series.setdefault(uid, []).append(_Slice(path, header))
    return series


def _add_broken(series: dict, path: Path, error: str, header) -> None:
    from pydicom.dataset import Dataset

    uid = str(header.get("SeriesInstanceUID", "") or "") if header is not None else ""
    uid = uid or series_uid_from_bytes(path) or ""
    series.setdefault(uid or f"unreadable-{path.name}", []).append(
        _Slice(path, header if header is not None else Dataset(), error))


_SERIES_UID_TAG = re.compile(rb"\x20\x00\x0e\x00(?:UI(.)(.)|(.)(.)\x00\x00)", re.DOTALL)


def series_uid_from_bytes(path: Path) -> str | None:
    """The SeriesInstanceUID of a file too damaged for a DICOM parser, found by its tag (0020,000E) in the raw
    little-endian bytes, or None."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(1 << 20)
    except OSError:
        return None
    for match in _SERIES_UID_TAG.finditer(raw):
        lo, hi = (match.group(1), match.group(2)) if match.group(1) is not None else (match.group(3), match.group(4))
        length = lo[0] | hi[0] << 8
        value = raw[match.end(): match.end() + length].rstrip(b"\0 ").decode("ascii", "replace")
        if 0 < length <= 64 and len(value) > 2 and all(c.isdigit() or c == "." for c in value):
            return value
    return None


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
    series = scan_folder(path)
    if not series:
        raise InputError(f"no DICOM image files found in {path}")
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"series {series_uid} not found in {path}; it holds: {describe_series(series)}")
        slices = series[series_uid]
        unknown = [u for u in series if u.startswith("unreadable-")]
        if unknown and not series_uid.startswith("unreadable-"):
            warnings.warn(f"{path}: {len(unknown)} unreadable file(s) of unknown series ({', '.join(unknown[:3])}); "
                          f"series {series_uid} may be missing a slice", UserWarning, stacklevel=3)
    elif len(series) > 1:
        broken = [s for slices in series.values() for s in slices if s.error]
        if broken and len([u for u in series if not u.startswith("unreadable-")]) <= 1:
            raise InputError(broken[0].error)
        raise InputError(f"{path} holds {len(series)} series, pick one with --series-uid: {describe_series(series)}")
    else:
        slices = next(iter(series.values()))
    broken = [s for s in slices if s.error]
    if broken:
        raise InputError(broken[0].error + (f" (and {len(broken) - 1} more file(s) of this series)"
                                            if len(broken) > 1 else ""))
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

    planes, slopes, inters, headers, dtypes, pads = [], [], [], [], [], []
    padding = first.get("PixelPaddingValue")
    for s in slices:
        try:
            ds = pydicom.dcmread(s.path)
        except Exception as exc:
            raise InputError(f"cannot read DICOM file {s.path}: {_first_sentence(exc)}") from None
        pixels = decode_pixels(ds, s.path)
        if pixels.shape != (first.Rows, first.Columns):
            raise InputError(f"{s.path}: pixel data shape {pixels.shape} does not match Rows×Columns")
        slope, inter = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        planes.append(pixels.T.astype(np.float32) * np.float32(slope) + np.float32(inter))
        if padding is not None:  # a padding range [value, limit] when PixelPaddingRangeLimit is given
            limit = ds.get("PixelPaddingRangeLimit", padding)
            lo, hi = min(int(padding), int(limit)), max(int(padding), int(limit))
            pads.append((pixels.T >= lo) & (pixels.T <= hi))
        dtypes.append(str(pixels.dtype.newbyteorder("=")))  # a big-endian source decodes to '>i2'
        slopes.append(slope)
        inters.append(inter)
        del ds.PixelData
        headers.append(ds)
    data = np.stack(planes, axis=2)
    affine = _affine_lps(first, positions[0], (positions[-1] - positions[0]) / (len(slices) - 1))
    meta = {"format": "dicom-series", "source_path": str(folder), "headers": headers, "stored_dtypes": dtypes,
            "rescale": list(zip(slopes, inters)), "series_uid": str(first.get("SeriesInstanceUID", "")),
            "source_affine_lps": affine}
    if padding is not None and any(p.any() for p in pads):
        # CT PixelPaddingValue (PS3.3 C.7.5.1.1.2): voxels outside the scanned field, not data. Reported so a
        # denoiser can leave them; save_volume writes them back as exactly this padding value.
        mask = np.stack(pads, axis=2)
        meta.update(padding_mask=mask, padding_stored=int(padding),
                    padding_value=float(np.float32(padding) * np.float32(slopes[0]) + np.float32(inters[0])))
    return Volume(data, RAS_TO_LPS @ affine, modality=str(first.get("Modality", "OT")), meta=meta)


def _load_multiframe(path: Path) -> Volume:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(f"cannot read multi-frame DICOM {path}: {_first_sentence(exc)}") from None
    pixels = decode_pixels(ds, path)
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
    stored_dtype = str(pixels.dtype.newbyteorder("="))
    del ds.PixelData
    meta = {"format": "dicom-multiframe", "source_path": str(path), "dataset": ds, "frame_order": order.tolist(),
            "rescale": rescale, "stored_dtypes": [stored_dtype], "series_uid": str(ds.get("SeriesInstanceUID", "")),
            "source_affine_lps": affine}
    return Volume(data, RAS_TO_LPS @ affine, modality=str(ds.get("Modality", "OT")), meta=meta)


#: Python packages that decode compressed DICOM pixel data (pydicom's pixel-data plugins), by transfer syntax name.
DECODERS = {"JPEG Baseline": "pillow or pylibjpeg + pylibjpeg-libjpeg", "JPEG Extended": "pylibjpeg + pylibjpeg-libjpeg",
            "JPEG Lossless": "pylibjpeg + pylibjpeg-libjpeg", "JPEG-LS": "pyjpegls",
            "JPEG 2000": "pylibjpeg + pylibjpeg-openjpeg", "RLE": "numpy (built in)"}


def decode_pixels(ds, path: Path) -> np.ndarray:
    """``ds.pixel_array``, or an InputError naming the file, the compression and the package that decodes it."""
    try:
        return ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) is not None else None
        name = getattr(syntax, "name", str(syntax or "unknown transfer syntax"))
        if syntax is not None and getattr(syntax, "is_compressed", False) and (
                "missing" in str(exc) or "plugin" in str(exc) or "decoder" in str(exc).lower()):
            need = next((pkg for key, pkg in DECODERS.items() if name.startswith(key)), "a pydicom pixel-data plugin")
            raise InputError(f"cannot decode {path}: its pixels are compressed as {name} and no installed decoder "
                             f"handles it — install {need}") from None
        raise InputError(f"cannot decode pixel data of {path} ({name}): {_first_sentence(exc)}") from None


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
               anonymize: bool | str = False) -> None:
    """Write ``volume`` as a derived DICOM series into folder ``path`` (or one multi-frame file if ``path`` ends
    in .dcm and the source was multi-frame); see :mod:`medden.io.dicom_write` for the rules.

    The series gets new Series/SOP Instance UIDs, SeriesNumber = source + 1000, ImageType DERIVED\\SECONDARY, a
    SeriesDescription and a DerivationDescription that say what was done, SourceImageSequence references to the
    source images, and every Type 1/2 attribute of its IOD. ``provenance`` (a JSON-ready record) is appended to the
    DerivationDescription; its optional ``dicom_derivation_code`` (value, scheme, meaning) fills
    DerivationCodeSequence. ``anonymize`` (True or a key string) applies the PS3.15 Basic Application Level
    Confidentiality Profile (:func:`medden.io.anonymize.anonymize_dataset`).
    """
    import datetime as _datetime

    import pydicom.uid

    from medden.io import dicom_write as dw
    from medden.io.anonymize import anonymization_key, anonymize_dataset

    key = anonymization_key(anonymize)
    fmt = volume.meta.get("format")
    same_geometry = fmt in ("dicom-series", "dicom-multiframe") and np.allclose(
        volume.affine_lps, volume.meta["source_affine_lps"], atol=1e-5)
    sources = dw.source_instances(volume)
    template = sources[0] if sources else None
    classic_same = fmt == "dicom-series" and same_geometry
    rescale = volume.meta["rescale"] if same_geometry else None
    dtypes = volume.meta["stored_dtypes"] if classic_same else None
    if fmt == "dicom-multiframe" and same_geometry:
        order = volume.meta["frame_order"]
        rescale = [volume.meta["rescale"][i] for i in order]
        dtypes = [volume.meta["stored_dtypes"][0]] * len(order)
    data = volume.data
    padding = volume.meta.get("padding_stored") if same_geometry else None
    mask = volume.meta.get("padding_mask") if padding is not None else None
    pet = template is not None and str(template.get("SOPClassUID", "")) == pydicom.uid.PositronEmissionTomographyImageStorage
    slices = dw.quantise_slices(data, rescale, dtypes, zero_intercept=pet)
    derivation = dw.derivation_text(volume, provenance, anonymize=key is not None)
    code = (provenance or {}).get("dicom_derivation_code")
    series_uid = pydicom.uid.generate_uid()
    number = dw.derived_series_number(template.get("SeriesNumber") if template is not None else None)
    now = _datetime.datetime.now()
    lps = volume.affine_lps
    datasets, cache = [], {}
    for k, (stored, slope, inter, _dtype) in enumerate(slices):
        pad_value = None
        if mask is not None and np.asarray(mask).shape == volume.shape and np.asarray(mask)[:, :, k].any():
            pad_value = _padding_in(stored.dtype, padding)
            stored = stored.copy()
            stored[np.asarray(mask)[:, :, k].T] = pad_value  # exactly the padding value, whatever the data hold
        header = sources[k] if classic_same else None
        if fmt == "dicom-multiframe":  # frame numbers of the source file count from 1 in stored order
            frames = volume.meta["frame_order"] if same_geometry else range(len(volume.meta["frame_order"]))
            refs = [(template, int(frames[k]) + 1)] if same_geometry else [(template, int(f) + 1) for f in frames]
        else:
            refs = [sources[k]] if classic_same else sources
        ds = dw.build_slice(volume, k, header=header, template=template, stored=stored, slope=slope, inter=inter,
                            series_uid=series_uid, series_number=number, description=description,
                            derivation=derivation, code=code, sources=refs, position=lps[:3, 3] + k * lps[:3, 2],
                            now=now, padding=pad_value, cache=cache)
        if key is not None:
            anonymize_dataset(ds, key)
            ds.SeriesDescription = description[:64]
            ds.DerivationDescription = derivation
            dw.complete_after_anonymization(ds)
        datasets.append(ds)
    if fmt == "dicom-multiframe" and path.suffix.lower() in SUFFIXES:
        dw.write_multiframe(datasets, path, series_uid=datasets[0].SeriesInstanceUID, series_number=number,
                            source=template, key=key)
        return
    path.mkdir(exist_ok=True)
    for k, ds in enumerate(datasets):
        ds.save_as(path / f"IM{k + 1:05d}.dcm", enforce_file_format=True)


def _padding_in(dtype: np.dtype, padding) -> int:
    info = np.iinfo(dtype)
    return int(np.clip(int(padding), info.min, info.max))
