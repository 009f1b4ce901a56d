"""PSNR/SSIM/RMSE/MAE: agreement with scikit-image and MONAI, identities, masks and bad input."""
import numpy as np
import pytest

from medden.errors import InputError
from medden.metrics import mae, psnr, rmse, ssim_3d
from medden.volume import Volume


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(1)
    i, j, k = np.mgrid[0:24, 0:26, 0:20]
    ref = 100.0 * ((i - 12) ** 2 + (j - 13) ** 2 + (k - 10) ** 2 < 60) + 40.0 * (i > 16)
    est = ref + rng.normal(0, 8, ref.shape)
    return ref.astype(np.float32), est.astype(np.float32)


def test_psnr_agrees_with_skimage_and_monai(pair):
    torch = pytest.importorskip("torch")
    from monai.metrics import PSNRMetric
    from skimage.metrics import peak_signal_noise_ratio

    ref, est = pair
    ours = psnr(ref, est, data_range=200.0)
    assert ours == pytest.approx(peak_signal_noise_ratio(ref, est, data_range=200.0), abs=1e-4)
    t = lambda a: torch.from_numpy(a)[None, None]  # noqa: E731
    assert ours == pytest.approx(float(PSNRMetric(max_val=200.0)(t(est), t(ref)).item()), abs=1e-3)


def test_ssim_agrees_with_skimage_and_monai(pair):
    torch = pytest.importorskip("torch")
    from monai.metrics import SSIMMetric
    from skimage.metrics import structural_similarity

    ref, est = pair
    ours = ssim_3d(ref, est, data_range=140.0)
    sk = structural_similarity(ref.astype(np.float64), est.astype(np.float64), data_range=140.0,
                               gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ours == pytest.approx(sk, abs=1e-6)
    t = lambda a: torch.from_numpy(a)[None, None]  # noqa: E731
    mo = SSIMMetric(spatial_dims=3, data_range=140.0, kernel_type="gaussian", win_size=11, kernel_sigma=1.5)
    assert ours == pytest.approx(float(mo(t(est), t(ref)).item()), abs=1e-4)


def test_ssim_of_identical_images_is_one(pair):
    ref, _ = pair
    assert ssim_3d(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert ssim_3d(ref, ref, spacing=(0.7, 0.7, 3.0)) == pytest.approx(1.0, abs=1e-12)


def test_ssim_window_is_the_same_in_mm_on_anisotropic_grids(pair):
    ref, est = pair
    _, smap = ssim_3d(ref, est, spacing=(1.0, 1.0, 3.0), data_range=140.0, return_map=True)
    # a coarser k axis gets a narrower window in voxels: the result differs from the isotropic one
    assert ssim_3d(ref, est, spacing=(1.0, 1.0, 3.0), data_range=140.0) != pytest.approx(
        ssim_3d(ref, est, data_range=140.0), abs=1e-4)
    assert smap.shape == ref.shape


def test_rmse_mae_and_masks():
    ref = np.zeros((4, 4, 4))
    est = ref.copy()
    est[0] = 3.0
    mask = np.zeros(ref.shape, bool)
    mask[0] = True
    assert rmse(ref, est) == pytest.approx(1.5)
    assert mae(ref, est) == pytest.approx(0.75)
    assert rmse(ref, est, mask) == pytest.approx(3.0)
    assert psnr(ref, est, ~mask, data_range=1.0) == float("inf")
    assert psnr(ref, est, mask, data_range=300.0) == pytest.approx(40.0)


def test_bad_input_names_the_problem():
    a = np.zeros((4, 4, 4))
    with pytest.raises(InputError, match="shape mismatch.*\\(4, 4, 4\\).*\\(4, 4, 5\\)"):
        psnr(a, np.zeros((4, 4, 5)), data_range=1.0)
    with pytest.raises(InputError, match="mask has shape"):
        rmse(a, a, mask=np.ones((2, 2, 2)))
    with pytest.raises(InputError, match="selects no voxel"):
        rmse(a, a, mask=np.zeros((4, 4, 4)))
    with pytest.raises(InputError, match="constant"):
        psnr(a, a + 1)
    v1 = Volume(a, np.diag([1.0, 1.0, 1.0, 1.0]))
    v2 = Volume(a, np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="another geometry"):
        ssim_3d(v1, v2, data_range=1.0)
