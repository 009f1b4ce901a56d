"""``medden bids``: a BIDS App (https://bids-apps.neuroimaging.io) that denoises the anatomical images of a BIDS
dataset into a BIDS derivative dataset.

* ``participant`` level: every ``anat`` NIfTI image whose suffix is asked for (default T1w, T2w, FLAIR, PDw, T2starw)
  of the chosen participants becomes ``OUT/sub-XX/[ses-YY/]anat/sub-XX_[ses-YY_]..._desc-denoised_<suffix>.nii.gz``
  with a JSON sidecar (method, model version, noise before and after, ``Sources`` as BIDS URIs). An image whose
  sidecar records the same inputs (sha256) and settings is skipped, so a rerun finishes an interrupted one.
* ``group`` level: one table, ``OUT/group_noise.tsv``, noise before and after for every denoised image.

Images are found with pybids; the data path is the one every front end uses: load_volume → denoise → save_volume.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medden.conventions import sha256_file
from medden.errors import InputError, MeddenError, OutputError, ParameterError
from medden.io.atomic import atomic_path

DEFAULT_SUFFIXES = ("T1w", "T2w", "FLAIR", "PDw", "T2starw")
SUMMARY = "group_noise.tsv"
SUMMARY_FIELDS = ("filename", "subject", "session", "suffix", "method", "noise_before", "noise_after",
                  "noise_ratio", "source")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line through medden's error path instead of argparse's usage + exit
        raise ParameterError(f"medden bids: {message}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The BIDS-Apps command line: ``bids_dir output_dir {participant,group} [--participant-label L ...]
    [--suffix S ...] [--method M] [--sigma auto|X] [--param NAME=VALUE ...] [--device D]``."""
    parser = _Parser(prog="medden bids", description=__doc__.split("\n\n")[0])
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("analysis_level", choices=["participant", "group"])
    parser.add_argument("--participant-label", "--participant_label", nargs="+", default=[])
    parser.add_argument("--suffix", nargs="+", default=list(DEFAULT_SUFFIXES))
    parser.add_argument("--method", "-m", default="auto")
    parser.add_argument("--sigma", default="auto")
    parser.add_argument("--param", "-p", nargs="+", default=[])
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


@dataclass
class BidsResult:
    written: list[Path]
    skipped: list[Path]
    failed: list[tuple[Path, str]]


def open_dataset(bids_dir: Path):
    """Index a raw BIDS dataset with pybids; a folder that is not one is an :class:`InputError`."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(f"{bids_dir} is not a folder")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir} is not a BIDS dataset (no dataset_description.json)")
    try:
        from bids import BIDSLayout
    except ImportError:
        from medden.errors import MissingDependencyError

        raise MissingDependencyError("medden bids needs pybids: pip install pybids") from None
    try:
        return BIDSLayout(bids_dir, validate=False)
    except Exception as exc:  # pybids raises its own exception types for unreadable descriptions
        raise InputError(f"{bids_dir} is not a readable BIDS dataset: {exc}") from None


def _labels(labels: list[str]) -> list[str]:
    return [label[4:] if label.startswith("sub-") else label for label in labels]


def output_path(out_dir: Path, relpath: str) -> Path:
    """``sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii.gz`` → ``OUT/…/sub-01_ses-1_run-1_desc-denoised_T1w.nii.gz``
    (an existing ``desc-`` entity is replaced; ``desc`` is the last entity before the suffix in BIDS; a ``.nii`` input
    gives a ``.nii.gz`` output)."""
    rel = Path(relpath)
    stem = rel.name[: -len(".nii.gz")] if rel.name.endswith(".nii.gz") else rel.stem
    parts = stem.split("_")
    entities = [p for p in parts[:-1] if not p.startswith("desc-")]
    return Path(out_dir) / rel.parent / ("_".join(entities + ["desc-denoised", parts[-1]]) + ".nii.gz")


def write_description(out_dir: Path, bids_dir: Path) -> Path:
    """The derivative's ``dataset_description.json`` (DatasetType derivative, GeneratedBy, the raw dataset)."""
    from medden._version import __version__

    raw_uri = Path(bids_dir).resolve().as_uri()
    body = {"Name": "medden denoised anatomical images", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "medden", "Version": __version__,
                             "Description": "denoising of anatomical images (medden bids)"}],
            "SourceDatasets": [{"URL": raw_uri}], "DatasetLinks": {"raw": raw_uri}}
    path = Path(out_dir) / "dataset_description.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, indent=2) + "\n")
    return path


