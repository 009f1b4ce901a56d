"""Deep denoising networks (3D U-Net and 3D DnCNN conditioned on the noise level), their weights (safetensors plus a
JSON model card) and the models shipped with medden (``medden/models/weights/``)."""
from __future__ import annotations

from pathlib import Path

from medden.models.card import ModelCard, ModelError, Normalisation, load_model, read_card, save_model
from medden.models.networks import ARCHITECTURES, ConditionedUNet, DnCNN3D, build_network

WEIGHTS_DIR = Path(__file__).parent / "weights"

#: Shipped models: registry method name → weights file name in ``WEIGHTS_DIR``.
SHIPPED = {"deep-mr": "medden_mr_rician_unet.safetensors", "deep-ct": "medden_ct_lowdose_unet.safetensors"}


def shipped_path(name: str) -> Path:
    """Path of a shipped model's weights file (which may be absent in a source checkout without weights)."""
    try:
        return WEIGHTS_DIR / SHIPPED[name]
    except KeyError:
        raise ModelError(f"no shipped model {name!r} (known: {', '.join(SHIPPED)})") from None


__all__ = ["ModelCard", "ModelError", "Normalisation", "load_model", "read_card", "save_model", "ARCHITECTURES",
           "ConditionedUNet", "DnCNN3D", "build_network", "WEIGHTS_DIR", "SHIPPED", "shipped_path"]
