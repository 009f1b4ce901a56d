"""``medden.simulate`` and the ``medden simulate`` command: parameters recorded, reproducible, clear errors."""
import json

import numpy as np
import pytest

import medden
from medden.cli import main
from medden.errors import InputError, ParameterError
from medden.noise import list_models, simulate
from medden.phantoms import shepp_logan_3d, water_cylinder
from medden.volume import Volume


def test_simulate_records_parameters_and_is_reproducible():
    v = shepp_logan_3d((32, 32, 16))
    a = simulate(v, "rician", sigma="5%", seed=3)
    b = simulate(v, "rician", sigma="5%", seed=3)
    assert np.array_equal(a.data, b.data) and not np.array_equal(a.data, simulate(v, "rician", sigma="5%", seed=4).data)
    assert a.history[-1] == "simulated rician sigma=5% seed=3"
    rec = a.meta["simulation"]
    assert rec["model"] == "rician" and rec["seed"] == 3 and rec["params"]["sigma"] == "5%"
    assert rec["sigma_data_units"] == pytest.approx(0.05)
    assert a.same_geometry(v) and a.modality == v.modality


def test_every_model_has_units():
    for spec in list_models():
        assert spec.summary and all(p.help for p in spec.params)


def test_simulate_lowdose_ct_finds_the_axial_axis():
    ph = water_cylinder((64, 64, 3), (1.0, 1.0, 2.0), inserts={})
    v = ph.volume
    moved = Volume(np.moveaxis(v.data, 2, 0), v.affine[:, [2, 0, 1, 3]], modality="CT")  # slices along axis 0
    a = simulate(v, "lowdose-ct", dose=0.5, seed=1, n_views=128)
    b = simulate(moved, "lowdose-ct", dose=0.5, seed=1, n_views=128)
    assert np.allclose(np.moveaxis(b.data, 0, 2), a.data, atol=1e-3)


@pytest.mark.parametrize("model,params,error", [
    ("nope", {}, ParameterError),
    ("rician", {"dose": 0.5}, ParameterError),
    ("lowdose-ct", {}, ParameterError),
    ("gaussian", {"sigma": "three"}, ParameterError),
])
def test_simulate_errors(model, params, error):
    with pytest.raises(error):
        simulate(shepp_logan_3d((16, 16, 16)), model, **params)


def test_simulate_ct_model_rejects_mr():
    with pytest.raises(InputError, match="HU"):
        simulate(shepp_logan_3d((16, 16, 16)), "lowdose-ct", dose=0.5)


def test_cli_simulate_writes_same_format_with_parameters(tmp_path, capsys):
    ph = water_cylinder((64, 64, 3), (1.0, 1.0, 2.0))
    src = tmp_path / "ct.nii.gz"
    medden.save_volume(ph.volume, src)
    out = tmp_path / "ct_25.nii.gz"
    args = ["simulate", str(src), "-o", str(out), "--model", "lowdose-ct", "--dose", "0.25", "--seed", "0",
            "-p", "n_views=128"]
    assert main(args) == 0
    noisy = medden.load_volume(out)
    assert noisy.same_geometry(ph.volume)
    assert 2.0 < float(np.std(noisy.data[ph.rois["water"]])) < 200.0
    sidecar = json.loads((tmp_path / "ct_25.json").read_text())
    assert sidecar["MeddenSimulation"]["params"]["dose"] == 0.25 and sidecar["Modality"] == "CT"
    first = noisy.data.copy()
    assert main(args + ["--overwrite"]) == 0
    assert np.array_equal(medden.load_volume(out).data, first)  # same seed, same output


@pytest.mark.parametrize("extra,message", [
    (["--model", "lowdose-ct", "--dose", "0"], "dose"),
    (["--model", "lowdose-ct", "--dose", "1.5"], "dose"),
    (["--model", "poisson", "--counts", "-3"], "counts"),
    (["--model", "warp-drive"], "unknown noise model"),
    (["--model", "rician", "--sigma", "lots"], "sigma"),
])
def test_cli_simulate_errors_are_one_line(tmp_path, capsys, extra, message):
    ph = water_cylinder((32, 32, 2), (2.0, 2.0, 2.0), inserts={})
    src = tmp_path / "ct.nii.gz"
    medden.save_volume(ph.volume, src)
    assert main(["simulate", str(src), "-o", str(tmp_path / "o.nii.gz"), *extra]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def test_cli_rejects_mr_for_ct_model(tmp_path, capsys):
    src = tmp_path / "mr.nii.gz"
    medden.save_volume(shepp_logan_3d((16, 16, 16)), src)
    assert main(["simulate", str(src), "-o", str(tmp_path / "o.nii.gz"), "--model", "lowdose-ct", "--dose", "0.5",
                 "--modality", "mr"]) != 0
    assert "HU" in capsys.readouterr().err
