"""The MONAI bundles in ``bundles/``: model-zoo layout, metadata checked by MONAI's ``verify_metadata`` against the
schema copy in ``bundles/monai_schema/`` (no network, no ``../shared``), ``verify_net_in_out`` on the ``network_def``,
weights shipped as real files listed with their sha256 in ``large_files.yml``, and the inference config denoising
every scan of a folder through medden's public functions — from any working folder, failing clearly on a missing or
empty dataset folder (issue 14, item 7)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medden
from medden.phantoms import shepp_logan_3d

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SCHEMA = BUNDLES / "monai_schema" / "meta_schema_20240725.json"
#: sha256 of MONAI's published meta_schema_20240725.json (the copy must stay unchanged)
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"
NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()) if BUNDLES.is_dir() else []
#: "required" of MONAI's meta_schema_20240725.json, and of its network_io / tensor definitions
REQUIRED = ["schema", "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
            "task", "description", "authors", "copyright", "network_data_format"]
TENSOR_REQUIRED = ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range"]


def test_there_is_one_bundle_per_shipped_model():
    assert set(NAMES) >= {"medden_mr_rician_unet", "medden_ct_lowdose_unet"}


@pytest.mark.parametrize("name", NAMES)
def test_bundle_layout_and_required_metadata(name):
    root = BUNDLES / name
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/multi_gpu_train.json",
                "docs/README.md", "LICENSE", "large_files.yml",
                "models/model.safetensors", "models/model.json"):
        assert (root / rel).is_file(), rel
        assert not (root / rel).is_symlink(), f"{rel} is a symbolic link: a bundle folder must stand alone"
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    missing = [k for k in REQUIRED if k not in meta]
    assert not missing, missing
    assert meta["schema"].endswith("meta_schema_20240725.json")
    for part in ("inputs", "outputs"):
        for tensor in meta["network_data_format"][part].values():
            assert all(k in tensor for k in TENSOR_REQUIRED)
    assert (root / "models" / "model.safetensors").stat().st_size <= 20e6
    card = json.loads((root / "models" / "model.json").read_text())
    assert all(d["licence"] for d in card["training"]["data"])


@pytest.mark.parametrize("name", NAMES)
def test_bundle_weights_load(name):
    from medden.models import load_model

    net, card = load_model(BUNDLES / name / "models" / "model.safetensors")
    assert card.name == name


def test_mr_bundle_inference_denoises_every_scan_in_a_folder(tmp_path):
    from monai.bundle import ConfigWorkflow

    name = "medden_mr_rician_unet"
    if name not in NAMES:
        pytest.skip("MR bundle not built")
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    clean = shepp_logan_3d((32, 32, 24))
    for i in range(2):
        noisy = medden.noise.rician(clean.data * 800, sigma=30.0, generator=i)
        medden.save_volume(medden.Volume(noisy, clean.affine, modality="MR"), src / f"scan{i}.nii.gz")
    wf = ConfigWorkflow(config_file=str(BUNDLES / name / "configs" / "inference.json"),
                        meta_file=str(BUNDLES / name / "configs" / "metadata.json"), workflow_type=None,
                        dataset_dir=str(src), output_dir=str(dst), bundle_root=str(BUNDLES / name), device="cpu")
    wf.initialize()
    wf.run()
    wf.finalize()
    outs = sorted(p.name for p in dst.iterdir())
    assert outs == ["scan0.nii.gz", "scan1.nii.gz"]
    out = medden.load_volume(dst / "scan0.nii.gz")
    assert out.shape == (32, 32, 24) and np.isfinite(out.data).all()


def _sha256(path: Path) -> str:
    from medden.data import sha256_file

    return sha256_file(path)


@pytest.mark.parametrize("name", NAMES)
def test_bundle_weights_are_the_packages_and_match_their_card(name):
    """models/ holds byte copies of the package's shipped weights and card, and the card's sha256 is theirs."""
    from medden.models import SHIPPED, WEIGHTS_DIR

    package = next(WEIGHTS_DIR / f for f in SHIPPED.values() if Path(f).stem == name)
    models = BUNDLES / name / "models"
    card = json.loads((models / "model.json").read_text())
    assert _sha256(models / "model.safetensors") == card["sha256"] == _sha256(package)
    assert (models / "model.json").read_bytes() == package.with_suffix(".json").read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_large_files_list_the_weights_with_their_sha256(name, tmp_path):
    """large_files.yml names the weights and their sha256; MONAI's download_large_files finds them in place and
    checks the hash (no download), and refuses a bundle whose weights were altered."""
    import yaml
    from monai.apps.utils import HashCheckError
    from monai.bundle import download_large_files

    root = BUNDLES / name
    listed = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
    assert [(f["path"], f["hash_type"]) for f in listed] == [("models/model.safetensors", "sha256")]
    assert listed[0]["hash_val"] == _sha256(root / "models" / "model.safetensors")
    download_large_files(bundle_path=str(root))  # in place: only the hash check, no network
    copy = tmp_path / name
    shutil.copytree(root, copy)
    with open(copy / "models" / "model.safetensors", "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(HashCheckError):
        download_large_files(bundle_path=str(copy))


@pytest.mark.parametrize("name", NAMES)
def test_metadata_passes_monais_schema(name):
    """MONAI's own verify_metadata against the schema copy shipped in bundles/monai_schema (no network)."""
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(BUNDLES / name / "configs" / "metadata.json"), filepath=str(SCHEMA),
                    hash_val=SCHEMA_SHA256, hash_type="sha256")


