"""--anonymize: the DICOM PS3.15 Basic Application Level Confidentiality Profile (issue 14 item 5), checked against
the profile's own attribute table on a series that carries identifying attributes, private tags and a huge one."""
import numpy as np
import pydicom
import pytest
from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as profile
from pydicom.tag import Tag

from dicom_factory import assert_dciodvfy_clean, oblique_affine_lps, write_series
from medden import load_volume, save_volume
from medden.io.anonymize import PROFILE_CODE, anonymize_dataset

IDENTIFYING = {
    "PatientName": "Doe^John", "PatientID": "MRN-0042", "PatientBirthDate": "19600101", "PatientSex": "M",
    "PatientAge": "064Y", "PatientAddress": "2 Station Road", "OtherPatientIDs": "X-99", "PatientComments": "tea",
    "StudyDate": "20240105", "SeriesDate": "20240105", "AcquisitionDate": "20240105", "ContentDate": "20240105",
    "StudyTime": "101010", "SeriesTime": "101500", "AcquisitionTime": "101501", "ContentTime": "101502",
    "AccessionNumber": "ACC123", "StudyID": "S77", "StudyDescription": "Head John Doe",
    "SeriesDescription": "T2 John Doe", "InstitutionName": "St Mary", "InstitutionAddress": "1 Hospital Way",
    "InstitutionalDepartmentName": "Neuro", "StationName": "CT-ROOM-3", "DeviceSerialNumber": "SN-999",
    "ReferringPhysicianName": "Ref^Doc", "PerformingPhysicianName": "Perf^Doc", "OperatorsName": "Op^Er",
    "ProtocolName": "head Doe", "ImageComments": "call John", "AdditionalPatientHistory": "history",
    "RequestingPhysician": "Req^Doc", "PerformedProcedureStepID": "PPS1", "RequestedProcedureDescription": "CT",
}
HUGE = 300_000


def identified_series(root, ct_values, series_uid=None, study_uid=None, frame_uid=None):
    paths = write_series(root, ct_values, oblique_affine_lps(), series_uid=series_uid, study_uid=study_uid)
    for p in paths:
        ds = pydicom.dcmread(p)
        for key, value in IDENTIFYING.items():
            setattr(ds, key, value)
        if frame_uid:
            ds.FrameOfReferenceUID = frame_uid
        block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        block.add_new(0x10, "OB", b"\x01" * HUGE)  # a huge private element
        for i in range(0x11, 0x11 + 38):  # and many small ones
            block.add_new(i, "LO", f"private {i} John Doe")
        ds.save_as(p, enforce_file_format=True)
    return root


def profile_tags():
    table = {}
    for category in ("D_TAGS", "Z_TAGS", "X_TAGS", "U_TAGS", "Z_D_TAGS", "X_Z_TAGS", "X_D_TAGS", "X_Z_D_TAGS",
                     "X_Z_U_STAR_TAGS"):
        for tag in getattr(profile, category):
            if len(tag) == 2:
                table[Tag(*tag)] = category
    return table


@pytest.fixture
def anonymised(tmp_path, ct_values):
    src = identified_series(tmp_path / "Doe_John_MRN-0042" / "ser", ct_values)
    out = save_volume(load_volume(src), tmp_path / "out", anonymize=True,
                      provenance={"input": str(src), "Sources": [str(src)], "method": "nlm"})
    return src, out


