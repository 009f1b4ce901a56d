"""Study-scale denoising: find every scan below a folder, denoise each, mirror the layout, keep a manifest.

* Discovery: volume files (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd), multi-frame DICOM files, and every DICOM series
  of every folder (several series in one folder are separate volumes).
* Resume: an item is skipped when the manifest already holds a successful record with the same *key* (sha256 of the
  input's bytes + method + parameters + sigma setting + medden/model version) and its output is intact.
* Scale-out: ``shard=(k, n)`` keeps the items whose stable hash is ``k`` modulo ``n``, so ``n`` array-job tasks
  (``k`` = ``$SLURM_ARRAY_TASK_ID`` from 0) share a study with no scheduler of ours; each writes
  ``manifest.shard-k-of-n.json`` and :func:`merge_manifests` joins them.
* Safety: outputs are written under a temporary name and renamed; a lock file per output stops two processes writing
  one output; a failed series is recorded and the run goes on; Ctrl-C records what was done before stopping.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from medden.denoisers import default_method, denoise, get_method
from medden.errors import InputError, MeddenError, OutputError, ParameterError
from medden.io import dicom, itk, load_volume, nifti, save_volume
from medden.io.atomic import atomic_path

VOLUME_SUFFIXES = nifti.SUFFIXES + itk.SUFFIXES
MANIFEST_FIELDS = ("status", "input", "series_uid", "output", "method", "model", "model_version", "params",
                   "sigma", "sigma_source", "modality", "seconds", "input_sha256", "output_sha256", "key", "error",
                   "finished")
DICOM_DERIVATION_CODE = ("113087", "DCM", "Smoothing")  # DICOM CID 7203 Image Derivation


@dataclass(frozen=True)
class StudyItem:
    """One volume of a study: a file, or one DICOM series (``series_uid``) of a folder."""

    source: Path
    relative: Path  # source's path relative to the study root
    series_uid: str | None = None
    files: tuple[Path, ...] = ()  # the DICOM files of the series, for hashing

    @property
    def label(self) -> str:
        return f"{self.relative}" + (f" [{self.series_uid}]" if self.series_uid else "")

    def output_path(self, out_dir: Path, several_series: bool) -> Path:
        if self.series_uid is None:
            return out_dir / self.relative
        folder = out_dir / self.relative
        return folder / self.series_uid if several_series else folder

    def input_sha256(self) -> str:
        return sha256_paths(self.files or (self.source,))


def sha256_paths(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of ``paths`` (a folder: its files in sorted order)."""
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def discover(study_dir: str | os.PathLike) -> list[StudyItem]:
    """Every volume file and DICOM series below ``study_dir``, in a stable order.

    Unreadable DICOM files are not skipped silently: their folder becomes an item whose load fails, so the manifest
    reports it.
    """
    root = Path(study_dir)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    items: list[StudyItem] = []
    for folder, dirs, files in dicom.walk(root):  # enters linked series folders, like linked files
        folder = Path(folder)
        dicom_files = []
        for name in sorted(files):
            path = folder / name
            lower = name.lower()
            if lower.endswith(VOLUME_SUFFIXES) and not lower.endswith(".json"):
                items.append(StudyItem(path, path.relative_to(root)))
            elif dicom.is_dicom_file(path):
                dicom_files.append(path)
        if not dicom_files:
            continue
        try:
            series = dicom.scan_folder(folder, recursive=False)
        except InputError:  # a broken file: keep the folder as one item so its error is reported
            items.append(StudyItem(folder, folder.relative_to(root), series_uid=None, files=tuple(dicom_files)))
            continue
        for uid, slices in sorted(series.items()):
            if len(slices) == 1 and int(slices[0].header.get("NumberOfFrames", 1) or 1) > 1:
                items.append(StudyItem(slices[0].path, slices[0].path.relative_to(root)))
            else:
                items.append(StudyItem(folder, folder.relative_to(root), series_uid=uid,
                                       files=tuple(sorted(s.path for s in slices))))
    return items


def shard_of(item: StudyItem, n: int) -> int:
    """The shard (0 … n−1) an item belongs to: a hash of its relative path and series, stable across machines."""
    digest = hashlib.sha1(f"{item.relative.as_posix()}|{item.series_uid or ''}".encode()).hexdigest()
    return int(digest, 16) % n


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/8"`` → ``(2, 8)``: shard index from 0 to N−1 (SLURM_ARRAY_TASK_ID) over N shards."""
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ParameterError(f"--shard needs K/N with integers, got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise ParameterError(f"--shard K/N needs 0 ≤ K < N, got {text!r}")
    return k, n


@dataclass
class StudyResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] in ("failed", "interrupted")]

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)


def manifest_name(shard: tuple[int, int] | None) -> str:
    return "manifest.json" if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.json"


def read_manifests(out_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(Path(out_dir).glob("manifest*.json")):
        try:
            records.extend(json.loads(path.read_text()).get("records", []))
        except (OSError, ValueError):
            continue
    return records


def write_manifest(out_dir: Path, records: list[dict[str, Any]], name: str = "manifest.json") -> Path:
    """Write ``name`` (JSON) and the CSV beside it atomically."""
    from medden import __version__

    path = Path(out_dir) / name
    body = {"medden_version": __version__, "written": _now(), "records": records}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, indent=2, default=str) + "\n")
    with atomic_path(path.with_suffix(".csv")) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for r in records:
                writer.writerow({**r, "params": json.dumps(r.get("params", {}), sort_keys=True)})
    return path


def merge_manifests(out_dir: str | os.PathLike) -> Path:
    """Join the shard manifests (and any earlier manifest) of ``out_dir`` into ``manifest.json``; the newest record
    of each input wins."""
    out_dir = Path(out_dir)
    latest: dict[tuple, dict] = {}
    for record in sorted(read_manifests(out_dir), key=lambda r: r.get("finished") or ""):
        latest[(record["input"], record.get("series_uid"))] = record
    if not latest:
        raise InputError(f"no manifest*.json with records in {out_dir}")
    return write_manifest(out_dir, sorted(latest.values(), key=lambda r: (r["input"], r.get("series_uid") or "")))


def provenance_record(source, result, *, input_path: Path, output_path: Path | None, series_uid: str | None,
                      input_sha256: str | None = None) -> dict[str, Any]:
    """What was done to a scan, as one JSON-ready record (the manifest row, the sidecar, the DICOM derivation)."""
    from medden import __version__

    rec = result.meta.get("denoise", {})
    spec = get_method(rec["method"]) if rec else None
    return {
        "GeneratedBy": [{"Name": "medden", "Version": __version__,
                         "Description": result.history[-1] if result.history else ""}],
        "Sources": [str(input_path)],
        "input": str(input_path), "series_uid": series_uid, "output": str(output_path) if output_path else None,
        "method": rec.get("method"), "model": getattr(spec, "model_name", None) or rec.get("method"),
        "model_version": getattr(spec, "model_version", None) or __version__,
        "params": rec.get("params", {}), "sigma": rec.get("sigma"), "sigma_source": rec.get("sigma_source"),
        "device": rec.get("device"), "modality": source.modality,
        "modality_source": source.meta.get("modality_source"), "seconds": rec.get("seconds"),
        "input_sha256": input_sha256, "finished": _now(),
        "dicom_derivation_code": DICOM_DERIVATION_CODE,
    }


def denoise_study(study_dir: str | os.PathLike, out_dir: str | os.PathLike, *, method: str = "auto",
                  sigma: float | str = "auto", device: str = "auto", params: dict[str, Any] | None = None,
                  shard: tuple[int, int] | None = None, anonymize: bool = False, overwrite: bool = False,
                  on_item: Callable[[int, int, StudyItem, dict | None], None] | None = None) -> StudyResult:
    """Denoise every scan below ``study_dir`` into ``out_dir`` (layout mirrored), resuming what is done.

    ``on_item(i, n, item, record)`` is called before each item (record None) and after it (its record), for
    progress displays. Returns the records of this run; the manifest is written after every item.
    """
    study_dir, out_dir = Path(study_dir).resolve(), Path(out_dir)
    params = dict(params or {})
    if method != "auto":
        get_method(method).resolve_params(params)  # fail before any work on a bad method or parameter
    out_root = out_dir.resolve()
    if out_root == study_dir or study_dir in out_root.parents:
        raise OutputError(f"output folder {out_dir} lies inside the study {study_dir}; choose a folder outside it")
    if out_root in study_dir.parents:
        raise OutputError(f"output folder {out_dir} contains the study {study_dir}; choose another folder")
    items = discover(study_dir)
    if not items:
        raise InputError(f"no volumes or DICOM series found below {study_dir}")
    if shard is not None:
        items = [it for it in items if shard_of(it, shard[1]) == shard[0]]
    out_dir.mkdir(parents=True, exist_ok=True)
    per_folder: dict[Path, int] = {}
    for it in items:
        if it.series_uid:
            per_folder[it.source] = per_folder.get(it.source, 0) + 1
    done = {r["key"]: r for r in read_manifests(out_dir) if r.get("status") in ("ok", "skipped") and r.get("key")}
    result = StudyResult()
    name = manifest_name(shard)
    for i, item in enumerate(items):
        if on_item:
            on_item(i, len(items), item, None)
        out_path = item.output_path(out_dir, per_folder.get(item.source, 0) > 1)
        record = {"input": str(item.source), "series_uid": item.series_uid, "output": str(out_path),
                  "method": method, "params": params, "status": "failed", "error": None}
        try:
            record = _process(item, out_path, record, method, sigma, device, params, done, anonymize, overwrite)
        except KeyboardInterrupt:
            record.update(status="interrupted", error="interrupted by the user", finished=_now())
            result.records.append(record)
            result.manifest = write_manifest(out_dir, _merge_run(out_dir, name, result.records), name)
            raise
        except (MeddenError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}" if not isinstance(exc, MeddenError)
                          else str(exc), finished=_now())
        result.records.append(record)
        result.manifest = write_manifest(out_dir, _merge_run(out_dir, name, result.records), name)
        if on_item:
            on_item(i, len(items), item, record)
    return result


def _merge_run(out_dir: Path, name: str, records: list[dict]) -> list[dict]:
    """This run's records plus earlier records of the same manifest for inputs this run did not touch."""
    path = Path(out_dir) / name
    earlier = []
    if path.is_file():
        try:
            earlier = json.loads(path.read_text()).get("records", [])
        except ValueError:
            earlier = []
    touched = {(r["input"], r.get("series_uid")) for r in records}
    return [r for r in earlier if (r["input"], r.get("series_uid")) not in touched] + records


def _process(item: StudyItem, out_path: Path, record: dict, method: str, sigma, device: str, params: dict,
             done: dict, anonymize: bool, overwrite: bool) -> dict:
    from medden import __version__

    start = time.perf_counter()
    input_sha = item.input_sha256()
    spec = get_method(method) if method != "auto" else None
    key_parts = {"input": input_sha, "method": method, "params": params, "sigma": sigma, "medden": __version__,
                 "model_version": getattr(spec, "model_version", None), "anonymize": anonymize}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()
    record.update(key=key, input_sha256=input_sha)
    previous = done.get(key)
    if previous and Path(previous["output"]).exists() and previous.get("output_sha256") == sha256_paths(
            [Path(previous["output"])]):
        return {**previous, "status": "skipped", "finished": _now()}
    volume = load_volume(item.source, series_uid=item.series_uid)
    chosen = default_method(volume.modality).name if method == "auto" else method
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out_path):
        result = denoise(volume, method=chosen, sigma=sigma, device=device, **params)
        prov = provenance_record(volume, result, input_path=item.source, output_path=out_path,
                                 series_uid=item.series_uid, input_sha256=input_sha)
        save_volume(result, out_path, overwrite=overwrite or bool(previous), protect=(item.source,),
                    description=f"medden {chosen}", provenance=prov, anonymize=anonymize)
    prov.pop("dicom_derivation_code", None)
    record.update({k: prov[k] for k in ("method", "model", "model_version", "params", "sigma", "sigma_source",
                                        "modality")})
    record.update(status="ok", error=None, output_sha256=sha256_paths([out_path]),
                  seconds=round(time.perf_counter() - start, 3), finished=_now())
    return record


class output_lock:
    """An exclusive lock file beside an output, so that two shards never write the same output at once.

    A lock left by a dead process on this host is taken over; one held by a live process is an error.
    """

    def __init__(self, output: Path):
        self.path = Path(output).with_name(f".{Path(output).name}.lock")
        self.fd: int | None = None

    def __enter__(self):
        host = socket.gethostname()
        for _ in range(2):
            try:
                self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(self.fd, f"{host} {os.getpid()}\n".encode())
                return self
            except FileExistsError:
                owner = self.path.read_text().split() if self.path.exists() else []
                if len(owner) == 2 and owner[0] == host and not _alive(int(owner[1])):
                    self.path.unlink(missing_ok=True)
                    continue
                raise OutputError(f"{self.path.with_name(self.path.name[1:-5])} is being written by another "
                                  f"process ({' pid '.join(owner) or 'unknown'}); overlapping shards?") from None
        raise OutputError(f"cannot lock {self.path}")

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
