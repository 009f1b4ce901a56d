"""The one trainer: run folders named by config and data (a fine-tune never resumes another run), the validation gate
before export, data paths under a data root, checkpoints under the user's cache, progress lines, the diffusion prior
through the same engine, Recorrupted-to-Recorrupted patches, random voxel sizes, function-preserving widening, and
no absolute machine path anywhere in the repository."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import medden
from medden.phantoms import shepp_logan_3d
from medden.training import PriorConfig, TrainingError, load_config, train, validate_config
from medden.training.data import PatchSampler, TrainVolume
from test_training import _cfg, scans  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]


def test_repository_holds_no_absolute_machine_paths():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"(?<![\w.~$-])/(root|home|work|mnt|scratch)/[\w.-]")
    examples = ("tests/test_training_engine.py", "tests/test_bundles.py")  # example paths for their pattern tests
    hits = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in (".safetensors", ".gz", ".png", ".pt", ".npy", ".dcm", ".ipynb"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{name}:{i}: {line.strip()[:80]}" for i, line in enumerate(text.splitlines(), 1)
                 if pattern.search(line) and name not in examples]
    assert not hits, "absolute machine paths:\n" + "\n".join(hits)


def test_widened_unet_computes_what_the_narrow_one_did():
    from medden.models import build_network
    from medden.models.networks import widen_unet

    torch.manual_seed(0)
    small = build_network("conditioned-unet3d", features=[4, 4, 8, 8, 16, 4]).eval()
    wide = widen_unet(build_network("conditioned-unet3d", features=[4, 6, 12, 12, 24, 4]), small.state_dict(),
                      small.config["features"]).eval()
    x, s = torch.rand(1, 1, 16, 16, 16), torch.tensor([0.1])
    with torch.no_grad():
        assert torch.allclose(small(x, s), wide(x, s), atol=1e-6)
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in small.parameters())
    with pytest.raises(ValueError, match="cannot widen"):
        widen_unet(build_network("conditioned-unet3d", features=[2, 4, 8, 8, 16, 4]), small.state_dict(),
                   small.config["features"])


def test_recorrupted_noise_of_input_and_target_is_uncorrelated(tmp_path, scans):  # noqa: F811
    """R2R: y = c + n, input y + ασz, target y − σz/α: the two noises are uncorrelated (independent for Gaussian
    n), so the expected loss against the target is the loss against c plus a constant."""
    sigma = 0.05
    cfg = validate_config(_cfg(tmp_path, scans, noise={"sigma_range": [0.06, 0.3], "level_jitter": 0},
                               intensity_scale=[1.0, 1.0], augment=False))
    g = np.random.default_rng(0)
    clean = np.ones((32, 32, 32), np.float32)
    noisy = clean + sigma * g.standard_normal(clean.shape).astype(np.float32)
    sampler = PatchSampler([TrainVolume("n", noisy, level=sigma, role="noisy")], cfg, seed=0)
    x, y, level, mask = sampler.sample(32)
    ex, ey = (x - 1).numpy(), (y - 1).numpy()
    assert abs(np.mean(ex * ey)) < 0.1 * sigma ** 2  # uncorrelated; y itself has σ², the pair −σ² + σ² = 0
    assert np.mean(ex * ex) > 1.1 * sigma ** 2  # the input is noisier than the scan
    assert np.allclose(level.numpy() ** 2, np.var(ex.reshape(32, -1), axis=1), rtol=0.15)
    assert mask is not None and float(mask.mean()) > 0.9  # a bright object: Gaussian everywhere


def test_clean_patches_are_resampled_to_random_voxel_sizes(tmp_path, scans):  # noqa: F811
    cfg = validate_config(_cfg(tmp_path, scans, augment=False, intensity_scale=[1.0, 1.0],
                               resample={"probability": 1.0, "voxel_mm": [2.0, 2.0], "thick_probability": 0.0}))
    ramp = np.broadcast_to(np.arange(64, dtype=np.float32)[:, None, None] + 1, (64, 64, 64)).copy()
    sampler = PatchSampler([TrainVolume("r", ramp, spacing=(1.0, 1.0, 1.0))], cfg, seed=0)
    patch = sampler._resampled(sampler.volumes[0])
    assert tuple(patch.shape) == (16, 16, 16)
    assert float(torch.diff(patch, dim=0).mean()) == pytest.approx(2.0, rel=1e-4)  # 2 mm voxels of a 1 mm ramp
    assert float(torch.diff(patch, dim=1).abs().max()) == 0


def test_relative_data_paths_read_under_the_data_root_and_checkpoints_go_to_the_cache(tmp_path, scans,  # noqa: F811
                                                                                       monkeypatch):
    raw = _cfg(tmp_path, scans, data=[{"path": Path(scans[0]).name}], epochs=1, export=None, progress_every=1)
    del raw["checkpoint_dir"]
    with pytest.raises(Exception, match="does not exist"):
        validate_config(raw)
    monkeypatch.setenv("MEDDEN_DATA", str(Path(scans[0]).parent))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = validate_config(raw)
    assert Path(cfg.data[0].path) == Path(scans[0])
    logs: list[str] = []
    rec = train(cfg, log=logs.append)
    assert Path(rec["run_dir"]).parent == tmp_path / "cache" / "medden" / "training"
    assert any("steps/s" in line and "Mvoxel/s" in line for line in logs)  # per-step progress


def test_a_model_worse_than_its_input_is_not_exported(tmp_path, scans, monkeypatch):  # noqa: F811
    import medden.training.loop as loop

    monkeypatch.setattr(loop, "validate", lambda *a, **k: {"val_psnr": 20.0, "val_psnr_noisy": 30.0, "val_loss": 1.0})
    cfg = validate_config(_cfg(tmp_path, scans, epochs=1, on_worse="refuse"))
    with pytest.raises(TrainingError, match="WORSE than its input.*not exported"):
        train(cfg, log=lambda s: None)
    assert not (tmp_path / "out" / "m.safetensors").exists()
    logs: list[str] = []
    rec = train(validate_config(_cfg(tmp_path, scans, epochs=1)), log=logs.append)  # on_worse="warn"
    assert Path(rec["export"]).is_file() and any(line.startswith("WARNING") for line in logs)


def test_two_fine_tunes_on_different_folders_do_not_share_a_run(tmp_path, scans, monkeypatch):  # noqa: F811
    """Issue 14 #1: the second fine-tune resumed the first's checkpoint and exported identical weights."""
    from medden.cli import main

    folders = []
    for i, seed in enumerate((3, 4)):
        d = tmp_path / f"scans{i}"
        d.mkdir()
        v = shepp_logan_3d((32, 32, 32))
        noisy = medden.noise.rician(v.data * 500 + 10, sigma=25.0, generator=seed)
        medden.save_volume(medden.Volume(noisy.astype(np.float32), v.affine, modality="MR"), d / "a.nii.gz")
        folders.append(d)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    outs = []
    for i, d in enumerate(folders):
        out = tmp_path / f"mine{i}.safetensors"
        code = main(["train", "--mode", "n2v", str(d), "--export", str(out), "--epochs", "1", "--wall-minutes",
                     "0.01", "--quiet"])
        assert code == 0
        outs.append(out)
    runs = sorted((tmp_path / "cache" / "medden" / "training").glob("*/last.pt"))
    assert len(runs) == 2  # one run folder per data folder
    assert outs[0].read_bytes() != outs[1].read_bytes()
    cards = [json.loads(o.with_suffix(".json").read_text()) for o in outs]
    assert cards[0]["training"]["data"] == cards[1]["training"]["data"]  # same file names, other content


