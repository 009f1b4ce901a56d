"""``medden train``: train a deep denoiser from a config, or fine-tune one on a folder of scans."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from medden.cli.base import app, out


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config (JSON, or YAML with PyYAML), or a folder of scans to "
                                            "fine-tune on without clean references."),
    mode: Optional[str] = typer.Option(None, "--mode", help="supervised, n2n (paired noisy scans) or n2v (blind "
                                                            "spot); default: the config's, n2v for a folder."),
    modality: str = typer.Option("auto", "--modality", help="mr or ct (a folder: default from its first scan)."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Checkpoints and logs (resumable)."),
    export: Optional[Path] = typer.Option(None, "--export", "-o", help="Weights file to write at the end."),
    init: Optional[str] = typer.Option(None, "--init", help="Weights to start from; 'shipped' = the shipped model "
                                                            "for the modality (default for a folder when present)."),
    wall_minutes: Optional[float] = typer.Option(None, "--wall-minutes", help="Stop after this much training."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Number of epochs."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder the config's relative data paths "
                                                                        "are read from (default: $MEDDEN_DATA)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Train a deep denoiser (resumable), or fine-tune one on a folder of your own scans (`--mode n2v scans/`)."""
    from medden.inference import resolve_device
    from medden.training import folder_config, load_config, shipped_weights_for, train as run_training, validate_config

    overrides = {"mode": mode, "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
                 "export": str(export) if export else None, "wall_minutes": wall_minutes, "epochs": epochs,
                 "device": device, "command": "medden train " + " ".join(sys.argv[2:])}
    if init and init != "shipped":
        overrides["init_weights"] = init
    if config.is_dir():
        cfg = validate_config(folder_config(config, mode or "n2v", modality, init, overrides), str(config))
    else:
        if modality != "auto":
            overrides["modality"] = modality.upper()
        if init == "shipped":
            overrides["init_weights"] = str(shipped_weights_for(overrides.get("modality") or
                                                                json.loads(config.read_text()).get("modality", "MR")))
        cfg = load_config(config, data_root, **overrides)
    resolve_device(cfg.device)
    quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 speaks
    record = run_training(cfg, log=(lambda s: None) if quiet else out.print)
    if not quiet:
        out.print(f"trained {record['steps']} steps in {record['minutes']} min"
                  + (f"; weights: {record['export']}" if record.get("export") else ""))
