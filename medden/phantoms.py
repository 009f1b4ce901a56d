"""Phantoms with known ground truth, at any size and voxel spacing: the data tests and benchmarks are made of.

* :func:`shepp_logan_3d` — the 3D Shepp–Logan head (ellipsoids of Kak & Slaney 1988, table 3.1 extended to 3D with
  the contrast-enhanced "modified" intensities of Toft 1996), in arbitrary units 0–1.
* :func:`water_cylinder` — a CT water cylinder in HU with cylindrical contrast inserts of known HU, for HU bias,
  CNR and noise power spectrum measurements (in the spirit of the ACR CT accreditation phantom, module 1).
* :func:`slanted_edge` — a CT slanted-edge object for MTF measurement by the edge method (ISO 12233; Judy 1976).
* :func:`piecewise_smooth` — a noise-free, piecewise-smooth version of a real scan (its tissue classes, each filled
  with its own local mean): real anatomy with known truth, for clean references and supervised training targets.

Geometry: voxel ``(i, j, k)`` is centred at ``((i − (n_i−1)/2)·s_i, …)`` mm, the phantom centre at the volume
centre; the affine is diagonal (RAS+), so ``k`` is the axial (superior) axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medden.errors import InputError, ParameterError
from medden.volume import Volume

# Modified Shepp–Logan 3D ellipsoids: intensity, semi-axes (a, b, c), centre (x0, y0, z0), rotation φ (deg) about z.
_SHEPP_LOGAN_3D = (
    (1.0, 0.6900, 0.920, 0.810, 0.0, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.780, 0.0, -0.0184, 0.0, 0.0),
    (-0.2, 0.1100, 0.310, 0.220, 0.22, 0.0, 0.0, -18.0),
    (-0.2, 0.1600, 0.410, 0.280, -0.22, 0.0, 0.0, 18.0),
    (0.1, 0.2100, 0.250, 0.410, 0.0, 0.35, -0.15, 0.0),
    (0.1, 0.0460, 0.046, 0.050, 0.0, 0.1, 0.25, 0.0),
    (0.1, 0.0460, 0.046, 0.050, 0.0, -0.1, 0.25, 0.0),
    (0.1, 0.0460, 0.023, 0.050, -0.08, -0.605, 0.0, 0.0),
    (0.1, 0.0230, 0.023, 0.020, 0.0, -0.606, 0.0, 0.0),
    (0.1, 0.0230, 0.046, 0.020, 0.06, -0.605, 0.0, 0.0),
)

#: CT tissue-class boundaries (HU) for :func:`piecewise_smooth`: air | lung | lung/soft mix | fat | soft tissue |
#: enhanced tissue | bone.
CT_TISSUE_EDGES = (-950.0, -500.0, -200.0, -30.0, 120.0, 300.0)

#: Default contrast inserts of :func:`water_cylinder`: name → HU (ACR-like: polyethylene, bone, acrylic, air).
DEFAULT_INSERTS = {"polyethylene": -95.0, "bone": 955.0, "acrylic": 120.0, "air": -1000.0}


@dataclass(frozen=True)
class Phantom:
    """A phantom volume with its regions of interest: ``rois`` maps a name to a boolean mask (eroded so it stays clear
    of edges) and ``truth`` maps the same name to the region's true value."""

    volume: Volume
    rois: dict[str, np.ndarray] = field(default_factory=dict)
    truth: dict[str, float] = field(default_factory=dict)


def _check(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[tuple[int, ...], np.ndarray]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise InputError(f"a phantom needs a 3D shape with at least 2 voxels per axis, got {shape}")
    sp = np.asarray(spacing, dtype=float).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, 3)
    if sp.size != 3 or (sp <= 0).any():
        raise ParameterError(f"spacing must be 3 positive sizes in mm, got {spacing}")
    return shape, sp


