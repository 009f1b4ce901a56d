"""Local-mean fidelity: the denoised volume keeps the noisy input's local means (linear) or power (Rician)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import medden
from medden.denoisers.fidelity import local_mean_fidelity
from medden.errors import ParameterError
from medden.models import ModelCard, Normalisation, build_network, save_model


def _blocks(shape=(48, 48, 24)) -> np.ndarray:
    """Two large flat regions: 100 and 300."""
    x = np.full(shape, 100.0, np.float32)
    x[shape[0] // 2:] = 300.0
    return x


def test_linear_fidelity_removes_a_mean_shift_and_keeps_most_of_the_denoising():
    truth = _blocks()
    noisy = truth + np.random.default_rng(0).normal(0, 20, truth.shape).astype(np.float32)
    shrunk = truth - 6.0  # a denoiser that is clean but biased by −6 everywhere
    out = local_mean_fidelity(shrunk, noisy, 20.0, scale_mm=3.0)
    inner = (slice(6, 18), slice(6, 42), slice(6, 18))
    assert abs(float(out[inner].mean() - 100.0)) < 0.5
    assert float(out[inner].std()) < 0.15 * 20  # only the low-pass part of the noise comes back
    np.testing.assert_array_equal(shrunk, truth - 6.0)  # inputs untouched


def test_power_fidelity_corrects_the_rician_bias_that_linear_keeps():
    """A magnitude image's mean is biased up (E[y²] = A² + 2σ²); the power domain removes that bias."""
    truth = np.full((48, 48, 24), 60.0, np.float32)
    noisy = medden.noise.rician(truth, sigma=30.0, generator=3)
    assert float(noisy.mean()) > 65.0  # the Rician bias at SNR 2
    shrunk = np.full_like(truth, 45.0)
    linear = local_mean_fidelity(shrunk, noisy, 30.0, scale_mm=3.0, domain="linear")
    power = local_mean_fidelity(shrunk, noisy, 30.0, scale_mm=3.0, domain="power")
    inner = (slice(8, 40), slice(8, 40), slice(6, 18))
    assert abs(float(power[inner].mean()) - 60.0) < 1.5
    assert float(linear[inner].mean()) > 64.0


def test_power_fidelity_is_scale_equivariant_and_takes_a_noise_map():
    truth = _blocks()
    sigma = np.full(truth.shape, 15.0, np.float32)
    noisy = medden.noise.rician(truth, sigma=15.0, generator=1)
    d = truth * 0.95
    base = local_mean_fidelity(d, noisy, sigma, scale_mm=2.0, domain="power")
    scaled = local_mean_fidelity(0.01 * d, 0.01 * noisy, 0.01 * sigma, scale_mm=2.0, domain="power")
    np.testing.assert_allclose(scaled, 0.01 * base, rtol=1e-4, atol=1e-5)


def test_scale_is_in_millimetres():
    """A thick-slice axis (4 mm) is smoothed over fewer voxels than a 1 mm axis."""
    gap = np.zeros((33, 33, 33), np.float32)
    gap[16, 16, 16] = 1.0
    out = local_mean_fidelity(np.zeros_like(gap), gap, 0.0, scale_mm=2.0, spacing=(1.0, 1.0, 4.0))
    assert out[16 + 2, 16, 16] > 0.1 * out[16, 16, 16]  # two voxels = 2 mm: one σ away
    assert out[16, 16, 16 + 2] < 1e-3 * out[16, 16, 16]  # two voxels = 8 mm: four σ away


def test_zero_scale_is_the_identity_and_bad_arguments_are_clear():
    d = _blocks()
    np.testing.assert_array_equal(local_mean_fidelity(d, d + 1, 1.0, scale_mm=0.0), d)
    with pytest.raises(ParameterError, match="domain"):
        local_mean_fidelity(d, d, 1.0, scale_mm=1.0, domain="log")
    with pytest.raises(ParameterError, match="mm"):
        local_mean_fidelity(d, d, 1.0, scale_mm=-1.0)
    with pytest.raises(ParameterError, match="shape"):
        local_mean_fidelity(d, d[:10], 1.0, scale_mm=1.0)


def test_deep_denoiser_applies_the_cards_fidelity_and_the_parameter_overrides_it(tmp_path):
    from medden.denoisers.deep import run_model

    torch.manual_seed(0)
    net = build_network("conditioned-unet3d", features=(4, 4, 8, 8, 16, 4))
    card = ModelCard(name="t", architecture="conditioned-unet3d", config={}, modality="MR",
                     normalisation=Normalisation("percentile"),
                     noise={"model": "rician", "coils": 1, "fidelity": {"scale_mm": 2.0, "domain": "power"}})
    path = save_model(net, card, tmp_path / "m.safetensors")
    noisy = medden.noise.rician(_blocks((32, 32, 16)), sigma=10.0, generator=0)
    raw = run_model(noisy, 10.0, path, precision="fp32", fidelity_mm=0)
    tuned = run_model(noisy, 10.0, path, precision="fp32", spacing=(1.0, 1.0, 2.0))
    np.testing.assert_allclose(tuned, local_mean_fidelity(raw, noisy, 10.0, scale_mm=2.0, spacing=(1.0, 1.0, 2.0),
                                                          domain="power"), rtol=1e-5, atol=1e-3)
    assert np.abs(tuned - raw).max() > 0.1

    # through the public call: the registry parameter parses a CLI string; "none" means the card's value
    vol = medden.Volume(noisy, np.diag([1.0, 1.0, 2.0, 1.0]), modality="MR")
    off = medden.denoise(vol, method="deep-mr", sigma=10.0, weights=str(path), fidelity_mm="0", precision="fp32")
    np.testing.assert_allclose(off.data, raw, rtol=1e-5, atol=1e-4)
    on = medden.denoise(vol, method="deep-mr", sigma=10.0, weights=str(path), fidelity_mm="none", precision="fp32")
    np.testing.assert_allclose(on.data, tuned, rtol=1e-5, atol=1e-3)
    for bad in ("-1", "nan"):
        with pytest.raises(ParameterError, match="fidelity_mm"):
            medden.denoise(vol, method="deep-mr", sigma=10.0, weights=str(path), fidelity_mm=bad)
    with pytest.raises(ParameterError, match="fidelity_mm.*a number or none"):
        medden.denoise(vol, method="deep-mr", sigma=10.0, weights=str(path), fidelity_mm="abc")


def test_shipped_cards_record_a_validation_tuned_fidelity():
    from medden.models import shipped_path

    for name, domain in (("deep-mr", "power"), ("deep-ct", "linear")):
        card = json.loads(shipped_path(name).with_suffix(".json").read_text())
        fid = card["noise"]["fidelity"]
        assert fid["domain"] == domain and fid["scale_mm"] > 0 and "validation" in fid["tuned_on"]
