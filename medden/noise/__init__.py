"""Noise physics: models to simulate noise, estimators of the noise in a scan, and :func:`simulate`.

Models (each a pure function ``fn(data, *, generator, **physical_params)``, NumPy or torch in, same out):
:func:`gaussian`, :func:`poisson`, :func:`poisson_gaussian`, :func:`rician`, :func:`noncentral_chi`,
:func:`lowdose_ct`, :func:`lowdose_ct_insertion`; registered by name in :mod:`medden.noise.registry`.

The estimators and the registry load with NumPy alone; the models (torch) load on first use.
"""
from __future__ import annotations

import importlib
import sys
import types

from medden.noise.estimate import (NoiseEstimate, as_noise, ct_noise_map, ct_nps, estimate_noise, nps_to_sigma_psd,
                                   poisson_gaussian_params, sigma_mr_foreground, sigma_rician_background,
                                   sigma_wavelet_mad)
from medden.noise.registry import get_model, list_models

#: name → module of the names loaded on first use (they import torch)
_LAZY = {"gaussian": "gaussian", "poisson": "counting", "poisson_gaussian": "counting", "rician": "mri",
         "noncentral_chi": "mri", "lowdose_ct": "lowdose_ct", "lowdose_ct_insertion": "lowdose_ct",
         "simulate": "simulate"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"medden.noise.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medden.noise' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``medden.noise.gaussian`` (and ``simulate``, ``lowdose_ct``) the functions, as an eager import did:
    loading the submodules of the same names must not rebind the package attributes to the modules."""

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = ["gaussian", "poisson", "poisson_gaussian", "rician", "noncentral_chi", "lowdose_ct",
           "lowdose_ct_insertion", "simulate", "get_model", "list_models", "NoiseEstimate", "as_noise",
           "estimate_noise", "sigma_wavelet_mad", "sigma_rician_background", "sigma_mr_foreground", "ct_noise_map",
           "poisson_gaussian_params", "ct_nps", "nps_to_sigma_psd"]
