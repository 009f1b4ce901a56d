"""Denoising files and studies: one scan to one output (:func:`denoise_file`), or every scan below a folder with a
mirrored layout and a manifest (:func:`denoise_study`).

* Discovery: volume files (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd), multi-frame DICOM files, and every DICOM series
  of every folder (several series in one folder are separate volumes). Hidden and system files (``._*`` AppleDouble,
  ``.DS_Store``, ``Thumbs.db``) are skipped; symbolic links to files and folders are followed, each real folder once.
  A DICOM file whose header cannot be read is an item of its own, so it fails alone.
* Outputs: named from the study's layout, DICOM series by their (sanitised) SeriesInstanceUID; every output lies
  inside the output folder, and no two outputs (or sidecars) coincide or nest.
* Resume: an item is skipped when the manifest holds a successful record with the same *key* (sha256 of the input's
  bytes, method, parameters, sigma setting, medden version, and the model's name, version and weights sha256) and
  its output is intact.
* Before any work, outputs that already exist from another run (another method, other parameters, changed inputs)
  are refused unless ``overwrite``; ``overwrite`` replaces only medden's own outputs.
* Scale-out: ``shard=(k, n)`` keeps the items whose stable hash is ``k`` modulo ``n``, so ``n`` array-job tasks
  (``k`` = ``$SLURM_ARRAY_TASK_ID`` from 0) share a study with no scheduler of ours; each writes
  ``manifest.shard-k-of-n.json`` and :func:`merge_manifests` joins them.
* Safety: outputs are written under a temporary name and renamed; a lock file per output stops two processes writing
  one output; the manifest is read, merged and written under a lock, so concurrent runs keep every good record; a
  failed item (whatever the error) is recorded and the run goes on; an interrupt records what was done.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from medden._version import __version__
from medden.denoisers import denoise, get_method
from medden.errors import InputError, MeddenError, OutputError, ParameterError
from medden.io import (VOLUME_SUFFIXES, atomic_path, check_output, find_dicom_series, foreign_files, load_volume,
                       save_volume, sidecar_path, walk)
from medden.conventions import sha256_paths
from medden.provenance import denoise_record, model_identity, now
from medden.volume import MODALITIES, Volume

MANIFEST_FIELDS = ("status", "input", "series_uid", "output", "method", "model", "model_version", "weights_sha256",
                   "params", "sigma", "sigma_source", "modality", "seconds", "input_sha256", "output_sha256", "key",
                   "error", "finished")
REQUIRED_FIELDS = ("status", "output")
GOOD = ("ok", "skipped")
JUNK_NAMES = ("thumbs.db", "desktop.ini", "dicomdir")


# ------------------------------------------------------------------------------------------------------ one scan
def override_modality(volume: Volume, modality: str = "auto") -> Volume:
    """Apply a modality given by the user; ``"auto"`` keeps what the file records or what the values imply."""
    code = modality.strip().upper()
    if code == "AUTO":
        return volume
    if code not in MODALITIES:
        raise ParameterError(f"--modality must be auto or one of {', '.join(m.lower() for m in MODALITIES)}, "
                             f"got {modality!r}")
    return dataclasses.replace(volume, modality=code, meta={**volume.meta, "modality_source": "given by --modality"})


def _refuse_foreign(output: Path, overwrite: bool) -> None:
    if overwrite and Path(output).is_dir():
        foreign = foreign_files(output)
        if foreign:
            raise OutputError(f"{output} holds {len(foreign)} file(s) medden did not write (e.g. {foreign[0].name}); "
                              f"--overwrite replaces only medden's outputs: move them, or choose another output")


def denoise_file(source: str | os.PathLike, output: str | os.PathLike, *, method: str = "auto",
                 sigma: float | str = "auto", device: str = "auto", params: dict[str, Any] | None = None,
                 series_uid: str | None = None, modality: str = "auto", overwrite: bool = False,
                 anonymize: bool = False, uncertainty: str | os.PathLike | None = None,
                 progress: Callable[[str], None] | None = None, input_sha256: str | None = None,
                 key: str | None = None) -> dict[str, Any]:
    """Load one scan, denoise it and write the result in the output's format with its provenance.

    ``uncertainty``: also write the per-voxel standard deviation there (methods that give one, e.g. diffusion).
    ``progress(text)`` is called at each step. Everything that would be refused (existing output, unknown format,
    an output folder holding files medden did not write) is refused before the denoising. Returns the provenance
    record (also written as the JSON sidecar, or into the DICOM DerivationDescription).
    """
    step = progress or (lambda text: None)
    source, output = Path(source), Path(output)
    params = dict(params or {})
    check_output(output, overwrite=overwrite, protect=(source,))
    _refuse_foreign(output, overwrite)
    if uncertainty is not None:
        check_output(uncertainty, overwrite=overwrite, protect=(source, output))
    step(f"Loading {source}")
    volume = override_modality(load_volume(source, series_uid=series_uid), modality)
    check_output(output, like=volume, overwrite=overwrite, protect=(source,))
    with output_lock(output):
        step(f"Denoising ({method}; {'estimating noise, ' if sigma == 'auto' else ''}"
             f"{volume.shape[0]}×{volume.shape[1]}×{volume.shape[2]} voxels)")
        if uncertainty is None:
            result, std = denoise(volume, method=method, sigma=sigma, device=device, **params), None
        else:
            result, std = denoise(volume, method=method, sigma=sigma, device=device, return_std=True, **params)
            if std is None:
                raise ParameterError(f"--uncertainty: method {result.meta['denoise']['method']} gives no standard "
                                     f"deviation map")
        record = denoise_record(volume, result, input_path=source, output_path=output,
                                series_uid=volume.meta.get("series_uid") or series_uid, input_sha256=input_sha256)
        if key:
            record["key"] = key
        step(f"Writing {output}")
        save_volume(result, output, overwrite=overwrite, description=f"medden {record['method']}",
                    protect=(source,), provenance=record, anonymize=anonymize)
        if std is not None:
            save_volume(std, uncertainty, overwrite=overwrite, protect=(source, output), anonymize=anonymize,
                        description=f"medden {record['method']} standard deviation",
                        provenance={**record, "output": str(uncertainty), "content": "standard deviation"})
    record.pop("dicom_derivation_code", None)
    return record


class output_lock:
    """An exclusive lock file beside an output, so that two processes never write the same output at once.

    A lock left by a dead process on this host is taken over; any other lock is an error that names the lock file,
    to delete by hand when no other medden run is writing.
    """

    def __init__(self, output: Path):
        self.output = Path(output)
        self.path = self.output.with_name(f".{self.output.name}.lock")
        self.fd: int | None = None

    def __enter__(self):
        host = socket.gethostname()
        for _ in range(2):
            try:
                self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(self.fd, f"{host} {os.getpid()}\n".encode())
                return self
            except FileExistsError:
                try:
                    owner = self.path.read_text(errors="replace").split()
                except OSError:
                    owner = []
                if len(owner) == 2 and owner[0] == host and owner[1].isdigit() and not _alive(int(owner[1])):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if len(owner) == 2 and owner[1].isdigit():
                    raise OutputError(f"{self.output} is being written by another process ({owner[0]} pid "
                                      f"{owner[1]}); if no other medden run is writing it, delete {self.path}"
                                      ) from None
                raise OutputError(f"{self.output} is locked by {self.path}, which names no live medden run "
                                  f"(empty or foreign): if no other medden run is writing it, delete {self.path}"
                                  ) from None
        raise OutputError(f"cannot lock {self.output}: delete {self.path} if no other medden run is writing it")

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


# --------------------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class StudyItem:
    """One volume of a study: a file, or one DICOM series (``series_uid``) of a folder; ``error`` when the file
    could not even be read as DICOM (the item then fails alone)."""

    source: Path
    relative: Path  # source's path relative to the study root
    series_uid: str | None = None
    files: tuple[Path, ...] = ()  # the DICOM files of the series, for hashing
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.relative}" + (f" [{self.series_uid}]" if self.series_uid else "")

    @property
    def is_series(self) -> bool:
        return self.series_uid is not None

    def input_sha256(self) -> str:
        return sha256_paths(self.files or (self.source,))


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_NAMES


def discover(study_dir: str | os.PathLike) -> list[StudyItem]:
    """Every volume file and DICOM series below ``study_dir``, in a stable order.

    Unreadable DICOM files are not skipped silently: each becomes an item whose load fails, so the manifest
    reports it. Symbolic links are followed; a folder reached twice (a link loop) is walked once.
    """
    root = Path(study_dir)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    items: list[StudyItem] = []
    for folder, dirs, files in walk(root):
        dirs[:] = [d for d in dirs if not _is_junk(d)]
        folder = Path(folder)
        others = False
        for name in sorted(files):
            if _is_junk(name):
                continue
            path = folder / name
            if name.lower().endswith(VOLUME_SUFFIXES):
                items.append(StudyItem(path, path.relative_to(root)))
            else:
                others = True
        if not others:
            continue
        for series in find_dicom_series(folder):
            if series.multiframe or series.uid is None:  # one multi-frame file, or a file of no known series
                path = series.files[0]
                items.append(StudyItem(path, path.relative_to(root), error=series.error))
            else:  # a series; one unreadable file of it makes this item (and no other) fail, naming the file
                items.append(StudyItem(folder, folder.relative_to(root), series_uid=series.uid, files=series.files,
                                       error=series.error))
    return items


def safe_name(text: str) -> str:
    """A file-name-safe form of a name taken from file contents (a SeriesInstanceUID): no separators, no leading
    dots, at most 128 characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    if not re.fullmatch(r"[0-9.]+", name):  # a dot in a non-numeric name would read as a file suffix
        name = name.replace(".", "_")
    return name[:128] or "series"


