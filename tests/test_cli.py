"""The `medden` command end to end, and every bad input: one line on stderr, a non-zero exit, nothing left over."""
import hashlib
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from dicom_factory import oblique_affine_lps, write_series
from medden import Volume, load_volume, save_volume
from medden.cli import main
from medden.samples import sample_path


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(path):
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def mr_nifti(tmp_path):
    rng = np.random.default_rng(0)
    data = np.abs(rng.normal(100, 10, (24, 20, 12))).astype(np.float32)
    return save_volume(Volume(data, np.diag([1.0, 1.2, 3.0, 1.0]), modality="MR"), tmp_path / "scan.nii.gz")


def test_denoise_writes_beside_the_input_with_the_same_geometry(capsys, mr_nifti):
    before = digest(mr_nifti)
    code, out, err = run(capsys, "denoise", mr_nifti, "--method", "gaussian", "--sigma", "5")
    assert code == 0, err
    result = mr_nifti.with_name("scan_denoised.nii.gz")
    assert result.is_file() and str(result) in out
    src, den = load_volume(mr_nifti), load_volume(result)
    assert den.same_geometry(src, atol_mm=1e-5)
    assert den.data.std() < src.data.std()
    assert digest(mr_nifti) == before
    assert [p.name for p in mr_nifti.parent.iterdir() if p.name.startswith(".")] == []


def test_denoise_dicom_folder_gives_a_new_dicom_folder(capsys, tmp_path, ct_values):
    write_series(tmp_path / "series", ct_values, oblique_affine_lps())
    before = digest(tmp_path / "series")
    code, out, err = run(capsys, "denoise", tmp_path / "series", "--method", "tv", "--quiet",
                         "--param", "iterations=5")
    assert code == 0, err
    assert out == ""
    src, den = load_volume(tmp_path / "series"), load_volume(tmp_path / "series_denoised")
    assert den.same_geometry(src, atol_mm=1e-5)
    assert digest(tmp_path / "series") == before


@pytest.mark.parametrize("fmt", [".nrrd", ".mha"])
def test_denoise_keeps_itk_formats(capsys, tmp_path, ct_values, fmt):
    path = save_volume(Volume(ct_values, np.diag([0.7, 0.7, 2.0, 1.0]), modality="CT"), tmp_path / f"ct{fmt}")
    code, _, err = run(capsys, "denoise", path, "-m", "wavelet", "-q")
    assert code == 0, err
    assert load_volume(tmp_path / f"ct_denoised{fmt}").same_geometry(load_volume(path))


def test_denoise_sample_default_method_and_modality_report(capsys, tmp_path):
    src = shutil.copy(sample_path("ct"), tmp_path / "ct.nii.gz")
    code, out, err = run(capsys, "denoise", src, "-m", "gaussian", "-o", tmp_path / "o.nii.gz")
    assert code == 0, err
    assert "modality CT" in out and "Hounsfield" in out
    assert nib.load(tmp_path / "o.nii.gz").get_data_dtype() == np.int16  # same stored type as the source


def test_info_and_methods(capsys, mr_nifti):
    code, out, _ = run(capsys, "info", mr_nifti, "--json")
    assert code == 0
    import json

    facts = json.loads(out)
    assert facts["shape"] == [24, 20, 12] and facts["orientation"] == "RAS"
    assert facts["spacing_mm"] == [1.0, 1.2, 3.0]
    assert facts["noise_sigma"] > 0 and facts["noise_method"]
    code, out, _ = run(capsys, "methods", "--json")
    names = {m["name"] for m in json.loads(out)}
    assert {"gaussian", "tv", "nlm", "wavelet", "bm3d", "bm4d"} <= names