def test_every_profile_attribute_is_removed_emptied_or_replaced(anonymised):
    src, out = anonymised
    sources = {h.SOPInstanceUID: h for h in (pydicom.dcmread(f, stop_before_pixels=True) for f in src.iterdir())}
    table = profile_tags()
    checked = set()
    for f in sorted(out.iterdir()):
        ds = pydicom.dcmread(f)
        original = next(iter(sources.values()))
        for element in original:
            if element.tag not in table or element.tag == Tag("PixelData") or not element.value:
                continue
            checked.add(element.keyword)
            new = ds.get(element.tag)
            if new is None or not new.value:
                continue  # removed or emptied (X, Z)
            if element.keyword in ("PatientSex",):  # Z: kept only as an empty value
                pytest.fail(f"{element.keyword} kept: {new.value!r}")
            assert str(new.value) != str(element.value), f"{element.keyword} kept its value {element.value!r}"
        assert not [e for e in ds if e.tag.is_private], "private tags carried over"
        assert ds.PatientIdentityRemoved == "YES"
        code = ds.DeidentificationMethodCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == PROFILE_CODE
        assert "Doe" not in str(ds.PatientName) and ds.PatientID != "MRN-0042"
        text = str(ds)
        for secret in ("Doe", "John", "MRN-0042", "St Mary", "SN-999", "CT-ROOM-3", "20240105"):
            assert secret not in text, f"{secret!r} still in the output"
        for uid in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
            assert ds.get(uid) not in {str(h.get(uid)) for h in sources.values()}
        (ref,) = ds.SourceImageSequence
        assert ref.ReferencedSOPInstanceUID not in sources  # references remapped too
    assert {"StudyDate", "DeviceSerialNumber", "StationName", "InstitutionName", "StudyDescription",
            "SeriesDescription", "AccessionNumber", "PatientBirthDate", "StudyInstanceUID",
            "FrameOfReferenceUID", "SOPInstanceUID"} <= checked
    assert_dciodvfy_clean(out)


def test_uids_are_remapped_consistently_across_a_study(tmp_path, ct_values):
    import pydicom.uid

    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    a = identified_series(tmp_path / "a", ct_values, study_uid=study, frame_uid=frame)
    b = identified_series(tmp_path / "b", ct_values[:, :, :5], study_uid=study, frame_uid=frame)
    outs = [save_volume(load_volume(s), tmp_path / f"out_{s.name}", anonymize="project key") for s in (a, b)]
    heads = [pydicom.dcmread(next(o.iterdir()), stop_before_pixels=True) for o in outs]
    assert heads[0].StudyInstanceUID == heads[1].StudyInstanceUID != study
    assert heads[0].FrameOfReferenceUID == heads[1].FrameOfReferenceUID != frame
    assert heads[0].SeriesInstanceUID != heads[1].SeriesInstanceUID
    assert heads[0].PatientID == heads[1].PatientID != "MRN-0042"  # one keyed pseudonym per patient
    other = save_volume(load_volume(a), tmp_path / "other_key", anonymize="another key")
    assert pydicom.dcmread(next(other.iterdir())).StudyInstanceUID != heads[0].StudyInstanceUID


def test_no_input_path_in_the_derivation_description(anonymised):
    src, out = anonymised
    for f in out.iterdir():
        text = str(pydicom.dcmread(f, stop_before_pixels=True).get("DerivationDescription", ""))
        assert "Doe_John" not in text and "MRN-0042" not in text and str(src) not in text
        assert "nlm" in text  # what was done is still recorded


def test_huge_private_tags_never_reach_a_derived_series(tmp_path, ct_values):
    src = identified_series(tmp_path / "ser", ct_values)
    out = save_volume(load_volume(src), tmp_path / "out")  # not anonymised
    ds = pydicom.dcmread(next(out.iterdir()))
    sizes = [len(e.value) for e in ds if e.tag.is_private and isinstance(e.value, (bytes, str))]
    assert sizes and max(sizes) < HUGE  # small private tags may stay, the huge one is gone
    assert_dciodvfy_clean(out)


def test_anonymize_dataset_is_public_and_in_place(tmp_path, ct_values):
    src = identified_series(tmp_path / "ser", ct_values)
    ds = pydicom.dcmread(next(src.iterdir()))
    anonymize_dataset(ds, key="k")
    assert ds.PatientIdentityRemoved == "YES"
    for keyword in ("DeviceSerialNumber", "StationName", "InstitutionName", "StudyDescription", "SeriesDescription"):
        assert not ds.get(keyword), keyword  # removed
    assert not [e for e in ds if e.tag.is_private]


def test_anonymised_sidecar_names_no_input_path(tmp_path, ct_values):
    from medden import Volume

    src = save_volume(Volume(ct_values, np.eye(4), modality="CT"), tmp_path / "Doe_John.nii.gz")
    out = save_volume(load_volume(src), tmp_path / "out.nii.gz", anonymize=True,
                      provenance={"input": str(src), "Sources": [str(src)], "method": "nlm"})
    text = out.with_name("out.json").read_text()
    assert "Doe_John" not in text and "nlm" in text
