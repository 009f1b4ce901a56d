"""Statistical checks of the noise models against theory (each can fail), reproducibility and input errors."""
import numpy as np
import pytest
import torch
from scipy import stats

from medden.errors import InputError, ParameterError
from medden.noise import (ct_nps, gaussian, lowdose_ct, lowdose_ct_insertion, noncentral_chi, poisson,
                          poisson_gaussian, rician)
from medden.phantoms import water_cylinder

N = (200, 100, 20)  # 400k samples: the 2 % checks hold with a wide margin


@pytest.mark.parametrize("snr", [0.0, 1.0, 3.0, 10.0])
def test_rician_moments_match_theory(snr):
    sigma = 2.0
    y = rician(np.full(N, snr * sigma), sigma=sigma, generator=1)
    b = snr
    assert y.mean() == pytest.approx(stats.rice.mean(b, scale=sigma), rel=0.02)
    assert (y.astype(np.float64) ** 2).mean() == pytest.approx((snr * sigma) ** 2 + 2 * sigma ** 2, rel=0.02)


@pytest.mark.parametrize("coils,snr", [(4, 0.0), (4, 2.0), (8, 5.0), (16, 1.0)])
def test_noncentral_chi_moments_match_theory(coils, snr):
    sigma = 1.5
    a = snr * sigma
    y = noncentral_chi(np.full(N, a), sigma=sigma, coils=coils, generator=2).astype(np.float64)
    chi2 = stats.ncx2(df=2 * coils, nc=max(snr ** 2, 1e-12))
    mean = sigma * chi2.expect(np.sqrt)
    assert y.mean() == pytest.approx(mean, rel=0.02)
    assert (y ** 2).mean() == pytest.approx(a ** 2 + 2 * coils * sigma ** 2, rel=0.02)


@pytest.mark.parametrize("level", [0.5, 4.0, 50.0])
def test_poisson_mean_equals_variance(level):
    y = poisson(np.full(N, level), counts_per_unit=1.0, generator=3).astype(np.float64)
    assert y.mean() == pytest.approx(level, rel=0.02)
    assert y.var() == pytest.approx(y.mean(), rel=0.02)


def test_poisson_gaussian_variance_is_affine():
    y = poisson_gaussian(np.full(N, 20.0), counts_per_unit=4.0, sigma=1.5, generator=4).astype(np.float64)
    assert y.mean() == pytest.approx(20.0, rel=0.02)
    assert y.var() == pytest.approx(20.0 / 4.0 + 1.5 ** 2, rel=0.02)


def test_gaussian_sigma_and_types():
    x = np.zeros(N, np.float32)
    y = gaussian(x, sigma=3.0, generator=0)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == N
    assert y.std() == pytest.approx(3.0, rel=0.02)
    t = gaussian(torch.zeros(4, 5, 6, dtype=torch.float64), sigma=1.0, generator=0)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type == "cpu"


@pytest.mark.parametrize("fn,kw", [(gaussian, {"sigma": 1.0}), (poisson, {"counts_per_unit": 3.0}),
                                   (rician, {"sigma": 1.0}), (noncentral_chi, {"sigma": 1.0, "coils": 4})])
def test_same_seed_same_output(fn, kw):
    x = np.abs(np.random.default_rng(0).normal(5, 1, (16, 16, 8))).astype(np.float32)
    assert np.array_equal(fn(x, generator=7, **kw), fn(x, generator=7, **kw))
    assert not np.array_equal(fn(x, generator=7, **kw), fn(x, generator=8, **kw))


def test_bad_parameters_raise():
    with pytest.raises(InputError, match="non-negative"):
        poisson(np.full((4, 4, 4), -1.0), counts_per_unit=1.0)
    with pytest.raises(ParameterError, match="counts"):
        poisson(np.ones((4, 4, 4)), counts_per_unit=0.0)
    with pytest.raises(ParameterError, match="exactly one"):
        rician(np.ones((4, 4, 4)))
    with pytest.raises(ParameterError, match="coils"):
        noncentral_chi(np.ones((4, 4, 4)), sigma=1.0, coils=0)


# ---------------------------------------------------------------- low-dose CT -------------------------------------
DOSES = (1.0, 0.5, 0.25, 0.1)
FAST = {"n_views": 288}  # half the default views: 4× less work, same noise level (photons per view scale up)


