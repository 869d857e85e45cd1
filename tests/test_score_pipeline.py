"""The scoring pipeline's concurrent parts on their own, without a model: the ordered committer
keeps launch order whatever order outputs finish in, the in-flight window never lets more than
its depth wait, and the resilient loader turns a decoding worker that dies into a crash row and
goes on with the other files."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ptxfast.score import decode
from ptxfast.score.decode import Batch, CrashRows, Files, LoaderSettings, ResilientLoader
from ptxfast.score.ledger import WriteFailed
from ptxfast.score.pipeline import InFlightWindow, Lanes, OrderedCommitter


def _rows(name: str) -> list[list[str]]:
    return [[name, "", "0.5", "0", "", ""]]


# ---------------------------------------------------------------------- the committer


def test_committer_keeps_order_when_outputs_finish_out_of_order():
    written: list[str] = []
    committed: list[object] = []
    c = OrderedCommitter(
        lambda rows: written.extend(r[0] for r in rows), lambda w, t: committed.append(w.tag)
    )
    fa, fb = Future(), Future()
    c.add(_rows("a"), [fa], tag="a")
    c.add(_rows("b"), [fb], tag="b")
    c.add(_rows("c"), [], tag="c")  # nothing to wait for, but it stands behind a and b
    assert written == [] and len(c) == 3
    fb.set_result(None)  # b's outputs finish first
    c.commit()
    assert written == []  # a still waits, so b and c do too
    fa.set_result(None)
    c.commit()
    assert written == ["a", "b", "c"] and committed == ["a", "b", "c"] and len(c) == 0


def test_committer_waits_for_the_oldest_when_too_many_wait():
    written: list[str] = []
    c = OrderedCommitter(lambda rows: written.extend(r[0] for r in rows), max_waiting=2)
    slow = Future()
    threading.Timer(0.2, slow.set_result, args=(None,)).start()
    c.add(_rows("a"), [slow])
    c.add(_rows("b"), [Future()])  # never finishes by itself
    t0 = time.perf_counter()
    c.add(_rows("c"), [])  # a third waiting batch: add blocks until a's outputs exist
    assert time.perf_counter() - t0 >= 0.15
    assert written == ["a"] and len(c) == 2


def test_committer_stops_on_a_destination_that_cannot_be_written():
    written: list[str] = []
    c = OrderedCommitter(lambda rows: written.extend(r[0] for r in rows))
    ok, full = Future(), Future()
    ok.set_result(None)
    full.set_exception(WriteFailed("cannot write m.png: No space left on device", Path("m.png")))
    c.add(_rows("a"), [ok])
    with pytest.raises(WriteFailed, match="No space"):
        c.add(_rows("b"), [ok, full])
    assert written == ["a"]  # b's rows never reach the ledger: --resume writes them again


# ------------------------------------------------------------------------- the window


def test_window_applies_back_pressure_and_hands_back_in_launch_order():
    depth, running, peak = 2, [0], [0]
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02 * (5 - i % 5))  # later launches finish first
        return i

    window, handed = InFlightWindow(depth), []
    with Lanes(3) as lanes:
        for i in range(10):
            for done in window.push(lanes.submit(work, i)):
                handed.append(done.result())
                with lock:
                    running[0] -= 1
            assert len(window) <= depth  # never more than `depth` outstanding between pushes
        for done in window.drain():
            handed.append(done.result())
    assert handed == list(range(10))
    assert peak[0] <= depth + 1  # the one just launched, and the depth waiting


def test_window_abandon_cancels_what_has_not_started():
    started = []
    gate = threading.Event()
    window = InFlightWindow(10)
    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(lambda i=i: started.append(i) or gate.wait(5)) for i in range(4)]
        for f in futures:
            list(window.push(f))
        threading.Timer(0.1, gate.set).start()
        window.abandon()
    assert len(window) == 0 and started == [0]  # the queued three were cancelled
    assert all(f.cancelled() for f in futures[1:])


def test_one_lane_runs_in_the_calling_thread():
    with Lanes(1) as lanes:
        f = lanes.submit(threading.get_ident)
    assert f.done() and f.result() == threading.get_ident()


# ------------------------------------------------------------------------- the loader


@pytest.fixture
def pngs(tmp_path) -> tuple[Path, list[str]]:
    names = [f"{c}.png" for c in "abcdef"]
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / name)
    return tmp_path, names


def _loader(root, names, workers, settle) -> ResilientLoader:
    state = torch.zeros(len(names), dtype=torch.int64).share_memory_()
    files = Files(root, names, 8, state)
    settings = LoaderSettings(batch_size=2, workers=workers, prefetch_factor=1, timeout=60)
    return ResilientLoader(files, range(len(names)), settings, settle)


def test_loader_turns_a_crashed_worker_into_a_row_and_goes_on(pngs, forking):
    root, names = pngs
    real = decode.load_image

    def crashing(path, size=None, **kw):
        # Fork-started workers inherit this patch: die as a segfaulting codec would.
        if Path(path).name == "c.png" and torch.utils.data.get_worker_info() is not None:
            os._exit(11)
        return real(path, size, **kw)

    forking.setattr(decode, "load_image", crashing)
    committed: set[str] = set()  # what the ledger holds
    crashes: list[list[str]] = []
    loader = _loader(root, names, 1, lambda: set(committed))
    for item in loader:
        if isinstance(item, CrashRows):
            crashes.extend(item.rows)
            committed.update(r[0] for r in item.rows)
        else:
            assert isinstance(item, Batch) and item.images is not None
            committed.update(names[m.index] for m in item.meta)
    assert [r[0] for r in crashes] == ["c.png"] and "decoder crashed" in crashes[0][5]
    assert committed == set(names) and loader.restarts == 1


def test_loader_recovers_from_a_death_seen_outside_it(pngs):
    root, names = pngs
    committed: set[str] = set()
    loader = _loader(root, names, 0, lambda: set(committed))
    first = next(loader)
    committed.update(names[m.index] for m in first.meta)  # a and b are in the ledger
    with pytest.raises(RuntimeError, match="not a worker"):
        loader.recover(RuntimeError("not a worker's death"))
    # torch's SIGCHLD handler raised this while the caller was busy elsewhere
    crash = loader.recover(RuntimeError("DataLoader worker (pid(s) 999999) exited unexpectedly"))
    assert [r[0] for r in crash.rows] == ["c.png"]  # no file was being decoded: the next one
    rest = [names[m.index] for item in loader for m in item.meta]
    assert rest == ["d.png", "e.png", "f.png"] and loader.restarts == 1