# ------------------------------------------------------------------------------------------------ bad input
def _bad_inputs(tmp_path, ct_values):
    """(name, CLI arguments, expected fragment of the one-line error)."""
    cases = []
    cases.append(("missing", ["denoise", tmp_path / "nope.nii.gz"], "does not exist"))
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.txt").write_text("hello")
    cases.append(("no dicom", ["denoise", tmp_path / "empty_dir"], "no DICOM image files"))
    paths = write_series(tmp_path / "trunc", ct_values, oblique_affine_lps())
    paths[2].write_bytes(paths[2].read_bytes()[:600])
    cases.append(("truncated dicom header", ["denoise", tmp_path / "trunc"], "truncated"))
    paths = write_series(tmp_path / "trunc_px", ct_values, oblique_affine_lps())
    paths[3].write_bytes(paths[3].read_bytes()[:-100])
    cases.append(("truncated dicom pixels", ["denoise", tmp_path / "trunc_px"], "pixel data"))
    write_series(tmp_path / "mixed", ct_values, oblique_affine_lps(), series_uid="1.2.3.9.1")
    write_series(tmp_path / "mixed", ct_values, oblique_affine_lps(), series_uid="1.2.3.9.2", prefix="other")
    cases.append(("mixed series", ["denoise", tmp_path / "mixed"], "holds 2 series"))
    paths = write_series(tmp_path / "gap", ct_values, oblique_affine_lps(), shuffle_seed=None)
    paths[4].unlink()
    cases.append(("inconsistent spacing", ["denoise", tmp_path / "gap"], "inconsistent slice spacing"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    cases.append(("2d", ["denoise", tmp_path / "flat.nii.gz"], "2D image"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), tmp_path / "time.nii.gz")
    cases.append(("4d", ["denoise", tmp_path / "time.nii.gz"], "4D"))
    nan = np.ones((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    nan[2, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    cases.append(("nan", ["denoise", tmp_path / "nan.nii.gz"], "2 NaN/Inf voxel"))
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    cases.append(("empty file", ["denoise", tmp_path / "empty.nii.gz"], "empty file"))
    (tmp_path / "fake.nii.gz").write_text("this is not an image\n" * 20)
    cases.append(("not an image", ["denoise", tmp_path / "fake.nii.gz"], "cannot read"))
    (tmp_path / "fake.nrrd").write_text("not nrrd\n")
    cases.append(("not an nrrd", ["denoise", tmp_path / "fake.nrrd"], "cannot read"))
    good = save_volume(Volume(ct_values, np.eye(4)), tmp_path / "good.nii.gz")
    save_volume(Volume(ct_values, np.eye(4)), tmp_path / "good_denoised.nii.gz")
    cases.append(("existing output", ["denoise", good, "-m", "gaussian"], "already exists"))
    cases.append(("output is input", ["denoise", good, "-o", good, "--overwrite"], "overwrite the input"))
    cases.append(("unwritable folder", ["denoise", good, "-o", "/proc/medden_out.nii.gz"], "/proc"))
    cases.append(("missing folder", ["denoise", good, "-o", tmp_path / "no" / "x.nii.gz"], "does not exist"))
    cases.append(("unknown method", ["denoise", good, "-o", tmp_path / "a.nii.gz", "-m", "magic"],
                  "unknown method 'magic'"))
    cases.append(("unknown parameter", ["denoise", good, "-o", tmp_path / "b.nii.gz", "-m", "tv", "-p", "strength=2"],
                  "has no parameter 'strength'"))
    cases.append(("bad parameter value", ["denoise", good, "-o", tmp_path / "c.nii.gz", "-m", "tv", "-p",
                                          "iterations=many"], "needs an integer"))
    cases.append(("bad sigma", ["denoise", good, "-o", tmp_path / "d.nii.gz", "--sigma", "loud"], "--sigma"))
    cases.append(("unknown format", ["denoise", good, "-o", tmp_path / "e.png"], "unknown output format"))
    return cases


def test_every_bad_input_gets_one_line_and_nonzero_exit(capsys, tmp_path, ct_values):
    cases = _bad_inputs(tmp_path, ct_values)
    before = {p: digest(p) for p in tmp_path.iterdir()}
    for name, args, fragment in cases:
        code, out, err = run(capsys, *args)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code != 0, name
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
        assert fragment in lines[0], (name, lines[0])
        assert "Traceback" not in err
    after = {p: digest(p) for p in tmp_path.iterdir() if p in before}
    assert after == before  # no input modified
    assert sorted(set(tmp_path.iterdir()) - set(before)) == []  # no partial output left


def test_failed_write_leaves_nothing(tmp_path, ct_values, monkeypatch):
    from medden.io import nifti

    def broken(volume, path):
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nifti, "save_nifti", broken)
    with pytest.raises(OSError, match="No space left"):
        save_volume(Volume(ct_values, np.eye(4)), tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medden", "denoise", str(tmp_path / "missing.nii.gz")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_errors_and_internal_errors_are_one_line(capsys, monkeypatch, mr_nifti):
    code, _, err = run(capsys, "denoise", mr_nifti, "--no-such-flag")
    assert code == 2 and err.count("\n") == 1 and "no-such-flag" in err
    import medden.pipeline

    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(medden.pipeline, "denoise", boom)
    code, _, err = run(capsys, "denoise", mr_nifti, "-m", "gaussian", "-o", mr_nifti.with_name("x.nii.gz"))
    assert code == 1 and err.count("\n") == 1 and "internal error (ZeroDivisionError" in err
    assert not mr_nifti.with_name("x.nii.gz").exists()


# ------------------------------------------------------------------------------------------- start-up, lazy imports
@pytest.mark.parametrize("argv", [None, ["--help"], ["--version"], ["denoise", "--help"], ["info", "SCAN"]],
                         ids=["import", "help", "version", "denoise-help", "info"])
def test_import_help_and_info_do_not_import_torch(mr_nifti, argv):
    call = "" if argv is None else f"main({[str(mr_nifti) if a == 'SCAN' else a for a in argv]!r})"
    code = (f"import sys, medden\nfrom medden.cli import main\n{call}\n"
            f"assert medden.__version__ and 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_uncertainty_writes_the_std_map_of_a_method_that_gives_one(capsys, monkeypatch, mr_nifti):
    import json

    import medden.pipeline

    out, std = mr_nifti.with_name("mean.nii.gz"), mr_nifti.with_name("std.nii.gz")
    code, _, err = run(capsys, "denoise", mr_nifti, "-m", "gaussian", "-o", out, "--uncertainty", std)
    assert code == 2 and "gives no standard deviation map" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not std.exists()
    real = medden.pipeline.denoise

    def with_std(volume, return_std=False, **kwargs):
        mean = real(volume, **kwargs)
        return (mean, mean.with_data(mean.data * 0 + 2.5, step="std")) if return_std else mean

    monkeypatch.setattr(medden.pipeline, "denoise", with_std)
    code, _, err = run(capsys, "denoise", mr_nifti, "-m", "gaussian", "-o", out, "--uncertainty", std, "-q")
    assert code == 0, err
    assert np.allclose(load_volume(std).data, 2.5) and load_volume(std).same_geometry(load_volume(mr_nifti))
    assert json.loads(std.with_name("std.json").read_text())["content"] == "standard deviation"
