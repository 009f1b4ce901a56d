"""Batch mode over a study folder: discovery, mirrored layout, resume, failures, shards, manifest, provenance."""
import json

import numpy as np
import pydicom
import pytest

from dicom_factory import oblique_affine_lps, write_series
from medden import Volume, load_volume, save_volume
from medden.cli import main
from medden.pipeline import denoise_study, discover, merge_manifests, output_lock, shard_of
from medden.errors import OutputError


@pytest.fixture
def study(tmp_path, ct_values):
    root = tmp_path / "study"
    save_volume(Volume(ct_values, np.diag([0.8, 0.8, 2.0, 1.0])), root / "p1" / "ct.nii.gz") if (
        root / "p1").mkdir(parents=True) is None else None
    save_volume(Volume(np.abs(ct_values) + 1, np.eye(4)), root / "p1" / "mr.nrrd")
    write_series(root / "p2" / "dicom", ct_values, oblique_affine_lps(), series_uid="1.2.3.7.1")
    write_series(root / "p2" / "dicom", ct_values[:, :, :6], oblique_affine_lps(), series_uid="1.2.3.7.2",
                 prefix="second")
    paths = write_series(root / "p3" / "broken", ct_values, oblique_affine_lps(), series_uid="1.2.3.7.3")
    paths[1].write_bytes(paths[1].read_bytes()[:-64])  # truncated pixel data
    return root


def test_discover_finds_files_and_every_series(study):
    items = discover(study)
    labels = sorted(i.label for i in items)
    assert labels == sorted(["p1/ct.nii.gz", "p1/mr.nrrd", "p2/dicom [1.2.3.7.1]", "p2/dicom [1.2.3.7.2]",
                             "p3/broken [1.2.3.7.3]"])