def test_diffusion_prior_trains_and_resumes_through_the_same_trainer(tmp_path):
    v = shepp_logan_3d((32, 32, 24))
    p = tmp_path / "clean.nii.gz"
    medden.save_volume(medden.Volume((v.data * 500).astype(np.float32), v.affine, modality="MR"), p)
    raw = {"kind": "diffusion-prior", "name": "tiny-prior", "data": [{"path": p.name, "licence": "test"}],
           "network": {"channels": [8, 8], "norm_num_groups": 4}, "patch": 16, "batch_size": 2, "max_steps": 2,
           "log_every": 1, "progress_every": 1, "threads": 1, "checkpoint_dir": str(tmp_path / "ckpt"),
           "held_out": ["rorden_"]}
    cfg = validate_config(raw, data_root_dir=tmp_path)
    assert isinstance(cfg, PriorConfig)
    rec = train(cfg, log=lambda s: None)
    assert rec["steps"] == 2 and len(rec["history"]) == 2 and np.isfinite(rec["history"][-1]["val_loss"])
    logs: list[str] = []
    more = train(validate_config({**raw, "max_steps": 3}, data_root_dir=tmp_path), log=logs.append)
    assert more["steps"] == 3 and any("resumed run" in line for line in logs)
    with pytest.raises(Exception, match="held-out"):
        validate_config({**raw, "held_out": ["clean"]}, data_root_dir=tmp_path)


