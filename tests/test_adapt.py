"""Per-scan adaptation (``--param adapt_seconds=N``): a self-supervised fine-tune of a copy of the model on the scan;
bad input is one clear line and nothing written."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medden
from medden.errors import ParameterError
from medden.models import build_network
from medden.phantoms import shepp_logan_3d
from medden.denoisers.adapt import adapt_network, check_adaptable


def test_adaptation_fine_tunes_a_copy_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = build_network("conditioned-unet3d", features=[4, 4, 8, 8, 16, 4]).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clean = shepp_logan_3d((48, 48, 48)).data.astype(np.float32)
    noisy = np.asarray(medden.noise.rician(clean, sigma=0.05, generator=0), np.float32)
    logs: list[str] = []
    adapted = adapt_network(net, noisy, 0.05, seconds=1.0, log=logs.append)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the original is untouched
    assert any(not torch.equal(before[k], v) for k, v in adapted.state_dict().items())
    assert not adapted.training and "steps of" in logs[0]


@pytest.mark.parametrize("data, sigma, seconds, match", [
    (np.random.default_rng(0).random((16, 40, 40)), 0.1, 5.0, "too small"),
    (np.ones((40, 40, 40)), 0.1, 5.0, "constant"),
    (np.random.default_rng(0).random((40, 40, 40)), 0.0, 5.0, "positive noise level"),
    (np.random.default_rng(0).random((40, 40, 40)), 0.1, float("nan"), "seconds"),
])
def test_adaptation_refuses_what_it_cannot_adapt_on(data, sigma, seconds, match):
    with pytest.raises(ParameterError, match=match):
        check_adaptable(data, sigma, seconds)


def test_cli_adaptation_on_a_too_small_scan_is_one_line_and_writes_nothing(tmp_path, capsys):
    from medden.cli import main

    v = shepp_logan_3d((40, 40, 16))
    src = tmp_path / "small.nii.gz"
    medden.save_volume(medden.Volume((v.data * 500 + 10).astype(np.float32), v.affine, modality="MR"), src)
    out = tmp_path / "out.nii.gz"
    code = main(["denoise", str(src), "-o", str(out), "--method", "deep-mr", "--sigma", "20",
                 "--param", "adapt_seconds=2", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error:") and "too small" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_shaped_noise_has_unit_variance_and_the_given_spectrum():
    from medden.denoisers.adapt import shaped_noise

    shape = (32, 32, 16)
    f = [np.fft.fftfreq(n) for n in shape[:2]]
    radius = np.hypot(*np.meshgrid(*f, indexing="ij"))
    psd = np.broadcast_to((radius < 0.15)[..., None] * 1.0 + 1e-3, shape)  # in-plane low-pass, white across slices
    z = shaped_noise(psd, 8, torch.Generator().manual_seed(0), "cpu")
    assert z.shape == (8, 1, *shape) and z.dtype == torch.float32
    assert abs(float(z.std()) - 1.0) < 0.05
    power = (torch.fft.fftn(z[:, 0].double(), dim=(1, 2, 3)).abs() ** 2).mean(0).numpy()
    low, high = power[psd > 0.5].mean(), power[psd < 0.5].mean()
    assert high < 0.01 * low  # the noise follows the spectrum: no power where the spectrum has none


def test_ct_adaptation_uses_the_scans_noise_texture_and_pads_thick_slice_scans():
    from medden.denoisers.adapt import CT_MIN_SLICES

    torch.manual_seed(0)
    net = build_network("conditioned-unet3d", features=[4, 4, 8, 8, 16, 4]).eval()
    x = np.random.default_rng(0).normal(0, 0.02, (48, 48, CT_MIN_SLICES)).astype(np.float32)
    asked: list[tuple] = []

    def psd(shape):
        asked.append(shape)
        return np.ones(shape)

    logs: list[str] = []
    adapted = adapt_network(net, x, 0.02, seconds=0.5, magnitude=False, psd=psd, log=logs.append)
    assert asked == [(48, 48, 16)]  # 8 slices padded to the network's 16
    assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), adapted.state_dict().values()))
    assert "NPS-shaped" in logs[0] and "48×48×16" in logs[0]
    with pytest.raises(ParameterError, match="too small"):
        check_adaptable(x[:, :, : CT_MIN_SLICES - 1], 0.02, 1.0, ct=True)


def test_ct_adaptation_without_a_noise_spectrum_is_refused_in_one_line(tmp_path, capsys):
    """White recorrupting noise made deep-ct worse on every clean CT reference (−3.5 dB on the water cylinder), so a
    CT without a measured spectrum (here: sigma given) is refused, and nothing is written."""
    from medden.cli import main
    from medden.phantoms import water_cylinder

    ph = water_cylinder((96, 96, 16), (0.9, 0.9, 1.0))
    src = tmp_path / "ct.nii.gz"
    noisy = medden.noise.gaussian(ph.volume.data, sigma=20.0, generator=0)
    medden.save_volume(medden.Volume(np.asarray(noisy, np.float32), ph.volume.affine, modality="CT"), src)
    out = tmp_path / "out.nii.gz"
    code = main(["denoise", str(src), "-o", str(out), "--method", "deep-ct", "--sigma", "20",
                 "--param", "adapt_seconds=2", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "noise spectrum" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
