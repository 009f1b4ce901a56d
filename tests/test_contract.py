"""The one denoiser contract, the one registry/parameter type, the one normalisation, licence-clean ``auto``, light
imports, and the parameters and model files that must be refused with one clear error (issues 12 and 14)."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

import medden
from medden import Volume
from medden.denoisers import Denoised, default_method, explain_auto, get_method, list_methods
from medden.errors import InputError, ModelError, ParameterError
from medden.noise import NoiseEstimate, as_noise
from medden.registry import Param, Registry, Spec, parse_assignments


def _volume(shape=(24, 24, 12), modality="MR", sigma=5.0, seed=0):
    rng = np.random.default_rng(seed)
    x = np.full(shape, 100.0, np.float32)
    x[6:18, 6:18] = 300.0
    return Volume(x + rng.normal(0, sigma, shape).astype(np.float32), np.eye(4), modality=modality)


# ---------------------------------------------------------------------------------------------------------------------
# one contract
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gaussian", "tv", "nlm", "wavelet"])
def test_every_denoiser_takes_a_noise_estimate_and_returns_denoised(method):
    vol = _volume()
    spec = get_method(method)
    out = spec.fn(vol.data, NoiseEstimate.given(5.0), spacing=vol.spacing, modality="MR", device="cpu",
                  progress=None, **spec.defaults())
    assert isinstance(out, Denoised) and out.mean.shape == vol.shape and out.std is None
    via_volume = medden.denoise(vol, method=method, sigma=5.0)
    np.testing.assert_array_equal(via_volume.data, out.mean)


def test_return_std_gives_none_for_methods_without_one():
    out, std = medden.denoise(_volume(), method="gaussian", sigma=5.0, return_std=True)
    assert isinstance(out, Volume) and std is None
    assert isinstance(medden.denoise(_volume(), method="gaussian", sigma=5.0), Volume)


def test_the_registry_flags_and_capture_variable_are_gone():
    import medden.denoisers.diffusion as dd

    assert not hasattr(dd, "_CAPTURE")
    for spec in list_methods():
        assert not hasattr(spec, "uses_noise_estimate") and not hasattr(spec, "uses_modality")
        names = list(inspect.signature(spec.fn).parameters)
        assert names[:2] == ["data", "noise"], spec.name
        assert {"spacing", "modality", "device", "progress"} <= set(names), spec.name


def test_noise_estimate_given_and_its_source():
    given = as_noise(4.0)
    assert given.sigma == 4.0 and given.source == "given" and not given.estimated and given.level == 4.0
    noise_map = np.full((4, 4, 4), 2.0, np.float32)
    mapped = NoiseEstimate.given(noise_map)
    assert mapped.sigma == 2.0 and mapped.level is mapped.noise_map
    assert as_noise(mapped) is mapped
    estimated = medden.denoisers.noise_of(_volume())
    assert estimated.estimated and estimated.source.startswith("estimated (")
    for bad in (-1.0, float("nan"), "three"):
        with pytest.raises(ParameterError, match="sigma"):
            NoiseEstimate.given(bad)


# ---------------------------------------------------------------------------------------------------------------------
# one registry and parameter type
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("param, text, expected", [
    (Param("n", 3), "5", 5),
    (Param("w", 1.0), "0.5", 0.5),
    (Param("on", True), "no", False),
    (Param("name", "db2"), "haar", "haar"),
    (Param("f", None), "none", None),
    (Param("f", None), "2.5", 2.5),
    (Param("k", None, kind=int), "7", 7),
])
def test_param_parses_cli_text(param, text, expected):
    assert param.parse(text) == expected


@pytest.mark.parametrize("param, value, match", [
    (Param("n", 3), "2.5", "needs an integer"),
    (Param("n", 3), 2.5, "needs an integer"),
    (Param("n", 3, minimum=1), 0, "must be ≥ 1"),
    (Param("x", 1.0), float("nan"), "finite"),
    (Param("x", 1.0, maximum=2.0), 3.0, "must be ≤ 2"),
    (Param("m", "a", choices=("a", "b")), "c", "must be one of"),
    (Param("on", True), "maybe", "true or false"),
])
def test_param_refuses_bad_values(param, value, match):
    with pytest.raises(ParameterError, match=match):
        param.parse(value)


def test_parse_assignments():
    assert parse_assignments(["weight=0.5", " iterations = 50 ", "name=a=b"]) == {
        "weight": "0.5", "iterations": "50", "name": "a=b"}
    assert parse_assignments(None) == {}
    for bad in (["weight"], ["=3"]):
        with pytest.raises(ParameterError, match="NAME=VALUE"):
            parse_assignments(bad)


def test_a_generic_registry():
    reg = Registry("widget")
    reg.register(Spec(name="w", fn=len, params=(Param("size", 2, minimum=1), Param("need", None, required=True)),
                      label="widget"))
    assert reg.resolve_params("w", {"size": "3", "need": "1"}) == {"size": 3, "need": 1.0}
    with pytest.raises(ParameterError, match="unknown widget 'x'.*known: w"):
        reg.get("x")
    with pytest.raises(ParameterError, match="needs need"):
        reg.resolve_params("w", {})
    with pytest.raises(RuntimeError, match="twice"):
        reg.register(Spec(name="w", fn=len))


def test_noise_models_and_denoisers_share_the_parameter_type():
    from medden.noise import get_model, list_models

    for spec in list_models() + list_methods():
        assert all(type(p) is Param for p in spec.params), spec.name
    spec = get_model("lowdose-ct")
    assert spec.resolve_params({"dose": "0.25", "n_views": "288"})["n_views"] == 288
    with pytest.raises(ParameterError, match="noise model 'lowdose-ct' has no parameter 'sigma'"):
        spec.resolve_params({"dose": 0.5, "sigma": 3})


def test_noise_model_defaults_match_the_functions():
    """The registry's defaults are the functions' own (where a function has one), so a model behaves the same called
    directly or through simulate."""
    from medden.noise import list_models

    import importlib

    for spec in list_models():
        sig = inspect.signature(getattr(importlib.import_module(spec.fn.module), spec.fn.__name__))
        for p in spec.params:
            has_default = p.name in sig.parameters and sig.parameters[p.name].default is not inspect.Parameter.empty
            if has_default and p.default is not None:
                assert sig.parameters[p.name].default == p.default, (spec.name, p.name)


# ---------------------------------------------------------------------------------------------------------------------
# licence-clean auto (issue 14 item 6)
# ---------------------------------------------------------------------------------------------------------------------
def test_auto_is_permissive_and_explained():
    for modality in ("CT", "MR", "PT", "OT"):
        spec = default_method(modality)
        assert spec.permissive and spec.name not in ("bm3d", "bm4d"), modality
        text = explain_auto(modality)
        assert spec.name in text and "licen" in text
    ct = default_method("CT").name  # ranking.json: deep-ct 0.6.0 −3.45 dB vs BM4D over 5 CT cases, TV −3.69, NLM −3.87
    assert ct == ("deep-ct" if get_method("deep-ct").available else "nlm")
    mr = default_method("MR").name
    assert mr == ("deep-mr" if get_method("deep-mr").available else "nlm")
    assert "non-commercial" in explain_auto("MR") and "bm4d" in explain_auto("MR")


def test_methods_list_licence_modalities_and_speed():
    described = {s.name: s.describe() for s in list_methods()}
    assert described["bm4d"]["licence"].startswith("non-commercial") and not described["bm4d"]["permissive"]
    assert described["nlm"]["licence"] == "Apache-2.0" and described["nlm"]["voxels_per_second"] > 0
    assert described["deep-mr"]["licence"] and described["deep-mr"]["modalities"] == ["MR"]
    assert json.loads(json.dumps(described))  # JSON-ready


def test_named_block_matching_still_runs_and_keeps_mr_magnitudes_non_negative():
    rng = np.random.default_rng(3)
    clean = np.zeros((32, 32, 12), np.float32)
    clean[8:24, 8:24] = 100.0
    noisy = np.abs(clean + rng.normal(0, 20.0, clean.shape) + 1j * rng.normal(0, 20.0, clean.shape))
    out = medden.denoise(Volume(noisy.astype(np.float32), np.eye(4), modality="MR"), method="bm4d", sigma=20.0)
    assert out.meta["denoise"]["method"] == "bm4d" and float(out.data.min()) >= 0


# ---------------------------------------------------------------------------------------------------------------------
# light imports
# ---------------------------------------------------------------------------------------------------------------------
def test_registries_estimates_and_cards_do_not_import_torch():
    code = ("import sys; import medden.noise, medden.noise.estimate, medden.denoisers, medden.registry, "
            "medden.models.card, medden.conventions; from medden.denoisers.registry import list_methods; "
            "from medden.noise import list_models; list_models(); [s.describe() for s in list_methods()]; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------------------------------
# parameters and inputs refused with one clear error (issue 14, reliability list)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, params, match", [
    ("gaussian", {"fwhm_mm": float("nan")}, "fwhm_mm.*finite"),
    ("gaussian", {"fwhm_mm": -1.0}, "fwhm_mm.*≥ 0"),
    ("nlm", {"patch_size": 0}, "patch_size.*≥ 1"),
    ("nlm", {"patch_distance": -2}, "patch_distance"),
    ("tv", {"iterations": -5}, "iterations.*≥ 0"),
    ("tv", {"weight": float("inf")}, "weight.*finite"),
    ("wavelet", {"levels": -1}, "levels.*≥ 1"),
    ("wavelet", {"wavelet": "nonsense"}, "wavelet"),
    ("diffusion", {"samples": 10**9}, "samples.*≤ 256"),
    ("diffusion", {"samples": 0}, "samples.*≥ 1"),
    ("deep-mr", {"fidelity_mm": -1}, "fidelity_mm"),
    ("deep-mr", {"overlap": 1.5}, "overlap"),
])
def test_bad_parameters_are_one_clear_error(method, params, match):
    with pytest.raises(ParameterError, match=match):
        medden.denoise(_volume(), method=method, sigma=5.0, **params)


@pytest.mark.parametrize("make, kwargs, error, match", [
    (lambda: _volume(), {"method": "gaussian", "sigma": 1e300}, ParameterError, "not a noise level"),
    (lambda: _volume(), {"method": "gaussian", "sigma": float("inf")}, ParameterError, "sigma"),
    (lambda: _volume((3, 3, 3)), {"method": "bm4d", "sigma": 5.0}, ParameterError, "too small for bm4d"),
    (lambda: _volume((8, 8, 8)), {"method": "bm3d", "sigma": 5.0}, ParameterError, "too small for bm3d"),
    (lambda: _volume((2, 2, 2)), {"method": "nlm", "sigma": 5.0}, ParameterError, "smaller than nlm"),
    (lambda: Volume(np.full((8, 8, 8), 3e38, np.float32), np.eye(4)), {"method": "gaussian", "sigma": 1.0},
     InputError, "too large"),
])
def test_bad_inputs_are_one_clear_error(make, kwargs, error, match):
    with pytest.raises(error, match=match):
        medden.denoise(make(), **kwargs)


def test_tiny_volume_with_permissive_methods_still_works():
    out = medden.denoise(_volume((3, 3, 3)), method="gaussian", sigma=5.0)
    assert out.shape == (3, 3, 3)


@pytest.mark.parametrize("params, match", [
    ({"counts_per_unit": float("inf")}, "counts_per_unit.*finite"),
    ({"counts_per_unit": float("nan")}, "counts_per_unit.*finite"),
])
def test_simulate_refuses_non_finite_physics(params, match):
    vol = Volume(np.full((8, 8, 8), 10.0, np.float32), np.eye(4), modality="PT")
    with pytest.raises(ParameterError, match=match):
        medden.noise.simulate(vol, "poisson", **params)


# ---------------------------------------------------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------------------------------------------------
def _small_model(tmp_path):
    import torch

    from medden.models import ModelCard, Normalisation, build_network, save_model

    torch.manual_seed(0)
    net = build_network("conditioned-dncnn3d", depth=3, width=4)
    card = ModelCard(name="t", architecture=net.architecture, config={}, modality="MR",
                     normalisation=Normalisation("percentile"))
    return save_model(net, card, tmp_path / "m.safetensors")


def test_weights_that_differ_from_the_card_hash_are_refused(tmp_path):
    from medden.models import load_model

    path = _small_model(tmp_path)
    load_model(path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # one bit of the last tensor value: still a valid safetensors file
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(path)


@pytest.mark.parametrize("change, match", [
    ({"normalisation": {"kind": "fixed", "scale": 0.0}}, "scale must be > 0"),
    ({"normalisation": {"kind": "fixed", "scale": float("nan")}}, "finite"),
    ({"normalisation": {"kind": "percentile", "percentile": 150}}, "percentile"),
    ({"normalisation": "x"}, "normalisation"),
    ({"config": {"depth": 3, "width": 10**9}}, "outside"),
    ({"config": {"depth": -3, "width": 4}}, "outside"),
    ({"config": {"depth": [3, "x", {}], "width": 4}}, "config"),
    ({"config": {"depth": 3, "width": 4, "nonsense": 1}}, "bad configuration|does not build"),
])
def test_absurd_cards_are_a_clear_model_error(tmp_path, change, match):
    from medden.models import load_model

    path = _small_model(tmp_path)
    card = json.loads(path.with_suffix(".json").read_text())
    card.update(change)
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=match):
        load_model(path)


# ---------------------------------------------------------------------------------------------------------------------
# one normalisation, one CT scaling
# ---------------------------------------------------------------------------------------------------------------------
def test_normalisation_fits_applies_and_inverts():
    from medden.models import Normalisation

    x = np.random.default_rng(0).uniform(0, 200, (16, 16, 8)).astype(np.float32)
    x[:4] = 0
    norm = Normalisation("percentile", 99.9).fitted(x)
    assert norm.kind == "fixed" and norm.offset == 0
    assert norm.scale == pytest.approx(np.percentile(x[x != 0], 99.9))
    np.testing.assert_allclose(norm.invert(norm.apply(x)), x, rtol=1e-6, atol=1e-4)
    assert norm.apply_sigma(norm.scale) == pytest.approx(1.0)
    assert norm.fitted(3 * x) is norm  # a fitted (fixed) normalisation stays as it is
    assert Normalisation("percentile").fitted(2 * x).scale == pytest.approx(2 * norm.scale)
    assert Normalisation("percentile").fitted(np.zeros((4, 4, 4))).scale == 1.0
    shifted = Normalisation("percentile").fitted(x - 1000.0, shift_negative=True)
    assert shifted.offset == -1000.0


def test_one_ct_scaling_for_the_unet_and_the_diffusion_prior():
    from medden.conventions import CT_HU_PER_UNIT
    from medden.models import CT_NORMALISATION, CT_PRIOR_NORMALISATION, read_card, shipped_path
    from medden.models.diffusion import shipped_prior_path

    hu = np.array([-1000.0, 0.0, 1000.0])
    np.testing.assert_allclose(CT_NORMALISATION.apply(hu), hu / CT_HU_PER_UNIT)
    np.testing.assert_allclose(2 * CT_PRIOR_NORMALISATION.apply(hu) - 1, hu / CT_HU_PER_UNIT)  # the prior's z
    if shipped_path("deep-ct").is_file():
        assert read_card(shipped_path("deep-ct")).normalisation == CT_NORMALISATION
    if shipped_prior_path("CT").is_file():
        assert read_card(shipped_prior_path("CT")).normalisation == CT_PRIOR_NORMALISATION


def test_one_noise_power_spectrum_type():
    from medden.metrics.nps import NoisePowerSpectrum, noise_power_spectrum
    from medden.noise import ct_nps

    rng = np.random.default_rng(1)
    noise = rng.normal(0, 10, (64, 64, 4)).astype(np.float32)
    a = ct_nps(noise, (0.5, 0.5, 1.0), roi_size=32, mask=np.ones(noise.shape, bool))
    b = noise_power_spectrum(noise, spacing=(0.5, 0.5, 1.0), roi_size=32, overlap=0, detrend="plane")
    assert type(a) is NoisePowerSpectrum and type(b) is NoisePowerSpectrum
    np.testing.assert_allclose(a.values, b.values)
    assert a.variance == pytest.approx(100.0, rel=0.1) and a.integral == a.variance
    f, radial = a.radial()
    np.testing.assert_array_equal(f, a.frequencies)
    assert a.frequencies[-1] == pytest.approx(1.0, abs=1 / 16)  # Nyquist of 0.5 mm pixels
