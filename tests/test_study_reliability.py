"""Issue 14's reliability findings for the CLI and the study pipeline, each reproduced: outputs confined and never
colliding, --overwrite limited to medden's own files, locks, signals, broken manifests, junk, broken files, full
disks and unexpected errors fail one item (or stop cleanly), never the study or its manifest."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dicom_factory import oblique_affine_lps, write_series
from medden import Volume, load_volume, save_volume
from medden.cli import main
from medden.pipeline import denoise_study, discover
from medden.conventions import sha256_paths

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def records(out):
    return json.loads((out / "manifest.json").read_text())["records"]


def leftovers(folder):
    """Temporary files, partial outputs and locks medden may leave: none after any run."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") and not p.name.startswith("._")]


def consistent(out):
    """Every good record's output exists with the recorded bytes; one record per output."""
    recs = records(out)
    assert len({r["output"] for r in recs}) == len(recs)
    for r in recs:
        if r["status"] in ("ok", "skipped"):
            assert r["output_sha256"] == sha256_paths([Path(r["output"])]), r["output"]
    return recs


def nifti(path, values, modality="CT"):
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_volume(Volume(values, np.diag([0.8, 0.8, 2.0, 1.0]), modality=modality), path)


# --------------------------------------------------------------------------------------- outputs and overwrite
def test_series_uid_from_file_contents_cannot_leave_the_output_folder(tmp_path, ct_values):
    study = tmp_path / "lab" / "study"
    write_series(study / "p1", ct_values, oblique_affine_lps(), series_uid="../../../escape")
    write_series(study / "p1", ct_values[:, :, :5], oblique_affine_lps(), series_uid="1.2.3.4", prefix="b")
    out = tmp_path / "lab" / "out" / "deep"
    for overwrite in (False, True):
        result = denoise_study(study, out, method="gaussian", sigma=5.0, overwrite=overwrite)
        assert result.count("ok" if not overwrite else "skipped") == 2, result.records
    written = {Path(r["output"]).resolve() for r in records(out)}
    assert all(out.resolve() in p.parents for p in written)
    assert not (tmp_path / "lab" / "escape").exists() and not (tmp_path / "escape").exists()
    assert sorted(p.name for p in (out / "p1").iterdir()) == ["1.2.3.4", "escape"]


def test_overwrite_never_removes_files_medden_did_not_write(capsys, tmp_path, ct_values):
    study, out = tmp_path / "study", tmp_path / "out"
    write_series(study / "p1" / "ct", ct_values, oblique_affine_lps())
    nifti(study / "p2" / "ct.nii.gz", ct_values)
    assert run(capsys, "denoise", study, "-o", out, "-m", "gaussian", "--sigma", "5")[0] == 0
    mine = out / "p1" / "ct"
    (mine / "notes.txt").write_text("a colleague's notes")
    for args in (["-m", "tv", "--overwrite"], ["-m", "gaussian", "--sigma", "3"], ["-m", "gaussian", "--sigma", "3",
                                                                                     "--overwrite"]):
        code, _, err = run(capsys, "denoise", study, "-o", out, *args)
        assert code == 2 and ("notes.txt" in err or "already exist" in err), err
        assert (mine / "notes.txt").read_text() == "a colleague's notes"
    code, _, err = run(capsys, "denoise", study / "p1" / "ct", "-o", mine, "-m", "tv", "--overwrite")
    assert code == 2 and "medden did not write" in err and (mine / "notes.txt").is_file()


def test_outputs_of_one_study_never_collide(capsys, tmp_path, ct_values):
    """A NIfTI beside a DICOM series (its output would lie inside the series' output folder) and two volumes
    sharing a sidecar name (CT_1.nii.gz, CT_1.nrrd → CT_1.json) all get outputs of their own, also with
    --overwrite."""
    study, out = tmp_path / "study", tmp_path / "out"
    write_series(study / "CT_1", ct_values, oblique_affine_lps())
    nifti(study / "CT_1" / "scan.nii.gz", ct_values)
    nifti(study / "CT_2.nii.gz", ct_values)
    nifti(study / "CT_2.nrrd", ct_values)
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "denoise", study, "-o", out, "-m", "gaussian", "--sigma", "5", *extra)
        assert code == 0, err
        recs = consistent(out)
        assert len(recs) == 4 and {r["status"] for r in recs} <= {"ok", "skipped"}
        outputs = [Path(r["output"]) for r in recs]
        assert all(p.exists() for p in outputs)
        sidecars = [p for p in out.rglob("*.json") if p.name != "manifest.json"]
        assert len(sidecars) == 3