def _coords(shape: tuple[int, ...], sp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in mm, broadcastable ``(X,1,1)``, ``(1,Y,1)``, ``(1,1,Z)``."""
    return tuple((np.arange(n) - (n - 1) / 2).reshape([-1 if a == ax else 1 for a in range(3)]) * sp[ax]
                 for ax, n in enumerate(shape))  # type: ignore[return-value]


def _affine(sp: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -(np.asarray(shape) - 1) / 2 * sp
    return aff


def shepp_logan_3d(shape: tuple[int, int, int] = (128, 128, 128),
                   spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), modality: str = "MR") -> Volume:
    """The 3D modified Shepp–Logan phantom, scaled to fill the volume's extent on each axis.

    Parameters
    ----------
    shape : voxels along (i, j, k).
    spacing : voxel size in mm.
    modality : DICOM modality recorded on the volume (default ``"MR"``: intensities 0–1, background 0).

    Returns
    -------
    Volume
        Intensities in [0, 1] (background 0, skull 1, brain 0.2, ...).

    Examples
    --------
    >>> v = shepp_logan_3d((32, 32, 32))
    >>> v.shape, float(v.data.max())
    ((32, 32, 32), 1.0)
    """
    shape, sp = _check(shape, spacing)
    x, y, z = _coords(shape, sp)
    half = np.asarray(shape) * sp / 2
    x, y, z = x / half[0], y / half[1], z / half[2]  # the phantom spans [-1, 1] on each axis
    data = np.zeros(shape, np.float32)
    for value, a, b, c, x0, y0, z0, phi in _SHEPP_LOGAN_3D:
        cp, sn = np.cos(np.radians(phi)), np.sin(np.radians(phi))
        xr = (x - x0) * cp + (y - y0) * sn
        yr = -(x - x0) * sn + (y - y0) * cp
        inside = (xr / a) ** 2 + (yr / b) ** 2 + ((z - z0) / c) ** 2 <= 1
        data[inside] += value
    return Volume(np.clip(data, 0, None), _affine(sp, shape), modality=modality,
                  meta={"phantom": "shepp-logan-3d"})


def water_cylinder(shape: tuple[int, int, int] = (256, 256, 16), spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
                   diameter_mm: float | None = None, inserts: dict[str, float] | None = None,
                   insert_diameter_mm: float | None = None, water_hu: float = 0.0) -> Phantom:
    """A water cylinder along ``k`` in air, with cylindrical inserts of known HU on a ring.

    Parameters
    ----------
    shape : voxels (i, j, k); slices are axial (along ``k``).
    spacing : voxel size in mm.
    diameter_mm : cylinder diameter (default 80 % of the smaller in-plane field of view).
    inserts : name → HU; default :data:`DEFAULT_INSERTS`. Pass ``{}`` for plain water (NPS, noise scaling).
    insert_diameter_mm : diameter of each insert (default 15 % of the cylinder's).
    water_hu : HU of the water (0 for an ideal scan).

    Returns
    -------
    Phantom
        ``volume`` in HU (air −1000, modality CT), ``rois`` with masks ``"water"`` (a central disc clear of the
        inserts, or the inner 60 % of the cylinder when there are none) and one per insert, each eroded to 70 % of
        the insert's radius; ``truth`` with their HU.
    """
    shape, sp = _check(shape, spacing)
    inserts = DEFAULT_INSERTS if inserts is None else dict(inserts)
    x, y, _ = _coords(shape, sp)
    fov = min(shape[0] * sp[0], shape[1] * sp[1])
    radius = (diameter_mm or 0.8 * fov) / 2
    r_ins = (insert_diameter_mm or 0.3 * radius) / 2
    if radius > fov / 2:
        raise ParameterError(f"a {2 * radius:g} mm cylinder does not fit a {fov:g} mm field of view")
    rr = np.hypot(x, y)
    inside = np.broadcast_to(rr <= radius, shape[:2] + (1,))
    data = np.where(inside, np.float32(water_hu), np.float32(-1000.0)) * np.ones(shape, np.float32)
    rois, truth = {}, {}
    ring = radius * 0.55
    for n, (name, hu) in enumerate(inserts.items()):
        ang = 2 * np.pi * n / max(1, len(inserts)) + np.pi / 4
        d = np.hypot(x - ring * np.cos(ang), y - ring * np.sin(ang))
        data[np.broadcast_to(d <= r_ins, shape[:2] + (1,)).repeat(shape[2], 2)] = hu
        rois[name] = np.broadcast_to(d <= 0.7 * r_ins, shape[:2] + (1,)).repeat(shape[2], 2)
        truth[name] = float(hu)
    water_r = 0.7 * (ring - r_ins) if inserts else 0.6 * radius
    rois["water"] = np.broadcast_to(rr <= water_r, shape[:2] + (1,)).repeat(shape[2], 2)
    truth["water"] = float(water_hu)
    vol = Volume(data, _affine(sp, shape), modality="CT",
                 meta={"phantom": "water-cylinder", "diameter_mm": 2 * radius, "inserts": dict(inserts)})
    return Phantom(vol, rois, truth)


def slanted_edge(shape: tuple[int, int, int] = (128, 128, 8), spacing: tuple[float, float, float] = (0.5, 0.5, 1.0),
                 angle_deg: float = 5.0, low_hu: float = 0.0, high_hu: float = 1000.0,
                 oversample: int = 8) -> Phantom:
    """A straight edge through the centre of each axial slice, tilted by ``angle_deg`` from the ``j`` axis.

    Voxels are area-sampled (``oversample``² sub-samples per pixel), so the edge is the ideal step integrated over
    the pixel: an MTF measured on it is that of the system alone. Voxels with ``x·cos a − y·sin a > 0`` hold
    ``high_hu``.

    Returns
    -------
    Phantom
        ``volume`` (modality CT, HU) and ``rois`` ``"low"`` and ``"high"`` (at least 5 pixels from the edge) with
        their ``truth``; ``volume.meta["edge_angle_deg"]`` records the angle.
    """
    shape, sp = _check(shape, spacing)
    if not 0 < abs(angle_deg) < 45:
        raise ParameterError(f"a slanted edge needs 0 < |angle| < 45 degrees, got {angle_deg}")
    x, y, _ = _coords(shape, sp)
    a = np.radians(angle_deg)
    offsets = (np.arange(oversample) + 0.5) / oversample - 0.5
    frac = np.zeros(shape[:2], np.float64)
    for ox in offsets:
        for oy in offsets:
            frac += ((x[:, :, 0] + ox * sp[0]) * np.cos(a) - (y[:, :, 0] + oy * sp[1]) * np.sin(a)) > 0
    frac /= oversample ** 2
    slice_ = (low_hu + (high_hu - low_hu) * frac).astype(np.float32)
    data = np.repeat(slice_[:, :, None], shape[2], axis=2)
    dist = (x[:, :, 0] * np.cos(a) - y[:, :, 0] * np.sin(a))
    margin = 5 * max(sp[0], sp[1])
    rois = {"low": np.repeat((dist < -margin)[:, :, None], shape[2], 2),
            "high": np.repeat((dist > margin)[:, :, None], shape[2], 2)}
    vol = Volume(data, _affine(sp, shape), modality="CT", meta={"phantom": "slanted-edge", "edge_angle_deg": angle_deg})
    return Phantom(vol, rois, {"low": float(low_hu), "high": float(high_hu)})


def piecewise_smooth(x: np.ndarray, spacing, edges, sigma_mm: float = 3.0) -> np.ndarray:
    """A noise-free, piecewise-smooth version of a real scan ``x`` (voxel size ``spacing`` mm).

    Voxels are classed by intensity (``edges``, e.g. :data:`CT_TISSUE_EDGES`, after a 0.7-voxel smoothing) and each
    class is filled with its own Gaussian local mean (``sigma_mm``), normalised by the class's local share: boundaries
    stay sharp, anatomy stays real, and the noise is averaged over about (2√π·σ)³ voxels. A final 0.5-voxel blur
    stands for the scanner's point-spread function at the class boundaries. Returns float32 of ``x``'s shape."""
    from scipy import ndimage

    if sigma_mm <= 0:
        raise ParameterError(f"sigma_mm must be positive, got {sigma_mm}")
    x = np.asarray(x, dtype=np.float32)
    labels = np.digitize(ndimage.gaussian_filter(x, 0.7), edges)
    sig = [sigma_mm / float(s) for s in spacing]
    out = np.empty_like(x)
    for lab in np.unique(labels):
        inside = labels == lab
        m = inside.astype(np.float32)
        den = ndimage.gaussian_filter(m, sig)
        num = ndimage.gaussian_filter(x * m, sig)
        out[inside] = num[inside] / np.maximum(den[inside], 1e-3)
    return ndimage.gaussian_filter(out, 0.5).astype(np.float32)
