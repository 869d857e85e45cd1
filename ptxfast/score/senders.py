"""Sending a run's DICOM results back: every SEG and SR it writes goes to each `--send`
target, a DICOMweb root (STOW-RS) or `dicom://AET@host:port` (C-STORE as `--ae-title`), once.

What is sent. Once a batch's rows are in the CSV (its SEG and SR files exist by then), the
SEG (`--dicom-seg`) and SR (`--dicom-sr`) of each of its scored rows are queued for every
target, SEG first (the SR references it). Both carry the source's StudyInstanceUID, so they
land in the study of the image they describe.

Once. Each target's acknowledgements are appended to `<out>.sent` (one JSON line per result:
target, kind, input path, SOPInstanceUID; fsync'd), and only what it lacks is sent: a run
started with `--resume`, after any interruption (kill -9 included), sends the results of the
rows already in the CSV that no target acknowledged, and nothing twice. A result sent but
killed before its acknowledgement was recorded is sent again, harmlessly: the SEG and SR UIDs
are derived from the source's SOPInstanceUID and the artifact's sha256
(`dicom_out.derived_uid`), so the server replaces the instance rather than adding one. A run
without `--resume` starts the record again.

Failures. Each request is retried with backoff (`PacsOptions.attempts`, `backoff`); a target
that still refuses or does not answer gets nothing more this run, scoring goes on, and the
summary says how many results it lacks; `ptxfast score` then ends with one line, and the same
command with `--resume` sends the rest. No row is lost: rows never wait for a target.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptxfast.score.ledger import (
    WriteFailed,
    append_whole,
    cut_back,
    is_write_error,
    read_rows,
    write_failed,
)
from ptxfast.score.pacs import (
    PacsError,
    PacsOptions,
    describe_failure,
    is_url,
    redact,
    retrying,
    transient,
    web_client,
)

__all__ = ["SentLedger", "Sender", "Target", "connected", "failure_line", "parse_target"]

_DICOM = re.compile(r"dicom://([^@/\s]{1,16})@([^:/\s]+|\[[0-9a-fA-F:]+\]):(\d{1,5})/?")
_CHUNK = 16  # results per STOW-RS request / C-STORE association
# C-STORE statuses that mean stored: success, and the warnings "coerced", "elements
# discarded", "does not match SOP class" (PS3.4 B.2.3).
_STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class _Refused(Exception):
    """A target answered but did not store some results (a STOW-RS FailedSOPSequence, a
    C-STORE failure status)."""


@dataclass(frozen=True)
class Target:
    """Where results go: STOW-RS to a DICOMweb root, or C-STORE to an AE."""

    name: str  # printable, no credentials; the key of its acknowledgements
    url: str | None = None  # STOW-RS
    aet: str | None = None  # C-STORE: called AE title, host and port
    host: str | None = None
    port: int | None = None


def parse_target(text: str) -> Target:
    """`--send` TARGET: an http(s) DICOMweb root, or dicom://AET@host:port."""
    if is_url(text):
        return Target(name=redact(text).rstrip("/"), url=text.rstrip("/"))
    m = _DICOM.fullmatch(text.strip())
    if not m or not 0 < int(m[3]) < 65536:
        raise PacsError(
            f"--send {text!r}: give a DICOMweb root (https://host/dicom-web) or "
            "dicom://AET@host:port (AET at most 16 characters)"
        )
    host = m[2].strip("[]")
    return Target(name=f"dicom://{m[1]}@{m[2]}:{int(m[3])}", aet=m[1], host=host, port=int(m[3]))


# ------------------------------------------------------------------ the record