def test_two_single_file_runs_to_one_output(capsys, tmp_path, ct_values):
    a, b = nifti(tmp_path / "a.nii.gz", ct_values), nifti(tmp_path / "b.nii.gz", ct_values + 50)
    target = tmp_path / "same.nii.gz"
    assert run(capsys, "denoise", a, "-o", target, "-m", "gaussian", "-q")[0] == 0
    first = target.read_bytes()
    code, _, err = run(capsys, "denoise", b, "-o", target, "-m", "gaussian", "-q")
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert target.read_bytes() == first
    assert run(capsys, "denoise", b, "-o", target, "-m", "gaussian", "-q", "--overwrite")[0] == 0
    assert target.read_bytes() != first


# ------------------------------------------------------------------------------------------------ locks
def _lock_cases():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return [("empty", "", False), ("foreign", "held by the backup robot\n", False),
            ("other host", "elsewhere.example 12\n", False),
            ("dead pid on this host", f"{socket.gethostname()} {dead.stdout.strip()}\n", True)]


@pytest.mark.parametrize("name,content,taken_over", _lock_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_left_over_lock_names_the_file_to_delete_or_is_taken_over(tmp_path, ct_values, name, content, taken_over):
    study, out = tmp_path / "study", tmp_path / "out"
    nifti(study / "a.nii.gz", ct_values)
    nifti(study / "b.nii.gz", ct_values)
    out.mkdir()
    lock = out / ".a.nii.gz.lock"
    lock.write_text(content)
    result = denoise_study(study, out, method="gaussian", sigma=5.0)
    status = {Path(r["input"]).name: r for r in result.records}
    assert status["b.nii.gz"]["status"] == "ok"
    if taken_over:
        assert status["a.nii.gz"]["status"] == "ok" and not lock.exists()
    else:
        assert status["a.nii.gz"]["status"] == "failed" and str(lock) in status["a.nii.gz"]["error"]
        assert "delete" in status["a.nii.gz"]["error"] and lock.read_text() == content


# --------------------------------------------------------------------------------------- signals and concurrency
SLOW_WRITE = """
import sys, time
from medden.io import nifti
real, calls = nifti.save_nifti, []
def slow(volume, path):
    calls.append(path)
    if len(calls) == int(sys.argv[1]):
        path.write_bytes(b"half a volume")
        open(sys.argv[2], "w").close()
        time.sleep(60)
    real(volume, path)
nifti.save_nifti = slow
from medden.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("batch", [False, True], ids=["single file", "batch"])
def test_sigterm_leaves_no_partial_output_and_a_consistent_manifest(tmp_path, ct_values, batch):
    study, out = tmp_path / "study", tmp_path / "out"
    for name in ("a", "b", "c"):
        nifti(study / f"{name}.nii.gz", ct_values)
    marker = tmp_path / "writing"
    args = ([str(study), "-o", str(out)] if batch else [str(study / "a.nii.gz"), "-o", str(tmp_path / "a_out.nii.gz")])
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "2" if batch else "1", str(marker), "denoise", *args,
                             "-m", "gaussian", "--sigma", "5"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err and "terminated" in err
    assert leftovers(tmp_path) == []
    if batch:
        recs = consistent(out)
        assert [r["status"] for r in recs] == ["ok", "interrupted"]
        assert sorted(p.name for p in out.iterdir() if p.name.endswith(".nii.gz")) == ["a.nii.gz"]
    else:
        assert not (tmp_path / "a_out.nii.gz").exists()


SLOW_DENOISE = """
import sys, time
import medden.pipeline as pipeline
real = pipeline.denoise
def slow(*args, **kwargs):
    time.sleep(0.4)
    return real(*args, **kwargs)
pipeline.denoise = slow
from medden.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_concurrent_batch_runs_on_one_output_folder_stay_consistent(capsys, tmp_path, ct_values):
    study, out = tmp_path / "study", tmp_path / "out"
    for k in range(6):
        nifti(study / f"s{k}.nii.gz", ct_values + k)
    cmd = [sys.executable, "-c", SLOW_DENOISE, "denoise", str(study), "-o", str(out), "-m", "gaussian", "--sigma", "5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all("Traceback" not in e for e in errs), errs
    recs = consistent(out)
    assert len(recs) == 6 and all(r["status"] in ("ok", "skipped") for r in recs), recs
    assert leftovers(out) == []
    code, text, err = run(capsys, "denoise", study, "-o", out, "-m", "gaussian", "--sigma", "5")
    assert code == 0 and text.count("skipped") == 6, err


# ------------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("damage", ["not json", "no records", "missing fields"])
def test_a_damaged_manifest_is_reported_kept_and_does_not_break_resume(capsys, tmp_path, ct_values, damage):
    study, out = tmp_path / "study", tmp_path / "out"
    for k in range(3):
        nifti(study / f"s{k}.nii.gz", ct_values + k)
    args = ["denoise", study, "-o", out, "-m", "gaussian", "--sigma", "5"]
    assert run(capsys, *args)[0] == 0
    assert run(capsys, *args)[0] == 0  # a second, resumed run: the manifest has a previous good version
    manifest = out / "manifest.json"
    if damage == "not json":
        manifest.write_text(manifest.read_text()[:100])
    elif damage == "no records":
        manifest.write_text('{"medden_version": "0"}')
    else:
        body = json.loads(manifest.read_text())
        for r in body["records"]:
            del r["input"], r["finished"]
        manifest.write_text(json.dumps(body))
    code, text, err = run(capsys, *args)
    assert code == 0 and "Traceback" not in err, err
    assert text.count("skipped") == 3
    assert "note:" in err and "manifest.json" in err
    assert len(consistent(out)) == 3
    if damage != "missing fields":
        assert (out / "manifest.json.corrupt").is_file()


# ------------------------------------------------------------------------------------------- what a study holds
def test_junk_files_are_skipped(capsys, tmp_path, ct_values):
    study = tmp_path / "study"
    nifti(study / "ct.nii.gz", ct_values)
    write_series(study / "series", ct_values, oblique_affine_lps())
    (study / "._ct.nii.gz").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
    (study / "series" / "._slice_000.dcm").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (study / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (study / "Thumbs.db").write_bytes(b"thumbs")
    (study / ".hidden").mkdir()
    nifti(study / ".hidden" / "x.nii.gz", ct_values)
    assert sorted(str(i.relative) for i in discover(study)) == ["ct.nii.gz", "series"]
    code, _, err = run(capsys, "denoise", study, "-o", tmp_path / "out", "-m", "gaussian", "--sigma", "5")
    assert code == 0, err


def _broken_item_cases(tmp_path, ct_values):
    cases = []
    ct = tmp_path / "dose" / "ct"  # a CT series and, in the same folder, a one-slice dose report
    write_series(ct, ct_values, oblique_affine_lps(), series_uid="1.2.3.1")
    write_series(ct, ct_values[:, :, :1], oblique_affine_lps(), series_uid="1.2.3.999", prefix="dose")
    cases.append(("dose report", tmp_path / "dose", {"1.2.3.1": "ok", "1.2.3.999": "failed"}))
    flat = tmp_path / "flat" / "export"  # a flat export: two series in one folder, one file truncated in its header
    write_series(flat, ct_values, oblique_affine_lps(), series_uid="1.2.4.1", prefix="a")
    paths = write_series(flat, ct_values, oblique_affine_lps(), series_uid="1.2.4.2", prefix="b", shuffle_seed=None)
    paths[-1].write_bytes(paths[-1].read_bytes()[:300])
    cases.append(("truncated header", tmp_path / "flat", {"1.2.4.1": "ok", None: "failed"}))
    return cases


def test_one_broken_file_or_series_fails_only_its_item(tmp_path, ct_values):
    for name, study, expected in _broken_item_cases(tmp_path, ct_values):
        result = denoise_study(study, tmp_path / f"out_{name}", method="gaussian", sigma=5.0)
        got = {r["series_uid"]: r["status"] for r in result.records}
        assert {uid: got.get(uid) for uid in expected} == expected, (name, result.records)


def test_a_symlinked_series_folder_is_processed_once_without_loops(tmp_path, ct_values):
    elsewhere = tmp_path / "archive" / "series"
    write_series(elsewhere, ct_values, oblique_affine_lps())
    study = tmp_path / "study"
    nifti(study / "p1" / "ct.nii.gz", ct_values)
    (study / "p2").symlink_to(elsewhere, target_is_directory=True)
    (study / "p1" / "loop").symlink_to(study, target_is_directory=True)
    assert sorted(str(i.relative) for i in discover(study)) == ["p1/ct.nii.gz", "p2"]
    result = denoise_study(study, tmp_path / "out", method="gaussian", sigma=5.0)
    assert result.count("ok") == 2


# --------------------------------------------------------------------------------------------- errors per item
def test_disk_full_is_one_line_single_file_and_one_failed_item_in_a_batch(capsys, tmp_path, ct_values, monkeypatch):
    import pydicom

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    study = tmp_path / "study"
    write_series(study / "dicom", ct_values, oblique_affine_lps())
    nifti(study / "ct.nii.gz", ct_values)
    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", full)
    code, _, err = run(capsys, "denoise", study / "dicom", "-o", tmp_path / "single", "-m", "gaussian", "-q")
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "Traceback" not in err
    result = denoise_study(study, tmp_path / "out", method="gaussian", sigma=5.0)
    status = {Path(r["input"]).name: r for r in result.records}
    assert status["ct.nii.gz"]["status"] == "ok"
    assert status["dicom"]["status"] == "failed" and "No space left on device" in status["dicom"]["error"]
    assert leftovers(tmp_path) == []
    real_write = Path.write_text

    def manifest_full(self, *args, **kwargs):
        if "manifest" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", manifest_full)
    code, _, err = run(capsys, "denoise", study, "-o", tmp_path / "out2", "-m", "gaussian", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    assert "manifest" in err and "No space left on device" in err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [KeyError("spacing"), AssertionError("unexpected"), ZeroDivisionError("x"),
                                   TypeError("bad"), IndexError("out of range")], ids=lambda e: type(e).__name__)
def test_any_error_in_one_item_is_that_items_failure(tmp_path, ct_values, monkeypatch, error):
    import medden.pipeline as pipeline

    study = tmp_path / "study"
    for k in range(3):
        nifti(study / f"s{k}.nii.gz", ct_values + k)
    real, calls = pipeline.denoise, []

    def first_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "denoise", first_fails)
    result = denoise_study(study, tmp_path / "out", method="gaussian", sigma=5.0)
    assert [r["status"] for r in result.records] == ["failed", "ok", "ok"]
    assert type(error).__name__ in result.records[0]["error"]


# ------------------------------------------------------------------------------------------- options refused
@pytest.mark.parametrize("args,fragment", [
    (["denoise", "SCAN", "--series-uid", "1.2.3", "-o", "OUT"], "--series-uid"),
    (["simulate", "SCAN", "-o", "OUT", "--model", "poisson", "--counts", "inf"], "--counts"),
    (["simulate", "SCAN", "-o", "OUT", "--model", "lowdose-ct", "--dose", "nan"], "--dose"),
    (["denoise", "SCAN", "-o", "OUT", "--sigma", "inf"], "--sigma"),
    (["denoise", "SCAN", "-o", "OUT", "--sigma", "-3%"], "--sigma"),
])
def test_options_that_make_no_sense_are_refused_in_one_line(capsys, tmp_path, ct_values, args, fragment):
    scan = nifti(tmp_path / "ct.nii.gz", ct_values)
    out = tmp_path / "o.nii.gz"
    code, _, err = run(capsys, *[scan if a == "SCAN" else out if a == "OUT" else a for a in args])
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not out.exists()


def test_sigma_percent_is_read_like_simulate(capsys, tmp_path):
    rng = np.random.default_rng(0)
    data = np.abs(rng.normal(100, 10, (24, 20, 12))).astype(np.float32)
    scan = save_volume(Volume(data, np.eye(4), modality="MR"), tmp_path / "mr.nii.gz")
    code, out, err = run(capsys, "denoise", scan, "-m", "gaussian", "--sigma", "3%", "-o", tmp_path / "o.nii.gz")
    assert code == 0, err
    from medden.noise.simulate import resolve_sigma

    expected = resolve_sigma(load_volume(scan).data, "3%")
    sidecar = json.loads((tmp_path / "o.json").read_text())
    assert sidecar["sigma"] == pytest.approx(expected) and sidecar["sigma_source"] == "given"
