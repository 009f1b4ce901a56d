"""Conventions every part of medden shares, defined once: modality codes, file hashing, the slice and axial axes of a
volume, Hounsfield-unit scaling and the percentile of the non-zero voxels. (File suffixes belong to the format
modules: :data:`medden.io.VOLUME_SUFFIXES`, :data:`medden.io.dicom.SUFFIXES`.)

NumPy and the standard library only, so anything may import it (io, noise, metrics, models, training, the CLI).
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable

import numpy as np

#: DICOM modality codes medden knows; anything else is ``"OT"`` (other).
MODALITIES = ("CT", "MR", "PT", "NM", "DX", "CR", "OT")
ALL_MODALITIES = MODALITIES

#: Hounsfield units per network unit: every CT network sees ``HU / CT_HU_PER_UNIT`` (air −1, water 0, dense bone ≈ 1).
#: The U-Nets' cards record ``offset 0, scale 1000``; the diffusion prior's ``z = 2·(HU − offset)/scale − 1`` uses
#: ``offset −1000, scale 2000``, which is the same ``HU/1000`` (see :data:`medden.models.card.CT_NORMALISATION`).
CT_HU_PER_UNIT = 1000.0


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return sha256_paths([path])


def sha256_paths(paths: Iterable[str | os.PathLike]) -> str:
    """SHA-256 (hex) over the bytes of ``paths`` in the order given (a folder: its files in sorted order), read in
    1 MiB chunks."""
    from pathlib import Path

    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def slice_axis(spacing) -> int:
    """The axis a volume is cut into slices along: the coarsest-spacing one when it is > 1.2× the finest, else the
    last (the axial axis of a NIfTI/DICOM volume)."""
    sp = np.asarray(spacing if spacing is not None else (1.0, 1.0, 1.0), dtype=float)
    return int(np.argmax(sp)) if sp.max() > 1.2 * sp.min() else 2


def axial_axis(direction) -> int:
    """The voxel axis across axial slices: the one whose direction points most nearly superior–inferior
    (``direction`` is a volume's 3×3 matrix of unit axis vectors in patient coordinates, e.g.
    :attr:`medden.volume.Volume.direction`)."""
    return int(np.argmax(np.abs(np.asarray(direction)[2, :])))


def nonzero_percentile(data: np.ndarray, q: float, *, absolute: bool = True) -> float:
    """The ``q``-th percentile (0–100) of the non-zero voxels of ``data`` (of their magnitudes when ``absolute``);
    1.0 when every voxel is zero. Above 4 M voxels a strided subsample of about 2 M gives the same value within 1 %."""
    flat = np.asarray(data).reshape(-1)
    if flat.size > 4_000_000:
        flat = flat[:: flat.size // 2_000_000]
    values = np.abs(flat) if absolute else flat
    nonzero = values[values != 0]
    return float(np.percentile(nonzero, q)) if nonzero.size else 1.0


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ≥ 4.7 reports it in /proc)."""
    try:
        with open("/proc/self/status") as status:
            lines = status.read().splitlines()
        for line in lines:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the mask is process-wide, so do it once per write only)
    os.umask(mask)
    return mask


def give_normal_permissions(tmp: str | os.PathLike) -> None:
    """Give a finished temporary output the mode a plain ``open``/``mkdir`` would have under the umask.

    ``mkstemp`` creates 0600 files and ``mkdtemp`` 0700 folders, which colleagues cannot read; the final output must
    look like any other file the user writes (0644 files and 0755 folders under umask 022).
    """
    umask = current_umask()
    if os.path.isdir(tmp):
        os.chmod(tmp, 0o777 & ~umask)
        for root, dirs, files in os.walk(tmp):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~umask)
    else:
        os.chmod(tmp, 0o666 & ~umask)
