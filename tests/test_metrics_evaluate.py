"""evaluate() end to end, and the report it writes (metrics.json, HTML, Markdown, PNG figures)."""
import json
import re

import numpy as np
import pytest
from scipy import ndimage

from medden.errors import InputError
from medden.metrics import Roi, RoiSet, evaluate, write_report
from medden.volume import Volume


@pytest.fixture(scope="module")
def study():
    """A small CT-like phantom: water (0 HU) with a +200 HU slanted-edge insert and a -100 HU lesion."""
    n, nk = 64, 8
    i, j = np.mgrid[0:n, 0:n]
    a = np.deg2rad(6)
    ref2 = np.zeros((n, n))
    ref2[(i - 40) * np.cos(a) - (j - 32) * np.sin(a) > 0] = 200.0  # slanted edge at i≈40
    ref2[(i - 20) ** 2 + (j - 48) ** 2 < 16] = -100.0
    ref2 = ndimage.gaussian_filter(ref2, 0.7)  # the scanner's own blur: a finite reference MTF
    ref = np.repeat(ref2[:, :, None], nk, axis=2)
    aff = np.diag([0.7, 0.7, 2.5, 1.0])
    rng = np.random.default_rng(0)
    noisy = ref + rng.normal(0, 20, ref.shape)
    vol = lambda d: Volume(d.astype(np.float32), aff, modality="CT")  # noqa: E731
    rois = RoiSet((Roi.box("water", (8, 8, 0), (32, 40, nk), role="noise"),
                   Roi.sphere("lesion", (20, 48, 4), 3, role="signal"),
                   Roi.box("bg", (8, 8, 2), (16, 30, 6), role="background"),
                   Roi.box("edge", (28, 12, 0), (54, 30, nk), role="edge")))
    ests = {"gauss1": vol(ndimage.gaussian_filter(noisy, (1, 1, 0))), "gauss2": vol(ndimage.gaussian_filter(noisy, (2, 2, 0)))}
    return vol(ref), vol(noisy), ests, rois


def test_evaluate_measures_every_image(study):
    ref, noisy, ests, rois = study
    r = evaluate(ref, ests, noisy=noisy, rois=rois, data_range=2000.0)
    assert list(r.methods) == ["gauss1", "gauss2"] and r.noisy is not None
    g1, g2, nz = r.methods["gauss1"], r.methods["gauss2"], r.noisy
    assert nz.psnr < g1.psnr and g1.ssim > nz.ssim
    assert nz.noise_std == pytest.approx(20, rel=0.1)  # NPS integral of noisy - reference in the water ROI
    assert g2.nps.mean_frequency < g1.nps.mean_frequency < nz.nps.mean_frequency  # smoother → lower-frequency NPS
    assert g2.mtf50 < g1.mtf50 < r.reference_mtf50  # more blur → lower MTF50
    assert abs(nz.roi_bias["water"].z) < 4
    assert set(g1.cnr) == {"lesion|bg"} and g1.cnr["lesion|bg"] > nz.cnr["lesion|bg"]
    assert g2.method_noise.structure_correlation > g1.method_noise.structure_correlation
    json.loads(r.to_json())


def test_report_files_are_written_and_offline(study, tmp_path):
    ref, noisy, ests, rois = study
    files = write_report(evaluate(ref, ests, noisy=noisy, rois=rois), tmp_path / "report")
    data = json.loads(files.json.read_text())
    assert set(data["methods"]) == {"gauss1", "gauss2"} and data["noisy"]["scalars"]["psnr"] > 0
    assert data["table"][0]["name"] == "noisy"
    names = {p.name for p in files.figures}
    assert {"slices.png", "differences.png", "nps.png", "mtf.png", "bar_psnr.png", "bar_ssim.png"} <= names
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in files.figures)
    page = files.html.read_text()
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", page, re.I)
    assert "figures/slices.png" in page and "<table>" in page
    assert "![slices](figures/slices.png)" in files.markdown.read_text()


def test_evaluate_plain_arrays_without_rois(study):
    ref, noisy, ests, _ = study
    r = evaluate(ref.data, {"a": ests["gauss1"].data}, spacing=ref.spacing)
    assert r.methods["a"].nps is not None and r.methods["a"].mtf == {}
    assert any("MTF not measured" in n for n in r.notes)


def test_evaluate_bad_input_names_it(study):
    ref, noisy, ests, rois = study
    with pytest.raises(InputError, match="estimate 'x' has shape"):
        evaluate(ref, {"x": np.zeros((4, 4, 4))})
    moved = Volume(ests["gauss1"].data, np.diag([0.7, 0.7, 3.0, 1.0]))
    with pytest.raises(InputError, match="estimate 'm' has another geometry"):
        evaluate(ref, {"m": moved})
    with pytest.raises(InputError, match="ROI 'out'.*outside the volume"):
        evaluate(ref, ests, rois=[Roi.box("out", (60, 60, 0), (70, 64, 2))])
    with pytest.raises(InputError, match="at least one estimate"):
        evaluate(ref, {})