class SentLedger:
    """`<out>.sent`: what each target acknowledged, one JSON line per result, fsync'd, written
    as the CSV is (`ledger.append_whole`): a failed write is cut back and a full disk is a
    `WriteFailed`."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.acked: set[tuple[str, str, str]] = set()  # (target, kind, input path)
        self.lock = threading.Lock()
        if fresh:
            path.unlink(missing_ok=True)
        good = 0
        if path.exists():
            data = path.read_bytes()
            good = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is cut off
            for line in data[:good].splitlines():
                with contextlib.suppress(ValueError, TypeError):
                    target, kind, rel, _ = json.loads(line)
                    self.acked.add((target, kind, rel))
        try:
            self.file = open(path, "r+b" if good else "wb", buffering=0)
            cut_back(self.file, good)
        except OSError as err:
            if is_write_error(err):
                raise write_failed(path, err) from None
            raise
        self.size = good  # bytes of complete lines on disk

    def record(self, target: str, done: Sequence[tuple[str, str, str]]) -> None:
        """Record `(kind, input path, SOPInstanceUID)` results as acknowledged by `target`."""
        if not done:
            return
        data = "".join(json.dumps([target, *d]) + "\n" for d in done).encode()
        with self.lock:
            append_whole(self.file, data, self.size, self.path)
            self.size += len(data)
            self.acked.update((target, kind, rel) for kind, rel, _ in done)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


# ------------------------------------------------------------------ the transports


@dataclass
class _Item:
    kind: str  # "SEG" or "SR"
    rel: str  # the input it describes
    path: Path


def _read(items: Sequence[_Item]) -> list:
    import pydicom

    return [pydicom.dcmread(item.path) for item in items]


def _stow(target: Target, options: PacsOptions) -> Callable[[list], set[str]]:
    """A function storing datasets with STOW-RS; returns the SOPInstanceUIDs refused."""
    web = web_client(target.url, options)

    def send(datasets: list) -> set[str]:
        answer = web.store_instances(datasets)
        failed = answer.get("FailedSOPSequence") or []
        return {str(item.get("ReferencedSOPInstanceUID", "")) for item in failed}

    return send


def _c_store(target: Target, options: PacsOptions) -> Callable[[list], set[str]]:
    """A function storing datasets with C-STORE over one association; returns those refused."""
    from pynetdicom import AE

    def send(datasets: list) -> set[str]:
        ae = AE(ae_title=options.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = options.timeout
        # One context per kind of dataset, not per dataset: a chunk is mostly SEGs and SRs of
        # one transfer syntax each, and an association offers at most 128 contexts.
        kinds = dict.fromkeys((ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets)
        for sop_class, syntax in kinds:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate(target.host, target.port, ae_title=target.aet)
        if not assoc.is_established:
            raise ConnectionError(
                f"no association with {target.aet} (refused or no answer: check the AE "
                f"title, host and port, and that it accepts {options.ae_title} from here)"
            )
        refused = set()
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if not status or int(status.get("Status", -1)) not in _STORED:
                    refused.add(str(ds.SOPInstanceUID))
        finally:
            assoc.release()
        return refused

    return send


# ------------------------------------------------------------------ the sender


@dataclass
class _Progress:
    """One target's account for the summary."""

    target: str
    sent: int = 0  # acknowledged this run
    already: int = 0  # acknowledged by earlier runs
    left: int = 0  # not sent (the target failed)
    error: str | None = None


