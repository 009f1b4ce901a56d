"""Uncertainty calibration (coverage, reliability curve) and its place in `medden evaluate`'s report."""
import json
import math

import numpy as np
import pytest

import medden
from medden.cli import main
from medden.errors import InputError
from medden.metrics import evaluate, uncertainty_calibration, write_report
from medden.volume import Volume


def _posterior(rng, shape=(40, 40, 20), scale_std=1.0):
    """A truth, an estimate whose error is Gaussian with a spatially varying std, and that std times ``scale_std``."""
    truth = rng.normal(100, 20, shape)
    std = rng.uniform(0.5, 5.0, shape)
    est = truth + rng.normal(size=shape) * std
    return truth, est, std * scale_std


def test_calibrated_map_covers_nominally_and_lies_on_the_diagonal():
    truth, est, std = _posterior(np.random.default_rng(0))
    cal = uncertainty_calibration(truth, est, std)
    for k, nominal in cal.nominal.items():
        assert cal.coverage[k] == pytest.approx(nominal, abs=0.01)
    assert cal.coverage_2sd == pytest.approx(math.erf(2 / math.sqrt(2)), abs=0.01)
    for b in cal.reliability:
        assert b.observed_rmse == pytest.approx(b.predicted_std, rel=0.08)
    assert cal.std_to_rmse < 1.0  # E[s] < sqrt(E[s²]) for a varying std: the ratio is not forced to one
    assert sum(b.voxels for b in cal.reliability) == cal.voxels == truth.size


def test_overconfident_map_is_detected():
    truth, est, std = _posterior(np.random.default_rng(1), scale_std=0.5)
    cal = uncertainty_calibration(truth, est, std)
    assert cal.coverage_2sd == pytest.approx(math.erf(1 / math.sqrt(2)), abs=0.01)  # ±2·(σ/2) = ±1σ
    assert all(b.observed_rmse > 1.7 * b.predicted_std for b in cal.reliability)


def test_mask_and_bad_maps():
    truth, est, std = _posterior(np.random.default_rng(2), shape=(10, 10, 10))
    mask = np.zeros(truth.shape, bool)
    mask[:5] = True
    assert uncertainty_calibration(truth, est, std, mask).voxels == 500
    with pytest.raises(InputError, match="non-negative"):
        uncertainty_calibration(truth, est, -std)
    with pytest.raises(InputError, match="shape"):
        uncertainty_calibration(truth, est, std[:5])
    with pytest.raises(InputError, match="no voxel"):
        uncertainty_calibration(truth, est, std, np.zeros(truth.shape, bool))


def test_evaluate_report_has_the_reliability_curve(tmp_path):
    truth, est, std = _posterior(np.random.default_rng(3), shape=(32, 32, 8))
    with pytest.raises(InputError, match="not one of the estimates"):
        evaluate(truth, {"post": est}, uncertainty={"other": std})
    res = evaluate(truth, {"post": est, "plain": est}, uncertainty={"post": std})
    assert res.methods["plain"].uncertainty is None
    assert res.methods["post"].uncertainty.coverage_2sd == pytest.approx(0.954, abs=0.03)
    files = write_report(res, tmp_path / "rep")
    assert (tmp_path / "rep" / "figures" / "reliability.png").is_file()
    html = files.html.read_text()
    assert "Uncertainty calibration" in html and "reliability.png" in html
    data = json.loads(files.json.read_text())
    assert data["methods"]["post"]["uncertainty"]["reliability"][0]["voxels"] > 0
    assert data["methods"]["plain"]["uncertainty"] is None


def test_evaluate_command_takes_uncertainty_maps(tmp_path, capsys):
    truth, est, std = _posterior(np.random.default_rng(4), shape=(24, 24, 6))
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    p = {n: medden.save_volume(Volume(a.astype(np.float32), aff, modality="MR"), tmp_path / f"{n}.nii.gz")
         for n, a in (("ref", truth), ("mean", est), ("std", std))}
    code = main(["evaluate", "-r", str(p["ref"]), f"diff={p['mean']}", "--uncertainty", f"diff={p['std']}",
                 "-o", str(tmp_path / "rep"), "-q"])
    assert code == 0, capsys.readouterr().err
    cov = json.loads((tmp_path / "rep" / "metrics.json").read_text())["methods"]["diff"]["uncertainty"]["coverage_2sd"]
    assert cov == pytest.approx(0.954, abs=0.03)
    code = main(["evaluate", "-r", str(p["ref"]), f"diff={p['mean']}", "--uncertainty", f"nope={p['std']}",
                 "-o", str(tmp_path / "rep2")])
    err = capsys.readouterr().err
    assert code == 2 and "--uncertainty needs NAME=PATH" in err and len(err.strip().splitlines()) == 1
