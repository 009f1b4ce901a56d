"""Calibration of a per-voxel uncertainty map (the standard deviation a posterior sampler predicts).

With the reference ``x``, the estimate ``m`` and the predicted standard deviation ``s`` per voxel:

* **coverage at k**: the fraction of voxels with ``|x − m| ≤ k·s``. A calibrated Gaussian posterior gives
  ``erf(k/√2)`` (68.3 % at k = 1, 95.4 % at k = 2);
* **reliability curve**: voxels binned by predicted ``s`` (equal-count bins); in each bin the mean predicted ``s``
  against the observed RMS error. Calibrated points lie on the diagonal; points above it are over-confident
  (Levi et al., "Evaluating and calibrating uncertainty prediction in regression tasks", 2019);
* **std/RMSE**: mean predicted ``s`` over the observed RMS error (1 when the spread matches the error on average).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from medden.errors import InputError

#: the multiples of the predicted standard deviation at which coverage is reported
COVERAGE_KS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


@dataclass
class ReliabilityBin:
    predicted_std: float
    observed_rmse: float
    voxels: int


@dataclass
class UncertaintyCalibration:
    """Coverage, reliability curve and spread-to-error ratio of one uncertainty map."""

    coverage: dict[str, float]  #: k (as text) → observed fraction with |error| ≤ k·std
    nominal: dict[str, float]  #: k → erf(k/√2), the calibrated Gaussian's coverage
    reliability: list[ReliabilityBin]
    mean_std: float
    rmse: float
    voxels: int

    @property
    def coverage_2sd(self) -> float:
        return self.coverage["2"]

    @property
    def std_to_rmse(self) -> float:
        return self.mean_std / self.rmse if self.rmse > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(coverage_2sd=self.coverage_2sd, std_to_rmse=self.std_to_rmse)
        return d


def uncertainty_calibration(reference: np.ndarray, estimate: np.ndarray, std: np.ndarray,
                            mask: np.ndarray | None = None, ks: Sequence[float] = COVERAGE_KS,
                            bins: int = 10) -> UncertaintyCalibration:
    """Calibration of ``std`` as the uncertainty of ``estimate`` about ``reference`` (same shapes), over ``mask``."""
    ref, est, s = (np.asarray(a, dtype=np.float64) for a in (reference, estimate, std))
    if not ref.shape == est.shape == s.shape:
        raise InputError(f"reference, estimate and uncertainty map differ in shape: {ref.shape}, {est.shape}, {s.shape}")
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise InputError("the uncertainty map must hold finite, non-negative standard deviations")
    sel = np.ones(ref.shape, bool) if mask is None else np.asarray(mask, bool)
    if not sel.any():
        raise InputError("the mask selects no voxel")
    ks = sorted(set(float(k) for k in ks) | {2.0})
    err = np.abs(ref - est)[sel]
    s = s[sel]
    coverage = {f"{k:g}": float(np.mean(err <= k * s)) for k in ks}
    nominal = {f"{k:g}": float(math.erf(k / math.sqrt(2))) for k in ks}
    order = np.argsort(s, kind="stable")
    curve = [ReliabilityBin(float(np.mean(s[i])), float(np.sqrt(np.mean(err[i] ** 2))), int(len(i)))
             for i in np.array_split(order, min(bins, len(order))) if len(i)]
    return UncertaintyCalibration(coverage=coverage, nominal=nominal, reliability=curve, mean_std=float(np.mean(s)),
                                  rmse=float(np.sqrt(np.mean(err ** 2))), voxels=int(sel.sum()))


__all__ = ["uncertainty_calibration", "UncertaintyCalibration", "ReliabilityBin", "COVERAGE_KS"]
