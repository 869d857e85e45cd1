"""`ptxfast score --engine ray`: the rows of the local engine, one row per file through a
decoder that dies on a file, a model actor killed mid-run and a driver killed with kill -9.

One local Ray (2 CPUs) serves the module. Its workers run `ray_hooks.install`, which makes
files named crash* kill their decoding process and slow* decode 0.2 s slower. The artifact and
the mixed folder are test_scoring's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import test_scoring
from click.testing import CliRunner
from fresh_process import wait_for_lines
from test_scoring import _rows, by

from ptxfast import score
from ptxfast.cli import cli

TESTS = Path(__file__).parent
pytestmark = pytest.mark.usefixtures("one_thread")
# test_scoring's 64² rn34un artifact (with its mask output) and its mixed folder.
artifact = test_scoring.artifact
folder = test_scoring.folder


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_worker_niceness", "0")
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            runtime_env={
                "worker_process_setup_hook": "ray_hooks.install",
                "env_vars": {"PYTHONPATH": str(TESTS)},
            },
        )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _options(**kw):
    from ptxfast.score.engine_ray import RayOptions

    return RayOptions(**kw)


def _phantoms(folder: Path, dest: Path, names: list[str]) -> Path:
    """Copies of the mixed folder's phantoms under new names (names decide the hooks)."""
    dest.mkdir()
    sources = sorted((folder / "ph").rglob("*.dcm"))
    for i, name in enumerate(names):
        shutil.copy(sources[i % len(sources)], dest / name)
    return dest


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _scorer_actors() -> list[int]:
    from ptxfast.score.ray_stages import Scorer

    title = f"MapBatches({Scorer.__name__})".encode()  # how Ray names the model actors
    pids = []
    for pid in _descendants(os.getpid()):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if title in f.read():
                pids.append(pid)
    return pids


def _wait_rows(csv_path: Path, n: int, timeout: float = 120) -> None:
    if wait_for_lines(csv_path, n + 1, timeout=timeout):
        return
    raise AssertionError(f"{csv_path} did not reach {n} rows in {timeout} s")


# ------------------------------------------------------------------------------------ tests


def test_ray_gives_the_rows_of_the_local_engine(cluster, folder, artifact, tmp_path):
    local = score.score_folder(
        folder, tmp_path / "local.csv", model=artifact, device="cpu", batch_size=2, workers=0,
        masks_dir=tmp_path / "lm", sr_dir=tmp_path / "lr", model_only_iters=0,
    )  # fmt: skip
    s = score.score_folder(
        folder, tmp_path / "ray.csv", model=artifact, device="cpu", batch_size=2,
        masks_dir=tmp_path / "rm", seg_dir=tmp_path / "rs", sr_dir=tmp_path / "rr",
        summary_json=tmp_path / "s.json",
        model_only_iters=1, engine="ray",
    )  # fmt: skip
    a, b = _rows(tmp_path / "local.csv"), _rows(tmp_path / "ray.csv")
    assert [r["path"] for r in b] == [r["path"] for r in a]  # same files, same order, once
    for x, y in zip(a, b, strict=True):
        assert (y["error"], y["label"], y["mask_area"], y["sop_instance_uid"]) == (
            x["error"], x["label"], x["mask_area"], x["sop_instance_uid"],
        )  # fmt: skip
        assert (x["probability"] == "") == (y["probability"] == "")
        if x["probability"]:
            assert float(y["probability"]) == pytest.approx(float(x["probability"]), abs=1e-5)
    assert sum(bool(r["error"]) for r in b) >= 4  # truncated, text as .dcm, fake PNG, empty
    # The same masks, written by the model actors before their rows.
    masks = sorted(p.relative_to(tmp_path / "rm") for p in (tmp_path / "rm").rglob("*.png"))
    assert masks == sorted(p.relative_to(tmp_path / "lm") for p in (tmp_path / "lm").rglob("*.png"))
    assert s.masks_written == local.masks_written > 0 and s.segs_written > 0
    srs = sorted(p.name for p in (tmp_path / "rr").glob("*.dcm"))
    assert srs == sorted(p.name for p in (tmp_path / "lr").glob("*.dcm"))
    assert s.srs_written == local.srs_written == len(srs) > 0
    assert (s.files, s.scored, s.failed, s.skipped) == (
        local.files, local.scored, local.failed, local.skipped,
    )  # fmt: skip
    js = json.loads((tmp_path / "s.json").read_text())
    assert js["engine"] == "ray" and js["cluster"]["cpus"] == 2.0 and js["cluster"]["nodes"] == 1
    assert js["cluster"]["actors"] == 2 and js["cluster"]["duplicates_dropped"] == 0
    assert js["images_per_s"] > 0 and js["model_only_images_per_s"] > 0
    assert set(js["latency_ms"]) == {"p50", "p90", "p95", "p99"}