def _file_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(VOLUME_SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix)


def assign_outputs(items: list[StudyItem], out_dir: str | os.PathLike) -> list[Path]:
    """The output path of each item, inside ``out_dir``, mirroring the study's layout.

    A DICOM series is written as a folder: the item's own folder when it is the only thing there, else a sub-folder
    named by its sanitised SeriesInstanceUID. No output (or its JSON sidecar) coincides with or lies inside another;
    a clash (``CT_1.nii.gz`` and ``CT_1.nrrd`` share ``CT_1.json``) gets ``_2``, ``_3`` … added.
    """
    out_dir = Path(out_dir)
    crowded: set[Path] = set()  # folders that hold more than one series, a file, or items below them
    series_in: dict[Path, int] = {}
    for it in items:
        if it.is_series:
            series_in[it.source] = series_in.get(it.source, 0) + 1
        crowded.update(it.relative.parents)
    crowded.update(it.relative for it in items if it.is_series and series_in[it.source] > 1)
    taken: set[Path] = set()
    folders: set[Path] = set()  # outputs that are folders
    above: set[Path] = set()  # every parent of a taken path
    paths = []
    for it in items:
        if it.is_series:
            base = out_dir / it.relative / safe_name(it.series_uid) if it.relative in crowded else out_dir / it.relative
            suffix = ""
        else:
            base, suffix = out_dir / it.relative, _file_suffix(it.relative)
        stem = base.name[: len(base.name) - len(suffix)] if suffix else base.name
        for n in range(1, 10_000):
            path = base.with_name(stem + (f"_{n}" if n > 1 else "") + suffix)
            claims = [path] if it.is_series or not suffix else [path, sidecar_path(path)]
            if not any(c in taken or c in above or folders.intersection(c.parents) for c in claims):
                break
        taken.update(claims)
        for c in claims:
            above.update(c.parents)
        if it.is_series:
            folders.add(path)
        paths.append(path)
    return paths


