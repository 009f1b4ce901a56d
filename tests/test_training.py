"""Training: the config is validated before any work, tiny supervised / Noise2Noise / Noise2Void runs on phantoms
train, checkpoint, resume and export loadable weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import medden
from medden.models import load_model
from medden.phantoms import shepp_logan_3d
from medden.training import ConfigError, load_config, train, validate_config
from medden.training.data import PatchSampler, TrainVolume


@pytest.fixture
def scans(tmp_path):
    paths = []
    for i, seed in enumerate((0, 1)):
        v = shepp_logan_3d((32, 32, 32))
        data = v.data * 500 + 10
        if i == 1:  # a second, independently noisy scan of the same object (Noise2Noise pair)
            data = medden.noise.rician(v.data * 500 + 10, sigma=20.0, generator=seed)
        p = tmp_path / f"scan{i}.nii.gz"
        medden.save_volume(medden.Volume(data.astype(np.float32), v.affine, modality="MR"), p)
        paths.append(str(p))
    return paths


def _cfg(tmp_path, scans, **over):
    raw = {"name": "tiny", "modality": "MR", "data": [{"path": scans[0]}], "synthetic_volumes": 1,
           "network": {"features": [4, 4, 8, 8, 16, 4]}, "patch_size": [16, 16, 16], "batch_size": 2,
           "epochs": 2, "steps_per_epoch": 2, "val_patches": 2, "threads": 1,
           "checkpoint_dir": str(tmp_path / "ckpt"), "export": str(tmp_path / "out" / "m.safetensors"),
           "on_worse": "warn"}  # a 4-step model may well be worse than its input: these tests check the mechanics
    raw.update(over)
    return raw


def test_wrong_field_is_rejected_before_any_work(tmp_path, scans):
    with pytest.raises(ConfigError, match="learning_rat"):
        validate_config(_cfg(tmp_path, scans, learning_rat=0.1))
    with pytest.raises(ConfigError, match="does not exist"):
        validate_config(_cfg(tmp_path, scans, data=[{"path": str(tmp_path / "missing.nii.gz")}]))
    with pytest.raises(ConfigError, match="sigma_range"):
        validate_config(_cfg(tmp_path, scans, noise={"sigma_range": [0.2, 0.1]}))
    with pytest.raises(ConfigError, match="multiples of 16"):
        validate_config(_cfg(tmp_path, scans, patch_size=[20, 20, 20]))
    with pytest.raises(ConfigError, match="pair"):
        validate_config(_cfg(tmp_path, scans, mode="n2n"))
    assert not (tmp_path / "ckpt").exists()


def test_cli_train_with_a_bad_config_exits_nonzero(tmp_path, scans, capsys):
    from medden.cli import main

    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(_cfg(tmp_path, scans, batch_size="four")))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "batch_size" in err and len(err.strip().splitlines()) == 1


def test_supervised_training_checkpoints_resumes_and_exports(tmp_path, scans):
    cfg = validate_config(_cfg(tmp_path, scans))
    logs: list[str] = []
    rec = train(cfg, log=logs.append)
    assert rec["steps"] == 4 and len(rec["history"]) == 2
    assert np.isfinite(rec["history"][-1]["val_psnr"])
    run = Path(rec["run_dir"])  # the run's own folder under checkpoint_dir, named by its config and data
    assert run.parent == tmp_path / "ckpt"
    assert (run / "last.pt").is_file() and (run / "log.jsonl").is_file()
    net, card = load_model(rec["export"])
    assert card.modality == "MR" and card.training["data"][0]["path"] == "scan0.nii.gz"
    more = train(validate_config(_cfg(tmp_path, scans, epochs=3)), log=logs.append)
    assert any("resumed" in line for line in logs) and more["steps"] == 6


@pytest.mark.parametrize("mode", ["n2n", "n2v"])
def test_self_supervised_modes_run(tmp_path, scans, mode):
    data = [{"path": scans[1], "pair": scans[0]}] if mode == "n2n" else [{"path": scans[1]}]
    cfg = validate_config(_cfg(tmp_path, scans, mode=mode, data=data, synthetic_volumes=0, epochs=1, export=None))
    rec = train(cfg, log=lambda s: None)
    assert rec["steps"] == 2 and np.isfinite(rec["history"][-1]["train_loss"])


def test_blind_spot_masking_replaces_masked_voxels_by_neighbours(tmp_path, scans):
    cfg = validate_config(_cfg(tmp_path, scans, mode="n2v", n2v_mask_fraction=0.01))
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(32, 32, 32)).astype(np.float32)
    sampler = PatchSampler([TrainVolume("x", noisy, level=1.0)], cfg, seed=0)
    x, y, mask = (t.numpy() for t in sampler._blind_spot(noisy))  # patches are tensors (made on the device)
    assert np.array_equal(y, noisy)
    changed = x != noisy
    assert changed.sum() > 0 and np.all(mask[changed] == 1)
    assert 0.005 < mask.mean() <= 0.01
    assert np.array_equal(x[mask == 0], noisy[mask == 0])


def test_rician_training_patches_are_noisier_than_targets(tmp_path, scans):
    cfg = validate_config(_cfg(tmp_path, scans, noise={"sigma_range": [0.05, 0.05], "level_jitter": 0}))
    clean = shepp_logan_3d((32, 32, 32)).data
    sampler = PatchSampler([TrainVolume("p", clean / np.percentile(clean[clean > 0], 99.9))], cfg, seed=0)
    x, y, level, mask = sampler.sample(4)
    assert x.shape == (4, 1, 16, 16, 16) and mask is None
    assert np.allclose(level.numpy(), 0.05)
    resid = (x - y).numpy()
    assert 0.03 < resid.std() < 0.08  # Rician: about σ in the object, Rayleigh in the background


def test_load_config_reads_json_and_applies_overrides(tmp_path, scans):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(_cfg(tmp_path, scans)))
    cfg = load_config(p, epochs=7)
    assert cfg.epochs == 7 and cfg.modality == "MR"
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.json")


def test_supervised_ct_training_with_projection_domain_noise(tmp_path, scans):
    from medden.phantoms import water_cylinder

    ph = water_cylinder((48, 48, 16), spacing=(1.0, 1.0, 2.0))
    p = tmp_path / "ct.nii.gz"
    medden.save_volume(medden.Volume(ph.volume.data, ph.volume.affine, modality="CT"), p)
    cfg = validate_config(_cfg(tmp_path, scans, modality="CT", data=[{"path": str(p)}], synthetic_volumes=0,
                               noise={"model": "lowdose-ct", "ct_realisations": 1}, epochs=1, export=None))
    logs: list[str] = []
    rec = train(cfg, log=logs.append)
    assert rec["steps"] == 2 and np.isfinite(rec["history"][-1]["val_psnr"])
    assert any("estimator levels" in line for line in logs)
    assert list((Path(rec["run_dir"]) / "cache").glob("*.npy"))


def test_lowpass_loss_weighs_local_mean_errors():
    import torch

    from medden.models.losses import training_loss

    g = torch.Generator().manual_seed(0)
    target = torch.zeros(4, 1, 16, 16, 16)
    level = torch.full((4,), 0.5)
    white = torch.randn(target.shape, generator=g) * 0.5
    offset = torch.full(target.shape, 0.5)
    for err in (white, offset):  # the voxel term alone is the same: mean((err/σ)²) ≈ 1
        assert float(training_loss(err, target, level)) == pytest.approx(1.0, rel=0.05)
    # block means of white noise keep unit variance after the rescaling; a constant offset weighs 8³ times more
    extra_white = float(training_loss(white, target, level, lowpass_weight=1.0)) - float(training_loss(white, target, level))
    extra_offset = float(training_loss(offset, target, level, lowpass_weight=1.0)) - 1.0
    assert extra_white == pytest.approx(1.0, rel=0.5)
    assert extra_offset == pytest.approx(512.0, rel=1e-4)


def test_parallel_loader_workers_train(tmp_path, scans):
    rec = train(validate_config(_cfg(tmp_path, scans, workers=2, lowpass_weight=0.1, export=None)), log=lambda s: None)
    assert rec["steps"] == 4 and np.isfinite(rec["history"][-1]["train_loss"])


def test_a_non_finite_gradient_skips_the_update_instead_of_poisoning_the_weights(tmp_path, scans, monkeypatch):
    """One NaN loss (e.g. an overflow in a reduced-precision kernel) must not turn the weights into NaN."""
    import medden.training.loop as loop

    real, calls = loop.training_loss, []

    def first_nan(est, *args, **kw):
        calls.append(1)
        loss = real(est, *args, **kw)
        return loss * float("nan") if len(calls) == 1 else loss

    monkeypatch.setattr(loop, "training_loss", first_nan)
    logs: list[str] = []
    rec = train(validate_config(_cfg(tmp_path, scans)), log=logs.append)
    # ≥ 1: bf16 CPU kernels now and then give a non-finite gradient of their own (seen in CI), skipped alike
    assert rec["skipped_steps"] >= 1 and any("update skipped" in line for line in logs)
    assert np.isfinite(rec["history"][-1]["val_psnr"])
    net, _ = load_model(rec["export"])
    assert all(bool(p.isfinite().all()) for p in net.parameters())


def test_ct_recorrupted_pairs_are_unbiased_for_the_noise_free_scan(tmp_path, scans):
    """CT Recorrupted-to-Recorrupted: with the recorrupting noise as the scan's own (same covariance), the input's
    noise and the target's are uncorrelated (a target whose noise follows the input's would teach the network to
    keep it), the input carries the noise of the drawn dose, and the level told is σ_y/√dose."""
    import torch

    cfg = validate_config(_cfg(tmp_path, scans, modality="CT", synthetic_volumes=0, patch_size=[32, 32, 16],
                               noise={"model": "lowdose-ct", "dose_range": [0.25, 0.25], "level_jitter": 0}))
    rng = np.random.default_rng(0)
    truth = np.zeros((32, 32, 16), np.float32)
    own = rng.normal(0, 0.02, truth.shape).astype(np.float32)  # the scan's own noise, σ_y = 0.02
    realisations = [rng.normal(0, 0.05, truth.shape).astype(np.float32) for _ in range(3)]  # same covariance, ×2.5
    vol = TrainVolume("ct", truth + own, level=0.02, ct_noise=realisations, ct_noise_level=0.05, role="noisy")
    sampler = PatchSampler([vol], cfg, seed=0)
    pairs = [sampler._recorrupted_ct(sampler.volumes[0]) for _ in range(6)]
    x = torch.stack([p[0] for p in pairs]).numpy() - truth
    t = torch.stack([p[1] for p in pairs]).numpy() - truth
    assert abs(np.corrcoef(x.ravel(), t.ravel())[0, 1]) < 0.03
    assert x.std() == pytest.approx(0.02 / np.sqrt(0.25), rel=0.05)  # dose 25 %: variance × 4
    assert all(p[2] == pytest.approx(0.04) for p in pairs)
    # the full-dose scan as the target (role "clean") keeps the own noise in the target: correlated with the input
    sampler_clean = PatchSampler([TrainVolume("ct", truth + own, level=0.02, ct_noise=realisations,
                                              ct_noise_level=0.05, ct_levels=[(0.0, 0.02), (-1.4, 0.04)])], cfg, 0)
    xs, ts, _ = sampler_clean._supervised(sampler_clean.volumes[0])
    assert np.corrcoef((xs.numpy() - truth).ravel(), (ts.numpy() - truth).ravel())[0, 1] > 0.2
