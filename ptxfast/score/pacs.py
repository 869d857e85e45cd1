"""Talking to a PACS: what a run is asked to fetch and send (`PacsOptions`), credentials, HTTP
sessions, retries with backoff, and URLs printed without secrets.

Credentials never come from the command line: an HTTP server gets a bearer token from
`PTXFAST_DICOMWEB_TOKEN`, or basic credentials from `PTXFAST_DICOMWEB_USER` and
`PTXFAST_DICOMWEB_PASSWORD`, or else the `~/.netrc` entry of its host (`NETRC` names another
file). A URL carrying a user or password is refused, so none reaches a shell history, a
process list or a log. TLS certificates are verified, against `--ca-bundle` when given.

The libraries (dicomweb-client, pynetdicom, requests) are the `pacs` extra; `require()` turns
their absence into one line naming the install.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ptxfast.errors import first_line
from ptxfast.safe_text import visible
from ptxfast.score.config import ScoreError

__all__ = [
    "PacsError", "PacsOptions", "TOKEN_ENV", "USER_ENV", "PASSWORD_ENV", "describe_failure",
    "is_url", "redact", "require", "retrying", "session", "transient", "web_client",
]  # fmt: skip

TOKEN_ENV = "PTXFAST_DICOMWEB_TOKEN"
USER_ENV = "PTXFAST_DICOMWEB_USER"
PASSWORD_ENV = "PTXFAST_DICOMWEB_PASSWORD"
_URL = re.compile(r"https?://", re.IGNORECASE)
_DATE = re.compile(r"\d{8}")
# Characters of text a server sent (a reason phrase, an error) quoted in a failure's line: a real
# one is short, and a hostile one is not printed whole into a terminal or a CSV cell.
_QUOTED = 200
T = TypeVar("T")


class PacsError(ScoreError):
    """A server that cannot be used as asked (unreachable, refusing, misnamed); one line."""


@dataclass(frozen=True)
class PacsOptions:
    """Where a run's images come from and where its DICOM results go (`ptxfast score URL`,
    `--study`, `--since`, `--send`, `--ae-title`, `--ca-bundle`)."""

    url: str | None = None  # DICOMweb root the images are fetched from; None: a folder
    studies: tuple[str, ...] = ()  # StudyInstanceUIDs to score; empty: found by QIDO-RS
    since: str | None = None  # YYYYMMDD: studies from that date on
    send: tuple[str, ...] = ()  # DICOMweb roots (STOW-RS) and dicom://AET@host:port (C-STORE)
    ae_title: str = "PTXFAST"  # our calling AE title for C-STORE
    ca_bundle: Path | None = None  # CA certificates for https (None: the system's)
    fetch_threads: int = 4  # WADO-RS requests each decoding process has in flight
    attempts: int = 4  # tries per request before an instance (or a target) counts as failed
    backoff: float = 0.5  # seconds before the second try, doubled before each further one
    timeout: float = 60.0  # seconds a request may take

    def check(self) -> None:
        """Refuse options that cannot work, before anything is loaded or fetched."""
        from ptxfast.score.writer import is_dicom_uid

        for url in ([self.url] if self.url else []) + [t for t in self.send if is_url(t)]:
            parts = urlsplit(url)
            if parts.username or parts.password:
                raise PacsError(
                    f"{redact(url)}: credentials do not belong in a URL (they would show in "
                    f"the process list and logs); put them in ~/.netrc or {USER_ENV} and "
                    f"{PASSWORD_ENV} (or {TOKEN_ENV})"
                )
            if not parts.hostname:
                raise PacsError(f"{redact(url)}: no host; write http(s)://host:port/dicom-web")
        if (self.studies or self.since) and not self.url:
            raise PacsError("--study and --since choose studies on a DICOMweb server: give its URL")
        for study in self.studies:
            if not is_dicom_uid(study):
                raise PacsError(f"--study {study!r} is not a DICOM UID (digits and dots)")
        if self.since is not None and not _DATE.fullmatch(self.since):
            raise PacsError(f"--since {self.since!r}: write the date as YYYYMMDD")
        if not 1 <= len(self.ae_title.strip()) <= 16:
            raise PacsError(f"--ae-title {self.ae_title!r}: 1 to 16 characters")
        if self.ca_bundle is not None and not Path(self.ca_bundle).is_file():
            raise PacsError(f"--ca-bundle {self.ca_bundle}: no such file")
        if self.attempts < 1 or self.fetch_threads < 1:
            raise PacsError("attempts and fetch_threads must be at least 1")


def is_url(value: object) -> bool:
    """True for an http(s) URL (a DICOMweb root), False for a folder."""
    return isinstance(value, str) and _URL.match(value) is not None


def redact(url: str) -> str:
    """`url` without user, password, query or fragment: what may be printed or logged."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def require() -> None:
    """Import the `pacs` extra's libraries, or raise one line naming the install."""
    missing = []
    for module in ("requests", "dicomweb_client", "pynetdicom"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module.replace("_", "-"))
    if missing:
        raise PacsError(
            f"scoring from or sending to a PACS needs {', '.join(missing)}: "
            "pip install 'ptxfast[pacs]'"
        )