def run_participant(bids_dir: str | os.PathLike, out_dir: str | os.PathLike, *, labels: list[str] = (),
                    suffixes: list[str] = DEFAULT_SUFFIXES, method: str = "auto", sigma: float | str = "auto",
                    params: dict[str, Any] | None = None, device: str = "auto") -> BidsResult:
    """Denoise the anatomical images of the chosen participants (all when ``labels`` is empty) into ``out_dir``."""
    from medden._version import __version__
    from medden.denoisers import denoise, get_method
    from medden.io import load_volume, save_volume, sidecar_path
    from medden.noise.estimate import sigma_wavelet_mad
    from medden.pipeline import resume_key
    from medden.provenance import denoise_record

    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    params = dict(params or {})
    if method != "auto":
        get_method(method).resolve_params(dict(params))  # a bad method fails before any work
    _check_output_folder(bids_dir, out_dir)
    layout = open_dataset(bids_dir)
    subjects = layout.get_subjects()
    labels = _labels(list(labels))
    unknown = [label for label in labels if label not in subjects]
    if unknown:
        raise InputError(f"participant label {', '.join(unknown)} not found in {bids_dir} "
                         f"(it has: {', '.join(sorted(subjects)) or 'none'})")
    query = {"subject": labels} if labels else {}
    images = layout.get(datatype="anat", suffix=list(suffixes), extension=[".nii", ".nii.gz"],
                        return_type="object", **query)
    if not images:
        raise InputError(f"no anatomical images with suffix {', '.join(suffixes)} in {bids_dir}"
                         + (f" for participant {', '.join(labels)}" if labels else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_description(out_dir, bids_dir)
    result = BidsResult([], [], [])
    for image in sorted(images, key=lambda f: f.relpath):
        source = Path(image.path)
        target = output_path(out_dir, image.relpath)
        sidecar = sidecar_path(target)
        input_sha = sha256_file(source)
        # the study pipeline's skip-if-done key: input bytes, settings, medden version and the model's weights
        key = resume_key(input_sha, method=method, params=params, sigma=sigma, anonymize=False)
        if target.is_file() and sidecar.is_file() and _recorded_key(sidecar) == key:
            result.skipped.append(target)
            continue
        try:
            volume = load_volume(source)
            denoised = denoise(volume, method=method, sigma=sigma, device=device, **params)
            # one estimator for both columns: the finest-wavelet-band MAD falls when noise is removed (a
            # background-statistics estimator would not: smoothing keeps the Rayleigh mean of the air)
            before, after = sigma_wavelet_mad(volume.data), sigma_wavelet_mad(denoised.data)
            prov = denoise_record(volume, denoised, input_path=image.relpath,
                                  output_path=target.relative_to(out_dir), series_uid=None)
            record = {
                "Description": "Denoised by medden", "Sources": [f"bids:raw:{image.relpath}"],
                "GeneratedBy": prov["GeneratedBy"], "Method": prov["method"], "Model": prov["model"],
                "ModelVersion": prov["model_version"], "Parameters": prov["params"],
                "NoiseSigma": prov["sigma"], "NoiseSigmaSource": prov["sigma_source"],
                "NoiseEstimateBefore": float(before), "NoiseEstimateAfter": float(after),
                "NoiseEstimator": "wavelet-mad (finest 3D wavelet band, Donoho)", "Modality": volume.modality,
                "MeddenVersion": __version__,
                "InputSha256": input_sha, "SettingsKey": key,
            }
            target.parent.mkdir(parents=True, exist_ok=True)
            save_volume(denoised, target, overwrite=True, protect=(source,), provenance=record)
            result.written.append(target)
        except (MeddenError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            result.failed.append((source, str(exc) if isinstance(exc, MeddenError) else f"{type(exc).__name__}: {exc}"))
    return result


def _recorded_key(sidecar: Path) -> str | None:
    try:
        return json.loads(sidecar.read_text()).get("SettingsKey")
    except (OSError, ValueError):
        return None


def _check_output_folder(bids_dir: Path, out_dir: Path) -> None:
    raw, out = bids_dir.resolve(), out_dir.resolve()
    if out == raw or (raw in out.parents and (raw / "derivatives") not in [out, *out.parents]):
        raise OutputError(f"output folder {out_dir} lies inside the BIDS dataset {bids_dir}; use another folder or "
                          f"one below {bids_dir / 'derivatives'}")


def run_group(out_dir: str | os.PathLike) -> Path:
    """Write ``OUT/group_noise.tsv``: one row per denoised image with the noise estimate before and after."""
    out_dir = Path(out_dir)
    if not (out_dir / "dataset_description.json").is_file():
        raise InputError(f"{out_dir} holds no medden derivative (run the participant level first)")
    rows = []
    for sidecar in sorted(out_dir.glob("sub-*/**/anat/*_desc-denoised_*.json")):
        record = json.loads(sidecar.read_text())
        entities = dict(p.split("-", 1) for p in sidecar.name.split("_")[:-1] if "-" in p)
        before, after = record.get("NoiseEstimateBefore"), record.get("NoiseEstimateAfter")
        rows.append({"filename": sidecar.relative_to(out_dir).as_posix().replace(".json", ".nii.gz"),
                     "subject": entities.get("sub", ""), "session": entities.get("ses", "n/a"),
                     "suffix": sidecar.name.rsplit("_", 1)[-1][: -len(".json")], "method": record.get("Method"),
                     "noise_before": before, "noise_after": after,
                     "noise_ratio": round(after / before, 6) if before else "n/a",
                     "source": ";".join(record.get("Sources", []))})
    if not rows:
        raise InputError(f"no denoised images (sub-*/…/anat/*_desc-denoised_*.json) in {out_dir}")
    path = out_dir / SUMMARY
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return path

