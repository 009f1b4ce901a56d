"""The forward destination: parsing ``HOST:PORT:AET``, the start-up C-ECHO, and C-STORE of a derived series."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medden.errors import ParameterError

# C-STORE statuses that mean "stored": success and the warnings (coercion, elements discarded, no validation).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class ForwardError(Exception):
    """The destination did not take the series (down, refused the association, or a failure status)."""


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    ae_title: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.ae_title}"


def parse_destination(text: str) -> Destination:
    """``"pacs.local:4242:ORTHANC"`` → :class:`Destination` (the AE title is at most 16 characters)."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ParameterError(f"--forward needs HOST:PORT:AET, got {text!r}")
    host, port_text, aet = (p.strip() for p in parts)
    try:
        port = int(port_text)
    except ValueError:
        raise ParameterError(f"--forward port must be a number, got {port_text!r}") from None
    if not 1 <= port <= 65535:
        raise ParameterError(f"--forward port must be 1…65535, got {port}")
    if len(aet) > 16:
        raise ParameterError(f"--forward AE title {aet!r} is longer than 16 characters")
    return Destination(host, port, aet)


def _ae(calling_aet: str, timeout_s: float):
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    return ae


def echo(dest: Destination, calling_aet: str, timeout_s: float = 5.0) -> None:
    """C-ECHO ``dest``; raises :class:`ForwardError` saying why when it does not answer with success."""
    from pynetdicom.sop_class import Verification

    ae = _ae(calling_aet, timeout_s)
    ae.add_requested_context(Verification)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise ForwardError("association " + ("rejected" if assoc.is_rejected else "failed (nobody listening?)"))
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or status.Status != 0x0000:
        raise ForwardError(f"C-ECHO status {_hex(status)}")


def store_series(dest: Destination, files: list[Path], calling_aet: str, timeout_s: float = 30.0) -> None:
    """C-STORE every file of a series to ``dest`` in one association; raises :class:`ForwardError` unless all were
    stored. Storing again what the destination already has is harmless (same SOP Instance UIDs), so a failed
    series is simply sent again."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    classes = {}
    for path in files:
        meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        classes.setdefault(str(meta.SOPClassUID), []).append(path)
    ae = _ae(calling_aet, timeout_s)
    for sop_class in classes:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise ForwardError("association " + ("rejected" if assoc.is_rejected else "failed (nobody listening?)"))
    try:
        for path in files:
            status = assoc.send_c_store(path)
            if not status or status.Status not in STORED:
                raise ForwardError(f"C-STORE of {path.name}: status {_hex(status)}")
    finally:
        if assoc.is_established:
            assoc.release()


def _hex(status) -> str:
    return f"0x{status.Status:04X}" if status and "Status" in status else "none (connection lost)"
