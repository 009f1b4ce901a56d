"""The DICOM node: a C-STORE SCP that collects series, denoises each complete one, and forwards the derived series.

Receiving (pynetdicom association threads) only validates and spools; one worker thread completes series after
the quiet time, denoises them with :func:`medden.load_volume` → :func:`medden.denoise` → :func:`medden.save_volume`
and C-STOREs the result, retrying with exponential back-off while the destination is down.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medden.errors import MeddenError, OutputError
from medden.serve.forward import Destination, ForwardError, echo, store_series
from medden.serve.log import EventLog
from medden.serve.spool import Job, Spool, is_uid

# C-STORE statuses this node answers with (PS3.4 B.2.3, PS3.7 C).
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: not a CT/MR image storage SOP class
OUT_OF_RESOURCES = 0xA700  # Refused: the instance could not be written to the spool
DATASET_MISMATCH = 0xA900  # Error: the data set does not match the SOP class (an image without its pixels, ...)
CANNOT_UNDERSTAND = 0xC000  # Error: the data set cannot be decoded


def image_classes() -> tuple[str, ...]:
    """The storage SOP classes the node denoises: CT and MR images, single- and multi-frame."""
    from pydicom import uid

    return (uid.CTImageStorage, uid.MRImageStorage, uid.EnhancedCTImageStorage, uid.EnhancedMRImageStorage)


@dataclass
class NodeConfig:
    """What ``medden serve`` was asked to do (times in seconds)."""

    forward: Destination
    spool: Path
    ae_title: str = "MEDDEN"
    host: str = ""  # all interfaces
    port: int = 11112
    method: str = "auto"
    sigma: float | str = "auto"
    device: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)
    quiet_s: float = 10.0  # a series is complete when no instance of it arrived for this long
    retry_s: float = 2.0  # first wait after a failed forward; doubles on each failure
    retry_max_s: float = 300.0  # longest wait between forward attempts
    once: bool = False  # exit when all received work is done (see DicomNode.idle)
    check_destination: bool = True  # C-ECHO the destination at start-up

    def __post_init__(self):
        from medden.errors import ParameterError

        for name in ("quiet_s", "retry_s", "retry_max_s"):
            if not getattr(self, name) > 0:
                raise ParameterError(f"{name.replace('_s', '')} must be a positive number of seconds, "
                                     f"got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ParameterError(f"--port must be 0…65535, got {self.port}")
        if not self.ae_title.strip() or len(self.ae_title) > 16:
            raise ParameterError(f"--ae-title must be 1…16 characters, got {self.ae_title!r}")


class DicomNode:
    """``medden serve``: :meth:`start` listens and works in the background, :meth:`run` blocks until stopped."""

    def __init__(self, config: NodeConfig, log: Callable[..., None] | None = None):
        self.config = config
        self.log = log or EventLog()
        try:
            self.spool = Spool(config.spool)
        except OSError as exc:
            raise OutputError(f"cannot use the spool folder {config.spool}: {exc.strerror or exc}") from None
        self.server = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._assocs: dict[int, dict] = {}
        self._assoc_lock = threading.Lock()
        self._last_activity = time.time()
        self._seen_work = bool(self.spool.pending_jobs()) or self.spool.receiving() > 0
        self.failed_series = 0
        self.forwarded_series = 0

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "DicomNode":
        """C-ECHO the destination, listen, start the worker. Raises :class:`MeddenError` on a busy port or a
        destination that does not answer."""
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        cfg = self.config
        if cfg.check_destination:
            try:
                echo(cfg.forward, cfg.ae_title)
            except ForwardError as exc:
                raise MeddenError(f"forward destination {cfg.forward} does not answer C-ECHO: {exc}") from None
        ae = AE(ae_title=cfg.ae_title)
        syntaxes = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]  # uncompressed only
        for context in AllStoragePresentationContexts:  # every storage class, so others get a C-STORE refusal
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        ae.maximum_associations = 16
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_CONN_CLOSE, self._on_close),
                    (evt.EVT_RELEASED, self._on_end), (evt.EVT_ABORTED, self._on_end)]
        try:
            self.server = ae.start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise MeddenError(f"cannot listen on port {cfg.port}: {exc.strerror or exc} "
                              f"(is another DICOM node using it?)") from None
        self.port = self.server.server_address[1]
        self.log("node", status="listening", ae_title=cfg.ae_title, port=self.port, forward=str(cfg.forward),
                 method=cfg.method, quiet_s=cfg.quiet_s, spool=str(cfg.spool),
                 queued_series=len(self.spool.pending_jobs()) + self.spool.receiving())
        self._worker = threading.Thread(target=self._work, name="medden-worker", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        """Stop receiving and working; what is queued stays on disk for the next start."""
        if self.server is not None:  # first stop receiving, then let the worker finish its current step
            self.server.shutdown()
            self.server = None
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
        self.log("node", status="stopped", forwarded_series=self.forwarded_series, failed_series=self.failed_series)

    def run(self) -> int:
        """Serve until interrupted (Ctrl-C or SIGTERM; or, with ``once``, until idle); returns the number of series
        that failed. What is queued stays on disk for the next start."""
        import signal

        def _terminate(signum, frame):
            raise KeyboardInterrupt

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            self.start()
            while self._worker.is_alive():
                self._worker.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            if self._worker is not None:
                self.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.failed_series

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a ``once`` node's worker to finish; True if it did."""
        self._worker.join(timeout)
        return not self._worker.is_alive()

    def idle(self) -> bool:
        """The ``--once`` exit condition: something was received (or queued at start-up), and now the queue is
        empty, no association is open, and nothing has arrived for the quiet time."""
        with self._assoc_lock:
            open_assocs = len(self._assocs)
        return (self._seen_work and open_assocs == 0 and self.spool.receiving() == 0
                and not self.spool.pending_jobs() and time.time() - self._last_activity >= self.config.quiet_s)

    # ------------------------------------------------------------------------------------------------ receiving
    def _on_open(self, event) -> None:
        with self._assoc_lock:
            self._assocs[id(event.assoc)] = {"peer": f"{event.address[0]}:{event.address[1]}", "received": 0,
                                             "refused": 0, "series": set(), "outcome": "closed",
                                             "start": time.perf_counter()}
        self._last_activity = time.time()

    def _on_end(self, event) -> None:
        with self._assoc_lock:
            stats = self._assocs.get(id(event.assoc))
            if stats is not None:
                stats["outcome"] = event.event.name

    def _on_close(self, event) -> None:
        with self._assoc_lock:
            stats = self._assocs.pop(id(event.assoc), None)
        self._last_activity = time.time()
        if stats is None:
            return
        calling = getattr(event.assoc.requestor, "ae_title", "") or ""
        self.log("association", peer=stats["peer"], calling_ae=str(calling).strip(), outcome=stats["outcome"],
                 received=stats["received"], refused=stats["refused"], series=sorted(stats["series"]),
                 seconds=round(time.perf_counter() - stats["start"], 3))

    def _count(self, event, key: str, series_uid: str | None = None) -> None:
        with self._assoc_lock:
            stats = self._assocs.get(id(event.assoc))
            if stats is not None:
                stats[key] += 1
                if series_uid:
                    stats["series"].add(series_uid)

    def _on_store(self, event) -> int:
        status, reason, sop_uid = self._check(event)
        if status != SUCCESS:
            self._count(event, "refused")
            self.log("refused", sop_instance_uid=sop_uid, status=f"0x{status:04X}", reason=reason,
                     sop_class=str(event.context.abstract_syntax))
            return status
        ds = event.dataset
        try:
            self.spool.add(str(ds.SeriesInstanceUID), sop_uid, event.encoded_dataset())
        except OSError as exc:
            self.log("refused", sop_instance_uid=sop_uid, status=f"0x{OUT_OF_RESOURCES:04X}",
                     reason=f"cannot spool: {exc.strerror or exc}")
            self._count(event, "refused")
            return OUT_OF_RESOURCES
        self._seen_work = True
        self._last_activity = time.time()
        self._count(event, "received", str(ds.SeriesInstanceUID))
        return SUCCESS

    def _check(self, event) -> tuple[int, str, str]:
        """(status, reason, SOP instance UID) for one received instance: SUCCESS or why it is refused."""
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        if event.context.abstract_syntax not in image_classes():
            return SOP_CLASS_NOT_SUPPORTED, "not a CT or MR image storage SOP class", sop_uid
        try:
            ds = event.dataset
            problem = image_problem(ds)
        except Exception as exc:  # pydicom raises many types on a corrupt stream
            return CANNOT_UNDERSTAND, f"cannot decode the data set: {type(exc).__name__}: {exc}"[:200], sop_uid
        if problem is None and str(ds.SOPInstanceUID) != sop_uid:
            problem = "SOPInstanceUID differs from the C-STORE request's Affected SOP Instance UID"
        if problem is None and str(ds.SOPClassUID) != event.context.abstract_syntax:
            problem = "SOPClassUID differs from the presentation context's SOP class"
        return (DATASET_MISMATCH, problem, sop_uid) if problem else (SUCCESS, "", sop_uid)

    # ------------------------------------------------------------------------------------------------ working
    def _work(self) -> None:
        while not self._stop.is_set():
            for job in self.spool.promote(self.config.quiet_s):
                self.log("series", status="complete", series_uid=job.series_uid, job=job.name,
                         instances=len(list(job.source.glob("*.dcm"))))
            for job in self.spool.pending_jobs():
                if self._stop.is_set():
                    break
                self._run_job(job)
            if self.config.once and self.idle():
                return
            self._stop.wait(0.2)

    def _run_job(self, job: Job) -> None:
        state = job.state()
        if state.get("next_try", 0) > time.time():
            return
        if not job.derived.is_dir():
            start = time.perf_counter()
            try:
                info = derive_series(job.source, job.folder / "derived-new", method=self.config.method,
                                     sigma=self.config.sigma, device=self.config.device, params=self.config.params)
                (job.folder / "derived-new").rename(job.derived)
            except Exception as exc:  # a per-series failure never stops the node
                error = str(exc) if isinstance(exc, MeddenError) else f"{type(exc).__name__}: {exc}"
                where = self.spool.fail(job, error)
                self.failed_series += 1
                self.log("series", status="failed", series_uid=job.series_uid, error=error, kept=str(where))
                return
            state.update(info, denoise_seconds=round(time.perf_counter() - start, 3))
            job.save_state(state)
        files = sorted(job.derived.glob("*.dcm"))
        try:
            store_series(self.config.forward, files, self.config.ae_title)
        except ForwardError as exc:
            attempts = state.get("attempts", 0) + 1
            wait = min(self.config.retry_max_s, self.config.retry_s * 2 ** (attempts - 1))
            state.update(attempts=attempts, next_try=time.time() + wait, last_error=str(exc))
            job.save_state(state)
            self.log("series", status="retry", series_uid=job.series_uid, attempt=attempts, wait_s=wait,
                     error=str(exc), destination=str(self.config.forward))
            return
        self.spool.finish(job)
        self.forwarded_series += 1
        self.log("series", status="forwarded", series_uid=job.series_uid,
                 derived_series_uid=state.get("derived_series_uid"), instances=len(files),
                 method=state.get("method"), sigma=state.get("sigma"), attempts=state.get("attempts", 0) + 1,
                 denoise_seconds=state.get("denoise_seconds"), destination=str(self.config.forward))


