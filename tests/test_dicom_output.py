"""Derived DICOM series: validate with dciodvfy, keep single-valued attributes whole, number and reference the
source series (issue 14 item 3)."""
import numpy as np
import pydicom
import pytest

from dicom_factory import assert_dciodvfy_clean, oblique_affine_lps, write_series
from medden import Volume, load_volume, save_volume
from medden.io.dicom_write import SERIES_NUMBER_OFFSET
from medden.volume import RAS_TO_LPS


def headers(folder):
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]


def source_series(tmp_path, ct_values, **tags):
    paths = write_series(tmp_path / "src", ct_values, oblique_affine_lps())
    for p in paths:
        ds = pydicom.dcmread(p)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(p, enforce_file_format=True)
    return tmp_path / "src"


def test_single_software_version_is_not_split_into_characters(tmp_path, ct_values):
    src = source_series(tmp_path, ct_values, SoftwareVersions="syngo MR E11")
    save_volume(load_volume(src), tmp_path / "out")
    for h in headers(tmp_path / "out"):
        versions = list(h.SoftwareVersions)
        assert versions[0] == "syngo MR E11"
        assert versions[-1].startswith("medden")
        assert len(versions) == 2
    assert_dciodvfy_clean(tmp_path / "out")


def test_derived_series_has_its_own_number_and_references_each_source_image(tmp_path, ct_values):
    src = source_series(tmp_path, ct_values, SeriesNumber=3)
    vol = load_volume(src)
    save_volume(vol.with_data(vol.data + 1, step="test"), tmp_path / "out")
    by_position = {tuple(np.round([float(v) for v in h.ImagePositionPatient], 3)): h for h in headers(src)}
    out = headers(tmp_path / "out")
    assert {int(h.SeriesNumber) for h in out} == {3 + SERIES_NUMBER_OFFSET}
    for h in out:
        source = by_position[tuple(np.round([float(v) for v in h.ImagePositionPatient], 3))]
        (ref,) = h.SourceImageSequence
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID  # the slice at the same position
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert h.StudyInstanceUID == source.StudyInstanceUID
        assert h.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert_dciodvfy_clean(tmp_path / "out")


@pytest.mark.parametrize("modality", ["MR", "CT", "OT", "PT"])
def test_nifti_written_as_dicom_has_every_type_1_and_2_attribute(tmp_path, ct_values, modality):
    vol = Volume(ct_values * 0.37, RAS_TO_LPS @ oblique_affine_lps(), modality=modality)
    save_volume(vol, tmp_path / "dcm")
    for h in headers(tmp_path / "dcm"):
        for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "PatientSex", "PatientBirthDate", "Manufacturer",
                        "ReferringPhysicianName", "StudyID", "SeriesNumber", "PositionReferenceIndicator"):
            assert keyword in h, keyword
        assert int(h.SeriesNumber) == 1 + SERIES_NUMBER_OFFSET
    back = load_volume(tmp_path / "dcm")
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert_dciodvfy_clean(tmp_path / "dcm")


def test_resampled_volume_references_every_source_image(tmp_path, ct_values):
    src = source_series(tmp_path, ct_values)
    vol = load_volume(src)
    moved = Volume(vol.data, vol.affine @ np.diag([1.0, 1.0, 1.0, 1.0]) + np.array(
        [[0, 0, 0, 5.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), modality="CT", meta=vol.meta)
    save_volume(moved, tmp_path / "out")
    uids = {h.SOPInstanceUID for h in headers(src)}
    for h in headers(tmp_path / "out"):
        assert {r.ReferencedSOPInstanceUID for r in h.SourceImageSequence} == uids
    assert_dciodvfy_clean(tmp_path / "out")


@pytest.mark.parametrize("part, has_laterality", [("BRAIN", False), ("KNEE", True), (None, True)])
def test_laterality_follows_the_body_part(tmp_path, ct_values, part, has_laterality):
    """Laterality is Type 2C: an empty one on an unpaired part (a Siemens brain series) is a validator error."""
    src = source_series(tmp_path, ct_values, **({"BodyPartExamined": part} if part else {}))
    save_volume(load_volume(src), tmp_path / "out")
    assert all(("Laterality" in h) == has_laterality for h in headers(tmp_path / "out"))
    assert_dciodvfy_clean(tmp_path / "out")
