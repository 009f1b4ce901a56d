"""Inputs that used to come back silently wrong (issue 14, "silent wrong results"): scaled and complex NIfTI, PET
with a RescaleSlope per slice, NIfTI without orientation, JPEG and big-endian DICOM, CT padding."""
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_factory import (assert_dciodvfy_clean, oblique_affine_lps, set_tags, to_big_endian, to_jpeg_baseline,
                           write_series)
from medden import Volume, load_volume, save_volume
from medden.errors import InputError


def test_scaled_nifti_keeps_its_fractional_values(tmp_path):
    """A quantitative map stored as int16 with scl_slope 0.001 (e.g. T1 in s) is not rounded to integers."""
    raw = np.random.default_rng(0).integers(0, 3000, (10, 8, 6)).astype(np.int16)
    img = nib.Nifti1Image(raw, np.diag([1.0, 1.0, 2.0, 1.0]))
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.001, 0.0)
    nib.save(img, tmp_path / "t1map.nii.gz")
    vol = load_volume(tmp_path / "t1map.nii.gz")
    den = vol.with_data(vol.data * 0.99 + 0.0004)
    back = load_volume(save_volume(den, tmp_path / "out.nii.gz"))
    assert np.abs(back.data - den.data).max() <= 0.0005 + 1e-6  # half the stored step, not half of 1.0
    assert len(np.unique(back.data)) > 100


def test_complex_nifti_is_refused_clearly(tmp_path):
    data = (np.ones((6, 6, 4)) + 1j * np.ones((6, 6, 4))).astype(np.complex64)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "complex.nii.gz")
    with pytest.raises(InputError, match=r"complex\.nii\.gz holds complex voxels.*magnitude"):
        load_volume(tmp_path / "complex.nii.gz")


def pet_series(root, values):
    slopes = [float(v.max() / 32000) for v in np.moveaxis(values, 2, 0)]
    paths = write_series(root, values, np.diag([2.0, 2.0, 3.0, 1.0]), modality="PT", slope=slopes, intercept=0.0,
                         shuffle_seed=None)
    for k, p in enumerate(paths):
        set_tags([p], ImageIndex=k + 1)
    set_tags(paths, Units="BQML", CountsSource="EMISSION", SeriesType=["STATIC", "IMAGE"],
             CorrectedImage=["DECY", "ATTN"], DecayCorrection="START", FrameReferenceTime="0",
             ActualFrameDuration=600000, DecayFactor="1", AcquisitionDate="20240101", AcquisitionTime="101010",
             SeriesDate="20240101", SeriesTime="101010", PatientOrientation=["L", "P"])
    return slopes


def test_pet_with_a_slope_per_slice_is_written_without_clipping(tmp_path):
    values = np.random.default_rng(0).uniform(0, 300, (12, 10, 6)).astype(np.float32)
    values[:, :, 3:] *= 10  # later slices ten times brighter: the first slice's slope cannot hold them
    slopes = pet_series(tmp_path / "pet", values)
    vol = load_volume(tmp_path / "pet")
    den = vol.with_data(vol.data * 1.3)
    assert den.data.max() > slopes[0] * 32767  # beyond what the first slice's slope can store
    back = load_volume(save_volume(den, tmp_path / "out"))
    assert np.abs(back.data - den.data).max() <= max(slopes) * 1.3 / 2 + 1e-4
    assert_dciodvfy_clean(tmp_path / "out")


def test_nifti_without_orientation_codes_warns_and_keeps_them_unknown(tmp_path):
    img = nib.Nifti1Image(np.random.default_rng(0).random((6, 5, 4)).astype(np.float32), np.diag([-0.9, 1.1, 2.5, 1]))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, tmp_path / "noorient.nii")
    with pytest.warns(UserWarning, match="no orientation"):
        vol = load_volume(tmp_path / "noorient.nii")
    np.testing.assert_allclose(vol.affine, np.diag([0.9, 1.1, 2.5, 1.0]))  # NIfTI method 1: pixdim, no invented shift
    assert vol.meta["orientation_known"] is False
    out = save_volume(vol, tmp_path / "out.nii.gz")
    header = nib.load(out).header
    assert int(header["qform_code"]) == int(header["sform_code"]) == 0  # no orientation claimed on output


