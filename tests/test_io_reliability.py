"""I/O reliability (issue 14): disk full, symlinked series folders, one truncated file in a flat DICOM export."""
import errno
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_factory import oblique_affine_lps, write_series
from medden import Volume, load_volume, save_volume
from medden.errors import InputError, MeddenError, OutputError
from medden.io.dicom import scan_folder


def disk_full(after: int):
    calls = {"n": 0}

    def write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            # as pydicom re-raises it: the errno text inside its own message, no errno attribute
            raise OSError("With tag (7FE0,0010) got exception: [Errno 28] No space left on device\nTraceback ...")
        return original(*args, **kwargs)

    original = pydicom.dataset.Dataset.save_as
    return write


@pytest.mark.parametrize("target", ["dicom", "nifti", "nifti-gz"])
def test_disk_full_is_one_clear_error_and_leaves_nothing(tmp_path, ct_values, monkeypatch, target):
    from medden.io import nifti

    vol = Volume(ct_values, np.diag([0.8, 0.8, 2.0, 1.0]), modality="CT")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_midway(data, path, **kwargs):  # the parallel gzip writer runs out of space half-way through its file
        Path(path).write_bytes(bytes(data[:100]))
        full()

    if target == "dicom":
        monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", disk_full(after=3))
        out = tmp_path / "out"
    elif target == "nifti":
        monkeypatch.setattr(nib, "save", full)
        out = tmp_path / "out.nii"
    else:
        monkeypatch.setattr(nifti, "write_gzip", full_midway)
        out = tmp_path / "out.nii.gz"
    with pytest.raises(OutputError) as info:
        save_volume(vol, out, provenance={"method": "test"})
    message = str(info.value)
    assert isinstance(info.value, MeddenError)
    assert "\n" not in message and "No space left on device (disk full)" in message and str(out) in message
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file or folder


def test_symlinked_series_folder_is_read_like_a_symlinked_file(tmp_path, ct_values):
    write_series(tmp_path / "elsewhere" / "ser", ct_values, oblique_affine_lps())
    study = tmp_path / "study"
    study.mkdir()
    (study / "ser_link").symlink_to(tmp_path / "elsewhere" / "ser", target_is_directory=True)
    (study / "loop").symlink_to(study, target_is_directory=True)  # a cycle must not loop
    vol = load_volume(study)
    np.testing.assert_array_equal(vol.data, ct_values)
    from medden.pipeline import discover

    items = discover(study)
    assert [str(i.relative) for i in items] == ["ser_link"]


@pytest.mark.parametrize("cut", ["pixels", "header"])
def test_truncated_file_fails_only_its_series(tmp_path, ct_values, cut):
    flat = tmp_path / "export"
    write_series(flat, ct_values, oblique_affine_lps(), series_uid="1.2.826.0.1.1", prefix="a")
    bad = write_series(flat, ct_values + 5, oblique_affine_lps(), series_uid="1.2.826.0.1.2", prefix="b")
    victim = sorted(bad)[4]
    size = victim.stat().st_size
    after_uid = victim.read_bytes().index(b"\x20\x00\x0e\x00") + 80  # (0020,000E) SeriesInstanceUID and its value
    keep = size - 200 if cut == "pixels" else after_uid  # in the pixel data, or inside the header after the series UID
    with open(victim, "r+b") as fh:
        fh.truncate(keep)
    series = scan_folder(flat)  # no exception: one bad file does not stop the scan
    assert "1.2.826.0.1.1" in series and "1.2.826.0.1.2" in series
    np.testing.assert_array_equal(load_volume(flat, series_uid="1.2.826.0.1.1").data, ct_values)
    with pytest.raises(InputError, match=victim.name):
        load_volume(flat, series_uid="1.2.826.0.1.2")


def test_unreadable_file_of_unknown_series_is_its_own_failing_item(tmp_path, ct_values):
    flat = tmp_path / "export"
    write_series(flat, ct_values, oblique_affine_lps(), series_uid="1.2.826.0.1.1", prefix="a")
    junk = flat / "zz.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")  # the preamble, then nothing readable
    series = scan_folder(flat)
    assert set(series) == {"1.2.826.0.1.1", "unreadable-zz.dcm"}
    with pytest.warns(UserWarning, match="may be missing a slice"):
        load_volume(flat, series_uid="1.2.826.0.1.1")
    with pytest.raises(InputError, match="zz.dcm"):
        load_volume(flat, series_uid="unreadable-zz.dcm")
    with pytest.raises(InputError, match="zz.dcm"):
        load_volume(flat)
