"""Boundary checks shared by the metrics: turn a :class:`~medden.volume.Volume` or array into a float array plus
its voxel spacing, and refuse pairs that do not describe the same voxels.

Every metric calls these first, so the inner code can trust its input (STYLE habit 10).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from medden.errors import InputError
from medden.volume import Volume

ArrayOrVolume = Union[np.ndarray, Volume]


def as_array(x: ArrayOrVolume, name: str = "image", ndim: int | None = 3) -> np.ndarray:
    """The voxels of ``x`` as a float64 array; raises :class:`InputError` for a wrong dimensionality or NaN/Inf."""
    data = x.data if isinstance(x, Volume) else x
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} is not a numeric array (got {type(x).__name__})") from None
    if ndim is not None and arr.ndim != ndim:
        raise InputError(f"{name} must be {ndim}D, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} holds {int(arr.size - np.isfinite(arr).sum())} NaN/Inf voxel(s)")
    return arr


def resolve_spacing(*images: ArrayOrVolume | None, spacing: Sequence[float] | None = None,
                    ndim: int = 3) -> tuple[float, ...]:
    """Voxel size in mm: ``spacing`` if given, else the first :class:`Volume`'s, else 1 mm along each axis."""
    if spacing is None:
        spacing = next((im.spacing for im in images if isinstance(im, Volume)), (1.0,) * ndim)
    try:
        sp = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,)))
    except ValueError:
        raise InputError(f"spacing must give {ndim} voxel sizes in mm, got {spacing!r}") from None
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"spacing must be positive voxel sizes in mm, got {spacing!r}")
    return sp


def check_pair(reference: ArrayOrVolume, estimate: ArrayOrVolume, ref_name: str = "reference",
               est_name: str = "estimate") -> tuple[np.ndarray, np.ndarray]:
    """Both images as float arrays, after checking they hold the same voxels.

    Raises :class:`InputError` naming the problem when the shapes differ or, for two volumes, the geometries
    (affines) differ.
    """
    ref = as_array(reference, ref_name)
    est = as_array(estimate, est_name)
    if ref.shape != est.shape:
        raise InputError(f"shape mismatch: {ref_name} has shape {ref.shape}, {est_name} has shape {est.shape}")
    if isinstance(reference, Volume) and isinstance(estimate, Volume) and not reference.same_geometry(estimate):
        raise InputError(f"{est_name} has another geometry than the {ref_name}: affines differ "
                         f"(spacing {_fmt(estimate.spacing)} vs {_fmt(reference.spacing)} mm, origin "
                         f"{_fmt(estimate.origin)} vs {_fmt(reference.origin)} mm); resample it onto the "
                         f"{ref_name} grid first")
    return ref, est


def as_mask(mask: ArrayOrVolume | None, shape: tuple[int, ...], name: str = "mask") -> np.ndarray | None:
    """A boolean mask of ``shape`` (non-zero voxels are in), or None; refuses another shape or an empty mask."""
    if mask is None:
        return None
    m = np.asarray(mask.data if isinstance(mask, Volume) else mask)
    if m.shape != tuple(shape):
        raise InputError(f"shape mismatch: {name} has shape {m.shape}, the image has shape {tuple(shape)}")
    m = m != 0
    if not m.any():
        raise InputError(f"{name} selects no voxel")
    return m


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
