"""Networks, weights (safetensors + card) and the deep denoisers: round trips, clear errors, scale equivariance."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import medden
from medden.models import (ConditionedUNet, DnCNN3D, ModelCard, ModelError, Normalisation, build_network, load_model,
                           save_model, shipped_path)
from medden.phantoms import shepp_logan_3d

SMALL_UNET = {"features": (4, 4, 8, 8, 16, 4)}


def _save_small(tmp_path, kind="percentile", arch="conditioned-unet3d", seed=0):
    torch.manual_seed(seed)
    net = build_network(arch, **(SMALL_UNET if arch == "conditioned-unet3d" else {"depth": 3, "width": 4}))
    card = ModelCard(name="t", architecture=arch, config={}, modality="MR",
                     normalisation=Normalisation(kind, offset=0.0, scale=1000.0))
    return save_model(net, card, tmp_path / f"{arch}.safetensors"), net


@pytest.mark.parametrize("net", [ConditionedUNet(SMALL_UNET["features"]), DnCNN3D(depth=3, width=4)])
def test_networks_keep_shape_and_take_a_level_or_a_map(net):
    x = torch.rand(2, 1, 16, 16, 16)
    assert net(x, torch.tensor([0.1, 0.2])).shape == x.shape
    assert net(x, torch.full_like(x, 0.1)).shape == x.shape


@pytest.mark.parametrize("net", [ConditionedUNet(SMALL_UNET["features"]), DnCNN3D(depth=3, width=4)])
def test_bias_free_networks_are_homogeneous(net):
    """f(a·x, a·σ) = a·f(x, σ): no biases, leaky ReLU and max pooling (Mohan et al. 2020)."""
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(3.5 * x, 3.5 * 0.1), 3.5 * net(x, 0.1), rtol=1e-4, atol=1e-5)


def test_biased_unet_scales_the_residual_by_the_level():
    net = ConditionedUNet(SMALL_UNET["features"], bias=True)
    x = torch.rand(1, 1, 16, 16, 16)
    assert torch.equal(net(x, 0.0), x)  # output = x + σ·r(x, σ)


def test_save_and_load_round_trip(tmp_path):
    path, net = _save_small(tmp_path)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["architecture"] == "conditioned-unet3d" and len(card["sha256"]) == 64
    loaded, card2 = load_model(path)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x, 0.1), net.eval()(x, 0.1))
    assert card2.normalisation.kind == "percentile"


def test_a_resaved_card_keeps_its_changelog(tmp_path):
    """Exporting a model again from its card (a new version) must not drop the history the bundle metadata shows."""
    path, net = _save_small(tmp_path)
    _, card = load_model(path)
    card.changelog = {"0.1.0": "first", "0.2.0": "retrained"}
    again = save_model(net, card, tmp_path / "again.safetensors")
    assert load_model(again)[1].changelog == {"0.1.0": "first", "0.2.0": "retrained"}


def test_corrupt_weights_are_a_clear_error(tmp_path):
    path, _ = _save_small(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelError, match="corrupt"):
        load_model(path)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    path, _ = _save_small(tmp_path, arch="conditioned-dncnn3d")
    card = json.loads(path.with_suffix(".json").read_text())
    card.update(architecture="conditioned-unet3d", config={"features": list(SMALL_UNET["features"])})
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="another architecture"):
        load_model(path)
    with pytest.raises(ModelError, match="not the expected"):
        load_model(path, expect_architecture="conditioned-dncnn3d")


def test_missing_card_or_file(tmp_path):
    path, _ = _save_small(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="card"):
        load_model(path)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nothing.safetensors")


def test_cli_reports_a_corrupt_weights_file(tmp_path, capsys):
    from medden.cli import main

    path, _ = _save_small(tmp_path)
    path.write_bytes(b"not a safetensors file at all")
    vol = shepp_logan_3d((24, 24, 24))
    src = tmp_path / "in.nii.gz"
    medden.save_volume(medden.Volume(vol.data * 100 + 1, vol.affine, modality="MR"), src)
    code = main(["denoise", str(src), "--method", "deep-mr", "--sigma", "5", "-p", f"weights={path}", "-q"])
    assert code == 2
    assert "corrupt" in capsys.readouterr().err


def test_deep_denoiser_is_scale_equivariant(tmp_path):
    """denoise(a·x, a·σ) = a·denoise(x, σ): the input is normalised by its own 99.9th percentile."""
    from medden.denoisers.deep import run_model

    path, _ = _save_small(tmp_path)
    x = shepp_logan_3d((24, 24, 24)).data * 100
    noisy = medden.noise.rician(x, sigma=3.0, generator=0)
    base = run_model(noisy, 3.0, path, precision="fp32")
    for a in (0.01, 7.5):
        scaled = run_model(noisy * a, 3.0 * a, path, precision="fp32")
        np.testing.assert_allclose(scaled, a * base, rtol=1e-4, atol=1e-4 * a * np.abs(base).max())


def test_shipped_models_are_registered_for_their_modality():
    from medden.denoisers import get_method

    mr, ct = get_method("deep-mr"), get_method("deep-ct")
    assert mr.modalities == ("MR",) and ct.modalities == ("CT",) and mr.gpu and mr.family == "deep"
    assert mr.available == shipped_path("deep-mr").is_file()


@pytest.mark.skipif(not shipped_path("deep-mr").is_file(), reason="shipped MR weights not present")
def test_shipped_mr_model_denoises_and_is_scale_equivariant(monkeypatch):
    from medden.denoisers import default_method, get_method

    monkeypatch.setattr(type(get_method("bm4d")), "available", property(lambda self: self.extra is None and
                                                                          self.availability()))
    assert default_method("MR").name == "deep-mr"  # the default wherever BM4D (an opt-in extra) is not installed
    clean = shepp_logan_3d((48, 48, 48)).data * 1000
    noisy = medden.noise.rician(clean, sigma=50.0, generator=1)
    vol = medden.Volume(noisy, np.eye(4), modality="MR")
    out = medden.denoise(vol, sigma=50.0, precision="fp32").data
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
    out2 = medden.denoise(medden.Volume(noisy * 0.37, np.eye(4), modality="MR"), sigma=50.0 * 0.37,
                          precision="fp32").data
    np.testing.assert_allclose(out2, 0.37 * out, rtol=1e-3, atol=1e-3 * np.abs(out).max())
