"""The two Ray Data stages of `ptxfast score --engine ray` (see `engine_ray`): decoder actors,
each decoding in a forked child process so that a file that kills its decoder kills only the
child, and model actors, which score decoded batches with the local engine's own parts and
return CSV rows. Each row also carries its own file's figures (decode seconds, decoder
restarts, its share of the batch's model time, what its outputs came to: `written_of`), which
the driver adds up over the rows it keeps.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast.score import pipeline
from ptxfast.score.decode import Files, Meta, collate, worker_init
from ptxfast.score.dicom_out import model_identity
from ptxfast.score.job import load
from ptxfast.score.ledger import CSV_COLUMNS
from ptxfast.score.writer import OutputWriter, Written, wait_outputs
from ptxfast.timing import model_only_images_per_s

__all__ = ["Decoder", "Scorer", "written_of"]

_DECODE_ATTEMPTS = 2  # fresh decoding processes a file may kill before it is an error row
# What a file's outputs came to, carried back with its row as the columns "written_<name>".
_WRITTEN = tuple(f.name for f in fields(Written) if f.name != "rel")
_NULLABLE = {f.name for f in fields(Meta) if "None" in str(f.type)}


# ------------------------------------------------------------------------------- decoding


class _ChildDied(Exception):
    """The decoding process died (or hung and was killed) before it answered."""


def _child_main(conn, root: Path, size: int, eligibility: str) -> None:
    worker_init(0)
    while True:
        try:
            paths = conn.recv()
        except EOFError:  # the actor went away
            return
        state = torch.zeros(len(paths), dtype=torch.int64)
        files = Files(root, paths, size, state, eligibility)
        conn.send([files[i] for i in range(len(paths))])


class _Child:
    """One forked process that decodes for a decoder actor, started again after it dies."""

    def __init__(self, root: Path, size: int, timeout: float, eligibility: str) -> None:
        self.root, self.size, self.timeout = root, size, timeout
        self.eligibility = eligibility
        self.proc = None
        self.conn = None
        self.started = 0
        self.restarts = 0  # processes started after the first, not yet taken (`take_restarts`)

    def decode(self, paths: list[str]) -> list[tuple]:
        """(image or None, _Meta, seconds) per path, as `decode.Files` gives them; raises _ChildDied."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(paths)
        if self.conn.poll(self.timeout):
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
            self.proc.join(5)
            code = self.proc.exitcode
            self._stop()
            raise _ChildDied(f"its process exited with code {code}")
        self._stop()
        raise _ChildDied(f"no answer within {self.timeout:.0f} s")

    def _start(self) -> None:
        # fork: the child starts at once with ptxfast already imported, as DataLoader workers do.
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_child_main, args=(child, self.root, self.size, self.eligibility), daemon=True
        )
        self.proc.start()
        child.close()
        self.restarts += self.started > 0  # the actor's first process is no restart
        self.started += 1

    def take_restarts(self) -> int:
        """The processes started again since the last call."""
        n, self.restarts = self.restarts, 0
        return n

    def _stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.kill()
                self.proc.join(5)
            self.conn.close()
        self.proc = self.conn = None


class Decoder:
    """Ray Data stage: a batch of {index, path} records → decoded images and their metadata.

    Never raises for a file: a decoder failure is the file's `error`, and a file that kills
    the decoding process is isolated (see the module docstring)."""

    def __init__(self, root: str, size: int, timeout: float, eligibility: str) -> None:
        self.size = size
        # The rule runs in the decoding process, on the header it parses (as locally).
        self.child = _Child(Path(root), size, timeout, eligibility)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        restarts = np.zeros(len(paths), dtype=np.int64)  # decoding processes started again
        try:
            items = self.child.decode(paths)
        except _ChildDied:
            items = None
        # A process started again for the batch as a whole (one died before it) is the first
        # file's.
        restarts[:1] = self.child.take_restarts()
        if items is None:  # the batch killed its process: each file alone
            items = []
            for j, path in enumerate(paths):  # each file's own restarts, its row's
                items.append(self._isolated(path))
                restarts[j] += self.child.take_restarts()
        return _decoded_columns(batch["index"], paths, items, self.size, restarts)

    def _isolated(self, path: str) -> tuple:
        why = ""
        for _ in range(_DECODE_ATTEMPTS):
            try:
                return self.child.decode([path])[0]
            except _ChildDied as err:
                why = str(err)
        if "no answer" in why:
            error = f"decoding did not finish ({why})"
        else:
            error = f"the decoder crashed on this file ({why}, {_DECODE_ATTEMPTS} times)"
        return None, Meta(index=0, error=error), 0.0


