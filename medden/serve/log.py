"""Structured log lines: one JSON object per line, so a log shipper (or ``jq``) reads them without parsing prose."""
from __future__ import annotations

import datetime as _dt
import json
import sys
import threading
from typing import Any, TextIO


class EventLog:
    """Writes ``{"time": ..., "event": ..., **fields}`` as one JSON line per call; safe to call from any thread."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), "event": event}
        record.update(fields)
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()