def test_a_file_that_kills_its_decoder_is_an_error_row(cluster, folder, artifact, tmp_path):
    root = _phantoms(folder, tmp_path / "in", ["a.dcm", "b.dcm", "crash.dcm", "d.dcm", "e.dcm"])
    s = score.score_folder(
        root, tmp_path / "p.csv", model=artifact, device="cpu", batch_size=2,
        model_only_iters=0, engine="ray", ray=_options(actors=1),
    )  # fmt: skip
    rows = by(_rows(tmp_path / "p.csv"))
    assert sorted(rows) == ["a.dcm", "b.dcm", "crash.dcm", "d.dcm", "e.dcm"]
    assert "decoder crashed on this file" in rows["crash.dcm"]["error"]
    assert rows["crash.dcm"]["probability"] == ""
    # Its batch-mate was decoded again on its own and scored.
    assert all(rows[n]["probability"] and not rows[n]["error"] for n in rows if n != "crash.dcm")
    assert (s.scored, s.failed) == (4, 1) and s.worker_restarts >= 2


def test_decoder_counts_each_restart_on_the_row_it_decoded(folder, tmp_path, monkeypatch):
    # The decoder actor's stage alone, in this process, with ray_hooks' crashing reader.
    import numpy as np
    import ray_hooks

    from ptxfast.data.eligibility import DEFAULT_RULE
    from ptxfast.score import decode
    from ptxfast.score.ray_stages import Decoder

    monkeypatch.setattr(decode, "load_image", decode.load_image)  # undone after the test
    ray_hooks.install()
    names = ["a.dcm", "crash.dcm", "d.dcm", "e.dcm"]
    root = _phantoms(folder, tmp_path / "in", names)
    decoder = Decoder(str(root), 64, 30.0, DEFAULT_RULE)

    def restarts(batch: list[str]) -> list[int]:
        index = np.asarray([names.index(n) for n in batch])
        out = decoder({"index": index, "path": np.asarray(batch, dtype=object)})
        return out["decoder_restarts"].tolist()

    try:
        # The actor's first process is no restart; after crash.dcm kills it, a.dcm is decoded
        # again alone in a fresh one (1), which crash.dcm kills, and then the one started again
        # for its second attempt (1).
        assert restarts(["a.dcm", "crash.dcm"]) == [1, 1]
        # The next batch starts one again, for its first file.
        assert restarts(["d.dcm", "e.dcm"]) == [1, 0]
        assert restarts(["a.dcm"]) == [0]
    finally:
        decoder.child._stop()


def test_model_actor_killed_mid_run_one_row_per_file(cluster, folder, artifact, tmp_path):
    names = [f"slow{i:02d}.dcm" for i in range(12)]
    root = _phantoms(folder, tmp_path / "in", names)
    out = tmp_path / "p.csv"
    killed: list[int] = []

    def kill_after_first_rows() -> None:
        _wait_rows(out, 1)
        for pid in _scorer_actors():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_after_first_rows, daemon=True)
    killer.start()
    s = score.score_folder(
        root, out, model=artifact, device="cpu", batch_size=2, model_only_iters=0,
        engine="ray", ray=_options(actors=1),
    )  # fmt: skip
    killer.join(5)
    assert killed, "no model actor was found to kill"
    rows = _rows(out)
    assert [r["path"] for r in rows] == names  # each once, in order
    assert all(r["probability"] and not r["error"] for r in rows)
    assert s.cluster["actor_processes"] == 2  # the killed actor and its restart both scored


