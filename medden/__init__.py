"""medden: denoising for 3D medical scans (CT, MRI, PET/SPECT) with physics-aware noise models and clinical metrics.

The data path: :func:`load_volume` → :func:`denoise` (which estimates the noise) → :func:`save_volume`.
"""
from medden.errors import MeddenError
from medden.volume import Volume
from medden.io import load_volume, save_volume
from medden.denoisers import denoise, list_methods
from medden.metrics import evaluate
from medden.noise import simulate

__version__ = "0.2.0"

__all__ = ["Volume", "MeddenError", "load_volume", "save_volume", "denoise", "list_methods", "evaluate", "simulate",
           "__version__"]