def test_verify_metadata_rejects_a_metadata_file_missing_a_required_field(tmp_path):
    """The check above can fail: the same call on metadata without "network_data_format"."""
    from monai.bundle import verify_metadata

    meta = json.loads((BUNDLES / NAMES[0] / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA), hash_val=SCHEMA_SHA256,
                        hash_type="sha256")


@pytest.mark.parametrize("name", NAMES)
def test_network_def_passes_verify_net_in_out_and_fits_the_weights(name):
    """``verify_net_in_out network_def`` passes (it raised KeyError with no network_def), and the network it builds
    takes the shipped weights and gives, from its two-channel input, what medden's two-argument call gives."""
    import torch
    from monai.bundle import ConfigParser, verify_net_in_out
    from safetensors.torch import load_file

    from medden.models import load_model

    cfg, meta = BUNDLES / name / "configs" / "inference.json", BUNDLES / name / "configs" / "metadata.json"
    verify_net_in_out(net_id="network_def", config_file=str(cfg), meta_file=str(meta), device="cpu")
    parser = ConfigParser()
    parser.read_config(str(cfg))
    net = parser.get_parsed_content("network_def")
    weights = BUNDLES / name / "models" / "model.safetensors"
    net.load_state_dict(load_file(str(weights)), strict=True)
    ref, _ = load_model(weights)
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = torch.full_like(x, 0.05)
    with torch.no_grad():
        two_channel = net.eval()(torch.cat([x, sigma], dim=1))
        assert two_channel.shape == (1, 1, 16, 16, 16)
        torch.testing.assert_close(two_channel, ref(x, 0.05))


@pytest.mark.parametrize("argv, expected", [
    (["monai.bundle", "run", "--config_file", "b/configs/inference.json"], "b"),
    (["monai.bundle", "run", "--config_file=b/configs/inference.json", "--dataset_dir", "x"], "b"),
    (["monai.bundle", "run", "--config_file", "['b/configs/train.json','b/configs/multi_gpu_train.json']"], "b"),
    (["monai.bundle", "run", "--config_file", "flat/inference.json"], "flat"),
    (["pytest"], "."),
])
def test_bundle_root_is_found_from_the_config_file(tmp_path, argv, expected):
    from medden.bundle import bundle_root

    argv = [a.replace("b/", f"{tmp_path}/b/").replace("flat/", f"{tmp_path}/flat/") for a in argv]
    assert bundle_root(argv) == (str(tmp_path / expected) if expected != "." else ".")


@pytest.mark.parametrize("name", NAMES)
def test_train_config_finds_the_bundles_training_config_from_any_folder(name, tmp_path, monkeypatch):
    """train.json named its medden config relative to the repository root; now relative to the bundle."""
    from monai.bundle import ConfigParser

    monkeypatch.chdir(tmp_path)
    train = str(BUNDLES / name / "configs" / "train.json")
    multi = str(BUNDLES / name / "configs" / "multi_gpu_train.json")
    for files in ([train], [train, multi]):  # multi_gpu_train.json overrides train.json's items, imports included
        monkeypatch.setattr(sys, "argv", ["monai.bundle", "run", "--config_file", repr(files)])
        parser = ConfigParser()
        parser.read_config(files)
        assert Path(parser.get_parsed_content("config_file")) == BUNDLES / name / "configs" / "medden_train.json"