def _inside(path: Path, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


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


# ---------------------------------------------------------------------------------------------------- manifest
@dataclass
class StudyResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    manifest: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] in ("failed", "interrupted")]

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)


def manifest_name(shard: tuple[int, int] | None) -> str:
    return "manifest.json" if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.json"


def _record_id(r: dict) -> str:
    return r["output"]


def read_manifest(path: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The valid records of one manifest file. A file that is not a manifest is kept as ``NAME.corrupt`` and its
    last good version (``NAME.bak``) read instead; records with missing fields are left out. Each problem is
    appended to ``notes``."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        body = json.loads(path.read_text())
        records = body["records"]
        if not isinstance(records, list):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError) as exc:
        kept = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(OSError):
            shutil.copyfile(path, kept)
        backup = path.with_name(path.name + ".bak")
        records = read_manifest(backup, notes) if backup.is_file() else []
        if notes is not None:
            notes.append(f"{path} is not a readable manifest ({type(exc).__name__}); kept as {kept.name}, rebuilt "
                         f"from {backup.name if backup.is_file() else 'nothing'} ({len(records)} record(s)) and "
                         f"this run")
        return records
    valid = [r for r in records if isinstance(r, dict) and all(r.get(k) is not None for k in REQUIRED_FIELDS)]
    incomplete = sum(not all(k in r for k in ("input", "finished") + (("key", "output_sha256") if r["status"] in GOOD
                                                                       else ())) for r in valid)
    if notes is not None and (len(valid) < len(records) or incomplete):
        notes.append(f"{path}: {len(records) - len(valid)} unusable record(s) left out, {incomplete} with missing "
                     f"fields (their items are checked again)")
    return valid


