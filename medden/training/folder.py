"""A fine-tuning config for a folder of the user's own noisy scans (``medden train --mode n2v scans/``).

Moved here unchanged from the CLI, so that the command only parses and calls the training package; the training
package owns the hyperparameters chosen here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from medden.errors import ParameterError


def shipped_weights_for(modality: str) -> Path:
    """The shipped deep model for ``modality`` (CT or MR), to start fine-tuning from."""
    from medden.models import shipped_path

    path = shipped_path("deep-ct" if str(modality).upper() == "CT" else "deep-mr")
    if not path.is_file():
        raise ParameterError(f"--init shipped: the shipped model {path.name} is not installed")
    return path


def folder_config(folder: Path, mode: str, modality: str, init: Optional[str], overrides: dict) -> dict:
    """A self-supervised fine-tuning config for every scan in ``folder`` (files, or DICOM series sub-folders)."""
    from medden.io import load_volume

    scans = sorted(p for p in folder.iterdir() if p.is_dir() or p.name.endswith((".nii", ".nii.gz", ".nrrd", ".mha",
                                                                                   ".mhd", ".dcm")))
    if not scans:
        raise ParameterError(f"{folder} holds no scans (.nii, .nii.gz, .nrrd, .mha, DICOM)")
    if mode == "supervised":
        raise ParameterError("a folder of noisy scans trains self-supervised: use --mode n2v (or n2n with a config "
                             "listing the pairs)")
    if mode == "n2n":
        raise ParameterError("--mode n2n needs pairs of scans: write a config whose data entries give 'pair'")
    code = modality.strip().upper()
    if code == "AUTO":
        code = load_volume(scans[0]).modality
        if code not in ("MR", "CT"):
            raise ParameterError(f"cannot tell whether {scans[0]} is MR or CT: give --modality mr or ct")
    if code not in ("MR", "CT"):
        raise ParameterError(f"--modality must be mr or ct for training, got {modality!r}")
    name = f"finetuned_{code.lower()}_{mode}"
    cfg = {"name": name, "modality": code, "mode": mode, "data": [{"path": str(p)} for p in scans],
           "patch_size": [32, 32, 32], "batch_size": 8, "epochs": 20, "steps_per_epoch": 100,
           "learning_rate": 2e-4, "network": {"features": [8, 16, 32, 64, 128, 8]},
           "export": f"{name}.safetensors",  # checkpoints: the user's cache, one folder per config and data
           "noise": {"model": "lowdose-ct" if code == "CT" else "rician"}}
    if init in (None, "shipped"):
        try:
            cfg["init_weights"] = str(shipped_weights_for(code))
        except ParameterError:
            if init == "shipped":
                raise
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg
