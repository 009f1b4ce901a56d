"""The MONAI bundles in ``bundles/``: model-zoo layout, the metadata fields MONAI's schema requires (checked without
network and without ``../shared``), and the inference config denoising every scan of a folder through medden's public
functions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import medden
from medden.phantoms import shepp_logan_3d

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
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
                "docs/README.md", "LICENSE",
                "models/model.safetensors", "models/model.json"):
        assert (root / rel).is_file(), rel
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
