"""Noise physics: models to simulate noise, estimators of the noise in a scan, and :func:`simulate`.

Models (each a pure function ``fn(data, *, generator, **physical_params)``, NumPy or torch in, same out):
:func:`gaussian`, :func:`poisson`, :func:`poisson_gaussian`, :func:`rician`, :func:`noncentral_chi`,
:func:`lowdose_ct`, :func:`lowdose_ct_insertion`; registered by name in :mod:`medden.noise.registry`.
"""
from medden.noise.counting import poisson, poisson_gaussian
from medden.noise.estimate import (NoiseEstimate, ct_noise_map, ct_nps, estimate_noise, nps_to_sigma_psd,
                                   poisson_gaussian_params, sigma_rician_background, sigma_wavelet_mad)
from medden.noise.gaussian import gaussian
from medden.noise.lowdose_ct import lowdose_ct, lowdose_ct_insertion
from medden.noise.mri import noncentral_chi, rician
from medden.noise.registry import get_model, list_models
from medden.noise.simulate import simulate

__all__ = ["gaussian", "poisson", "poisson_gaussian", "rician", "noncentral_chi", "lowdose_ct",
           "lowdose_ct_insertion", "simulate", "get_model", "list_models", "NoiseEstimate", "estimate_noise",
           "sigma_wavelet_mad", "sigma_rician_background", "ct_noise_map", "poisson_gaussian_params", "ct_nps",
           "nps_to_sigma_psd"]
