"""`medden evaluate`: files in, report out; bad input is one line and a non-zero exit."""
import json

import numpy as np
import pytest
from scipy import ndimage

import medden
from medden.cli import main
from medden.volume import Volume


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(2)
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    ref = np.zeros((40, 40, 6), np.float32)
    ref[10:30, 10:30] = 100.0
    noisy = ref + rng.normal(0, 10, ref.shape).astype(np.float32)
    paths = {}
    for name, data in {"ref": ref, "noisy": noisy, "smooth": ndimage.gaussian_filter(noisy, (1, 1, 0)),
                       "other": np.zeros((40, 40, 5), np.float32)}.items():
        paths[name] = medden.save_volume(Volume(data, aff, modality="CT"), tmp_path / f"{name}.nii.gz")
    (tmp_path / "rois.json").write_text(json.dumps({"rois": [
        {"name": "water", "type": "box", "start": [12, 12, 0], "stop": [28, 28, 6], "role": "noise"}]}))
    return tmp_path, paths


def test_evaluate_command_writes_the_report(files, capsys):
    tmp, p = files
    code = main(["evaluate", "--reference", str(p["ref"]), "--noisy", str(p["noisy"]), str(p["smooth"]),
                 f"raw={p['noisy']}", "--rois", str(tmp / "rois.json"), "-o", str(tmp / "rep")])
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp / "rep" / "metrics.json").read_text())
    assert set(data["methods"]) == {"smooth", "raw"}
    assert (tmp / "rep" / "report.html").exists() and (tmp / "rep" / "figures" / "slices.png").exists()
    assert "smooth" in capsys.readouterr().out


def _run_bad(capsys, args):
    code = main(["evaluate", *args, "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    return err


def test_evaluate_command_missing_rois_file(files, capsys):
    tmp, p = files
    err = _run_bad(capsys, ["--reference", str(p["ref"]), str(p["smooth"]), "--rois", str(tmp / "missing.json"),
                            "-o", str(tmp / "rep")])
    assert "ROIs file not found" in err and "missing.json" in err


def test_evaluate_command_shape_mismatch(files, capsys):
    tmp, p = files
    err = _run_bad(capsys, ["--reference", str(p["ref"]), str(p["other"]), "-o", str(tmp / "rep")])
    assert "shape mismatch" in err and "'other'" in err
