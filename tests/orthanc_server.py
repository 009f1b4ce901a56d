"""Starts a real Orthanc (the Debian ``orthanc`` package) on free loopback ports with a temporary configuration, for
the DICOM node tests; talks to it through its REST API with the standard library only."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process; :meth:`start` and :meth:`stop` may be called again (storage is kept)."""

    def __init__(self, folder: Path, aet: str = "ORTHANC", **extra):
        self.folder = Path(folder)
        self.aet = aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        config = {
            "Name": "medden-test", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpServerEnabled": True, "DicomServerEnabled": True, "Plugins": [],
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
            "DicomModalities": {}, "StorageCompression": False, "HttpTimeout": 30, "DicomScuTimeout": 10,
            "ConcurrentJobs": 1, "SaveJobs": False, **extra,
        }
        self.config = self.folder / "orthanc.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config, indent=1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 30.0) -> "Orthanc":
        log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: see {self.folder / 'orthanc.log'}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not answer on its HTTP port in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def request(self, method: str, path: str, body=None):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read()
        return json.loads(text) if text.strip() else None

    def request_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=60) as resp:
            return resp.read()

    def get(self, path: str):
        return self.request("GET", path)

    def upload(self, path: Path) -> dict:
        return self.request("POST", "/instances", Path(path).read_bytes())

    def add_modality(self, name: str, aet: str, port: int) -> None:
        self.request("PUT", f"/modalities/{name}", {"AET": aet, "Host": "127.0.0.1", "Port": port})

    def store(self, modality: str, resources: list[str]) -> dict:
        """C-STORE ``resources`` (Orthanc IDs) to ``modality`` in one association; carries on past refusals."""
        return self.request("POST", f"/modalities/{modality}/store",
                            {"Resources": resources, "Synchronous": True, "Permissive": True})

    def series_of_study(self, study_uid: str) -> list[dict]:
        found = self.request("POST", "/tools/lookup", study_uid.encode())
        study = next(f["ID"] for f in found if f["Type"] == "Study")
        return self.get(f"/studies/{study}/series")

    def wait_for_series(self, study_uid: str, count: int, timeout_s: float = 30.0) -> list[dict]:
        deadline = time.time() + timeout_s
        while True:
            series = self.series_of_study(study_uid)
            if len(series) >= count or time.time() > deadline:
                return series
            time.sleep(0.2)


def kill(server: Orthanc) -> None:
    """Stop Orthanc at once (SIGKILL), as a crashed or unplugged destination."""
    if server.proc is not None:
        server.proc.kill()
        server.proc.wait()
        server.proc = None
