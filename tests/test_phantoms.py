"""Phantoms: geometry, known values inside their ROIs, errors."""
import numpy as np
import pytest

from medden.errors import InputError, ParameterError
from medden.phantoms import (CT_TISSUE_EDGES, DEFAULT_INSERTS, piecewise_smooth, shepp_logan_3d, slanted_edge,
                             water_cylinder)


def test_shepp_logan_shape_spacing_and_values():
    v = shepp_logan_3d((40, 48, 24), (0.5, 0.5, 2.0))
    assert v.shape == (40, 48, 24) and v.spacing == (0.5, 0.5, 2.0)
    assert v.data.min() == 0.0 and v.data.max() == pytest.approx(1.0)
    assert v.data[20, 24, 12] == pytest.approx(0.2)  # brain at the centre
    assert v.data[0, 0, 0] == 0.0


def test_water_cylinder_truth_in_rois():
    ph = water_cylinder((128, 128, 4), (0.8, 0.8, 2.0))
    assert ph.volume.modality == "CT" and ph.volume.spacing == (0.8, 0.8, 2.0)
    for name, hu in {**DEFAULT_INSERTS, "water": 0.0}.items():
        roi = ph.rois[name]
        assert roi.shape == ph.volume.shape and roi.sum() > 50
        assert np.all(ph.volume.data[roi] == hu) and ph.truth[name] == hu
    assert ph.volume.data[0, 0, 0] == -1000.0
    assert ph.volume.meta["diameter_mm"] == pytest.approx(0.8 * 128 * 0.8)


def test_water_cylinder_physical_size_independent_of_sampling():
    coarse = water_cylinder((64, 64, 2), (2.0, 2.0, 2.0), diameter_mm=100, inserts={})
    fine = water_cylinder((256, 256, 2), (0.5, 0.5, 2.0), diameter_mm=100, inserts={})
    area = [np.sum(p.volume.data[:, :, 0] > -500) * p.volume.spacing[0] ** 2 for p in (coarse, fine)]
    assert area[0] == pytest.approx(np.pi * 50 ** 2, rel=0.03) and area[1] == pytest.approx(np.pi * 50 ** 2, rel=0.01)


def test_slanted_edge_is_area_sampled():
    ph = slanted_edge((64, 64, 2), (0.5, 0.5, 1.0), angle_deg=5.0)
    d = ph.volume.data[:, :, 0]
    assert np.all(d[ph.rois["low"][:, :, 0]] == 0.0) and np.all(d[ph.rois["high"][:, :, 0]] == 1000.0)
    partial = (d > 0) & (d < 1000)
    assert partial.sum() > 32  # one partial-volume pixel per column along the edge
    assert d.mean() == pytest.approx(500.0, rel=0.02)  # the edge passes through the centre


def test_piecewise_smooth_averages_noise_within_tissue_classes_and_keeps_their_boundaries():
    ph = water_cylinder((96, 96, 8), (1.0, 1.0, 2.0), diameter_mm=80, inserts={"fat": -100.0, "contrast": 200.0},
                        insert_diameter_mm=20)
    noisy = ph.volume.data + np.random.default_rng(0).normal(0, 10, ph.volume.shape).astype(np.float32)
    ps = piecewise_smooth(noisy, ph.volume.spacing, CT_TISSUE_EDGES, sigma_mm=3.0)
    assert ps.shape == noisy.shape and ps.dtype == np.float32
    water, fat = ph.rois["water"], ph.rois["fat"]
    assert ps[water].std() < 0.25 * noisy[water].std()  # noise averaged away inside the class
    for name, hu in (("water", 0.0), ("fat", -100.0), ("contrast", 200.0)):  # each class keeps its own level
        assert abs(ps[ph.rois[name]].mean() - hu) < 2.0
    # a plain Gaussian of the same width would pull the fat insert towards the water around it
    from scipy import ndimage
    blurred = ndimage.gaussian_filter(noisy, (3.0, 3.0, 1.5))
    edge = fat & ~ndimage.binary_erosion(fat, iterations=2)
    assert abs(ps[edge].mean() + 100) < 0.5 * abs(blurred[edge].mean() + 100)
    with pytest.raises(ParameterError):
        piecewise_smooth(noisy, ph.volume.spacing, CT_TISSUE_EDGES, sigma_mm=0)


def test_phantom_errors():
    with pytest.raises(InputError):
        shepp_logan_3d((32, 32))
    with pytest.raises(ParameterError):
        water_cylinder((32, 32, 2), (1, 1, 1), diameter_mm=100)
    with pytest.raises(ParameterError):
        slanted_edge(angle_deg=60)
