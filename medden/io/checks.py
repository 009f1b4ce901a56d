"""Checks every reader applies to what it read, so that a bad file fails at the boundary with a clear message."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medden.errors import InputError


def as_3d(data: np.ndarray, path: Path) -> np.ndarray:
    """Return ``data`` as a 3D array (trailing singleton dimensions dropped) or raise naming the problem."""
    shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 3:
        raise InputError(f"{path} is {data.ndim}D (shape {_fmt(shape)}); medden denoises one 3D volume at a time "
                         f"— split the series first")
    if data.ndim < 3 or min(data.shape) < 2:
        raise InputError(f"{path} is a 2D image (shape {_fmt(shape)}); medden needs a 3D volume")
    if data.size == 0:
        raise InputError(f"{path} holds no voxels")
    finite = np.isfinite(data)
    if not finite.all():
        raise InputError(f"{path} holds {int(data.size - finite.sum())} NaN/Inf voxel(s)")
    return data


def _fmt(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape)