def _noisy_mr_folder(folder: Path, n: int = 1) -> Path:
    folder.mkdir(parents=True)
    clean = shepp_logan_3d((32, 32, 16))
    for i in range(n):
        noisy = medden.noise.rician(clean.data * 800, sigma=30.0, generator=i)
        medden.save_volume(medden.Volume(noisy, clean.affine, modality="MR"), folder / f"scan{i}.nii.gz")
    return folder


def _bundle_run(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` as a user types it, from ``cwd``, with the repository importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           str(BUNDLES / name / "configs" / "inference.json"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_bundle_runs_from_any_folder_with_its_own_weights(tmp_path):
    """Started from an unrelated folder, without --bundle_root: the bundle finds its own models/ (the weights used
    to resolve silently to '' there) and denoises the folder; relative dataset and output folders are the user's."""
    name = "medden_mr_rician_unet"
    _noisy_mr_folder(tmp_path / "scans")
    proc = _bundle_run(name, tmp_path, "--dataset_dir", "scans", "--output_dir", "out", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"1 scan(s) in scans -> out with {BUNDLES / name / 'models' / 'model.safetensors'}" in proc.stdout
    out = medden.load_volume(tmp_path / "out" / "scan0.nii.gz")
    assert out.shape == (32, 32, 16) and np.isfinite(out.data).all()


@pytest.mark.slow
def test_bundle_run_without_the_dataset_folder_fails_with_one_line(tmp_path):
    """A missing --dataset_dir printed "0 scan(s)" and exited 0; now: one error line naming it, exit status 1, and
    no output folder created."""
    proc = _bundle_run("medden_ct_lowdose_unet", tmp_path, "--dataset_dir", "nowhere", "--output_dir", "out")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: dataset folder nowhere does not exist (give it with --dataset_dir DIR)"
    assert "scan(s)" not in proc.stdout and not (tmp_path / "out").exists()


def _workflow(name: str, **override):
    from monai.bundle import ConfigWorkflow

    root = BUNDLES / name
    return ConfigWorkflow(config_file=str(root / "configs" / "inference.json"),
                          meta_file=str(root / "configs" / "metadata.json"), workflow_type=None, **override)


@pytest.mark.parametrize("name", NAMES)
def test_bundle_stops_on_an_empty_dataset_folder_a_file_or_no_folder(name, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not scans")
    (tmp_path / "empty" / "._scan.nii.gz").write_bytes(b"AppleDouble junk")  # hidden: not a scan
    for dataset, message in ((str(tmp_path / "empty"), "no scans in dataset folder"),
                             (str(tmp_path / "notes.txt"), "is not a folder"), ("", "no dataset folder given")):
        wf = _workflow(name, bundle_root=str(BUNDLES / name), dataset_dir=dataset, output_dir=str(tmp_path / "out"))
        with pytest.raises(SystemExit, match=f"^error: .*{message}"):
            wf.initialize()
    assert not (tmp_path / "out").exists()


def test_bundle_stops_when_its_weights_are_not_found(tmp_path):
    """A bundle_root without models/model.safetensors stops the run instead of falling back to weights=''."""
    src = _noisy_mr_folder(tmp_path / "in")
    wf = _workflow("medden_mr_rician_unet", bundle_root=str(tmp_path), dataset_dir=str(src),
                   output_dir=str(tmp_path / "out"), device="cpu")
    with pytest.raises(SystemExit, match=r"^error: no model weights at .*model\.safetensors"):
        wf.initialize()


#: absolute paths of some machine (Unix home/data/scratch folders, a Windows drive)
MACHINE_PATH = re.compile(r"(?<![\w.])(/(work|home|root|mnt|tmp|data|scratch|Users|opt|srv)/|[A-Za-z]:\\)")


def test_no_machine_paths_in_the_bundles_outside_the_training_configs():
    """Docs, configs and metadata name data relative to a data root (issue 12). The medden training configs
    (configs/medden_train.json, configs/stages/) are the trainer's, checked with it."""
    offenders = []
    for path in sorted(BUNDLES.rglob("*")):
        rel = path.relative_to(BUNDLES)
        if not path.is_file() or path.suffix in (".png", ".safetensors") or rel.name == "medden_train.json" \
                or "stages" in rel.parts:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()[:120]}")
    assert not offenders, "\n".join(offenders)


def test_machine_path_pattern_finds_what_it_should():
    assert MACHINE_PATH.search('"path": "/work/shared/data/ct/x.nii.gz"')
    assert MACHINE_PATH.search("C:\\Users\\me\\scan.nii.gz")
    assert not MACHINE_PATH.search("ct/x.nii.gz, models/model.safetensors, 1/mm, HU/mm")