def test_jpeg_baseline_series_decodes_and_its_derived_series_says_lossy(tmp_path):
    values = np.random.default_rng(0).integers(0, 200, (12, 10, 5)).astype(np.float32)
    paths = write_series(tmp_path / "jpg", values, oblique_affine_lps(), modality="MR", slope=1.0, intercept=0.0,
                         dtype=np.uint16)
    to_jpeg_baseline(paths)
    vol = load_volume(tmp_path / "jpg")
    np.testing.assert_allclose(vol.affine_lps, oblique_affine_lps(), atol=1e-5)
    assert np.abs(vol.data - values).mean() < 3  # lossy, but the right pixels in the right places
    out = save_volume(vol, tmp_path / "out")
    for f in out.iterdir():
        ds = pydicom.dcmread(f)
        assert ds.LossyImageCompression == "01"  # derived from lossy-compressed images (PS3.3 C.7.6.1.1.5)
        assert ds.BitsAllocated == 16
    assert np.abs(load_volume(out).data - vol.data).max() <= 0.5
    assert_dciodvfy_clean(out)


def test_missing_pixel_decoder_is_named(tmp_path, monkeypatch):
    values = np.random.default_rng(0).integers(0, 200, (8, 8, 3)).astype(np.float32)
    paths = write_series(tmp_path / "jpg", values, np.eye(4), modality="MR", slope=1.0, intercept=0.0, dtype=np.uint16)
    to_jpeg_baseline(paths)

    def no_plugin(self):
        raise RuntimeError("Unable to decompress 'JPEG Baseline (Process 1)' pixel data because all plugins are "
                           "missing dependencies:\n    pillow - requires pillow>=10.0")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_plugin))
    with pytest.raises(InputError, match=r"slice_\d+\.dcm: its pixels are compressed as JPEG Baseline.*install pillow"):
        load_volume(tmp_path / "jpg")


def test_big_endian_series_loads_and_writes_back(tmp_path, ct_values):
    paths = write_series(tmp_path / "be", ct_values, oblique_affine_lps())
    to_big_endian(paths)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian
    vol = load_volume(tmp_path / "be")
    np.testing.assert_array_equal(vol.data, ct_values)
    out = save_volume(vol, tmp_path / "out")
    np.testing.assert_array_equal(load_volume(out).data, ct_values)
    assert_dciodvfy_clean(out)


def test_ct_padding_is_reported_and_written_back_exactly(tmp_path, ct_values):
    values = ct_values.copy()
    values[:3] = -3024.0  # outside the reconstruction circle: stored -2000 with intercept -1024
    paths = write_series(tmp_path / "ct", values, oblique_affine_lps())
    ds = pydicom.dcmread(paths[0])
    for p in paths:
        d = pydicom.dcmread(p)
        d.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue, signed like the pixels
        d.save_as(p, enforce_file_format=True)
    vol = load_volume(tmp_path / "ct")
    mask = vol.meta["padding_mask"]
    assert mask.shape == vol.shape and mask.sum() == 3 * values.shape[1] * values.shape[2]
    assert vol.meta["padding_value"] == -3024.0
    smoothed = vol.with_data(vol.data + np.random.default_rng(1).normal(0, 30, vol.shape))  # a denoiser's blur
    out = save_volume(smoothed, tmp_path / "out")
    for f in out.iterdir():
        d = pydicom.dcmread(f)
        assert d.PixelPaddingValue == -2000
        assert (d.pixel_array.T[:3] == -2000).all()  # exactly the padding value, nothing else
    back = load_volume(out)
    np.testing.assert_array_equal(back.data[:3], -3024.0)
    assert_dciodvfy_clean(out)
    nii = load_volume(save_volume(smoothed, tmp_path / "out.nii.gz"))
    np.testing.assert_array_equal(nii.data[:3], -3024.0)
    del ds