def image_problem(ds) -> str | None:
    """Why a received data set cannot be part of a 3D CT/MR volume, or None when it can."""
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not is_uid(str(ds.get(key, "") or "")):
            return f"missing or invalid {key}"
    for key in ("Rows", "Columns", "BitsAllocated", "PixelData"):
        if key not in ds or ds.get(key) in (None, b"", ""):
            return f"an image without {key}"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if key not in ds:
                return f"an image without {key}: cannot be placed in a volume"
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * frames \
        * int(ds.BitsAllocated) // 8
    got = len(ds.PixelData)
    if got < expected:
        return f"PixelData holds {got} bytes, Rows×Columns×frames needs {expected}"
    return None


def derive_series(source: Path, output: Path, *, method: str = "auto", sigma: float | str = "auto",
                  device: str = "auto", params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Denoise the DICOM series in folder ``source`` into a derived series in folder ``output`` (same study and
    geometry, new UIDs, DERIVED\\SECONDARY, its own SeriesNumber, SourceImageSequence to the source images).
    Returns what the series log line reports."""
    from medden.denoisers import denoise
    from medden.io import load_volume, save_volume
    from medden.provenance import denoise_record

    volume = load_volume(source)
    result = denoise(volume, method=method, sigma=sigma, device=device, **(params or {}))
    series_uid = str(volume.meta.get("series_uid") or "")
    prov = denoise_record(volume, result, input_path=series_uid, output_path=None, series_uid=series_uid)
    prov.update(Sources=[f"SeriesInstanceUID {series_uid}"], input=series_uid)  # no spool paths in the DICOM
    chosen = result.meta.get("denoise", {}).get("method", method)
    save_volume(result, output, description=f"medden {chosen}", provenance=prov)
    derived_uid = derived_series_uid(output)
    return {"method": chosen, "sigma": prov.get("sigma"), "derived_series_uid": derived_uid}


def derived_series_uid(folder: Path) -> str:
    """The SeriesInstanceUID of the derived series written into ``folder`` (the writer itself sets a SeriesNumber
    that differs from the source's and a SourceImageSequence per image: :mod:`medden.io.dicom_write`)."""
    import pydicom

    first = min(folder.glob("*.dcm"))
    return str(pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
