"""Where and how networks and GPU-capable denoisers run: device choice (CUDA when present, CPU always)."""
from __future__ import annotations

from medden.errors import ParameterError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> str:
    """``'auto'`` → ``'cuda'`` when a CUDA device is usable, else ``'cpu'``; ``'cuda'`` without one is an error."""
    import torch

    device = (device or "auto").lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ParameterError(f"unknown device {device!r} (use auto, cpu or cuda)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    return device