def test_a_committed_training_state_resumes_the_same_run_and_seeds_another(tmp_path, scans):  # noqa: F811
    from medden.training.engine import compact_state

    rec = train(validate_config(_cfg(tmp_path, scans, epochs=1, export=None)), log=lambda s: None)
    state = compact_state(Path(rec["run_dir"]) / "last.pt", tmp_path / "state" / "tiny.pt", data_root=tmp_path)
    saved = torch.load(state, weights_only=True)
    assert "optimizer" not in saved
    assert all(not Path(d["path"]).is_absolute() for d in saved["config"]["data"])  # no folder of this machine
    assert str(tmp_path) not in json.dumps(saved["config"])
    logs: list[str] = []  # same run, fresh cache folder (a later session): continues at its step
    more = train(validate_config(_cfg(tmp_path, scans, epochs=2, export=None, resume_from=str(state),
                                      checkpoint_dir=str(tmp_path / "later"))), log=logs.append)
    assert more["steps"] == 4 and more["run_key"] == rec["run_key"]
    assert any("resuming run" in line and "at step 2" in line for line in logs)
    logs.clear()  # another run (other learning rate): only the weights
    other = train(validate_config(_cfg(tmp_path, scans, epochs=1, export=None, learning_rate=2e-3,
                                       resume_from=str(state), checkpoint_dir=str(tmp_path / "other"))),
                  log=logs.append)
    assert other["steps"] == 2 and any("initialising from the weights" in line for line in logs)


@pytest.mark.parametrize("config", sorted(str(p.relative_to(ROOT)) for p in [
    *ROOT.glob("bundles/*/configs/medden_train.json"), *ROOT.glob("bundles/*/configs/stages/*.json"),
    *ROOT.glob("medden/training/configs/*.json")]))
def test_every_shipped_training_config_validates(tmp_path, monkeypatch, config):
    """The configs in the repository are valid and machine-independent: relative data paths under a data root."""
    raw = json.loads((ROOT / config).read_text())
    for spec in raw["data"] + raw.get("validation", []):
        for key in ("path", "pair"):
            if spec.get(key):
                assert not Path(spec[key]).is_absolute()
                (tmp_path / "data" / spec[key]).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / "data" / spec[key]).touch()
    monkeypatch.chdir(tmp_path)
    for key in ("init_weights", "resume_from"):
        if raw.get(key):
            Path(raw[key]).parent.mkdir(parents=True, exist_ok=True)
            Path(raw[key]).touch()
    assert "checkpoint_dir" not in raw  # runs go to the user's cache unless asked otherwise
    validate_config(raw, config, data_root_dir=tmp_path / "data")


