"""A real Orthanc for tests: Debian's `orthanc` with its DICOMweb plugin (`orthanc-dicomweb`),
started on free ports with a temporary configuration and storage, loaded through its REST API,
and stopped. `.ci/run` installs both packages; without them the tests skip with the reason.

HTTP answers localhost only (RemoteAccessAllowed false); C-STORE is accepted only from the AE
titles given, calling from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import requests

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared library, None when it is not installed."""
    for folder in PLUGIN_DIRS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []
        if found:
            return str(found[0])
    return None


def require() -> tuple[str, str]:
    """(the Orthanc binary, the plugin), or skip the test with the reason."""
    binary = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    plugin = dicomweb_plugin()
    if binary is None or plugin is None:
        why = "Debian's orthanc and orthanc-dicomweb are not installed (.ci/run installs them)"
        pytest.skip(reason=why)
    return binary, plugin


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, however it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range: no outgoing connection of this
    machine takes it before the server binds it, as one from bind(0) could be."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


class Orthanc:
    """One Orthanc server under `folder`; `users` turns HTTP authentication on."""

    def __init__(
        self,
        folder: Path,
        aet: str,
        users: dict[str, str] | None = None,
        callers: tuple[str, ...] = ("PTXFAST",),
        dicom_port: int | None = None,
    ) -> None:
        binary, plugin = require()
        folder.mkdir(parents=True, exist_ok=True)
        self.aet, self.http_port = aet, free_port()
        self.dicom_port = dicom_port or free_port()
        self.auth = next(iter(users.items())) if users else None
        config = {
            "Name": aet, "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": aet, "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
            "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {c.lower(): [c, "127.0.0.1", 104] for c in callers},
            "HttpTimeout": 10, "StableAge": 1,
        }  # fmt: skip
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")
        self.proc = subprocess.Popen(
            [binary, str(folder / "orthanc.json")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get("/system").ok:
                    break
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dicom(self) -> str:
        return f"dicom://{self.aet}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, **{"auth": self.auth, "timeout": 30, **kw})

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, **{"auth": self.auth, "timeout": 30, **kw})

    def upload(self, paths) -> None:
        """Store DICOM files through the REST API (POST /instances)."""
        for p in paths:
            r = self.post("/instances", data=Path(p).read_bytes())
            r.raise_for_status()

    def find(self, modality: str) -> list[str]:
        """Orthanc ids of the instances of `modality`."""
        query = {"Level": "Instance", "Query": {"Modality": modality}}
        r = self.post("/tools/find", data=json.dumps(query))
        r.raise_for_status()
        return r.json()

    def datasets(self, modality: str) -> list[pydicom.Dataset]:
        """The stored instances of `modality`, read back."""
        return [
            pydicom.dcmread(io.BytesIO(self.get(f"/instances/{i}/file").content))
            for i in self.find(modality)
        ]

    def delete(self, modality: str) -> None:
        for i in self.find(modality):
            requests.delete(f"{self.url}/instances/{i}", auth=self.auth, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