def _credentials(url: str) -> tuple[str, Any]:
    """("bearer", token), ("basic", (user, password)) or ("", None), from the environment
    first, then the netrc entry of the URL's host."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return "bearer", token
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user and password is not None:
        return "basic", (user, password)
    from requests.utils import get_netrc_auth

    found = get_netrc_auth(url, raise_errors=False)  # reads $NETRC, else ~/.netrc
    return ("basic", found) if found else ("", None)


def session(url: str, ca_bundle: Path | None = None):
    """A requests.Session for the server at `url`: its credentials (see the module docstring)
    and TLS verified against `ca_bundle` or the system's certificates."""
    import requests

    s = requests.Session()
    kind, secret = _credentials(url)
    if kind == "bearer":
        s.headers["Authorization"] = f"Bearer {secret}"
    elif kind == "basic":
        s.auth = secret
    # Nothing else is taken from the environment's netrc behind our back: requests would
    # otherwise read it again for every request without explicit credentials.
    s.trust_env = False
    s.verify = str(ca_bundle) if ca_bundle is not None else _system_bundle()
    return s


def web_client(url: str, options: PacsOptions):
    """A DICOMwebClient for the root `url` (a source or a STOW-RS target): `session`'s
    credentials and TLS, `options.timeout`, and no retries of its own (`retrying` retries
    every request alike)."""
    from dicomweb_client import DICOMwebClient

    web = DICOMwebClient(
        url=url.rstrip("/"),
        session=session(url, options.ca_bundle),
        timeout=options.timeout,
        permissive_uid=True,  # UIDs are checked where they become paths
    )
    web.set_http_retry_params(retry=False)
    return web


def _system_bundle() -> bool | str:
    """True (certifi's bundle), or the bundle the environment names, as requests would use."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def transient(err: BaseException) -> bool:
    """Worth another try: no connection, a timeout, or an HTTP status that says "later"."""
    import requests

    status = _status(err)
    if status is not None:
        return status in (408, 429) or status >= 500
    return isinstance(err, requests.ConnectionError | requests.Timeout | ConnectionError)


def retrying(
    call: Callable[[], T],
    attempts: int,
    backoff: float,
    retry_if: Callable[[BaseException], bool] = transient,
) -> T:
    """`call()`, tried up to `attempts` times while its error is `retry_if`, waiting `backoff`
    seconds before the second try and twice as long before each next one."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if attempt + 1 >= attempts or not retry_if(err):
                raise
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def describe_failure(err: BaseException) -> str:
    """One line for a failed request: the HTTP status and reason, or the connection problem,
    never a header (credentials) or a response body (text from the server)."""
    import requests

    status = _status(err)
    if status is not None:
        reason = visible((getattr(err.response, "reason", "") or "")[:_QUOTED])
        text = f"HTTP {status} {reason}".strip()
        if status in (401, 403):
            text += (
                f" (credentials refused: set them in ~/.netrc, or {USER_ENV} and "
                f"{PASSWORD_ENV}, or {TOKEN_ENV})"
            )
        return text
    if isinstance(err, requests.exceptions.SSLError):
        return "TLS certificate not verified (give the server's CA with --ca-bundle FILE)"
    if isinstance(err, requests.ConnectionError):
        return "connection refused or host unreachable"
    if isinstance(err, requests.Timeout):
        return "no answer in time"
    # Control characters in it (it may quote the server) are written as visible escapes.
    return visible(first_line(err, typed=True)[:_QUOTED])
