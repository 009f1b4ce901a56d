"""Regions of interest and the statistics radiologists read in them: mean, standard deviation, HU bias, SNR, CNR.

ROIs file format (``rois.json``)
--------------------------------
A JSON object with a list ``"rois"`` and optional ``"units"`` (``"voxel"``, the default, or ``"mm"``) that applies to
every ROI not giving its own ``"units"``::

    {
      "units": "voxel",
      "rois": [
        {"name": "liver",  "type": "box",    "start": [40, 50, 10], "stop": [60, 70, 20], "role": "signal"},
        {"name": "fat",    "type": "box",    "center": [30, 30, 15], "size": [12, 12, 6], "role": "background"},
        {"name": "lesion", "type": "sphere", "center": [12.5, -40.0, 88.0], "radius": 4.0, "units": "mm"},
        {"name": "water",  "type": "sphere", "center": [48, 48, 24], "radius": 10, "role": "noise"},
        {"name": "edge",   "type": "box",    "start": [10, 30, 20], "stop": [40, 62, 28], "role": "edge"},
        {"name": "brain",  "type": "mask",   "path": "brain_mask.nii.gz"}
      ],
      "cnr": [["lesion", "liver"]]
    }

* ``box``: voxel units: ``start`` (inclusive) and ``stop`` (exclusive) indices ``[i, j, k]``, or ``center`` and
  ``size`` in voxels. ``"units": "mm"``: ``start``/``stop`` are two opposite corners, or ``center`` a point, in RAS+
  patient coordinates (mm, the volume's affine), ``size`` in mm; the box covers the voxels whose centres fall inside.
* ``sphere``: ``center`` (voxel indices, or RAS+ mm) and ``radius`` (voxels of the finest axis, or mm); the sphere is
  round in millimetres even for anisotropic voxels.
* ``mask``: ``path`` to a mask file (relative paths are relative to the JSON file): ``.npy`` is read here; other
  formats (NIfTI, DICOM, ...) need the ``load_mask`` callable given to :func:`load_rois` (the CLI passes
  ``medden.load_volume``). Non-zero voxels are in.
* ``role`` (optional) tells :func:`medden.metrics.evaluate` how to use the ROI: ``"noise"`` — a uniform region for the
  noise power spectrum and noise SD; ``"edge"`` — a box holding one straight (ideally slightly slanted) edge for the
  MTF; ``"signal"`` / ``"background"`` — default pair for CNR; anything else or absent — statistics only.
* ``cnr`` (optional): pairs of ROI names whose contrast-to-noise ratio is reported.

An ROI that lies (partly) outside the volume is an :class:`~medden.errors.InputError` naming it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medden.errors import InputError
from medden.metrics.inputs import ArrayOrVolume, as_array, as_mask, check_pair
from medden.volume import Volume

ROI_TYPES = ("box", "sphere", "mask")
ROI_UNITS = ("voxel", "mm")


@dataclass(frozen=True)
class Roi:
    """One region of interest. Use :meth:`to_mask` to get its voxels on a given grid."""

    name: str
    type: str
    units: str = "voxel"
    start: tuple[float, ...] | None = None
    stop: tuple[float, ...] | None = None
    center: tuple[float, ...] | None = None
    size: tuple[float, ...] | None = None
    radius: float | None = None
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    role: str | None = None

    @classmethod
    def box(cls, name: str, start: Sequence[int], stop: Sequence[int], role: str | None = None) -> Roi:
        """A box of voxels ``start <= [i, j, k] < stop``."""
        return cls(name, "box", start=tuple(start), stop=tuple(stop), role=role)

    @classmethod
    def sphere(cls, name: str, center: Sequence[float], radius: float, units: str = "voxel",
               role: str | None = None) -> Roi:
        """A sphere of ``radius`` (voxels of the finest axis, or mm) around ``center`` (indices, or RAS+ mm)."""
        return cls(name, "sphere", units=units, center=tuple(center), radius=float(radius), role=role)

    @classmethod
    def from_mask(cls, name: str, mask: np.ndarray, role: str | None = None) -> Roi:
        """An ROI given by a boolean mask of the volume's shape."""
        return cls(name, "mask", mask=np.asarray(mask) != 0, role=role)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (the rois.json form, a mask reduced to its voxel count)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name != "mask" and getattr(self, f.name) is not None}
        if self.mask is not None:
            d["voxels"] = int(np.count_nonzero(self.mask))
        return d

    def to_mask(self, shape: Sequence[int], affine: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask of the ROI on a grid of ``shape`` with voxel-to-RAS ``affine`` (identity when None).

        Raises :class:`InputError` when the ROI is (partly) outside the grid or selects no voxel.
        """
        shape = tuple(int(n) for n in shape)
        aff = np.eye(4) if affine is None else np.asarray(affine, float)
        if self.type == "mask":
            return as_mask(self.mask, shape, name=f"ROI {self.name!r} mask")
        if self.type == "box":
            lo, hi = self._box_bounds(aff)
            self._check_inside(lo, hi, shape)
            m = np.zeros(shape, bool)
            m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
        elif self.type == "sphere":
            m = self._sphere_mask(shape, aff)
        else:
            raise InputError(f"ROI {self.name!r}: unknown type {self.type!r} (known: {', '.join(ROI_TYPES)})")
        if not m.any():
            raise InputError(f"ROI {self.name!r} selects no voxel")
        return m

    # -- geometry ---------------------------------------------------------------------------------------------
    def _box_bounds(self, aff: np.ndarray) -> tuple[list[int], list[int]]:
        if self.start is not None and self.stop is not None:
            a, b = np.asarray(self.start, float), np.asarray(self.stop, float)
        elif self.center is not None and self.size is not None:
            c, s = np.asarray(self.center, float), np.asarray(self.size, float)
            a, b = c - s / 2, c + s / 2
        else:
            raise InputError(f"ROI {self.name!r}: a box needs 'start' and 'stop', or 'center' and 'size'")
        if a.shape != (3,) or b.shape != (3,):
            raise InputError(f"ROI {self.name!r}: box coordinates need 3 values each")
        if self.units == "mm":
            if self.start is None:  # center + size in mm: size is along the voxel axes, in mm
                sp = np.linalg.norm(aff[:3, :3], axis=0)
                c = _world_to_voxel(aff, np.asarray(self.center, float))
                half = np.asarray(self.size, float) / sp / 2
                a, b = c - half, c + half
            else:
                corners = np.array([[x, y, z] for x in (a[0], b[0]) for y in (a[1], b[1]) for z in (a[2], b[2])])
                vox = _world_to_voxel(aff, corners)
                a, b = vox.min(axis=0), vox.max(axis=0)
            lo = [math.ceil(v - 1e-6) for v in a]  # voxels whose centre lies inside
            hi = [math.floor(v + 1e-6) + 1 for v in b]
        else:
            lo = [int(round(v)) for v in a]
            hi = [int(round(v)) for v in b]
        if any(h <= l for l, h in zip(lo, hi)):
            raise InputError(f"ROI {self.name!r}: empty box from {lo} to {hi} (stop must exceed start)")
        return lo, hi

    def _sphere_mask(self, shape: tuple[int, ...], aff: np.ndarray) -> np.ndarray:
        if self.center is None or self.radius is None or len(self.center) != 3:
            raise InputError(f"ROI {self.name!r}: a sphere needs a 3-value 'center' and a 'radius'")
        if not self.radius > 0:
            raise InputError(f"ROI {self.name!r}: radius must be positive, got {self.radius}")
        sp = np.linalg.norm(aff[:3, :3], axis=0)
        if self.units == "mm":
            c = _world_to_voxel(aff, np.asarray(self.center, float))
            r_mm = float(self.radius)
        else:
            c = np.asarray(self.center, float)
            r_mm = float(self.radius) * sp.min()
        half = r_mm / sp
        lo = [math.ceil(v - 1e-6) for v in c - half]
        hi = [math.floor(v + 1e-6) + 1 for v in c + half]
        self._check_inside(lo, hi, shape)
        grids = np.meshgrid(*[np.arange(l, h) for l, h in zip(lo, hi)], indexing="ij")
        d2 = sum(((g - ci) * s) ** 2 for g, ci, s in zip(grids, c, sp))
        m = np.zeros(shape, bool)
        m[tuple(slice(l, h) for l, h in zip(lo, hi))] = d2 <= r_mm**2 + 1e-9
        return m

    def _check_inside(self, lo: Sequence[int], hi: Sequence[int], shape: tuple[int, ...]) -> None:
        if any(l < 0 for l in lo) or any(h > n for h, n in zip(hi, shape)):
            raise InputError(f"ROI {self.name!r} ({self.type} covering voxels {list(lo)} to "
                             f"{[h - 1 for h in hi]}) lies outside the volume of shape {shape}")


def _world_to_voxel(aff: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.atleast_2d(points)
    vox = (np.linalg.inv(aff) @ np.c_[pts, np.ones(len(pts))].T)[:3].T
    return vox[0] if np.ndim(points) == 1 else vox


@dataclass(frozen=True)
class RoiSet:
    """The ROIs of one study plus the CNR pairs to report (see the module docstring for the JSON form)."""

    rois: tuple[Roi, ...] = ()
    cnr_pairs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        names = [r.name for r in self.rois]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"ROI name(s) used twice: {', '.join(dup)}")
        for a, b in self.cnr_pairs:
            for n in (a, b):
                if n not in names:
                    raise InputError(f"CNR pair ({a!r}, {b!r}) names unknown ROI {n!r} (ROIs: {', '.join(names)})")

    def __getitem__(self, name: str) -> Roi:
        for r in self.rois:
            if r.name == name:
                return r
        raise InputError(f"no ROI named {name!r}")

    def with_role(self, role: str) -> list[Roi]:
        return [r for r in self.rois if r.role == role]

    def pairs(self) -> list[tuple[str, str]]:
        """CNR pairs: the explicit ones, else every (signal, background) pair by role."""
        if self.cnr_pairs:
            return list(self.cnr_pairs)
        return [(s.name, b.name) for s in self.with_role("signal") for b in self.with_role("background")]


def parse_rois(spec: dict[str, Any] | list[Any], base_dir: str | Path = ".",
               load_mask: Callable[[str], Any] | None = None) -> RoiSet:
    """Build a :class:`RoiSet` from the rois.json structure (a dict, or a bare list of ROI objects)."""
    if isinstance(spec, list):
        spec = {"rois": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("rois"), list):
        raise InputError("ROIs: expected a JSON object with a list 'rois'")
    units = spec.get("units", "voxel")
    rois = []
    for n, item in enumerate(spec["rois"]):
        if not isinstance(item, dict):
            raise InputError(f"ROI #{n}: expected an object, got {item!r}")
        name = str(item.get("name", f"roi{n}"))
        kind = item.get("type", "box")
        u = item.get("units", units)
        if kind not in ROI_TYPES:
            raise InputError(f"ROI {name!r}: unknown type {kind!r} (known: {', '.join(ROI_TYPES)})")
        if u not in ROI_UNITS:
            raise InputError(f"ROI {name!r}: unknown units {u!r} (known: {', '.join(ROI_UNITS)})")
        unknown = set(item) - {"name", "type", "units", "start", "stop", "center", "size", "radius", "path", "role"}
        if unknown:
            raise InputError(f"ROI {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
        mask = None
        if kind == "mask":
            if "path" not in item:
                raise InputError(f"ROI {name!r}: a mask ROI needs a 'path'")
            mask = _read_mask(Path(base_dir) / item["path"], name, load_mask)
        vec = lambda key: None if item.get(key) is None else tuple(float(v) for v in item[key])  # noqa: E731
        try:
            rois.append(Roi(name=name, type=kind, units=u, start=vec("start"), stop=vec("stop"),
                            center=vec("center"), size=vec("size"),
                            radius=None if item.get("radius") is None else float(item["radius"]),
                            mask=mask, role=item.get("role")))
        except (TypeError, ValueError):
            raise InputError(f"ROI {name!r}: coordinates must be numbers") from None
    pairs = spec.get("cnr", [])
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise InputError("ROIs: 'cnr' must be a list of [name, name] pairs")
    return RoiSet(tuple(rois), tuple((str(a), str(b)) for a, b in pairs))


def load_rois(path: str | Path, load_mask: Callable[[str], Any] | None = None) -> RoiSet:
    """Read a rois.json file (format in this module's docstring).

    Parameters
    ----------
    path : str or Path
        The JSON file.
    load_mask : callable, optional
        ``load_mask(path) -> Volume or ndarray`` for mask files other than ``.npy`` (e.g. ``medden.load_volume``).
    """
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"ROIs file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read ROIs file {path}: {exc}") from None
    return parse_rois(spec, base_dir=path.parent, load_mask=load_mask)


def _read_mask(path: Path, name: str, load_mask: Callable[[str], Any] | None) -> np.ndarray:
    if not path.exists():
        raise InputError(f"ROI {name!r}: mask file not found: {path}")
    if path.suffix == ".npy":
        return np.load(path) != 0
    if load_mask is None:
        raise InputError(f"ROI {name!r}: mask {path} is not .npy; pass load_mask (e.g. medden.load_volume)")
    m = load_mask(str(path))
    return np.asarray(m.data if isinstance(m, Volume) else m) != 0


# -- statistics -------------------------------------------------------------------------------------------------
def roi_mask(image: ArrayOrVolume, roi: Roi | ArrayOrVolume | None) -> np.ndarray:
    """The boolean mask of ``roi`` on ``image``'s grid (all voxels when ``roi`` is None)."""
    shape = np.shape(image.data if isinstance(image, Volume) else image)
    if roi is None:
        return np.ones(shape, bool)
    if isinstance(roi, Roi):
        return roi.to_mask(shape, image.affine if isinstance(image, Volume) else None)
    return as_mask(roi, shape, name="ROI mask")


@dataclass(frozen=True)
class RoiStats:
    """Statistics of the voxels in one ROI, in the image's units (HU for CT)."""

    mean: float
    std: float
    n: int
    sem: float  #: standard error of the mean, std / sqrt(n) (assumes uncorrelated voxels)
    min: float
    max: float


def roi_stats(image: ArrayOrVolume, roi: Roi | ArrayOrVolume | None = None) -> RoiStats:
    """Mean, standard deviation (ddof=1), voxel count, standard error, min and max over ``roi``."""
    data = as_array(image, "image")
    vals = data[roi_mask(image, roi)]
    std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    return RoiStats(mean=float(vals.mean()), std=std, n=int(vals.size), sem=std / math.sqrt(vals.size),
                    min=float(vals.min()), max=float(vals.max()))


@dataclass(frozen=True)
class HuBias:
    """Mean difference estimate − reference over an ROI (HU for CT) with its standard error."""

    bias: float
    standard_error: float
    reference_mean: float
    estimate_mean: float
    n: int

    @property
    def z(self) -> float:
        """Bias in units of its standard error (|z| < 2 is consistent with no bias)."""
        return self.bias / self.standard_error if self.standard_error > 0 else math.copysign(math.inf, self.bias)


def hu_bias(reference: ArrayOrVolume, estimate: ArrayOrVolume, roi: Roi | ArrayOrVolume | None = None,
            spacing: Sequence[float] | None = None) -> HuBias:
    """Bias of the estimate's mean against the reference's in ``roi``: ``mean(estimate - reference)``.

    The standard error is ``std(estimate - reference) / sqrt(n)``, exact for uncorrelated noise; for spatially
    correlated noise (most denoised images) it is optimistic, so read the bias against a few standard errors.
    """
    ref, est = check_pair(reference, estimate)
    m = roi_mask(reference if isinstance(reference, Volume) else ref, roi)
    d = est[m] - ref[m]
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    return HuBias(bias=float(d.mean()), standard_error=se, reference_mean=float(ref[m].mean()),
                  estimate_mean=float(est[m].mean()), n=int(d.size))


def snr(image: ArrayOrVolume, signal_roi: Roi | ArrayOrVolume, noise_roi: Roi | ArrayOrVolume | None = None) -> float:
    """Signal-to-noise ratio ``mean(signal ROI) / std(noise ROI)``; the noise ROI defaults to the signal ROI."""
    s = roi_stats(image, signal_roi)
    sd = roi_stats(image, noise_roi).std if noise_roi is not None else s.std
    return float(s.mean / sd) if sd > 0 else math.inf


def cnr(image: ArrayOrVolume, roi_a: Roi | ArrayOrVolume, roi_b: Roi | ArrayOrVolume,
        noise_roi: Roi | ArrayOrVolume | None = None) -> float:
    """Contrast-to-noise ratio ``|mean_a - mean_b| / σ``.

    ``σ`` is the standard deviation in ``noise_roi`` when given, else the pooled ``sqrt((σ_a² + σ_b²) / 2)``.
    """
    a, b = roi_stats(image, roi_a), roi_stats(image, roi_b)
    sd = roi_stats(image, noise_roi).std if noise_roi is not None else math.sqrt((a.std**2 + b.std**2) / 2)
    return float(abs(a.mean - b.mean) / sd) if sd > 0 else math.inf
