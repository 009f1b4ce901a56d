"""ROIs (rois.json), ROI statistics, HU bias, SNR and CNR."""
import json

import numpy as np
import pytest

from medden.errors import InputError
from medden.metrics import Roi, cnr, hu_bias, load_rois, parse_rois, roi_stats, snr
from medden.volume import Volume


def test_hu_bias_of_unbiased_noise_is_within_its_standard_error():
    rng = np.random.default_rng(7)
    ref = np.full((20, 20, 8), 40.0)
    roi = Roi.box("liver", (4, 4, 2), (16, 16, 6))
    b = hu_bias(ref, ref + rng.normal(0, 15.0, ref.shape), roi)
    assert b.n == 12 * 12 * 4
    assert b.standard_error == pytest.approx(15.0 / np.sqrt(b.n), rel=0.1)
    assert abs(b.bias) <= b.standard_error
    # and the standard error is calibrated: z-scores over many noise draws have unit spread
    z = [hu_bias(ref, ref + rng.normal(0, 15.0, ref.shape), roi).z for _ in range(200)]
    assert np.std(z) == pytest.approx(1.0, abs=0.15)
    assert abs(np.mean(z)) < 0.25


def test_biased_roi_is_detected():
    ref = np.full((10, 10, 10), 0.0)
    est = ref + 5.0 + np.random.default_rng(0).normal(0, 1, ref.shape)
    b = hu_bias(ref, est)
    assert b.bias == pytest.approx(5.0, abs=0.2) and b.z > 20


def test_roi_stats_snr_cnr():
    img = np.zeros((10, 10, 10))
    img[:5] = 100.0 + np.tile([-1.0, 1.0], 250).reshape(5, 10, 10)
    img[5:] = 20.0 + np.tile([-1.0, 1.0], 250).reshape(5, 10, 10)
    a, b = Roi.box("a", (0, 0, 0), (5, 10, 10)), Roi.box("b", (5, 0, 0), (10, 10, 10))
    s = roi_stats(img, a)
    assert s.mean == pytest.approx(100.0) and s.n == 500
    assert s.std == pytest.approx(1.0, rel=0.01)
    assert snr(img, a) == pytest.approx(100.0, rel=0.01)
    assert cnr(img, a, b) == pytest.approx(80.0, rel=0.01)


def test_sphere_in_mm_is_round_on_anisotropic_grid():
    vol = Volume(np.zeros((40, 40, 10), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]))
    m = Roi.sphere("s", (10.0, 10.0, 10.0), 4.0, units="mm").to_mask(vol.shape, vol.affine)
    idx = np.argwhere(m)
    assert (idx[:, 0].max() - idx[:, 0].min()) == 16  # 8 mm / 0.5 mm
    assert (idx[:, 2].max() - idx[:, 2].min()) == 4  # 8 mm / 2 mm
    assert m.sum() == pytest.approx(4 / 3 * np.pi * 4**3 / (0.5 * 0.5 * 2.0), rel=0.15)


def test_rois_json_round_trip(tmp_path):
    np.save(tmp_path / "m.npy", np.pad(np.ones((2, 2, 2)), 3))
    spec = {"units": "voxel", "rois": [
        {"name": "liver", "type": "box", "start": [1, 1, 1], "stop": [4, 4, 4], "role": "signal"},
        {"name": "fat", "type": "box", "center": [5, 5, 5], "size": [2, 2, 2], "role": "background"},
        {"name": "les", "type": "sphere", "center": [1.0, 1.0, 1.0], "radius": 1.0, "units": "mm"},
        {"name": "msk", "type": "mask", "path": "m.npy"}], "cnr": [["liver", "fat"]]}
    (tmp_path / "rois.json").write_text(json.dumps(spec))
    rs = load_rois(tmp_path / "rois.json")
    assert [r.name for r in rs.rois] == ["liver", "fat", "les", "msk"]
    assert rs.pairs() == [("liver", "fat")]
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    assert rs["liver"].to_mask((8, 8, 8), aff).sum() == 27
    assert rs["fat"].to_mask((8, 8, 8), aff).sum() == 8
    assert rs["les"].to_mask((8, 8, 8), aff).sum() == 7
    assert rs["msk"].to_mask((8, 8, 8)).sum() == 8


def test_bad_rois_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="ROI 'far'.*outside the volume of shape \\(8, 8, 8\\)"):
        Roi.box("far", (4, 4, 4), (12, 6, 6)).to_mask((8, 8, 8))
    with pytest.raises(InputError, match="ROI 'ball'.*outside"):
        Roi.sphere("ball", (1, 1, 1), 3).to_mask((8, 8, 8))
    with pytest.raises(InputError, match="unknown type 'cube'"):
        parse_rois({"rois": [{"name": "x", "type": "cube"}]})
    with pytest.raises(InputError, match="unknown ROI 'nope'"):
        parse_rois({"rois": [{"name": "x", "start": [0, 0, 0], "stop": [1, 1, 1]}], "cnr": [["x", "nope"]]})
    with pytest.raises(InputError, match="mask file not found"):
        parse_rois({"rois": [{"name": "m", "type": "mask", "path": "missing.npy"}]}, base_dir=tmp_path)
    with pytest.raises(InputError, match="ROIs file not found"):
        load_rois(tmp_path / "none.json")
