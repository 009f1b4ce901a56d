"""Round trips for every format, with oblique geometry, anisotropic spacing and shuffled DICOM file order."""
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_factory import assert_dciodvfy_clean, oblique_affine_lps, write_multiframe, write_series
from medden import Volume, load_volume, save_volume
from medden.volume import RAS_TO_LPS

ATOL_MM = 1e-5


def sitk_affine_lps(img) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    a[:3, 3] = img.GetOrigin()
    return a


def read_series_sitk(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_float_roundtrip_keeps_geometry_and_values(tmp_path, ct_values, suffix):
    affine = RAS_TO_LPS @ oblique_affine_lps()
    vol = Volume(ct_values + 0.25, affine, modality="CT")
    path = save_volume(vol, tmp_path / f"v{suffix}")
    back = load_volume(path)
    assert back.shape == vol.shape
    np.testing.assert_allclose(back.affine, vol.affine, atol=ATOL_MM, rtol=0)
    np.testing.assert_array_equal(back.data, vol.data)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_integer_source_is_written_back_in_its_stored_type(tmp_path, ct_values, suffix):
    src = save_volume(Volume(ct_values, np.diag([0.8, 0.8, 3.0, 1.0]), modality="CT"), tmp_path / f"f{suffix}")
    if suffix == ".nii.gz":  # make an int16 source with nibabel directly
        import nibabel as nib

        img = nib.Nifti1Image(ct_values.astype(np.int16), np.diag([0.8, 0.8, 3.0, 1.0]))
        nib.save(img, src)
    else:
        img = sitk.GetImageFromArray(ct_values.astype(np.int16).transpose(2, 1, 0))
        img.SetSpacing((0.8, 0.8, 3.0))
        sitk.WriteImage(img, str(src))
    vol = load_volume(src)
    shifted = vol.with_data(vol.data + 0.4)  # below the int16 quantisation step
    out = load_volume(save_volume(shifted, tmp_path / f"o{suffix}"))
    assert np.abs(out.data - shifted.data).max() <= 0.5 + 1e-6
    np.testing.assert_allclose(out.affine, vol.affine, atol=ATOL_MM, rtol=0)
    if suffix == ".nii.gz":
        import nibabel as nib

        assert nib.load(tmp_path / f"o{suffix}").get_data_dtype() == np.int16
    else:
        assert sitk.ReadImage(str(tmp_path / f"o{suffix}")).GetPixelID() == sitk.sitkInt16


def test_ras_and_lps_orientation_codes(tmp_path, ct_values):
    ras = Volume(ct_values, np.diag([1.0, 1.0, 2.0, 1.0]))
    lps = Volume(ct_values, np.diag([-1.0, -1.0, 2.0, 1.0]))
    assert ras.orientation == "RAS" and lps.orientation == "LPS"
    for vol, name in ((ras, "ras.nii.gz"), (lps, "lps.nrrd")):
        back = load_volume(save_volume(vol, tmp_path / name))
        assert back.orientation == vol.orientation
        np.testing.assert_allclose(back.affine, vol.affine, atol=ATOL_MM, rtol=0)


def test_dicom_series_sorted_by_position_not_file_name(tmp_path, ct_values):
    affine = oblique_affine_lps()
    write_series(tmp_path / "ser", ct_values, affine, shuffle_seed=3)
    vol = load_volume(tmp_path / "ser")
    assert vol.modality == "CT"
    np.testing.assert_allclose(vol.affine_lps, affine, atol=ATOL_MM, rtol=0)
    np.testing.assert_array_equal(vol.data, ct_values)  # HU through RescaleIntercept, slices in order
    ref = read_series_sitk(tmp_path / "ser")
    np.testing.assert_allclose(sitk_affine_lps(ref), vol.affine_lps, atol=ATOL_MM, rtol=0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref).transpose(2, 1, 0), vol.data)  # ITK applies the rescale too


def test_dicom_series_roundtrip_is_a_derived_series(tmp_path, ct_values):
    affine = oblique_affine_lps()
    write_series(tmp_path / "ser", ct_values, affine, slope=0.5, intercept=-1024.0)
    src = load_volume(tmp_path / "ser")
    smoothed = src.with_data(src.data + 0.2, step="denoised with medden test")
    save_volume(smoothed, tmp_path / "out")
    back = load_volume(tmp_path / "out")
    np.testing.assert_allclose(back.affine, src.affine, atol=ATOL_MM, rtol=0)
    assert np.abs(back.data - smoothed.data).max() <= 0.25 + 1e-6  # half the stored step (slope 0.5)
    files = sorted((tmp_path / "out").iterdir())
    old = pydicom.dcmread(next((tmp_path / "ser").iterdir()))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert len({h.SeriesInstanceUID for h in headers}) == 1
    assert headers[0].SeriesInstanceUID != old.SeriesInstanceUID
    assert len({h.SOPInstanceUID for h in headers}) == len(files)
    assert old.SOPInstanceUID not in {h.SOPInstanceUID for h in headers}
    for h in headers:
        assert list(h.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "denoised with medden test" in h.DerivationDescription
        assert "medden" in h.SeriesDescription
        assert (h.PatientID, h.StudyInstanceUID) == (old.PatientID, old.StudyInstanceUID)
        assert h.file_meta.MediaStorageSOPInstanceUID == h.SOPInstanceUID
    assert pydicom.dcmread(files[0]).pixel_array.dtype == np.int16
    assert_dciodvfy_clean(tmp_path / "out")


def test_nifti_from_dicom_has_the_same_geometry_in_simpleitk(tmp_path, ct_values):
    write_series(tmp_path / "ser", ct_values, oblique_affine_lps())
    save_volume(load_volume(tmp_path / "ser"), tmp_path / "ser.nii.gz")
    nii = sitk.ReadImage(str(tmp_path / "ser.nii.gz"))
    dcm = read_series_sitk(tmp_path / "ser")
    np.testing.assert_allclose(sitk_affine_lps(nii), sitk_affine_lps(dcm), atol=ATOL_MM, rtol=0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nii), sitk.GetArrayFromImage(dcm))


