"""medden: denoising for 3D medical scans (CT, MRI, PET/SPECT) with physics-aware noise models and clinical metrics.

The data path: :func:`load_volume` → :func:`denoise` (which estimates the noise) → :func:`save_volume`.

The public names are imported on first use (PEP 562), so ``import medden`` and ``medden --help`` stay light: torch
is imported only by what needs it (denoising, simulation, training), never by the package itself.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medden._version import __version__

#: public name → the module that defines it
_PUBLIC = {
    "Volume": "medden.volume",
    "MeddenError": "medden.errors",
    "load_volume": "medden.io",
    "save_volume": "medden.io",
    "denoise": "medden.denoisers",
    "list_methods": "medden.denoisers",
    "evaluate": "medden.metrics",
    "simulate": "medden.noise",
}

__all__ = [*_PUBLIC, "__version__"]

if TYPE_CHECKING:  # for type checkers and editors; at run time the names come from __getattr__
    from medden.denoisers import denoise, list_methods
    from medden.errors import MeddenError
    from medden.io import load_volume, save_volume
    from medden.metrics import evaluate
    from medden.noise import simulate
    from medden.volume import Volume


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    try:  # subpackages as attributes (medden.io, medden.noise, ...), as after ``import medden.io``
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