def test_sigterm_stops_a_run_cleanly_with_a_checkpoint_and_an_export(tmp_path, scans, monkeypatch):  # noqa: F811
    import os
    import signal

    import medden.training.loop as loop

    real, calls = loop.training_loss, []

    def term_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    monkeypatch.setattr(loop, "training_loss", term_on_second)
    logs: list[str] = []
    rec = train(validate_config(_cfg(tmp_path, scans, epochs=50)), log=logs.append)
    assert rec["steps"] == 2 and any("stop requested" in line for line in logs)
    assert Path(rec["export"]).is_file() and (Path(rec["run_dir"]) / "last.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back


def test_a_noisy_volume_takes_its_given_noise_level_over_the_estimate(tmp_path, scans):  # noqa: F811
    from medden.training.data import load_volumes

    cfg = validate_config(_cfg(tmp_path, scans, data=[{"path": scans[1], "target": "noisy", "noise_level": 0.02},
                                                      {"path": scans[1], "target": "noisy"}]))
    given, estimated = load_volumes(cfg.data, cfg, tmp_path / "cache", log=lambda s: None)
    assert given.level == 0.02 and given.role == "noisy"
    assert 0 < estimated.level != 0.02


def test_a_bundle_config_names_its_training_state_from_any_folder(tmp_path, monkeypatch):
    """``resume_from: medden/models/...`` in a bundle's config is found from the config's folder upwards, so
    ``medden train bundles/.../medden_train.json`` runs from any folder, not only from the repository root."""
    config = "bundles/medden_mr_rician_unet/configs/medden_train.json"
    raw = json.loads((ROOT / config).read_text())
    assert raw.get("resume_from") and not Path(raw["resume_from"]).is_absolute()
    for spec in raw["data"] + raw.get("validation", []):
        for key in ("path", "pair"):
            if spec.get(key):
                (tmp_path / "data" / spec[key]).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / "data" / spec[key]).touch()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / config, data_root_dir=tmp_path / "data")
    assert Path(cfg.resume_from) == (ROOT / raw["resume_from"]).resolve()


def test_a_piecewise_smooth_entry_trains_on_a_noise_free_version_of_the_scan(tmp_path, scans):  # noqa: F811
    from medden.phantoms import water_cylinder
    from medden.training import ConfigError
    from medden.training.data import load_volumes

    ph = water_cylinder((64, 64, 16), (1.0, 1.0, 2.0), diameter_mm=56, inserts={"fat": -100.0}, insert_diameter_mm=14)
    noisy = ph.volume.data + np.random.default_rng(0).normal(0, 15, ph.volume.shape).astype(np.float32)
    ct = tmp_path / "ct.nii.gz"
    medden.save_volume(medden.Volume(noisy, ph.volume.affine, modality="CT"), ct)
    ct_cfg = dict(modality="CT", synthetic_volumes=0, noise={"model": "lowdose-ct", "ct_realisations": 1})
    cfg = validate_config(_cfg(tmp_path, scans, data=[{"path": str(ct)}, {"path": str(ct), "piecewise_smooth_mm": 3}],
                               **ct_cfg))
    raw, smooth = load_volumes(cfg.data, cfg, tmp_path / "cache", log=lambda s: None)
    assert smooth.role == "clean" and "piecewise-smooth 3 mm" in smooth.name
    water = ph.rois["water"]
    assert smooth.clean[water].std() < 0.25 * raw.clean[water].std()  # its noise averaged away: a noise-free target
    assert abs(smooth.clean[ph.rois["fat"]].mean() * 1000 + 100) < 3  # each class keeps its level (HU / 1000)
    assert len(smooth.ct_noise) == 1 and smooth.ct_noise[0].std() > 0  # low-dose noise simulated on it
    with pytest.raises(ConfigError, match="piecewise_smooth_mm"):
        validate_config(_cfg(tmp_path, scans, data=[{"path": str(ct), "target": "noisy", "piecewise_smooth_mm": 3}],
                             **ct_cfg))
    with pytest.raises(ConfigError, match="modality CT"):
        validate_config(_cfg(tmp_path, scans, data=[{"path": scans[1], "piecewise_smooth_mm": 3}]))