def _decoded_columns(
    index: np.ndarray, paths: list[str], items: list[tuple], size: int, restarts: np.ndarray
) -> dict[str, np.ndarray]:
    n = len(paths)
    images = np.zeros((n, size, size), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    for j, (img, _, _) in enumerate(items):
        if img is not None:
            images[j], ok[j] = img, True
    cols: dict[str, np.ndarray] = {"index": np.asarray(index, dtype=np.int64)}
    cols["path"] = np.asarray(paths, dtype=object)
    cols["image"], cols["ok"] = images, ok
    for f in fields(Meta):
        if f.name == "index":
            continue
        values = [getattr(m, f.name) for _, m, _ in items]
        if f.name in _NULLABLE:
            values = ["" if v is None else v for v in values]
        cols[f"meta_{f.name}"] = np.asarray(values, dtype=object)
    cols["decode_s"] = np.asarray([s for _, _, s in items], dtype=np.float64)
    cols["decoder_restarts"] = restarts
    cols["t_decoded"] = np.full(n, time.time())
    return cols


def _items(batch: dict[str, np.ndarray]) -> list[tuple]:
    """The decoder's columns back into `decode.Files` items, each `Meta` indexed by its position."""
    items = []
    names = [f.name for f in fields(Meta) if f.name != "index"]
    for j in range(len(batch["path"])):
        kw = {}
        for name in names:
            v = batch[f"meta_{name}"][j]
            kw[name] = None if name in _NULLABLE and v == "" else _plain(v)
        meta = Meta(index=j, **kw)
        img = np.asarray(batch["image"][j], dtype=np.float32) if batch["ok"][j] else None
        items.append((img, meta, float(batch["decode_s"][j])))
    return items


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# ---------------------------------------------------------------------------------- model


class Scorer:
    """Ray Data stage: decoded batches → CSV rows (the local engine's strings), with the
    positives' masks and SEGs (and the SRs) written before the rows are returned."""

    def __init__(
        self,
        sidecar: str,
        device: str,
        root: str,
        masks_dir: str | None,
        seg_dir: str | None,
        sr_dir: str | None,
        batch_size: int,
        threads: int | None,
        model_only_iters: int,
    ) -> None:
        from ptxfast.inference import artifact

        if threads:
            torch.set_num_threads(threads)
        side = artifact.read_sidecar(sidecar)
        self.predictor = load(side, device)  # the sha256 is checked again here
        self.batch_size = batch_size
        self.want_masks = masks_dir is not None or seg_dir is not None
        self.predictor.warmup(batch_size, iters=2)
        self.model_only = 0.0
        if model_only_iters > 0:
            x = torch.rand(batch_size, 1, self.predictor.size, self.predictor.size)
            self.model_only = model_only_images_per_s(self.predictor, x, model_only_iters)
        self.paths: dict[int, str] = {}  # the current batch's positions → paths, for OutputWriter
        self.writer = OutputWriter(
            Path(root),
            self.paths,
            Path(masks_dir) if masks_dir else None,
            Path(seg_dir) if seg_dir else None,
            model_identity(self.predictor),
            sr_dir=Path(sr_dir) if sr_dir else None,
        )
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        self.paths.clear()
        self.paths.update(enumerate(paths))
        b = collate(_items(batch))
        times = {"transfer": 0.0, "compute": 0.0}
        f = pipeline.launch(
            b, self.predictor, self.predictor.device, self.batch_size, self.want_masks, 0.0
        )
        scores = pipeline.results(f, self.predictor, times)
        rows, outputs = self.writer.rows(b, *(scores or (None, None, None, {})))
        wait_outputs(outputs)  # the files exist before their rows leave this actor
        n = len(rows)
        cols = {
            c: np.asarray([r[i] for r in rows], dtype=object) for i, c in enumerate(CSV_COLUMNS)
        }
        # Each row carries its own file's figures; the model's times are the batch's, shared.
        cols["compute_s"] = np.full(n, times["compute"] / max(n, 1))
        cols["transfer_s"] = np.full(n, times["transfer"] / max(n, 1))
        cols["model_only"] = np.full(n, self.model_only)
        cols.update(_written_columns(paths, [o.result() for o in outputs]))
        cols["actor"] = np.asarray([self.name] * n, dtype=object)
        for key in ("decode_s", "decoder_restarts", "t_decoded"):
            cols[key] = batch[key]
        return cols


def _written_columns(paths: list[str], written: list[Written]) -> dict[str, np.ndarray]:
    """What each path's outputs came to (`Written`, zero without outputs), one column per
    field; the errors as a JSON list."""
    by_rel = {w.rel: w for w in written}
    per_row = [by_rel.get(p) or Written(p) for p in paths]
    cols = {}
    for name in _WRITTEN:
        values = [getattr(w, name) for w in per_row]
        if name == "errors":
            cols[f"written_{name}"] = np.asarray([json.dumps(v) for v in values], dtype=object)
        else:
            cols[f"written_{name}"] = np.asarray(values, dtype=np.int64)
    return cols


def written_of(block: dict[str, np.ndarray], j: int) -> Written:
    """Row `j`'s `Written`, from the columns `_written_columns` made."""
    kw = {name: _plain(block[f"written_{name}"][j]) for name in _WRITTEN}
    kw["errors"] = json.loads(kw["errors"])
    kw["replaced"] = bool(kw["replaced"])
    return Written(**kw)
