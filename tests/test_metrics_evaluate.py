"""evaluate() end to end, and the report it writes (metrics.json, HTML, Markdown, PNG figures)."""
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medden.errors import InputError
from medden.metrics import Roi, RoiSet, evaluate, write_report
from medden.metrics.evaluate import SCALARS
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


# ---- the report as a reader sees it (issue 14, item 8) ----

@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report saves, with the dpi it is saved at, to look at what a reader gets."""
    from matplotlib.figure import Figure

    figures = {}
    save = Figure.savefig

    def capture(fig, path, *args, **kw):
        figures[Path(path).name] = (fig, kw.get("dpi", fig.dpi))
        return save(fig, path, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", capture)
    return figures


def _as(volume, modality):
    return Volume(volume.data, volume.affine, modality=modality)


def test_table_prints_as_a_text_table_and_keeps_its_records(study):
    ref, noisy, ests, rois = study
    r = evaluate(ref, ests, noisy=noisy, rois=rois, data_range=2000.0)
    text = str(r.table())
    lines = text.splitlines()
    assert len(lines) == 2 + 3 and "{" not in text  # header, rule, noisy + 2 estimates; no dict reprs
    assert lines[0].startswith("| image") and "psnr [dB]" in lines[0] and "rmse [HU]" in lines[0]
    assert "hu_bias [HU]" in lines[0] and "[units]" not in text
    assert re.fullmatch(r"\|[-|:]+\|", lines[1]) and lines[2].startswith("| noisy")
    assert len({len(line) for line in lines}) == 1  # columns aligned
    assert f"{r.noisy.psnr:.4g}" in lines[2]
    assert repr(r.table()) == text and r.table()._repr_markdown_() == text  # REPL and notebook show the same
    records = r.records()
    assert [row["name"] for row in r.table()] == [row["name"] for row in records] == ["noisy", "gauss1", "gauss2"]
    assert r.table()[1]["psnr"] == records[1]["psnr"] == r.methods["gauss1"].psnr


def test_ct_report_uses_hu_a_soft_tissue_window_and_readable_panels(study, tmp_path, drawn):
    ref, noisy, ests, rois = study
    files = write_report(evaluate(ref, ests, noisy=noisy, rois=rois), tmp_path / "r")
    page, md = files.html.read_text(), files.markdown.read_text()
    assert "[units]" not in page and "(units)" not in page and "rmse [HU]" in page and "HU bias" in page
    assert "soft-tissue window W400/L40 HU" in page
    fig, dpi = drawn["slices.png"]
    grey = [a for a in fig.axes if a.images and a.images[0].get_cmap().name == "gray"]
    assert grey and all(a.images[0].get_clim() == (-160.0, 240.0) for a in grey)
    widths = [a.get_position().width * fig.get_figwidth() * dpi for a in grey]
    assert min(widths) >= 300, f"image panels {min(widths):.0f} pixels wide"
    assert fig.axes[-1].get_ylabel() == "HU"  # the colour bar
    nps_fig, _ = drawn["nps.png"]
    assert "HU² · mm²" in nps_fig.axes[0].get_ylabel()
    assert "rmse [HU]" in md


def test_no_text_of_any_report_figure_is_cut_off(study, tmp_path, drawn):
    """Everything drawn — titles, labels, tick labels, legends — lies inside its saved figure (the NPS title and the
    long bar-chart titles did not)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ref, noisy, ests, rois = study
    r = evaluate(ref, ests, noisy=noisy)  # no ROIs: the NPS region gets its long automatic description
    assert r.nps_region == "flat regions of the reference (auto)"
    write_report(r, tmp_path / "r")
    assert {"slices.png", "nps.png", "bar_nps_peak_frequency.png"} <= set(drawn)
    for name, (fig, _) in drawn.items():
        drawn_box = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer())  # inches, as laid out when saved
        w, h = fig.get_size_inches()
        tol = 0.02
        assert drawn_box.x0 >= -tol and drawn_box.y0 >= -tol and drawn_box.x1 <= w + tol and drawn_box.y1 <= h + tol, \
            f"{name}: drawn extent {drawn_box.bounds} exceeds the {w:g} × {h:g} in figure"


def test_nps_frequencies_are_judged_against_the_noisy_input_not_higher_is_better(study, tmp_path, drawn):
    ref, noisy, ests, rois = study
    files = write_report(evaluate(ref, ests, noisy=noisy, rois=rois), tmp_path / "r")
    for key in ("nps_peak_frequency", "nps_mean_frequency"):
        assert SCALARS[key][1] == "closer to the noisy input's"
        title = drawn[f"bar_{key}.png"][0].axes[0].get_title()
        assert "closer to the noisy input's is better" in title and "higher" not in title
    assert "closer to the noisy input's" in html.unescape(files.html.read_text())


def test_mr_report_has_no_hu_bias(study, tmp_path, drawn):
    """HU are CT's: an MR evaluation reports its bias in the image's units, never as hu_bias."""
    ref, noisy, ests, rois = study
    mr = {k: _as(v, "MR") for k, v in ests.items()}
    r = evaluate(_as(ref, "MR"), mr, noisy=_as(noisy, "MR"), rois=rois)
    assert all(row["hu_bias"] is None and row["bias"] is not None for row in r.records())
    assert r.methods["gauss1"].hu_bias is None and r.methods["gauss1"].bias == r.records()[1]["bias"]
    assert "hu_bias" not in str(r.table()) and "bias [image units]" in str(r.table())
    files = write_report(r, tmp_path / "r")
    page = files.html.read_text() + files.markdown.read_text()
    assert "hu_bias" not in page and "HU" not in page
    names = {p.name for p in files.figures}
    assert "bar_bias.png" in names and "bar_hu_bias.png" not in names
    ct = evaluate(ref, ests, noisy=noisy, rois=rois)
    assert all(row["bias"] is None and row["hu_bias"] is not None for row in ct.records())