@pytest.fixture(scope="module")
def cylinder():
    return water_cylinder((128, 128, 4), (1.0, 1.0, 2.0), inserts={})


@pytest.fixture(scope="module")
def lowdose_runs(cylinder):
    v = cylinder.volume
    return {d: lowdose_ct(v.data, dose=d, spacing_mm=v.spacing, generator=10) for d in DOSES}


def test_lowdose_noise_scales_as_inverse_sqrt_dose(cylinder, lowdose_runs):
    water = cylinder.rois["water"]
    sd = {d: float(lowdose_runs[d][water].std()) for d in DOSES}
    for d in DOSES[1:]:
        assert sd[d] / sd[1.0] == pytest.approx(d ** -0.5, rel=0.10), sd


def test_lowdose_mean_hu_is_unbiased(cylinder, lowdose_runs):
    water = cylinder.rois["water"]
    for d in DOSES:
        assert abs(float(lowdose_runs[d][water].mean())) < 2.0


def test_lowdose_nps_is_fbp_like(cylinder, lowdose_runs):
    v = cylinder.volume
    nps = ct_nps(lowdose_runs[0.25], v.spacing, roi_size=32, mask=cylinder.rois["water"], reference=v.data)
    f, radial = nps.radial()
    peak = int(np.argmax(radial))
    assert radial[0] < 0.2 * radial[peak]  # vanishing at zero frequency: ramp-filtered noise
    assert 0.2 < f[peak] / f[-1] < 0.9  # peaked at mid frequency
    assert radial[-1] < 0.8 * radial[peak]  # rolled off by the apodisation towards Nyquist


def test_lowdose_full_reconstruction_and_parallel_geometry(cylinder, lowdose_runs):
    v, water = cylinder.volume, cylinder.rois["water"]
    full = lowdose_ct(v.data, dose=0.25, spacing_mm=v.spacing, generator=11, keep_resolution=False, **FAST)
    assert abs(float(full[water].mean())) < 2.0
    assert float(full[water].std()) == pytest.approx(float(lowdose_runs[0.25][water].std()), rel=0.10)
    par = lowdose_ct(v.data, dose=0.25, spacing_mm=v.spacing, generator=11, geometry="parallel", n_views=180,
                     filter="hann", projection_downsample=2)
    assert abs(float(par[water].mean())) < 2.0 and 1.0 < float(par[water].std()) < 100


def test_insertion_reaches_the_target_dose(cylinder, lowdose_runs):
    """Yu et al. 2012: full-dose scan + missing noise has the noise of a direct low-dose scan."""
    v, water = cylinder.volume, cylinder.rois["water"]
    lowered = lowdose_ct_insertion(lowdose_runs[1.0], dose=0.25, spacing_mm=v.spacing, generator=12, **FAST)
    assert float(lowered[water].std()) == pytest.approx(float(lowdose_runs[0.25][water].std()), rel=0.10)
    assert np.array_equal(lowdose_ct_insertion(v.data, dose=1.0, spacing_mm=v.spacing, generator=0), v.data)


def test_lowdose_same_seed_same_output(cylinder):
    v = cylinder.volume
    a = lowdose_ct(v.data[:64, :64, :2], dose=0.5, spacing_mm=v.spacing, generator=5, **FAST)
    b = lowdose_ct(v.data[:64, :64, :2], dose=0.5, spacing_mm=v.spacing, generator=5, **FAST)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("data,kw,error,match", [
    (np.zeros((32, 32)), {"dose": 0.5}, InputError, "3D"),
    (np.full((32, 32, 2), 100.0), {"dose": 0.5}, InputError, "Hounsfield"),
    (np.full((32, 32, 2), -1000.0), {"dose": 0.0}, ParameterError, "dose"),
    (np.full((32, 32, 2), -1000.0), {"dose": 1.5}, ParameterError, "dose"),
    (np.full((32, 32, 2), -1000.0), {"dose": 0.5, "geometry": "cone"}, ParameterError, "geometry"),
])
def test_lowdose_bad_input(data, kw, error, match):
    with pytest.raises(error, match=match):
        lowdose_ct(data, spacing_mm=(1.0, 1.0, 1.0), **kw)
