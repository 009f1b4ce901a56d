"""``medden bids``: the BIDS App on a tiny dataset written in the test, indexed back with pybids as a derivative."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medden.cli import main

IMAGES = ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
          "sub-02/anat/sub-02_run-1_T1w.nii.gz"]
NOT_ANAT = "sub-02/func/sub-02_task-rest_bold.nii.gz"


def _mr_image(path: Path, seed: int) -> None:
    """A head-like MR magnitude image: a bright ellipsoid in air, Rician noise (σ = 20)."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(np.arange(28), np.arange(28), np.arange(16), indexing="ij")
    clean = np.where(((i - 14) / 10) ** 2 + ((j - 14) / 9) ** 2 + ((k - 8) / 6) ** 2 < 1, 400.0, 0.0)
    noisy = np.hypot(clean + rng.normal(0, 20, clean.shape), rng.normal(0, 20, clean.shape)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(noisy, np.diag([1.0, 1.0, 1.2, 1.0])), path)


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    for n, rel in enumerate(IMAGES + [NOT_ANAT]):
        _mr_image(root / rel, seed=n)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0",
                                                                "DatasetType": "raw", "Authors": ["medden"]}))
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    (root / "README").write_text("A tiny dataset made by medden's tests.\n")
    for rel in IMAGES + [NOT_ANAT]:
        sidecar = {"RepetitionTime": 2.0, "TaskName": "rest"} if "bold" in rel else {"EchoTime": 0.004}
        (root / rel.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return root


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_participant_then_group_gives_a_derivative_pybids_can_index(capsys, tmp_path, raw):
    from bids import BIDSLayout

    out = tmp_path / "out"
    digest = tree_digest(raw)
    code, stdout, err = run(capsys, "bids", raw, out, "participant", "--method", "gaussian")
    assert code == 0, err
    assert "3 written, 0 already done, 0 failed" in stdout
    assert tree_digest(raw) == digest  # the input dataset is never modified

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "medden"

    layout = BIDSLayout(out, validate=False, is_derivative=True)
    found = layout.get(desc="denoised", extension=".nii.gz")
    assert sorted(f.relpath for f in found) == sorted(
        rel.replace("_T1w", "_desc-denoised_T1w").replace("_T2w", "_desc-denoised_T2w") for rel in IMAGES)
    ents = {(f.entities["subject"], f.entities.get("session"), f.entities["suffix"]) for f in found}
    assert ents == {("01", "1", "T1w"), ("01", "1", "T2w"), ("02", None, "T1w")}
    assert layout.get(suffix="bold") == []  # only anatomical images

    for rel in IMAGES:
        target = out / rel.replace("_T1w", "_desc-denoised_T1w").replace("_T2w", "_desc-denoised_T2w")
        sidecar = json.loads(Path(str(target).replace(".nii.gz", ".json")).read_text())
        assert sidecar["Sources"] == [f"bids:raw:{rel}"]
        assert sidecar["Method"] == "gaussian" and sidecar["ModelVersion"]
        assert sidecar["NoiseEstimateAfter"] < sidecar["NoiseEstimateBefore"]
        assert 10 < sidecar["NoiseEstimateBefore"] < 40  # σ = 20 was added
        src, den = nib.load(raw / rel), nib.load(target)
        assert np.allclose(src.affine, den.affine) and src.shape == den.shape

    # resume: a second run redoes nothing; a changed record is redone
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    code, stdout, _ = run(capsys, "bids", raw, out, "participant", "--method", "gaussian")
    assert code == 0 and "0 written, 3 already done" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamp
    one = out / "sub-02/anat/sub-02_run-1_desc-denoised_T1w.json"
    one.write_text(json.dumps({**json.loads(one.read_text()), "SettingsKey": "stale"}))
    code, stdout, _ = run(capsys, "bids", raw, out, "participant", "--method", "gaussian")
    assert code == 0 and "1 written, 2 already done" in stdout

    code, stdout, err = run(capsys, "bids", raw, out, "group")
    assert code == 0, err
    with open(out / "group_noise.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert sorted(r["filename"] for r in rows) == sorted(f.relpath for f in found)
    assert all(float(r["noise_after"]) < float(r["noise_before"]) for r in rows)
    assert {(r["subject"], r["session"], r["suffix"]) for r in rows} == {
        ("01", "1", "T1w"), ("01", "1", "T2w"), ("02", "n/a", "T1w")}
    # the summary table does not disturb indexing the derivative
    assert len(BIDSLayout(out, validate=False, is_derivative=True).get(desc="denoised", extension=".nii.gz")) == 3


def test_output_names_follow_bids():
    from medden.bids import output_path

    assert output_path(Path("o"), "sub-01/anat/sub-01_acq-mp2rage_desc-uni_T1w.nii") == Path(
        "o/sub-01/anat/sub-01_acq-mp2rage_desc-denoised_T1w.nii.gz")
    assert output_path(Path("o"), "sub-1/ses-a/anat/sub-1_ses-a_run-2_FLAIR.nii.gz") == Path(
        "o/sub-1/ses-a/anat/sub-1_ses-a_run-2_desc-denoised_FLAIR.nii.gz")


def test_participant_label_and_suffix_select_images(capsys, tmp_path, raw):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "bids", raw, out, "participant", "--participant-label", "sub-01", "02",
                            "--suffix", "T1w", "--method", "gaussian")
    assert code == 0, err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    assert written == ["sub-01/ses-1/anat/sub-01_ses-1_desc-denoised_T1w.nii.gz",
                       "sub-02/anat/sub-02_run-1_desc-denoised_T1w.nii.gz"]


@pytest.mark.parametrize("case", ["not_bids", "unknown_label", "group_before_participant", "bad_level"])
def test_bad_input_is_one_error_line(capsys, tmp_path, raw, case):
    out = tmp_path / "out"
    if case == "not_bids":
        (tmp_path / "plain").mkdir()
        args, expected = [tmp_path / "plain", out, "participant"], "is not a BIDS dataset"
    elif case == "unknown_label":
        args, expected = [raw, out, "participant", "--participant-label", "03"], "participant label 03 not found"
    elif case == "group_before_participant":
        out.mkdir()
        args, expected = [raw, out, "group"], "run the participant level first"
    else:
        args, expected = [raw, out, "everyone"], "invalid choice"
    digest = tree_digest(raw)
    code, _, err = run(capsys, "bids", *args)
    assert code == 2
    assert err.startswith("error: ") and expected in err and err.strip().count("\n") == 0
    assert tree_digest(raw) == digest
    assert not out.exists() or not any(out.rglob("*.nii.gz"))


def test_input_dataset_file_names_are_valid_bids(raw):
    """pybids' bids_validator checks every path of the test dataset against the BIDS naming rules."""
    from bids_validator import BIDSValidator

    validator = BIDSValidator()
    paths = ["/" + p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()]
    assert len(paths) == 11
    assert [p for p in paths if not validator.is_bids(p)] == []


@pytest.mark.skipif(shutil.which("bids-validator") is None, reason="the BIDS validator is not installed")
def test_input_dataset_passes_the_bids_validator(raw):
    result = subprocess.run(["bids-validator", str(raw), "--ignoreWarnings"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]


def test_output_under_the_datasets_derivatives_is_not_read_back_as_input(capsys, raw):
    out = raw / "derivatives" / "medden"
    for expected in ("3 written, 0 already done", "0 written, 3 already done"):
        code, stdout, err = run(capsys, "bids", raw, out, "participant", "--method", "gaussian")
        assert code == 0 and expected in stdout, err
    assert len(list(raw.rglob("*desc-denoised*.nii.gz"))) == 3
    code, _, err = run(capsys, "bids", raw, raw / "sub-01", "participant")
    assert code == 2 and "lies inside the BIDS dataset" in err
