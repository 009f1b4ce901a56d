"""The node's on-disk queue, laid out so that a node killed at any moment finishes its work after a restart.

::

    SPOOL/incoming/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   instances as received (written then renamed)
    SPOOL/jobs/<job>/source/                                  a complete series (quiet time passed), to denoise
    SPOOL/jobs/<job>/derived/                                 its derived series, to forward
    SPOOL/jobs/<job>/job.json                                 forward attempts so far
    SPOOL/failed/<job>/                                       a series that could not be denoised, with error.json

A series moves from ``incoming`` to ``jobs`` by one rename once no instance of it has arrived for the quiet time
(after a restart the files' modification times count). A job is removed only after its derived series was stored
at the destination; a job whose ``derived`` folder is missing is denoised (again), so every step is redone safely.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(text: str) -> bool:
    """A syntactically valid DICOM UID (digits and dots, at most 64 characters): safe as a folder name."""
    return bool(text) and len(text) <= 64 and bool(_UID.match(text))


@dataclass
class Job:
    """One complete series waiting in the queue."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def source(self) -> Path:
        return self.folder / "source"

    @property
    def derived(self) -> Path:
        return self.folder / "derived"

    @property
    def series_uid(self) -> str:
        return self.name.split("_", 1)[1]

    def state(self) -> dict:
        try:
            return json.loads((self.folder / "job.json").read_text())
        except (OSError, ValueError):
            return {}

    def save_state(self, state: dict) -> None:
        tmp = self.folder / ".job.json.partial"
        tmp.write_text(json.dumps(state) + "\n")
        os.replace(tmp, self.folder / "job.json")


class Spool:
    """The queue folders, and the lock that keeps receiving and completing a series from racing."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.incoming, self.jobs_dir, self.failed_dir = (self.root / n for n in ("incoming", "jobs", "failed"))
        for folder in (self.incoming, self.jobs_dir, self.failed_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self._last: dict[str, float] = {}  # series UID → time.time() of its newest instance
        self._recover()

    def _recover(self) -> None:
        """Clean what a killed node left half-done: partial files and folders, jobs without a source."""
        for partial in [*self.root.rglob(".*.partial"), *self.jobs_dir.glob("*/derived-new")]:
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink(missing_ok=True)
        for folder in self.jobs_dir.iterdir():
            if folder.is_dir() and not (folder / "source").is_dir():
                shutil.rmtree(folder)
        for series in self.incoming.iterdir():
            times = [p.stat().st_mtime for p in series.glob("*.dcm")]
            if times:
                self._last[series.name] = max(times)
            else:
                shutil.rmtree(series, ignore_errors=True)

    def add(self, series_uid: str, sop_uid: str, data: bytes) -> None:
        """Store one received instance (the encoded file: preamble, meta and dataset)."""
        with self.lock:
            folder = self.incoming / series_uid
            folder.mkdir(exist_ok=True)
            tmp = folder / f".{sop_uid}.partial"
            tmp.write_bytes(data)
            os.replace(tmp, folder / f"{sop_uid}.dcm")
            self._last[series_uid] = time.time()

    def promote(self, quiet_s: float) -> list[Job]:
        """Move every series quiet for ``quiet_s`` seconds from ``incoming`` to ``jobs``; returns the new jobs."""
        now, new = time.time(), []
        with self.lock:
            for uid, last in list(self._last.items()):
                if now - last < quiet_s:
                    continue
                folder = self.jobs_dir / f"{time.time_ns()}_{uid}"
                folder.mkdir()
                os.replace(self.incoming / uid, folder / "source")
                del self._last[uid]
                new.append(Job(folder))
        return new

    def pending_jobs(self) -> list[Job]:
        """Complete series not yet forwarded, oldest first."""
        return [Job(f) for f in sorted(self.jobs_dir.iterdir()) if f.is_dir() and not f.name.startswith(".")]

    def receiving(self) -> int:
        """Series still inside their quiet time."""
        with self.lock:
            return len(self._last)

    def finish(self, job: Job) -> None:
        shutil.rmtree(job.folder)

    def fail(self, job: Job, error: str) -> Path:
        """Set a series that cannot be denoised aside (kept for inspection, never retried)."""
        target = self.failed_dir / job.name
        shutil.rmtree(job.derived, ignore_errors=True)
        os.replace(job.folder, target)
        (target / "error.json").write_text(json.dumps({"error": error}) + "\n")
        return target
