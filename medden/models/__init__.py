"""Deep denoising networks (3D U-Net and 3D DnCNN conditioned on the noise level), their weights (safetensors plus a
JSON model card) and the models shipped with medden (``medden/models/weights/``).

The cards (:mod:`medden.models.card`) import no network library; the networks (torch, MONAI) load on first use.
"""
from __future__ import annotations

from medden.models.card import (CT_NORMALISATION, CT_PRIOR_NORMALISATION, MR_NORMALISATION, SHIPPED, WEIGHTS_DIR,
                                ModelCard, ModelError, Normalisation, card_licence, load_model, read_card, save_model,
                                shipped_path)

_NETWORKS = ("ARCHITECTURES", "ConditionedUNet", "DnCNN3D", "build_network")


def __getattr__(name: str):
    if name in _NETWORKS:  # torch is imported only when a network is asked for
        from medden.models import networks

        return getattr(networks, name)
    raise AttributeError(f"module 'medden.models' has no attribute {name!r}")


__all__ = ["ModelCard", "ModelError", "Normalisation", "load_model", "read_card", "save_model", "ARCHITECTURES",
           "ConditionedUNet", "DnCNN3D", "build_network", "WEIGHTS_DIR", "SHIPPED", "shipped_path", "card_licence",
           "CT_NORMALISATION", "CT_PRIOR_NORMALISATION", "MR_NORMALISATION"]
