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