@dataclass
class Sender:
    """Queues the results of rows as they reach the CSV and sends them, one thread per target
    (see the module docstring)."""

    options: PacsOptions
    ledger: SentLedger
    outputs: Sequence[tuple[str, Path]]  # ("SEG", --dicom-seg), ("SR", --dicom-sr)
    targets: list[Target] = field(default_factory=list)
    progress: dict[str, _Progress] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queues: dict[str, queue.Queue] = {}
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        for t in self.targets:
            self.progress[t.name] = _Progress(t.name)
            self.queues[t.name] = queue.Queue()
            thread = threading.Thread(target=self._run, args=(t,), name="send", daemon=True)
            thread.start()
            self.threads.append(thread)

    def listen(self, rows: Sequence[Sequence[str]]) -> None:
        """The ledger listener: queue the results of rows just written."""
        from ptxfast.score.writer import safe_output_path

        for row in rows:
            rel, sop, probability = row[0], row[1], row[2]
            if not (sop and probability):
                continue  # not scored, or no UID: no SEG or SR
            for kind, folder in self.outputs:
                lacking = []
                for t in self.targets:
                    if (t.name, kind, rel) in self.ledger.acked:
                        self.progress[t.name].already += 1  # acknowledged in an earlier run
                    else:
                        lacking.append(t)
                if not lacking:
                    # No path to resolve or stat, which on --resume would otherwise be paid for
                    # every row already in the CSV.
                    continue
                try:  # (an unsafe name was refused when the output was written)
                    path = safe_output_path(folder, rel, ".dcm", uid=sop).path
                    if not path.is_file():
                        continue  # a negative's SEG, or an output error the summary reports
                except (OSError, ValueError):
                    continue
                for t in lacking:
                    self.queues[t.name].put(_Item(kind, rel, path))

    def _run(self, target: Target) -> None:
        q, p = self.queues[target.name], self.progress[target.name]
        try:
            send = _stow(target, self.options) if target.url else _c_store(target, self.options)
        except Exception as err:
            send, p.error = None, describe_failure(err)  # (never empty: no send means an error)
        while True:
            chunk = _take(q)
            if chunk is None:
                return
            if p.error or self.stop.is_set():
                p.left += len(chunk)
                continue
            try:
                self._send(target, send, chunk)
            except Exception as err:
                p.left += len([i for i in chunk if not self._acked(target, i)])
                # (`<out>.sent` not written, a full disk say: ptxfast's own line, said whole)
                p.error = str(err) if isinstance(err, WriteFailed) else describe_failure(err)

    def _acked(self, target: Target, item: _Item) -> bool:
        return (target.name, item.kind, item.rel) in self.ledger.acked

    def _send(self, target: Target, send: Callable[[list], set[str]], chunk: list[_Item]):
        """Send a chunk with retries; each acknowledged result is recorded at once."""

        def attempt() -> None:
            todo = [i for i in chunk if not self._acked(target, i)]
            datasets = _read(todo)
            refused = send(datasets)
            done = [
                (i.kind, i.rel, str(ds.SOPInstanceUID))
                for i, ds in zip(todo, datasets, strict=True)
                if str(ds.SOPInstanceUID) not in refused
            ]
            self.ledger.record(target.name, done)
            self.progress[target.name].sent += len(done)
            if refused:
                raise _Refused(f"{len(refused)} result(s) refused by the target")

        retrying(
            attempt,
            self.options.attempts,
            self.options.backoff,
            lambda e: isinstance(e, _Refused) or transient(e),
        )

    def finish(self) -> list[dict[str, Any]]:
        """Wait until every queued result is sent (or its target failed); the account."""
        for q in self.queues.values():
            q.put(None)
        for thread in self.threads:
            thread.join()
        return [vars(p).copy() for p in self.progress.values()]

    def abandon(self) -> bool:
        """The run stops: results not yet sent stay for `--resume`. True once every sending
        thread has ended (a request in flight is given its timeout)."""
        self.stop.set()
        for q in self.queues.values():
            q.put(None)
        for thread in self.threads:
            thread.join(self.options.timeout)
        return not any(thread.is_alive() for thread in self.threads)


def _take(q: queue.Queue) -> list[_Item] | None:
    """Up to _CHUNK queued items (waiting for the first); None once the queue is closed."""
    first = q.get()
    if first is None:
        return None
    chunk = [first]
    while len(chunk) < _CHUNK:
        try:
            item = q.get_nowait()
        except queue.Empty:
            break
        if item is None:
            q.put(None)  # seen again by the next take
            break
        chunk.append(item)
    return chunk


def failure_line(sent: Sequence[dict[str, Any]], out: Path) -> str | None:
    """The one line a run ends with when a target failed, else None."""
    failed = [s for s in sent if s.get("error")]
    if not failed:
        return None
    parts = "; ".join(
        f"{s['left']} result(s) not sent to {s['target']}: {s['error']}" for s in failed
    )
    return f"{parts}; the rows are in {out}: run the same command with --resume to send the rest"


@contextlib.contextmanager
def connected(job) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Around an engine's run: the spool of a DICOMweb source, and the sender of `--send`,
    both fed by the ledger as rows are written. Yields `after()`, which waits for the sends
    and returns their account per target for the summary (empty without `--send`)."""
    config, preds = job.config, job.preds
    options = config.pacs
    spool = sender = None
    try:
        if options is not None and options.url:
            from ptxfast.score.dicomweb import Spool

            spool = Spool(config.root)
            preds.listeners.append(spool.release)
        if options is not None and options.send:
            outputs = [(k, d) for k, d in (("SEG", config.seg_dir), ("SR", config.sr_dir)) if d]
            fresh = config.overwrite or not config.resume  # (as the CSV itself)
            ledger = SentLedger(config.out.with_name(config.out.name + ".sent"), fresh)
            sender = Sender(options, ledger, outputs, [parse_target(t) for t in options.send])
            sender.listen(list(read_rows(preds.path)))  # rows of earlier runs (--resume)
            preds.listeners.append(sender.listen)

        def after() -> list[dict[str, Any]]:
            return sender.finish() if sender is not None else []

        yield after
    finally:
        if sender is not None and sender.abandon():
            sender.ledger.close()  # (left open while a thread might still record)
        if spool is not None:
            spool.remove()