def read_manifests(out_dir: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    return [r for path in sorted(Path(out_dir).glob("manifest*.json")) for r in read_manifest(path, notes)]


def merge_records(earlier: list[dict], newer: list[dict]) -> list[dict]:
    """One record per output: a newer record replaces an earlier one, except that a failure never replaces a
    success (a failed or interrupted attempt leaves the good output, and its record, as they were)."""
    merged = {_record_id(r): r for r in earlier}
    for r in newer:
        old = merged.get(_record_id(r))
        if old is not None and old["status"] in GOOD and r["status"] not in GOOD:
            continue
        merged[_record_id(r)] = r
    return sorted(merged.values(), key=lambda r: (r.get("input") or "", r.get("series_uid") or "", r["output"]))


def write_manifest(out_dir: Path, records: list[dict[str, Any]], name: str = "manifest.json") -> Path:
    """Write ``name`` (JSON) and the CSV beside it atomically; the version replaced is kept as ``NAME.bak``."""
    path = Path(out_dir) / name
    body = {"medden_version": __version__, "written": now(), "records": records}
    try:
        if path.is_file():
            shutil.copyfile(path, path.with_name(path.name + ".bak"))
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(body, indent=2, default=str) + "\n")
        with atomic_path(path.with_suffix(".csv")) as tmp:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
                writer.writeheader()
                for r in records:
                    writer.writerow({**r, "params": json.dumps(r.get("params", {}), sort_keys=True)})
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write the manifest {path}: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def manifest_lock(out_dir: Path) -> Iterator[None]:
    """Serialise read-merge-write of the manifests of ``out_dir`` between processes (an advisory lock on the
    folder itself, released by the kernel if the process dies)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): one run per output folder
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def save_records(out_dir: Path, name: str, records: list[dict], notes: list[str] | None = None) -> Path:
    """Merge ``records`` into the manifest ``name`` of ``out_dir`` (never dropping a good record) and write it."""
    with manifest_lock(out_dir):
        return write_manifest(out_dir, merge_records(read_manifest(Path(out_dir) / name, notes), records), name)


def merge_manifests(out_dir: str | os.PathLike) -> Path:
    """Join the shard manifests (and any earlier manifest) of ``out_dir`` into ``manifest.json``; for each output
    the newest record wins, and a success is never replaced by a failure."""
    out_dir = Path(out_dir)
    records = sorted(read_manifests(out_dir), key=lambda r: r.get("finished") or "")
    if not records:
        raise InputError(f"no manifest*.json with records in {out_dir}")
    with manifest_lock(out_dir):
        return write_manifest(out_dir, merge_records([], records))


# ------------------------------------------------------------------------------------------------------- study
def run_settings(*, method: str, params: dict, sigma, anonymize: bool) -> str:
    """A digest of what a run asks for (method, parameters, sigma, anonymisation): outputs a manifest records with
    the same settings are this configuration's own, refreshed when stale; others are refused without --overwrite."""
    parts = {"method": method, "params": params, "sigma": sigma, "anonymize": anonymize}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_key(input_sha256: str, *, method: str, params: dict, sigma, anonymize: bool) -> str:
    """The skip-if-done key: the input's bytes, what is done to them, and with which code and model weights."""
    parts = {"input": input_sha256, "method": method, "params": params, "sigma": sigma, "medden": __version__,
             "anonymize": anonymize, **model_identity(method, params)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _intact(record: dict | None) -> bool:
    if not record or not Path(record["output"]).exists():
        return False
    try:
        return record.get("output_sha256") == sha256_paths([Path(record["output"])])
    except OSError:
        return False


def _exists(path: Path) -> bool:
    return path.exists() or (path.name.lower().endswith(VOLUME_SUFFIXES) and sidecar_path(path).exists())


def denoise_study(study_dir: str | os.PathLike, out_dir: str | os.PathLike, *, method: str = "auto",
                  sigma: float | str = "auto", device: str = "auto", params: dict[str, Any] | None = None,
                  shard: tuple[int, int] | None = None, anonymize: bool = False, overwrite: bool = False,
                  on_item: Callable[[int, int, StudyItem, dict | None], None] | None = None) -> StudyResult:
    """Denoise every scan below ``study_dir`` into ``out_dir`` (layout mirrored), resuming what is done.

    Outputs that exist from another run (other method or parameters, changed input) are refused before any work
    unless ``overwrite``. ``on_item(i, n, item, record)`` is called before each item (record None) and after it
    (its record), for progress displays. Returns the records of this run; the manifest is updated after every item.
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
    outputs = dict(zip(items, assign_outputs(items, out_dir)))
    if shard is not None:
        items = [it for it in items if shard_of(it, shard[1]) == shard[0]]
    out_dir.mkdir(parents=True, exist_ok=True)
    result = StudyResult()
    name = manifest_name(shard)
    earlier = [r for r in read_manifests(out_dir, result.notes) if r["status"] in GOOD]
    done = {r["key"]: r for r in earlier if r.get("key")}
    settings = run_settings(method=method, params=params, sigma=sigma, anonymize=anonymize)
    mine = {r["output"] for r in earlier
            if r.get("settings") == settings or (r.get("settings") is None and r.get("method") == method)}
    _refuse_existing(items, outputs, mine, out_dir, overwrite)
    for i, item in enumerate(items):
        if on_item:
            on_item(i, len(items), item, None)
        out_path = outputs[item]
        record = {"input": str(item.source), "series_uid": item.series_uid, "output": str(out_path),
                  "method": method, "params": params, "settings": settings, "status": "failed", "error": None}
        try:
            record = _process(item, out_path, record, done, method=method, sigma=sigma, device=device,
                              params=params, anonymize=anonymize, overwrite=overwrite or str(out_path) in mine,
                              out_dir=out_dir)
        except KeyboardInterrupt:
            record.update(status="interrupted", error="interrupted", finished=now())
            result.records.append(record)
            result.manifest = save_records(out_dir, name, [record], result.notes)
            raise
        except MeddenError as exc:
            record.update(status="failed", error=str(exc), finished=now())
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            record.update(status="failed", error=f"cannot read or write{where}: {exc.strerror or exc}",
                          finished=now())
        except Exception as exc:  # noqa: BLE001 - any other failure of one item is that item's, the batch goes on
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}", finished=now())
        result.records.append(record)
        result.manifest = save_records(out_dir, name, [record], result.notes)
        if on_item:
            on_item(i, len(items), item, record)
    return result


def _refuse_existing(items, outputs, mine: set[str], out_dir: Path, overwrite: bool) -> None:
    """Before any work: existing outputs that a run with other settings wrote (another method, other parameters),
    or that no manifest knows, are refused without ``overwrite``; and no replacement ever removes a folder holding
    files medden did not write."""
    clashes, foreign = [], []
    for item in items:
        path = outputs[item]
        if not _exists(path) or item.error is not None:
            continue
        if not overwrite and str(path) not in mine:
            clashes.append(path)
        elif path.is_dir():
            foreign.extend(foreign_files(path)[:1])
    if foreign:
        raise OutputError(f"{len(foreign)} output folder(s) hold files medden did not write (e.g. {foreign[0]}); "
                          f"--overwrite replaces only medden's outputs: move those files, or write to another folder "
                          f"with -o; nothing was computed")
    if clashes:
        by = {r["output"]: r.get("method") for r in read_manifests(out_dir)}
        methods = sorted({by.get(str(p)) or "unknown" for p in clashes})
        raise OutputError(f"{len(clashes)} output(s) already exist in {out_dir} from a run with other settings or "
                          f"inputs (method {', '.join(methods)}), e.g. {clashes[0]}; nothing was computed. To keep "
                          f"them, write this run to another folder (-o OTHER_FOLDER); to replace them, add "
                          f"--overwrite")


def _process(item: StudyItem, out_path: Path, record: dict, done: dict, *, method: str, sigma, device: str,
             params: dict, anonymize: bool, overwrite: bool, out_dir: Path) -> dict:
    start = time.perf_counter()
    if item.error is not None:
        raise InputError(item.error)
    if not _inside(out_path, out_dir):
        raise OutputError(f"output {out_path} would lie outside the output folder {out_dir}")
    input_sha256 = item.input_sha256()  # read once: a series' files are hashed for the key and the record
    key = resume_key(input_sha256, method=method, params=params, sigma=sigma, anonymize=anonymize)
    record.update(key=key, input_sha256=input_sha256)
    previous = done.get(key)
    if not overwrite and _exists(out_path) and not _intact(previous):  # written meanwhile by a concurrent run?
        previous = next((r for r in read_manifests(out_dir) if r.get("key") == key and r["status"] in GOOD), None)
    if previous and previous["output"] == str(out_path) and _intact(previous):
        return {**previous, **{k: record[k] for k in ("input", "series_uid", "output")}, "status": "skipped",
                "finished": now()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prov = denoise_file(item.source, out_path, method=method, sigma=sigma, device=device, params=params,
                        series_uid=item.series_uid, overwrite=overwrite, anonymize=anonymize,
                        input_sha256=record["input_sha256"], key=key)
    record.update({k: prov.get(k) for k in ("method", "model", "model_version", "weights_sha256", "params", "sigma",
                                            "sigma_source", "modality")})
    record.update(status="ok", error=None, output_sha256=sha256_paths([out_path]),
                  seconds=round(time.perf_counter() - start, 3), finished=now())
    return record
