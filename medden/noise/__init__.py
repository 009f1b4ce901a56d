"""Noise physics: models to simulate noise and estimators of the noise in a scan."""
from medden.noise.estimate import sigma_wavelet_mad

__all__ = ["sigma_wavelet_mad"]
