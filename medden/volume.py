"""The :class:`Volume`: voxel data in physical units travelling together with its geometry.

Conventions
-----------
* ``data`` is a 3D ``float32`` array indexed ``[i, j, k]`` (NIfTI order: for a DICOM series ``i`` runs along a row,
  i.e. the column index, ``j`` along a column, ``k`` across slices). Values are in physical units: Hounsfield units
  for CT, scanner units for MR.
* ``affine`` is the 4×4 matrix mapping voxel indices ``(i, j, k, 1)`` to patient coordinates in millimetres in
  **RAS+** (nibabel / NIfTI convention). :attr:`Volume.affine_lps` gives the DICOM/ITK (LPS+) form.
* ``modality`` is a DICOM modality code (``"CT"``, ``"MR"``, ``"PT"``, ``"NM"``, ``"DX"``) or ``"OT"`` if unknown.
* ``meta`` holds what the writer needs to write the volume back in its source format (source path, format, stored
  data type, DICOM headers ...). Processing steps append a line to ``history``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medden.conventions import MODALITIES  # noqa: F401  (re-exported: medden.volume.MODALITIES)
from medden.errors import InputError

#: RAS <-> LPS: flip the first two patient axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scan: float32 voxels in physical units plus the RAS+ affine and the metadata to write it back.

    Examples
    --------
    >>> import numpy as np
    >>> v = Volume(np.zeros((4, 5, 6), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]), modality="CT")
    >>> v.spacing
    (0.5, 0.5, 2.0)
    >>> v.orientation
    'RAS'
    """

    data: np.ndarray
    affine: np.ndarray
    modality: str = "OT"
    meta: dict[str, Any] = field(default_factory=dict)
    history: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim != 3:
            raise InputError(f"a volume must be 3D, got an array of shape {data.shape}")
        if min(data.shape) < 2:
            raise InputError(f"a volume must have at least 2 voxels along each axis, got shape {data.shape}")
        if data.dtype != np.float32:
            data = data.astype(np.float32)
        if not np.isfinite(data).all():
            bad = int(np.size(data) - np.isfinite(data).sum())
            raise InputError(f"volume holds {bad} NaN/Inf voxel(s)")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise InputError("affine must be a finite, invertible 4x4 matrix")
        modality = str(self.modality).upper() or "OT"
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "modality", modality if modality in MODALITIES else "OT")

    # -- geometry -------------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (lengths of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def origin(self) -> np.ndarray:
        """RAS+ position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3×3 matrix of unit direction cosines (columns: i, j, k axes) in RAS+."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def affine_lps(self) -> np.ndarray:
        """The affine in DICOM/ITK LPS+ patient coordinates."""
        return RAS_TO_LPS @ self.affine

    @property
    def orientation(self) -> str:
        """Three-letter RAS-style code: the patient direction each voxel axis points to, e.g. ``'LPS'``, ``'RAS'``."""
        return orientation_code(self.affine)

    # -- derived volumes ------------------------------------------------------------------------------------------
    def with_data(self, data: np.ndarray, step: str | None = None, **meta: Any) -> Volume:
        """A new volume with other voxels of the same shape and the same geometry; ``step`` is added to history."""
        data = np.asarray(data)
        if data.shape != self.data.shape:
            raise InputError(f"new data shape {data.shape} differs from the volume's {self.data.shape}")
        history = self.history + ((step,) if step else ())
        return dataclasses.replace(self, data=data, meta={**self.meta, **meta}, history=history)

    def same_geometry(self, other: Volume, atol_mm: float = 1e-4) -> bool:
        """True when ``other`` has the same shape and an affine equal within ``atol_mm``."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol_mm, rtol=0))

    def __repr__(self) -> str:
        sp = "×".join(f"{s:.3g}" for s in self.spacing)
        return (f"Volume(shape={self.shape}, spacing={sp} mm, orientation={self.orientation}, "
                f"modality={self.modality!r})")


def orientation_code(affine: np.ndarray) -> str:
    """Axis codes (RAS+ convention) of a voxel-to-RAS affine: the direction each voxel axis mostly points to."""
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    rotation = np.asarray(affine, dtype=float)[:3, :3]
    code, used = [], set()
    for col in range(3):
        v = rotation[:, col].copy()
        v[list(used)] = 0.0  # never give two voxel axes the same patient axis
        axis = int(np.argmax(np.abs(v)))
        used.add(axis)
        code.append(labels[axis][int(v[axis] > 0)])
    return "".join(code)