def test_nifti_volume_written_as_new_dicom_series(tmp_path, ct_values):
    vol = Volume(ct_values * 0.37, RAS_TO_LPS @ oblique_affine_lps(), modality="MR")
    save_volume(vol, tmp_path / "dcm")
    back = load_volume(tmp_path / "dcm")
    assert back.modality == "MR"
    np.testing.assert_allclose(back.affine, vol.affine, atol=ATOL_MM, rtol=0)
    step = float(pydicom.dcmread(next((tmp_path / "dcm").iterdir())).RescaleSlope)
    assert np.abs(back.data - vol.data).max() <= step / 2 + 1e-4
    assert_dciodvfy_clean(tmp_path / "dcm")


def test_multiframe_roundtrip(tmp_path, ct_values):
    affine = oblique_affine_lps()
    order = list(np.random.default_rng(1).permutation(ct_values.shape[2]))
    src_path = write_multiframe(tmp_path / "mf.dcm", ct_values, affine, frame_order=order)
    vol = load_volume(src_path)
    np.testing.assert_array_equal(vol.data, ct_values)
    np.testing.assert_allclose(vol.affine_lps, affine, atol=ATOL_MM, rtol=0)
    out = save_volume(vol.with_data(vol.data - 3.0, step="test"), tmp_path / "mf_out.dcm")
    back = load_volume(out)
    np.testing.assert_array_equal(back.data, ct_values - 3.0)
    np.testing.assert_allclose(back.affine, vol.affine, atol=ATOL_MM, rtol=0)
    hdr = pydicom.dcmread(out, stop_before_pixels=True)
    assert hdr.SeriesInstanceUID != pydicom.dcmread(src_path, stop_before_pixels=True).SeriesInstanceUID
    assert_dciodvfy_clean(out)


def test_several_series_listed_or_picked(tmp_path, ct_values):
    affine = oblique_affine_lps()
    write_series(tmp_path / "mixed", ct_values, affine, series_uid="1.2.3.4.1")
    write_series(tmp_path / "mixed" / "b", ct_values[:, :, :5] + 10, affine, series_uid="1.2.3.4.2")
    with pytest.raises(Exception, match=r"holds 2 series.*1\.2\.3\.4\.1.*1\.2\.3\.4\.2"):
        load_volume(tmp_path / "mixed")
    picked = load_volume(tmp_path / "mixed", series_uid="1.2.3.4.2")
    assert picked.shape[2] == 5
    np.testing.assert_array_equal(picked.data, ct_values[:, :, :5] + 10)


def test_modality_inferred_for_files_without_a_record(tmp_path, ct_values):
    save_volume(Volume(ct_values, np.eye(4)), tmp_path / "ct.nii.gz")
    save_volume(Volume(np.abs(ct_values) + 5, np.eye(4)), tmp_path / "mr.nii.gz")
    ct, mr = load_volume(tmp_path / "ct.nii.gz"), load_volume(tmp_path / "mr.nii.gz")
    assert (ct.modality, mr.modality) == ("CT", "MR")
    assert "Hounsfield" in ct.meta["modality_source"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_values_outside_the_stored_type_are_not_clipped(tmp_path, suffix):
    import nibabel as nib

    src = tmp_path / f"u8{suffix}"
    data = np.random.default_rng(0).integers(0, 256, (10, 10, 6)).astype(np.uint8)
    if suffix == ".nii.gz":
        nib.save(nib.Nifti1Image(data, np.eye(4)), src)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(data.transpose(2, 1, 0)), str(src))
    vol = load_volume(src)
    noisy = vol.with_data(vol.data + 40.0)  # exceeds 255 in places
    back = load_volume(save_volume(noisy, tmp_path / f"out{suffix}"))
    np.testing.assert_allclose(back.data, noisy.data, atol=1e-4)


def test_parallel_gzip_is_one_standard_member_that_every_reader_reads(tmp_path, monkeypatch):
    """``.nii.gz`` is deflated in parallel blocks (pigz-style): the file is one gzip member that gzip, nibabel,
    SimpleITK and medden read back byte for byte, whatever the block size."""
    import gzip
    import zlib

    import nibabel as nib

    from medden.io import nifti

    rng = np.random.default_rng(0)
    data = rng.normal(0, 50, (40, 30, 20)).astype(np.float32)
    vol = Volume(data, np.diag([0.7, 0.7, 2.5, 1.0]), modality="CT")
    monkeypatch.setattr(nifti, "GZIP_BLOCK", 7000)  # many blocks, not aligned to anything
    p = tmp_path / "v.nii.gz"
    save_volume(vol, p)
    raw = p.read_bytes()
    one = zlib.decompressobj(wbits=31)  # one gzip member: it ends exactly at the end of the file
    assert len(one.decompress(raw)) == len(gzip.decompress(raw)) == 352 + data.nbytes
    assert one.eof and one.unused_data == b""
    np.testing.assert_array_equal(np.asarray(nib.load(p).dataobj), data)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(p))).transpose(2, 1, 0), data)
    np.testing.assert_array_equal(load_volume(p).data, data)