def test_batch_mirrors_layout_continues_after_failure_and_resumes(capsys, study, tmp_path):
    out = tmp_path / "out"
    code = main(["denoise", str(study), "-o", str(out), "-m", "gaussian", "--sigma", "5"])
    captured = capsys.readouterr()
    assert code == 2  # one series failed
    assert "p3/broken" in captured.err and "pixel data" in captured.err
    assert (out / "p1" / "ct.nii.gz").is_file() and (out / "p1" / "mr.nrrd").is_file()
    assert (out / "p2" / "dicom" / "1.2.3.7.1").is_dir() and (out / "p2" / "dicom" / "1.2.3.7.2").is_dir()
    assert load_volume(out / "p2" / "dicom" / "1.2.3.7.2").shape[2] == 6
    manifest = json.loads((out / "manifest.json").read_text())["records"]
    status = {(r["input"].split("study/")[1], r["series_uid"]): r["status"] for r in manifest}
    assert list(status.values()).count("ok") == 4 and status[("p3/broken", "1.2.3.7.3")] == "failed"
    ok = next(r for r in manifest if r["status"] == "ok")
    for key in ("input", "series_uid", "output", "method", "model", "model_version", "params", "sigma", "seconds",
                "input_sha256", "output_sha256", "status", "error"):
        assert key in ok
    assert (out / "manifest.csv").read_text().count("\n") == 6
    sidecar = json.loads((out / "p1" / "ct.json").read_text())
    assert sidecar["GeneratedBy"][0]["Name"] == "medden" and sidecar["method"] == "gaussian"
    dcm = pydicom.dcmread(next((out / "p2" / "dicom" / "1.2.3.7.1").iterdir()))
    assert dcm.DerivationCodeSequence[0].CodeMeaning == "Smoothing" and "gaussian" in dcm.DerivationDescription
    assert dcm.PatientID == "MEDDEN-TEST-001"
    # re-run: the four good items are skipped, the broken one is tried again and fails again
    mtime = (out / "p1" / "ct.nii.gz").stat().st_mtime_ns
    code = main(["denoise", str(study), "-o", str(out), "-m", "gaussian", "--sigma", "5"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out.count("skipped") == 4
    assert (out / "p1" / "ct.nii.gz").stat().st_mtime_ns == mtime


def test_anonymize_replaces_patient_identifiers(study, tmp_path):
    denoise_study(study / "p2", tmp_path / "anon", method="gaussian", sigma=5.0, anonymize=True)
    ds = pydicom.dcmread(next((tmp_path / "anon" / "dicom" / "1.2.3.7.1").iterdir()))
    assert ds.PatientName == "Anonymous" and ds.PatientID.startswith("ANON-")
    assert ds.PatientIdentityRemoved == "YES"


def test_shards_partition_the_study_and_merge(study, tmp_path):
    items = discover(study)
    n = 3
    parts = [sorted(i.label for i in items if shard_of(i, n) == k) for k in range(n)]
    assert sorted(sum(parts, [])) == sorted(i.label for i in items)
    out = tmp_path / "sharded"
    for k in range(n):
        denoise_study(study, out, method="gaussian", sigma=5.0, shard=(k, n))
    merged = json.loads(merge_manifests(out).read_text())["records"]
    assert len(merged) == len(items)
    assert sum(r["status"] == "ok" for r in merged) == 4


def test_two_writers_of_one_output_are_refused(tmp_path):
    target = tmp_path / "x.nii.gz"
    with output_lock(target):
        with pytest.raises(OutputError, match="being written by another process"):
            with output_lock(target):
                pass
    assert not list(tmp_path.iterdir())


def test_output_inside_study_is_refused(study):
    with pytest.raises(OutputError, match="inside the study"):
        denoise_study(study, study / "out", method="gaussian", sigma=1.0)


def test_interrupt_records_progress_and_leaves_no_partial_output(study, tmp_path, monkeypatch):
    import medden.pipeline as pipeline

    calls = {"n": 0}
    real = pipeline.denoise

    def interrupt_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "denoise", interrupt_second)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        denoise_study(study, out, method="gaussian", sigma=5.0)
    records = json.loads((out / "manifest.json").read_text())["records"]
    assert [r["status"] for r in records] == ["ok", "interrupted"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files or locks
    monkeypatch.setattr(pipeline, "denoise", real)
    result = denoise_study(study, out, method="gaussian", sigma=5.0)
    assert result.count("skipped") == 1 and result.count("ok") == 3


# ------------------------------------------------------------------------------- resume key and method re-runs
def _mr_study(root, n=2):
    rng = np.random.default_rng(1)
    for k in range(n):
        data = np.abs(rng.normal(100, 10, (16, 16, 16))).astype(np.float32)
        save_volume(Volume(data, np.eye(4), modality="MR"), root / f"s{k}" / "mr.nii.gz") if (
            root / f"s{k}").mkdir(parents=True) is None else None
    return root


def test_retrained_weights_are_recomputed(tmp_path):
    """The resume key holds the model's name, version and weights sha256: new weights at the same path redo the
    study; the same weights skip it."""
    torch = pytest.importorskip("torch")
    from medden.models import ModelCard, Normalisation, build_network, save_model

    def weights(seed):
        torch.manual_seed(seed)
        net = build_network("conditioned-unet3d", features=(4, 4, 8, 8, 16, 4))
        card = ModelCard(name="mine", architecture="conditioned-unet3d", config={}, modality="MR",
                         normalisation=Normalisation("percentile"), version=f"1.0.{seed}")
        return save_model(net, card, tmp_path / "mine.safetensors")

    study, out = _mr_study(tmp_path / "study", n=1), tmp_path / "out"
    path = weights(0)
    args = dict(method="deep-mr", sigma=5.0, device="cpu", params={"weights": str(path), "precision": "fp32"})
    first = denoise_study(study, out, **args)
    assert first.count("ok") == 1
    rec = first.records[0]
    assert rec["model"] == "mine" and rec["model_version"] == "1.0.0" and len(rec["weights_sha256"]) == 64
    assert denoise_study(study, out, **args).count("skipped") == 1
    weights(1)  # retrained: same file name, other weights
    again = denoise_study(study, out, **args)
    assert again.count("ok") == 1 and again.records[0]["weights_sha256"] != rec["weights_sha256"]
    assert again.records[0]["model_version"] == "1.0.1"


def test_rerun_with_another_method_keeps_the_manifest_and_resumes(capsys, tmp_path):
    """Issue 14 item 2: method A, then method B (refused before any work, manifest intact), then A again resumes;
    B goes to another folder with -o, or replaces A's outputs with --overwrite."""
    study, out = _mr_study(tmp_path / "study"), tmp_path / "out"
    a = ["denoise", str(study), "-o", str(out), "-m", "gaussian", "--sigma", "5"]
    assert main(a) == 0
    capsys.readouterr()
    manifest = (out / "manifest.json").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    code = main(["denoise", str(study), "-o", str(out), "-m", "tv", "--sigma", "5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "2 output(s) already exist" in err and "gaussian" in err and "-o" in err and "--overwrite" in err
    assert (out / "manifest.json").read_text() == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == mtimes
    assert main(a) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    assert main(["denoise", str(study), "-o", str(tmp_path / "tv"), "-m", "tv", "--sigma", "5"]) == 0
    assert main(["denoise", str(study), "-o", str(out), "-m", "tv", "--sigma", "5", "--overwrite"]) == 0
    records = json.loads((out / "manifest.json").read_text())["records"]
    assert [r["method"] for r in records] == ["tv", "tv"] and all(r["status"] == "ok" for r in records)
