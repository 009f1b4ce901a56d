"""Noise power spectrum (AAPM TG-233) and edge MTF (ISO 12233 slanted edge) against theory."""
import numpy as np
import pytest
from scipy import ndimage

from medden.errors import InputError
from medden.metrics import edge_mtf, gaussian_mtf, method_noise, noise_power_spectrum


def test_nps_of_white_noise_is_flat_and_integrates_to_its_variance():
    rng = np.random.default_rng(3)
    sigma, sp = 12.0, (0.6, 0.6, 2.0)
    nps = noise_power_spectrum(rng.normal(0, sigma, (128, 128, 12)), spacing=sp, roi_size=64)
    assert nps.integral == pytest.approx(sigma**2, rel=0.05)
    expected = sigma**2 * sp[0] * sp[1]  # white noise: NPS = σ² Δx Δy (HU² mm²)
    body = nps.nps[1:]  # the DC bin is ~0 after mean removal
    assert np.all(np.abs(body / expected - 1) < 0.15)
    assert abs(body.mean() / expected - 1) < 0.05
    assert nps.frequencies[-1] == pytest.approx(0.5 / sp[0], abs=1.0 / (64 * sp[0]))


def test_nps_of_smoothed_noise_moves_to_low_frequencies_and_keeps_parseval():
    rng = np.random.default_rng(4)
    noise = ndimage.gaussian_filter(rng.normal(0, 10, (128, 128, 8)), (1.5, 1.5, 0))
    nps = noise_power_spectrum(noise, spacing=(0.5, 0.5, 1.0), roi_size=64, overlap=0)
    assert nps.integral == pytest.approx(noise.var(), rel=0.05)
    white = noise_power_spectrum(rng.normal(0, 10, (128, 128, 8)), spacing=(0.5, 0.5, 1.0), roi_size=64)
    assert nps.mean_frequency < 0.5 * white.mean_frequency


def test_nps_mask_selects_rois_and_rejects_small_regions():
    rng = np.random.default_rng(5)
    mask = np.zeros((96, 96, 4), bool)
    mask[10:80, 10:80] = True
    nps = noise_power_spectrum(rng.normal(0, 5, mask.shape), mask, roi_size=32)
    assert nps.n_rois == 4 * 9
    with pytest.raises(InputError, match="no 64×64 ROI fits"):
        noise_power_spectrum(rng.normal(0, 5, mask.shape), mask, roi_size=64)


def _blurred_slanted_edge(sigma_mm, sp=0.5, n=96, angle_deg=5.0, slices=4):
    i, j = np.mgrid[0:n, 0:n]
    a = np.deg2rad(angle_deg)
    step = np.where((i - n / 2) * np.cos(a) - (j - n / 2) * np.sin(a) > 0, 1000.0, 0.0)
    return np.repeat(ndimage.gaussian_filter(step, sigma_mm / sp)[:, :, None], slices, axis=2)


@pytest.mark.parametrize("sigma_mm", [0.8, 1.5])
def test_mtf_of_gaussian_blurred_edge_matches_analytic_to_the_10_percent_point(sigma_mm):
    img = _blurred_slanted_edge(sigma_mm)
    r = edge_mtf(img, spacing=(0.5, 0.5, 2.0))
    assert abs(r.edge_angle_deg) == pytest.approx(5.0, abs=0.2)
    up_to = r.frequencies <= r.mtf10
    ana = gaussian_mtf(r.frequencies[up_to], sigma_mm)
    assert np.max(np.abs(r.mtf[up_to] / ana - 1)) < 0.05
    f10 = np.sqrt(np.log(10) / 2) / (np.pi * sigma_mm)
    f50 = np.sqrt(np.log(2) / 2) / (np.pi * sigma_mm)
    assert r.mtf10 == pytest.approx(f10, rel=0.05)
    assert r.mtf50 == pytest.approx(f50, rel=0.05)


def test_mtf_rejects_a_flat_roi():
    with pytest.raises(InputError, match="no edge"):
        edge_mtf(np.ones((20, 20, 2)))


def test_method_noise_sees_removed_structure():
    rng = np.random.default_rng(6)
    ref = np.zeros((40, 40, 20))
    ref[10:30, 10:30, 5:15] = 100.0
    noisy = ref + rng.normal(0, 10, ref.shape)
    ideal = method_noise(noisy, ref, ref)
    blurred = method_noise(noisy, ndimage.gaussian_filter(noisy, 2.0), ref)
    assert ideal.noise_correlation == pytest.approx(1.0) and abs(ideal.structure_correlation) < 0.05
    assert abs(np.array(ideal.autocorrelation_lag1)).max() < 0.05 and ideal.spectral_flatness > 0.5
    assert blurred.structure_correlation > 0.2
