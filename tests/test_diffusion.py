"""Diffusion-prior posterior sampling: shapes, seeds, the data-consistency step, the uncertainty map, weights.

Every test builds a tiny untrained prior; none needs the shipped weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import medden
from medden.denoisers import diffusion as dd
from medden.errors import ParameterError
from medden.models import ModelCard, ModelError, Normalisation, save_model
from medden.models.diffusion import build_prior, load_prior, t_for_sigma

TINY = {"channels": (8, 8), "norm_num_groups": 4}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, and do not stall when the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return build_prior(**TINY).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, prior):
    card = ModelCard(name="tiny", architecture=prior.architecture, config={}, modality="MR",
                     normalisation=Normalisation("percentile", 99.9))
    return save_model(prior, card, tmp_path_factory.mktemp("prior") / "tiny.safetensors")


def _phantom(shape=(24, 20, 6)):
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = ((i - shape[0] / 2) ** 2 + (j - shape[1] / 2) ** 2 < (min(shape[:2]) / 2.5) ** 2)
    return np.repeat(np.where(disc, 100.0, 20.0)[:, :, None], shape[2], axis=2).astype(np.float32)


def _noisy(clean, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)


def test_shapes_and_units(prior):
    y = _noisy(_phantom(), 5.0)
    mean, std = dd.posterior(y, 5.0, samples=3, steps=3, prior=prior)
    assert mean.shape == std.shape == y.shape
    assert mean.dtype == std.dtype == np.float32
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    assert abs(float(mean.mean()) - float(y.mean())) < 10  # data units, not network units


def test_a_seed_makes_it_reproducible(prior):
    y = _noisy(_phantom(), 5.0)
    a = dd.posterior(y, 5.0, samples=2, steps=3, seed=7, prior=prior)
    b = dd.posterior(y, 5.0, samples=2, steps=3, seed=7, prior=prior)
    c = dd.posterior(y, 5.0, samples=2, steps=3, seed=8, prior=prior)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("kind", ["gaussian", "rician", "poisson"])
def test_data_consistency_step_lowers_the_misfit(kind):
    """The proximal step moves x̂₀ towards what the likelihood favours: the negative log-likelihood drops."""
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 16, 16, generator=g) * 1.5 - 0.5
    var = torch.full((1, 1, 1), 0.05 ** 2)
    y = clean + 0.05 * torch.randn(clean.shape, generator=g)
    if kind == "rician":
        m = (clean + 1) / 2
        y = 2 * torch.sqrt((m + 0.025 * torch.randn(m.shape, generator=g)) ** 2
                           + (0.025 * torch.randn(m.shape, generator=g)) ** 2) - 1
    lik = dd._Likelihood(kind, y, var, scale=100.0, offset=0.0, poisson_ab=(0.01, 0.5))
    x0 = clean + 0.2 * torch.randn(clean.shape, generator=g)  # a poor prior estimate

    def nll(x):
        if kind == "rician":
            ym, xm, v = (y + 1) / 2, torch.clamp((x + 1) / 2, min=0), var / 4
            u = xm * ym / v
            return float(torch.sum(xm ** 2 / (2 * v) - (torch.log(torch.special.i0e(u)) + u)))
        v = lik.variance(x)
        return float(torch.sum((y - x) ** 2 / (2 * v) + 0.5 * torch.log(v)))

    x1 = lik.prox(x0, sb2=0.05 ** 2, lam=1.0)
    assert nll(x1) < nll(x0)
    assert float(torch.mean((x1 - y) ** 2)) < float(torch.mean((x0 - y) ** 2))
    assert torch.equal(lik.prox(x0, sb2=0.05 ** 2, lam=float("inf")), x0)  # guidance = inf: no data step


def test_sampler_with_data_consistency_fits_the_data_better(prior):
    clean = _phantom()
    y = _noisy(clean, 5.0)
    free, _ = dd.posterior(y, 5.0, samples=2, steps=4, guidance=float("inf"), prior=prior)
    tied, _ = dd.posterior(y, 5.0, samples=2, steps=4, guidance=0.5, prior=prior)
    assert np.mean((tied - y) ** 2) < np.mean((free - y) ** 2)


def test_uncertainty_is_non_negative_and_larger_where_noise_hid_the_truth(prior):
    """Half the volume carries 8× the noise of the other half: the posterior spread must follow."""
    clean = _phantom((24, 24, 8))
    sigma = np.full(clean.shape, 2.0, np.float32)
    sigma[:, 12:] = 16.0
    y = (clean + sigma * np.random.default_rng(1).standard_normal(clean.shape)).astype(np.float32)
    _, std = dd.posterior(y, sigma, samples=6, steps=4, likelihood="gaussian", prior=prior)
    assert (std >= 0).all()
    assert float(np.median(std[:, 12:])) > 2 * float(np.median(std[:, :12]))


def test_ct_values_use_the_weighted_gaussian_with_the_estimated_noise_map(prior):
    """HU data (negative values) → Gaussian likelihood weighted by the CT noise map of a NoiseEstimate."""
    from medden.noise import NoiseEstimate

    clean = _phantom((24, 24, 8)) * 10 - 1000  # air −800, water-ish 0 HU
    sigma = np.full(clean.shape, 10.0, np.float32)
    sigma[:, 12:] = 80.0
    y = (clean + sigma * np.random.default_rng(2).standard_normal(clean.shape)).astype(np.float32)
    est = NoiseEstimate(float(np.median(sigma)), "test", noise_map=sigma)
    mean, std = dd.posterior(y, est.sigma, noise=est, samples=4, steps=3, prior=prior)
    assert np.isfinite(mean).all() and float(np.median(std[:, 12:])) > 2 * float(np.median(std[:, :12]))
    with pytest.raises(ParameterError, match="non-negative"):
        dd.posterior(y, 10.0, likelihood="rician", prior=prior)


def _with_sampler(weights, folder, **sampler):
    """A copy of ``weights`` whose card records the given sampler settings."""
    card = json.loads(weights.with_suffix(".json").read_text())
    card["noise"] = {"sampler": {"guidance": 1.0, **sampler}}
    out = folder / "tuned.safetensors"
    out.write_bytes(weights.read_bytes())
    out.with_suffix(".json").write_text(json.dumps(card))
    return out


def test_the_cards_uncertainty_scale_multiplies_the_spread(tmp_path, weights):
    scaled = _with_sampler(weights, tmp_path, uncertainty_scale=2.5)
    y = _noisy(_phantom(), 5.0)
    _, raw = dd.posterior(y, 5.0, samples=2, steps=2, weights=str(scaled), calibrated=False)
    _, cal = dd.posterior(y, 5.0, samples=2, steps=2, weights=str(scaled))
    np.testing.assert_allclose(cal, 2.5 * raw, rtol=1e-5, atol=1e-6)


def test_one_sample_gives_a_zero_map_and_zero_sigma_returns_the_input(prior):
    y = _noisy(_phantom(), 5.0)
    assert not dd.posterior(y, 5.0, samples=1, steps=2, prior=prior)[1].any()
    mean, std = dd.posterior(y, 0.0, prior=prior)
    assert np.array_equal(mean, y) and not std.any()


def test_slabs_are_blended_into_one_volume(prior):
    y = _noisy(_phantom((20, 20, 11)), 5.0)
    done = []
    mean, std = dd.posterior(y, 5.0, samples=2, steps=3, slab=4, prior=prior, progress=lambda d, n: done.append((d, n)))
    assert mean.shape == y.shape and np.isfinite(mean).all() and (std >= 0).all()
    assert done[-1][0] == done[-1][1] == 3 * 2 * 3  # 3 slabs × 2 samples × 3 steps


def test_slice_axis_follows_the_coarse_spacing(prior):
    assert dd.slice_axis((1.0, 1.0, 1.0)) == 2 and dd.slice_axis((3.0, 1.0, 1.0)) == 0
    y = _noisy(_phantom((6, 20, 22)), 5.0)
    mean, _ = dd.posterior(y, 5.0, spacing=(4.0, 1.0, 1.0), samples=1, steps=2, prior=prior)
    assert mean.shape == y.shape


def test_start_step_matches_the_noise_level(prior):
    t = t_for_sigma(prior, 0.1)
    assert abs(float(prior.sigma_bar(t)) - 0.1) < 0.01
    with pytest.raises(ParameterError, match="trained for"):
        dd.posterior(_phantom(), 90.0, prior=prior)  # 90 % of the scale


def test_registered_method_and_posterior_volume(tmp_path, weights):
    spec = medden.denoisers.get_method("diffusion")
    assert spec.family == "diffusion" and spec.gpu and set(spec.modalities) == {"MR", "CT"}
    assert {"samples", "steps", "seed"} <= {p.name for p in spec.params} and spec.defaults()["samples"] == 8
    vol = medden.Volume(_noisy(_phantom(), 5.0), np.diag([1.0, 1.0, 2.0, 1.0]), modality="MR")
    calls = []
    mean, std = dd.posterior_volume(vol, sigma=5.0, device="cpu", samples=2, steps=2, weights=str(weights),
                                    progress=lambda d, n: calls.append(d))
    assert mean.same_geometry(vol) and std.same_geometry(vol) and calls[-1] == 4
    assert mean.meta["denoise"]["method"] == "diffusion" and std.meta["denoise"]["output"] == "posterior std"
    out = medden.save_volume(std, tmp_path / "std.nii.gz")
    back = medden.load_volume(out)
    assert back.meta["stored_dtype"] == "float32" and np.allclose(back.data, std.data)
    again = medden.denoise(vol, method="diffusion", sigma=5.0, device="cpu", samples=2, steps=2, weights=str(weights))
    assert np.array_equal(again.data, mean.data)


def test_weights_round_trip_and_clear_errors(tmp_path, weights, prior):
    net, card = load_prior(weights)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x, torch.tensor([3, 40])), prior(x, torch.tensor([3, 40])))
    assert card.architecture == "diffusion-unet2.5d"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(weights.read_bytes()[:300])
    broken.with_suffix(".json").write_text(weights.with_suffix(".json").read_text())
    with pytest.raises(ModelError, match="corrupt"):
        load_prior(broken)
    other = tmp_path / "other.safetensors"
    other.write_bytes(weights.read_bytes())
    card_d = json.loads(weights.with_suffix(".json").read_text())
    card_d["config"]["channels"] = [8, 16]
    other.with_suffix(".json").write_text(json.dumps(card_d))
    with pytest.raises(ModelError, match="do not fit"):
        load_prior(other)
    card_d["architecture"] = "conditioned-unet3d"
    other.with_suffix(".json").write_text(json.dumps(card_d))
    with pytest.raises(ModelError, match="not a diffusion prior"):
        load_prior(other)
    with pytest.raises(ModelError, match="not found"):
        load_prior(tmp_path / "missing.safetensors")


def test_the_cards_uncertainty_floor_adds_a_share_of_the_noise_variance(tmp_path, weights):
    floored = _with_sampler(weights, tmp_path, uncertainty_scale=1.5, uncertainty_floor=0.2)
    y = _noisy(_phantom(), 5.0)
    _, raw = dd.posterior(y, 5.0, samples=2, steps=2, weights=str(floored), calibrated=False)
    _, cal = dd.posterior(y, 5.0, samples=2, steps=2, weights=str(floored))
    np.testing.assert_allclose(cal, 1.5 * np.sqrt(raw ** 2 + 0.2 * 5.0 ** 2), rtol=1e-4, atol=1e-4)


def test_uncertainty_floor_fit_recovers_the_variance_model():
    from medden.training.diffusion import fit_uncertainty_floor

    rng = np.random.default_rng(0)
    runs = []
    for sigma in (3.0, 6.0):  # true error variance: 2·(s² + 0.5·σ²)
        s = rng.uniform(0.2, 4.0, 40000) * sigma / 3
        err = np.abs(rng.normal(size=s.size) * np.sqrt(2 * (s ** 2 + 0.5 * sigma ** 2)))
        runs.append((err, s, sigma))
    assert fit_uncertainty_floor(runs) == pytest.approx(0.5, rel=0.15)
    assert fit_uncertainty_floor([(np.abs(rng.normal(size=s.size)) * s, s, 3.0)]) < 0.05  # spread explains the error


def test_shipped_prior_is_chosen_by_modality(tmp_path, monkeypatch):
    import medden.models as models
    from medden.models.diffusion import SHIPPED_PRIORS, shipped_prior_path

    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    (tmp_path / SHIPPED_PRIORS["MR"]).write_bytes(b"mr")
    assert shipped_prior_path("CT").name == SHIPPED_PRIORS["MR"]  # no CT prior: the MR one
    (tmp_path / SHIPPED_PRIORS["CT"]).write_bytes(b"ct")
    assert shipped_prior_path("CT").name == SHIPPED_PRIORS["CT"] and shipped_prior_path("MR").name == SHIPPED_PRIORS["MR"]
    assert shipped_prior_path("PT").name == SHIPPED_PRIORS["MR"]


def test_ct_calibration_on_a_low_dose_slab(prior):
    from medden.phantoms import water_cylinder
    from medden.training.diffusion import CT_OFFSET, CT_SCALE, SliceVolume, calibrate_sampler

    cyl = water_cylinder((96, 96, 6), spacing=(1.0, 1.0, 2.0))
    z = (2 * (cyl.volume.data - CT_OFFSET) / CT_SCALE - 1).astype(np.float32)
    rec = calibrate_sampler(prior, [SliceVolume("cylinder", z, (1.0, 1.0, 2.0))], guidances=(1.0,), samples=2,
                            steps=2, crop=(48, 48, 6), modality="CT", log=lambda s: None)
    assert rec["uncertainty_floor"] >= 0 and rec["uncertainty_scale"] > 0
    assert rec["coverage_2sd_after"] == pytest.approx(0.954, abs=0.01)
    assert "low-dose CT" in rec["fitted_on"]
