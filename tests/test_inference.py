"""Sliding-window inference: blending reproduces the network exactly, memory-based window choice, device errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medden.errors import ParameterError
from medden.inference import (CPU_MAX_WINDOW_VOXELS, autocast_dtype, choose_window, resolve_device, sliding_window,
                              windows_along)


class Affine(torch.nn.Module):
    """A pointwise 'network': a window-independent result, so blending must reproduce it exactly."""

    multiple = 16

    def forward(self, x, sigma):
        s = sigma if isinstance(sigma, float) else sigma
        return 2 * x + s


def test_choose_window_fits_shape_and_multiple():
    roi, batch = choose_window((40, 300, 7), "cpu", 16)
    assert all(r % 16 == 0 for r in roi) and roi[0] == 48 and roi[2] == 16 and batch >= 1
    assert roi[0] * roi[1] * roi[2] <= CPU_MAX_WINDOW_VOXELS


def test_choose_window_processes_fewer_voxels_than_cubes_and_keeps_windows_thick():
    """For a 512×512×300 CT the chosen windows cover the volume with less overlap than 128³ cubes, none thin."""
    shape = (512, 512, 300)
    roi, _ = choose_window(shape, "cpu", 16)

    def processed(r):
        return np.prod([windows_along(n, w, 0.125) * w for n, w in zip(shape, r)])

    assert min(roi) >= 64 and np.prod(roi) <= CPU_MAX_WINDOW_VOXELS
    assert processed(roi) < 0.8 * processed((128, 128, 128))
    assert windows_along(300, 128, 0.125) == 3 and windows_along(100, 128, 0.125) == 1


@pytest.mark.parametrize("slab", [None, 8])
def test_sliding_window_blends_to_the_exact_result(slab):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 29, 45)).astype(np.float32)
    out = sliding_window(Affine(), x, 0.5, roi=(16, 16, 16), batch=2, overlap=0.25, precision="fp32", slab=slab)
    np.testing.assert_allclose(out, 2 * x + 0.5, atol=1e-5)


def test_sliding_window_takes_a_noise_map():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 20, 20)).astype(np.float32)
    level = rng.uniform(0, 1, x.shape).astype(np.float32)
    out = sliding_window(Affine(), x, level, roi=(16, 16, 16), precision="fp32")
    np.testing.assert_allclose(out, 2 * x + level, atol=1e-5)


def test_precision_choices():
    assert autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype("cpu", "bf16") == torch.bfloat16
    with pytest.raises(ParameterError, match="precision"):
        autocast_dtype("cpu", "fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_requested_but_absent_is_a_clear_error():
    with pytest.raises(ParameterError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sliding_window_on_gpu_matches_cpu():
    x = np.random.default_rng(2).normal(size=(40, 40, 40)).astype(np.float32)
    net = Affine()
    cpu = sliding_window(net, x, 0.1, device="cpu", precision="fp32")
    gpu = sliding_window(net.cuda(), x, 0.1, device="cuda", precision="fp32")
    np.testing.assert_allclose(cpu, gpu, atol=1e-4)


def test_plan_windows_chooses_slabs_and_windows_together():
    """Slabs and windows chosen together: a 512×512×300 CT under the CPU slab budget costs < 1.5× its voxels (slabs of
    100 + 2 × 24 slices under 96-slice windows had cost 2.2×), every slab with its margins fits the budget, and
    without a budget the whole axis is one slab."""
    from medden.inference import plan_windows

    shape, most = (512, 512, 300), 174
    roi, slab, batch = plan_windows(shape, "cpu", 16, overlap=0.125, max_slices=most)
    margin = max(roi[2] // 4, 16)
    extents = [min(300, z0 + slab + margin) - max(0, z0 - margin) for z0 in range(0, 300, slab)]
    assert max(extents) <= most and batch == 1 and np.prod(roi) <= CPU_MAX_WINDOW_VOXELS
    work = sum(np.prod([windows_along(n, w, 0.125) * w for n, w in zip((512, 512, e), roi)]) for e in extents)
    assert work < 1.5 * np.prod(shape)
    assert plan_windows((96, 96, 40), "cpu", 16, max_slices=None)[1] == 40
