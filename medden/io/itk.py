"""ITK formats (NRRD .nrrd/.nhdr, MetaImage .mha/.mhd) through SimpleITK; their geometry is LPS+."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medden.errors import InputError
from medden.io.checks import as_3d
from medden.io.nifti import fits_integer
from medden.volume import RAS_TO_LPS, Volume

SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def load_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"cannot read {path}: {first[-1][:200] if first else 'unreadable'}") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                         f"medden needs a scalar volume")
    if img.GetDimension() != 3:
        shape = "×".join(map(str, img.GetSize()))
        kind = "2D image" if img.GetDimension() < 3 else f"{img.GetDimension()}D image"
        raise InputError(f"{path} is a {kind} (shape {shape}); medden needs one 3D volume")
    data = as_3d(sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32), path)
    meta = {
        "format": "itk",
        "source_path": str(path),
        "stored_pixel_id": int(img.GetPixelID()),
        "itk_metadata": {k: img.GetMetaData(k) for k in img.GetMetaDataKeys() if not k.startswith("ITK_")},
    }
    modality = meta["itk_metadata"].get("Modality", "OT")
    return Volume(data, RAS_TO_LPS @ itk_affine_lps(img), modality=modality, meta=meta)


def save_itk(volume: Volume, path: Path) -> None:
    """Write NRRD or MetaImage (by extension); a volume read from an ITK format keeps its stored pixel type."""
    import SimpleITK as sitk

    meta = volume.meta if volume.meta.get("format") == "itk" else {}
    pixel_id = meta.get("stored_pixel_id", sitk.sitkFloat32)
    data = volume.data.transpose(2, 1, 0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data))
    set_itk_geometry(img, volume.affine_lps)
    if pixel_id != sitk.sitkFloat32:
        probe = sitk.Image([1, 1, 1], pixel_id)
        dtype = sitk.GetArrayViewFromImage(probe).dtype
        if np.issubdtype(dtype, np.integer) and fits_integer(data, dtype):
            stored = np.rint(data).astype(dtype)
            img = sitk.GetImageFromArray(np.ascontiguousarray(stored))
            set_itk_geometry(img, volume.affine_lps)
        elif not np.issubdtype(dtype, np.integer):
            img = sitk.Cast(img, pixel_id)
        # else: values outside the integer type's range stay float32 rather than being clipped
    for key, value in meta.get("itk_metadata", {}).items():
        img.SetMetaData(key, value)
    if volume.modality != "OT":
        img.SetMetaData("Modality", volume.modality)
    sitk.WriteImage(img, str(path), useCompression=True)


def itk_affine_lps(img) -> np.ndarray:
    """The 4×4 index-to-LPS affine of a 3D SimpleITK image."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return affine


def set_itk_geometry(img, affine_lps: np.ndarray) -> None:
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in (affine_lps[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(o) for o in affine_lps[:3, 3]])