def test_driver_killed_then_resume(cluster, folder, artifact, tmp_path):
    names = [f"slow{i:02d}.dcm" for i in range(10)]
    root = _phantoms(folder, tmp_path / "in", names)
    out = tmp_path / "p.csv"
    # A driver of its own joining the module's cluster, its workers running the test hook.
    driver = (
        "import sys, ray; from ptxfast.cli import main; "
        f"ray.init(address={cluster!r}, log_to_driver=False, runtime_env="
        f"{{'worker_process_setup_hook': 'ray_hooks.install', 'env_vars': {{'PYTHONPATH': {str(TESTS)!r}}}}}); "
        "main(sys.argv[1:])"
    )
    cmd = [sys.executable, "-c", driver, "score", str(root), "--out", str(out), "--model"]
    cmd += [str(artifact), "--device", "cpu", "--engine", "ray", "--batch-size", "1"]
    cmd += ["--actors", "1", "--model-only-iters", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_rows(out, 2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first = _rows(out)
    assert 2 <= len(first) < len(names)
    with open(out, "a") as f:  # as a kill in the middle of a write leaves it
        f.write(f"{names[len(first)]},1.2.3,0.12")
    res = CliRunner().invoke(
        cli,
        ["score", str(root), "--out", str(out), "--model", str(artifact), "--device", "cpu"]
        + ["--engine", "ray", "--resume", "--batch-size", "2", "--actors", "1"]
        + ["--model-only-iters", "0", "--json", str(tmp_path / "s.json")],
    )
    assert res.exit_code == 0, res.output
    rows = _rows(out)  # complete lines only: the torn one is gone
    assert [r["path"] for r in rows] == names
    assert all(r["probability"] and r["probability"] != "0.12" for r in rows)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["already"] == len(first) and s["torn_line_dropped"] is True
    assert s["scored"] == len(names) - len(first)


def test_without_ray_the_engine_is_a_one_line_error(folder, artifact, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    res = CliRunner().invoke(
        cli, ["score", str(folder), "--out", str(tmp_path / "p.csv"), "--model", str(artifact)]
        + ["--engine", "ray"],
    )  # fmt: skip
    assert res.exit_code != 0 and "Traceback" not in res.output
    text = " ".join(res.output.split())  # rich wraps long lines at the terminal's width
    assert (
        text
        == "error: --engine ray needs Ray Data, which is not installed; pip install 'ptxfast[ray]'"
    )
    assert not (tmp_path / "p.csv").exists()
    res = CliRunner().invoke(
        cli, ["score", str(folder), "--out", str(tmp_path / "p.csv"), "--actors", "2"]
    )
    assert res.exit_code != 0 and "--engine ray" in res.output


def test_plan_places_actors_on_gpus_or_cpu_lanes():
    from ptxfast.score import engine_ray as score_ray

    cuda, cpu = SimpleNamespace(device="cuda"), SimpleNamespace(device="cpu")  # as ArtifactSpecs
    opts = score_ray.RayOptions()
    p = score_ray._plan({"CPU": 32, "GPU": 4}, "auto", cuda, opts, None)
    assert (p.device, p.actors, p.decoders) == ("cuda", 4, 28)
    assert p.actor_resources["num_gpus"] == 1 and p.decoder_cpus == 1
    # A CPU artifact stays on CPU lanes even where there are GPUs; one lane per CPU.
    p = score_ray._plan({"CPU": 16, "GPU": 2}, "auto", cpu, opts, None)
    assert (p.device, p.actors, p.decoders, p.threads) == ("cpu", 16, 2, 1)
    p = score_ray._plan({"CPU": 2}, "auto", cuda, score_ray.RayOptions(actors=1, decoders=3), 2)
    assert (p.device, p.actors, p.decoders, p.threads) == ("cpu", 1, 3, 2)
    with pytest.raises(score.ScoreError, match="no GPUs"):
        score_ray._plan({"CPU": 2}, "cuda", cuda, opts, None)


def test_each_row_carries_its_own_files_figures():
    # The driver keeps a path's first row only: a repeated row must take exactly its own file's
    # figures (outputs, errors, time, restarts) with it, whatever its place in the block.
    import numpy as np

    from ptxfast.score import engine_ray, ray_stages
    from ptxfast.score.stats import LoopStats
    from ptxfast.score.writer import Written

    paths = ["a.dcm", "b.dcm", "c.png"]
    written = [
        Written("a.dcm", masks=1, segs=1, srs=1, errors=["a.dcm: \x1b[31mred"]),
        Written("c.png", masks=1, seg_not_dicom=1, sr_not_dicom=1, replaced=True, library_messages=2),
    ]  # fmt: skip
    block = ray_stages._written_columns(paths, written)  # b.dcm: no outputs
    block.update(
        decode_s=np.array([0.5, 0.25, 0.125]), compute_s=np.full(3, 1.0),
        transfer_s=np.zeros(3), decoder_restarts=np.array([0, 2, 0]),
        actor=np.array(["n:1"] * 3, dtype=object), model_only=np.full(3, 40.0),
    )  # fmt: skip
    assert ray_stages.written_of(block, 2) == Written(**{**written[1].__dict__, "rel": ""})
    tally = engine_ray._Tally(LoopStats())
    tally.add(block, keep=[0, 1])  # c.png was a repeat
    o = tally.outputs
    assert (o.masks_written, o.segs_written, o.srs_written) == (1, 1, 1)
    assert (o.seg_not_dicom, o.names_replaced, o.library_messages) == (0, 0, 0)
    assert o.output_errors == ["a.dcm: \\x1b[31mred"]  # escaped, as the local engine's
    assert tally.loop.times["decode"] == 0.75 and tally.loop.times["compute"] == 2.0
    assert tally.loop.worker_restarts == 2
    tally.add(block, keep=[2])
    assert (o.masks_written, o.names_replaced, o.library_messages) == (2, 1, 2)
    loop = tally.finish({"actors": 1}, actors=1)
    assert loop.model_only == {"1 model actor(s) at once": 40.0}
    assert loop.cluster["actor_processes"] == 1
