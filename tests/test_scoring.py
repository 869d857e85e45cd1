"""`ptxfast score`: one row per file whatever the file, resumable after kill -9, shards that cover
a folder once, PNG masks and DICOM SEGs that read back and validate.

One tiny artifact (rn34un at 64², random weights, with its mask output) is exported once for
the module; the folder mixes phantoms, several transfer syntaxes, MONOCHROME1, PNG, JPEG, a
structured report, a truncated DICOM, a text file named .dcm and files without extension.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dicom_factory as F
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fresh_process import run_fresh, wait_for_lines
from PIL import Image
from pydicom import uid

from ptxfast import score
from ptxfast.cli import cli
from ptxfast.data import synth
from ptxfast.inference import runtime
from ptxfast.score import decode, inputs, ledger, pipeline, processes, speed, writer

SIZE = 64
HEADER = "path,sop_instance_uid,probability,label,mask_area,error"
ERRORS = {  # input → a phrase its error must contain
    "report.dcm": "not eligible: Modality SR (chest radiographs only; --eligibility off",
    "trunc.dcm": "truncated",
    "notes.dcm": "neither DICOM nor an image",
    "fake.png": "neither DICOM nor an image",
    "empty.dcm": "empty file",
}
SKIPPED = {"readme.txt", "junk_noext"}


pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def artifact(rn34un_artifact) -> Path:
    """A 64² rn34un TorchScript artifact with its mask output, made by ptxfast.export
    (conftest's, random weights of seed 0)."""
    return rn34un_artifact()


@pytest.fixture(scope="module")
def predictor(artifact):
    return runtime.load_predictor(artifact, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    synth.write_dataset(root / "ph", 3, seed=0, size=SIZE, positive_rate=0.5, workers=1)
    for extra in ("Pneumothorax_reports.csv", "synth.json"):
        (root / "ph" / extra).unlink(missing_ok=True)
    for p in (root / "ph").glob("*.json"):
        p.unlink()
    deep = root / "nested" / "deeper"
    deep.mkdir(parents=True)
    px = F.gray_pixels(80, 72, bits=12)
    F.save(F.image_dataset(px, bits_stored=12), deep / "j2k.dcm", uid.JPEG2000Lossless)
    F.save(F.image_dataset(px, bits_stored=12), deep / "rle_noext", uid.RLELossless)
    F.save(F.image_dataset(px, bits_stored=12, photometric="MONOCHROME1"), root / "mono1.dcm")
    F.save(F.image_dataset(px, bits_stored=12), root / "nested" / "impl.DCM", uid.ImplicitVRLittleEndian)  # fmt: skip
    F.save_bare(F.image_dataset(px, bits_stored=12), root / "bare_noext")
    ramp = np.linspace(0, 255, 64 * 48).reshape(48, 64).astype(np.uint8)
    Image.fromarray(ramp).save(root / "photo.png")
    Image.fromarray(ramp).save(root / "nested" / "photo_noext", format="JPEG")
    F.structured_report(root / "report.dcm")
    good = F.save(F.image_dataset(px, bits_stored=12), root / "trunc.dcm")
    good.write_bytes(good.read_bytes()[:-3000])
    (root / "notes.dcm").write_text("not DICOM, but named as if it were\n")
    (root / "fake.png").write_text("not a PNG either\n")
    (root / "empty.dcm").write_bytes(b"")
    (root / "readme.txt").write_text("skipped\n")
    (root / "junk_noext").write_bytes(b"\x01" * 300)
    (root / ".hidden.dcm").write_text("ignored\n")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.dcm").write_text("ignored\n")
    return root


def _inputs(root: Path) -> list[str]:
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in files if not any(part.startswith(".") for part in f.split("/")))


def _rows(path: Path) -> list[dict[str, str]]:
    text = path.read_text()
    assert text.startswith(HEADER + "\n") and text.endswith("\n")
    return list(csv.DictReader(text.splitlines()))


def by(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    out = {r["path"]: r for r in rows}
    assert len(out) == len(rows), "a file has more than one row"
    return out


@pytest.fixture(scope="module")
def scored(folder, artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = score.score_folder(
        folder,
        out / "preds.csv",
        model=artifact,
        device="cpu",
        batch_size=2,
        workers=1,
        masks_dir=out / "masks",
        seg_dir=out / "seg",
        summary_json=out / "summary.json",
        model_only_iters=1,
    )
    return summary, _rows(out / "preds.csv"), out


# ------------------------------------------------------------------------------------ tests


def test_mixed_folder_one_row_per_file(scored, folder):
    summary, rows, out = scored
    expected = [f for f in _inputs(folder) if f not in SKIPPED]
    assert [r["path"] for r in rows] == expected  # sorted, each input once
    by_path = {r["path"]: r for r in rows}
    for name, phrase in ERRORS.items():
        row = by_path[name]
        assert phrase in row["error"] and "\n" not in row["error"]
        assert row["probability"] == row["label"] == row["mask_area"] == ""
    # The SR and the truncated file still have readable headers: their UIDs are reported.
    assert by_path["report.dcm"]["sop_instance_uid"]
    ok = [r for r in rows if not r["error"]]
    assert len(ok) == len(rows) - len(ERRORS) == 10
    for r in ok:
        p = float(r["probability"])
        assert 0.0 <= p <= 1.0
        assert r["label"] == str(int(p > 0.3))  # a segmenter's label rule
        assert int(r["mask_area"]) >= 0
    for name in ("nested/deeper/rle_noext", "bare_noext", "mono1.dcm", "nested/impl.DCM"):
        assert by_path[name]["sop_instance_uid"].startswith("1.2.")
    assert by_path["photo.png"]["sop_instance_uid"] == ""
    assert summary.files == len(rows) and summary.skipped == len(SKIPPED)
    # The SR is refused by the eligibility rule, counted apart from the failures.
    assert (summary.scored, summary.failed) == (len(ok), len(ERRORS) - 1)
    assert summary.not_eligible == 1 and summary.eligibility["reasons"] == {"Modality SR": 1}
    assert summary.eligibility["rule"] == "default"
    # The two PNG/JPEG inputs have no header to check: scored, and counted as unchecked.
    assert summary.eligibility["unchecked"] == 2
    assert summary.operating_point == "p > 0.3 (the model's default rule)"
    assert summary.positives == sum(r["label"] == "1" for r in ok)
    assert summary.model_only_images_per_s > 0 and summary.ratio > 0
    # Decoding shares the model's cores: the bound 1 / (1/M + D/c) is below M.
    assert summary.decode_cpu_s_per_image > 0 and summary.cores >= 1
    assert summary.shared_core_bound_images_per_s < summary.model_only_images_per_s
    assert summary.bound_share > 0
    assert summary.others_cpu_share is None  # the output processes' CPU is not counted
    js = json.loads((out / "summary.json").read_text())
    assert js["shared_core_bound_images_per_s"] == summary.shared_core_bound_images_per_s
    assert js["files"] == len(rows) and set(js["latency_ms"]) == {"p50", "p90", "p95", "p99"}
    assert js["gpu"] is None  # no GPU here: NVML fields are null, not an error


def test_masks_and_dicom_seg(scored, folder):
    import highdicom as hd
    import pydicom

    summary, rows, out = scored
    positives = [r for r in rows if r["label"] == "1"]
    assert positives, "random weights at 64² give positives; the test needs some"
    segs = sorted((out / "seg").glob("*.dcm"))
    dicom_pos = [r for r in positives if r["sop_instance_uid"]]
    assert len(segs) == summary.segs_written == len(dicom_pos)
    assert summary.seg_not_dicom == len(positives) - len(dicom_pos) >= 1  # PNG and JPEG
    assert not summary.output_errors
    for r in positives:
        src = folder / r["path"]
        mask = np.asarray(Image.open(out / "masks" / (r["path"] + ".mask.png")))
        overlay = Image.open(out / "masks" / (r["path"] + ".overlay.png"))
        rows_cols = mask.shape
        assert set(np.unique(mask)) <= {0, 255} and overlay.mode == "P"
        assert overlay.size == (rows_cols[1], rows_cols[0])
        rgb = np.asarray(overlay.convert("RGB"))  # the outline in its colour, on the mask's edge
        edge = writer._outline(mask > 0)
        assert np.array_equal(np.all(rgb == writer._OUTLINE_RGB, axis=2), edge) or not edge.any()
        if not r["sop_instance_uid"]:
            continue
        source = pydicom.dcmread(src, force=True, stop_before_pixels=True)
        assert rows_cols == (source.Rows, source.Columns)  # source resolution, not 64²
        seg = hd.seg.segread(out / "seg" / f"{r['sop_instance_uid']}.dcm")
        assert seg.SOPClassUID == uid.SegmentationStorage
        assert [u[2] for u in seg.get_source_image_uids()] == [r["sop_instance_uid"]]
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.SegmentSequence[0].SegmentLabel == "Pneumothorax"
        assert "ptxfast" in seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName  # fmt: skip
        np.testing.assert_array_equal(seg.pixel_array.astype(bool), mask > 0)
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (Debian dicom3tools) not installed; SEG not validated")
    for seg in segs:
        res = subprocess.run([dciodvfy, str(seg)], capture_output=True, text=True)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if "Error" in line]
        assert not errors, f"{seg.name}: {errors}"


def test_rows_wait_for_their_outputs_and_keep_order(
    scored, folder, predictor, tmp_path, monkeypatch
):
    # Outputs are written by a pool (threads here, so the patch applies); a slow first
    # positive must not reorder rows, and a positive's row reaches the CSV only once its mask
    # files exist.
    _, full, _ = scored
    real = writer.write_outputs
    seen: list[tuple[str, bool]] = []

    def slow(job):
        if not seen:
            time.sleep(0.5)
        done = real(job)
        csv_text = (tmp_path / "p.csv").read_text()
        seen.append((job.rel, f"\n{job.rel}," in csv_text))
        return done

    monkeypatch.setattr(writer, "write_outputs", slow)
    s = score.score_folder(
        folder, tmp_path / "p.csv", model=predictor, batch_size=2, workers=0,
        masks_dir=tmp_path / "masks", model_only_iters=0, output_workers=0,
    )  # fmt: skip
    rows = _rows(tmp_path / "p.csv")
    assert [r["path"] for r in rows] == [r["path"] for r in full]
    positives = [r["path"] for r in rows if r["label"] == "1"]
    assert sorted(rel for rel, _ in seen) == sorted(positives) and s.masks_written == len(positives)
    assert not any(in_csv for _, in_csv in seen)  # no row before its outputs


def test_resume_after_kill_and_torn_line(folder, artifact, tmp_path):
    out = tmp_path / "preds.csv"
    cmd = [sys.executable, "-m", "ptxfast", "score", str(folder), "--out", str(out)]
    cmd += ["--model", str(artifact), "--device", "cpu", "--batch-size", "1", "--workers", "1"]
    cmd += ["--model-only-iters", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_lines(out, 2, proc, timeout=60)  # header + a flushed row
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    expected = [f for f in _inputs(folder) if f not in SKIPPED]
    first = _rows(out)
    assert 1 <= len(first) < len(expected)
    # A run killed mid-write leaves the next row half written.
    nxt = expected[len(first)]
    with open(out, "a") as f:
        f.write(f"{nxt},1.2.3,0.12")
    refused = CliRunner().invoke(
        cli, ["score", str(folder), "--out", str(out), "--model", str(artifact)]
    )
    assert refused.exit_code != 0 and "--resume" in refused.output
    res = CliRunner().invoke(
        cli,
        ["score", str(folder), "--out", str(out), "--model", str(artifact), "--device", "cpu"]
        + ["--resume", "--batch-size", "4", "--workers", "0", "--threads", "1"]
        + ["--model-only-iters", "0"]
        + ["--json", str(tmp_path / "s.json")],
    )
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    assert [r["path"] for r in rows] == expected  # one row each, torn line gone, in order
    assert by(rows)[nxt]["probability"] != "0.12"
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["already"] == len(first) and s["torn_line_dropped"] is True
    # The structured report is refused as not eligible, counted apart from failures.
    assert s["scored"] + s["failed"] + s["not_eligible"] == len(expected) - len(first)


def test_shards_cover_the_folder_once(folder, predictor, scored, tmp_path):
    _, full, _ = scored
    parts, skipped = [], 0
    for k in (1, 2, 3):
        s = score.score_folder(
            folder,
            tmp_path / f"preds-{k}.csv",
            model=predictor,
            batch_size=4,
            workers=0,
            shard=(k, 3),
            model_only_iters=0,
        )
        parts.append(_rows(tmp_path / f"preds-{k}.csv"))
        skipped += s.skipped
    paths = [r["path"] for part in parts for r in part]
    assert sorted(paths) == [r["path"] for r in full] and len(set(paths)) == len(paths)
    assert all(len(p) > 0 for p in parts) and skipped == len(SKIPPED)
    ref = by(full)
    for part in parts:
        for r in part:
            assert r["error"] == ref[r["path"]]["error"]
            if r["probability"]:
                assert float(r["probability"]) == pytest.approx(
                    float(ref[r["path"]]["probability"]), abs=2e-6
                )


def test_lanes_score_the_same_rows_in_order(folder, predictor, scored, tmp_path):
    _, full, _ = scored  # default: one lane per core
    s = score.score_folder(
        folder, tmp_path / "one.csv", model=predictor, batch_size=3, workers=0, lanes=1,
        threads=1, model_only_iters=1,
    )  # fmt: skip
    one = _rows(tmp_path / "one.csv")
    assert [r["path"] for r in one] == [r["path"] for r in full]
    for a, b in zip(one, full, strict=True):
        assert (a["error"], a["label"], a["mask_area"]) == (b["error"], b["label"], b["mask_area"])
        if a["probability"]:
            assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=2e-6)
    assert (s.lanes, s.threads) == (1, 1)
    assert next(iter(s.model_only_by_config)) == "1 lane x 1 thread"
    assert s.model_only_by_config[s.model_only_config] == s.model_only_images_per_s


def test_workers_start_from_a_forkserver_once_grpc_is_loaded(folder, predictor, scored, tmp_path):
    """After Ray (gRPC) ran in this process, decoding workers are not forked from it; the rows
    are the same. (Ray itself is not needed: a stand-in module marks gRPC as loaded.)"""
    _, full, _ = scored
    saved = sys.modules.pop("grpc", None)
    try:
        assert processes.start_method() is None
        sys.modules["grpc"] = type(sys)("grpc")
        assert processes.start_method() == "forkserver"
        score.score_folder(
            folder, tmp_path / "fs.csv", model=predictor, batch_size=4, workers=1,
            model_only_iters=0,
        )  # fmt: skip
    finally:
        sys.modules.pop("grpc", None)
        if saved is not None:
            sys.modules["grpc"] = saved
    rows = _rows(tmp_path / "fs.csv")
    assert [r["path"] for r in rows] == [r["path"] for r in full]
    for a, b in zip(rows, full, strict=True):
        assert (a["error"], a["label"], a["mask_area"]) == (b["error"], b["label"], b["mask_area"])


def test_steady_rate_skips_setup_and_needs_enough_batches():
    marks = [(1.0 + 0.5 * i, 10) for i in range(12)]  # a batch of 10 every 0.5 s from t=1
    # Two batches decoded ahead are left out: 10 batches over the 5 s after the second.
    assert speed.steady(marks, 0.0, ahead=2) == pytest.approx(100 / 5.0)
    assert speed.steady(marks, 0.0, ahead=2, lanes=3) is None  # 10 < 4 per lane
    assert speed.steady(marks[:9], 0.0, ahead=2) is None  # 7 batches: too few
    assert speed.steady([], 0.0, ahead=2) is None


def test_parallelism_fills_the_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "cores", lambda: 8)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert pipeline.parallelism(cpu, None, None) == (8, 1)
    assert pipeline.parallelism(cpu, None, 4) == (2, 4)
    assert pipeline.parallelism(cpu, 2, None) == (2, 4)
    assert pipeline.parallelism(cpu, 3, 3) == (3, 3)
    assert pipeline.parallelism(gpu, None, None) == (1, None)
    # A runtime with its own thread pool (ONNX Runtime, OpenVINO) gets one lane on every core.
    assert pipeline.parallelism(cpu, None, None, pooled=True) == (1, 8)
    assert pipeline.parallelism(cpu, None, 4, pooled=True) == (2, 4)
    with pytest.raises(score.ScoreError, match="--lanes"):
        score.score_folder(tmp_path, tmp_path / "x.csv", lanes=0)


def test_worker_crash_becomes_a_row(folder, predictor, tmp_path, forking):
    real = decode.load_image

    def crashing(path, size=None, **kw):
        # Fork-started workers inherit this patch: die as a segfaulting codec would.
        if Path(path).name == "mono1.dcm" and torch.utils.data.get_worker_info() is not None:
            os._exit(11)
        return real(path, size, **kw)

    forking.setattr(decode, "load_image", crashing)
    s = score.score_folder(
        folder, tmp_path / "p.csv", model=predictor, batch_size=2, workers=1, model_only_iters=0
    )
    # One row per file: the batch already launched when the worker died is not written twice.
    rows = by(_rows(tmp_path / "p.csv"))
    assert len(rows) == s.files and s.worker_restarts == 1
    assert "decoder crashed" in rows["mono1.dcm"]["error"]
    assert sum("crashed" in r["error"] for r in rows.values()) == 1


def test_outputs_checked_before_any_work(folder, artifact, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(runtime, "load_predictor", boom)
    monkeypatch.setattr(inputs, "find_inputs", boom)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for kwargs in (
        {"out": blocker / "preds.csv"},
        {"out": tmp_path / "p.csv", "masks_dir": blocker / "m"},
        {"out": tmp_path / "p.csv", "seg_dir": blocker / "s"},
        {"out": tmp_path / "p.csv", "summary_json": blocker / "s.json"},
    ):
        with pytest.raises(score.ScoreError, match="cannot write"):
            score.score_folder(folder, model=artifact, **kwargs)
    res = CliRunner().invoke(
        cli, ["score", str(folder), "--out", str(blocker / "p.csv"), "--model", str(artifact)]
    )
    assert res.exit_code != 0 and "cannot write --out" in res.output


def test_no_artifact_and_maskless_artifact_are_clear_errors(folder, artifact, tmp_path):
    empty = tmp_path / "exports"
    empty.mkdir()
    res = CliRunner().invoke(
        cli, ["score", str(folder), "--out", str(tmp_path / "p.csv"), "--exports", str(empty)]
    )
    assert res.exit_code != 0
    assert "no artifact" in res.output and "ptxfast export" in res.output
    assert "Traceback" not in res.output
    # An empty --model (an unset shell variable) or a folder is a one-line error too.
    for given, phrase in (("", "is not an artifact"), (str(empty), "is a directory")):
        res = CliRunner().invoke(
            cli, ["score", str(folder), "--out", str(tmp_path / "p.csv"), "--model", given]
        )
        assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
        assert phrase in res.output and "Traceback" not in res.output
    # The same model file with a sidecar saying it has no mask output.
    other = tmp_path / "maskless"
    other.mkdir()
    side = json.loads(artifact.read_text())
    side["return_mask"] = False
    shutil.copy(artifact.parent / side["file"], other / side["file"])
    (other / artifact.name).write_text(json.dumps(side))
    with pytest.raises(score.ScoreError, match="--return-mask"):
        score.score_folder(
            folder, tmp_path / "q.csv", model=other / artifact.name, masks_dir=tmp_path / "m"
        )
    # A model file that is not the one its sidecar describes is refused, and an existing CSV
    # is left as it was even with --overwrite.
    with open(other / side["file"], "ab") as f:
        f.write(b"\0")
    kept = tmp_path / "kept.csv"
    kept.write_text(HEADER + "\na.dcm,,0.5,1,3,\n")
    for out in (tmp_path / "new.csv", kept):
        with pytest.raises(score.ScoreError, match="sha256"):
            score.score_folder(folder, out, model=other / artifact.name, overwrite=True)
    assert not (tmp_path / "new.csv").exists() and "a.dcm" in kept.read_text()


def test_scoring_never_imports_the_network_builders(folder, artifact, tmp_path):
    """`ptxfast score` loads an exported graph: smp, timm and the torchvision and torch._dynamo
    they pull in (seconds of start-up in every process) stay unimported."""
    code = (
        "import sys\n"
        "from ptxfast.cli import cli\n"
        f"cli.main(['score', {str(folder)!r}, '--out', 'p.csv', '--model', {str(artifact)!r},"
        " '--workers', '0', '--model-only-iters', '0', '--device', 'cpu'], standalone_mode=False)\n"
        "heavy = ('segmentation_models_pytorch', 'timm', 'torchvision', 'torch._dynamo')\n"
        "print('imported:', [m for m in heavy if m in sys.modules])\n"
    )
    assert run_fresh(code, tmp_path).splitlines()[-1] == "imported: []"
    assert (tmp_path / "p.csv").read_text().startswith(HEADER)


def test_output_writing_processes_do_not_load_torch(tmp_path):
    """What a writing process imports to write masks, SEG and SR leaves torch unloaded
    (seconds and hundreds of MB in each of them)."""
    code = (
        "import sys\n"
        "from ptxfast.score import writer\n"
        "writer._ready()\n"
        "print('torch loaded:', 'torch' in sys.modules)\n"
    )
    assert run_fresh(code, tmp_path).splitlines()[-1] == "torch loaded: False"


def test_a_forked_child_never_finalises_the_parents_garbage(tmp_path):
    """What a decoding or output worker inherits is not collected in it (an ONNX Runtime
    session of an earlier run, finalised in a child that lacks its threads, hangs there)."""
    import gc

    marks = tmp_path / "finalised"

    class Owner:
        def __del__(self):
            with open(marks, "a") as f:
                f.write(f"{os.getpid()}\n")

    owner = Owner()
    owner.cycle = owner
    del owner  # garbage now, collectable only by the cycle collector
    with processes.clean_fork():
        pid = os.fork()
        if pid == 0:  # the child
            gc.collect()
            os._exit(0)
    os.waitpid(pid, 0)
    assert marks.read_text().split() == [str(os.getpid())]


def test_an_output_process_that_dies_stops_the_run_and_resume_finishes(
    folder, predictor, tmp_path, forking
):
    monkeypatch = forking
    _all_positive(monkeypatch)
    expected = [f for f in _inputs(folder) if f not in SKIPPED]
    real = writer.write_outputs
    victim = next(f for f in expected[4:] if f.endswith(".dcm"))

    def dies(job):
        if job.rel == victim:
            os._exit(3)  # as the kernel's OOM killer would end it
        return real(job)

    monkeypatch.setattr(writer, "write_outputs", dies)  # forked writers inherit the patch
    out, masks = tmp_path / "p.csv", tmp_path / "m"
    options = dict(model=predictor, batch_size=2, workers=0, masks_dir=masks, model_only_iters=0)
    with pytest.raises(ledger.OutputsLost, match="--resume"):
        score.score_folder(folder, out, output_workers=1, **options)
    rows = _rows(out)
    assert victim not in [r["path"] for r in rows] and len(rows) < len(expected)
    for r in rows:  # a row in the CSV has its outputs
        if r["label"] == "1":
            assert (masks / (r["path"] + ".mask.png")).exists(), r["path"]
    monkeypatch.setattr(writer, "write_outputs", real)
    score.score_folder(folder, out, output_workers=1, resume=True, **options)
    rows = _rows(out)
    assert [r["path"] for r in rows] == expected
    assert all((masks / (r["path"] + ".mask.png")).exists() for r in rows if r["label"] == "1")


def test_find_inputs_claims_hidden_and_exclusions(folder, tmp_path):
    found = score.find_inputs(folder)
    assert set(found.skipped) == SKIPPED
    assert "notes.dcm" in found.inputs and "nested/photo_noext" in found.inputs
    assert not any(p.startswith(".") or "/." in p for p in found.inputs)
    # Outputs written inside the folder are never scored.
    (folder / "out_masks").mkdir()
    try:
        Image.new("L", (8, 8)).save(folder / "out_masks" / "m.png")
        assert "out_masks/m.png" in score.find_inputs(folder).inputs
        assert "out_masks/m.png" not in score.find_inputs(folder, exclude=[folder / "out_masks"]).inputs  # fmt: skip
    finally:
        shutil.rmtree(folder / "out_masks")
    shards = [score.find_inputs(folder, (k, 4)) for k in (1, 2, 3, 4)]
    every = sorted(p for s in shards for p in s.inputs + s.skipped)
    assert every == sorted(found.inputs + found.skipped)
    assert score.parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(score.ScoreError, match="K/N"):
            score.parse_shard(bad)


def test_read_done_keeps_complete_rows_only(tmp_path):
    p = tmp_path / "p.csv"
    rows = HEADER + '\na.dcm,1.2,0.5,1,10,\n"we,ird\nname.dcm",,,,,"bad, file"\n'
    p.write_text(rows + "c.dcm,1.3,0.")  # torn last line
    done, good, torn = score.read_done(p)
    assert done == {"a.dcm", "we,ird\nname.dcm"} and torn and good == len(rows.encode())
    p.write_text(rows + '"d\n')  # torn inside a quoted field that spans lines
    assert score.read_done(p)[0] == done
    p.write_text(HEADER + "\na.dcm,1.2\nb.dcm,1.3,0.5,1,10,\n")  # damage that is not a kill
    with pytest.raises(score.ScoreError, match="fields"):
        score.read_done(p)
    p.write_text("something,else\n")
    with pytest.raises(score.ScoreError, match="not a ptxfast predictions CSV"):
        score.read_done(p)
    p.write_text(HEADER[:10])  # killed while writing the header
    assert score.read_done(p) == (set(), 0, True)


# ------------------------------------------------------------- hostile names, locks, full disks


def _all_positive(monkeypatch) -> None:
    """Every decoded image labelled positive, so each gets outputs."""
    monkeypatch.setattr(
        runtime.Predictor, "label", lambda self, p: torch.ones_like(p, dtype=torch.bool)
    )


CRAFTED_UIDS = {
    "slash.dcm": "1.2.3/../../x2",
    "dots.dcm": "..",
    "nul.dcm": "1.2.3\x004.5",
    "long.dcm": "1." * 149 + "1",  # 299 characters of digits and dots
}


@pytest.mark.filterwarnings("ignore:.*VR UI")  # pydicom's, about the crafted UIDs
def test_crafted_uids_cannot_leave_the_output_folders(predictor, tmp_path, monkeypatch):
    import warnings

    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    escape = tmp_path / "escaped" / "abs-ESC2"  # an absolute path as a SOPInstanceUID
    uids = {**CRAFTED_UIDS, "abs.dcm": str(escape), "good.dcm": "1.2.826.0.1.3680043.8.498.1"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs, as it should
        for name, sop in uids.items():
            ds = F.image_dataset(F.gray_pixels(48, 40, seed=len(name)), bits_stored=12)
            ds.SOPInstanceUID = sop
            F.save(ds, root / name)
    _all_positive(monkeypatch)
    before = {p for p in tmp_path.rglob("*")}
    s = score.score_folder(
        root, out / "preds.csv", model=predictor, batch_size=2, workers=0,
        masks_dir=out / "masks", seg_dir=out / "seg", sr_dir=out / "sr", model_only_iters=0,
    )  # fmt: skip
    assert s.segs_written == s.masks_written == s.srs_written == len(uids), s.output_errors
    assert not s.output_errors
    assert s.names_replaced == len(uids) - 1  # all but the valid UID (each file counted once)
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    allowed = {out / "preds.csv", out / "preds.csv.lock"}
    for p in written - allowed:
        assert p.parent in (out / "masks", out / "seg", out / "sr"), p
    assert not escape.parent.exists() and not (tmp_path / "x2.dcm").exists()
    segs = sorted(p.name for p in (out / "seg").glob("*.dcm"))
    assert sorted(p.name for p in (out / "sr").glob("*.dcm")) == segs  # the same safe names
    assert "1.2.826.0.1.3680043.8.498.1.dcm" in segs
    for name in segs:
        assert re.fullmatch(r"[0-9.]{1,64}\.dcm|[0-9a-f]{32}\.dcm", name), name
    rows = by(_rows(out / "preds.csv"))
    assert rows["slash.dcm"]["sop_instance_uid"] == "1.2.3/../../x2"  # the record keeps it
    masks = sorted(p.name for p in (out / "masks").glob("*.png"))
    assert masks == sorted(f"{n}{x}" for n in uids for x in (".mask.png", ".overlay.png"))


def test_safe_output_path_rules(tmp_path):
    from ptxfast.score.writer import UnsafeOutputPath, is_dicom_uid, safe_output_path

    assert is_dicom_uid("1.2.840.10008.5.1.4.1.1.1.1") and not is_dicom_uid("1.2.")
    assert not is_dicom_uid("1" * 65) and not is_dicom_uid("1.2\x003")
    ok = safe_output_path(tmp_path, "a/b.dcm", ".mask.png")
    assert ok.path == tmp_path / "a" / "b.dcm.mask.png" and not ok.replaced
    for rel in ("../x.dcm", "/etc/x", "a/../../x", "a//b", "n" * 250):
        name = safe_output_path(tmp_path, rel, ".mask.png")
        assert name.replaced and name.path.parent == tmp_path, rel
        assert name == safe_output_path(tmp_path, rel, ".mask.png")  # stable
    assert safe_output_path(tmp_path, "a.dcm", ".dcm", uid="1.2.3").path == tmp_path / "1.2.3.dcm"
    assert safe_output_path(tmp_path, "a.dcm", ".dcm", uid="../1").replaced
    (tmp_path / "link").symlink_to(tmp_path.parent)  # a folder inside that leads out
    with pytest.raises(UnsafeOutputPath, match="outside"):
        safe_output_path(tmp_path, "link/x.dcm", ".mask.png")


_HOLD = """
import sys, time
from ptxfast.score.ledger import LedgerLock
LedgerLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_one_writer_per_csv(folder, artifact, tmp_path):
    out = tmp_path / "preds.csv"
    args = ["score", str(folder), "--out", str(out), "--model", str(artifact), "--device", "cpu"]
    args += ["--workers", "0", "--threads", "1", "--model-only-iters", "0"]
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        for extra in ([], ["--resume"]):
            res = CliRunner().invoke(cli, args + extra)
            assert res.exit_code == 1, res.output
            line = " ".join(res.output.split())
            assert f"pid {holder.pid}" in line and "started" in line and "--shard K/N" in line
            assert "Traceback" not in res.output
        assert not out.exists() or out.stat().st_size == 0  # the CSV was not touched
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    expected = [f for f in _inputs(folder) if f not in SKIPPED]
    assert [r["path"] for r in _rows(out)] == expected
    res = CliRunner().invoke(cli, args + ["--resume"])  # after a run that ended
    assert res.exit_code == 0, res.output
    assert [r["path"] for r in _rows(out)] == expected


def test_forked_children_do_not_keep_the_lock(tmp_path):
    from ptxfast.score.ledger import LedgerBusy, LedgerLock

    lock = LedgerLock(tmp_path / "p.csv").acquire()
    with pytest.raises(LedgerBusy):
        LedgerLock(tmp_path / "p.csv").acquire()
    ready, started = os.pipe()
    pid = os.fork()
    if pid == 0:  # a decoding worker outliving the run, for a while
        os.write(started, b"1")  # fork's hooks have run by now
        time.sleep(3)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"1"
        lock.release()
        LedgerLock(tmp_path / "p.csv").acquire().release()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_csv_write_error_cuts_back_to_complete_rows(tmp_path, monkeypatch):
    import errno

    from ptxfast.score.ledger import WriteFailed

    preds = ledger.PredsCsv(tmp_path / "p.csv", resume=False, overwrite=False)
    preds.open()
    preds.append([["a.dcm", "1.2", "0.5", "1", "3", ""]])
    real, landed = preds.file, []

    def short_then_full(data):  # part of the row lands, then the disk is full
        if not landed:
            landed.append(data[:7])
            return real.write(bytes(data[:7]))
        raise OSError(errno.ENOSPC, "No space left on device")

    preds.file = _Faulty(real, short_then_full)
    with pytest.raises(WriteFailed, match=r"p.csv: No space left on device \(ENOSPC\).*--resume"):
        preds.append([["b.dcm", "1.3", "0.5", "1", "3", ""]])
    preds.close()
    assert landed  # a torn row was on disk, and is gone
    assert (tmp_path / "p.csv").read_text() == HEADER + "\na.dcm,1.2,0.5,1,3,\n"


class _Faulty:
    """A file whose write is replaced; everything else is the real file's."""

    def __init__(self, f, write):
        self._f, self.write = f, write

    def __getattr__(self, name):
        return getattr(self._f, name)


def _tiny_disk(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True)  # fmt: skip
    return res.returncode == 0


def test_full_disk_is_one_line_and_resume_finishes(folder, artifact, tmp_path, monkeypatch):
    import errno

    disk = tmp_path / "disk"
    mounted = _tiny_disk(disk, "20k")  # 5 pages: the CSV and a few PNGs, then ENOSPC
    args = ["--model", str(artifact), "--device", "cpu", "--batch-size", "2", "--workers", "0"]
    args += ["--threads", "1", "--model-only-iters", "0"]
    # On the tmpfs the failure happens in an output-writing process and crosses back to the
    # run as its one-line refusal.
    if not mounted:  # no tmpfs here: the third PNG write fails as a full disk would
        args += ["--output-workers", "0"]  # threads of this process, which see the patch
        calls = []
        real_save = writer._save_png

        def save(image, path):
            calls.append(path)
            if len(calls) > 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            real_save(image, path)

        monkeypatch.setattr(writer, "_save_png", save)
    _all_positive(monkeypatch)
    try:
        res = CliRunner().invoke(
            cli,
            ["score", str(folder), "--out", str(disk / "preds.csv"), "--masks", str(disk / "m")]
            + args,
        )
        assert res.exit_code == 1, res.output
        message = " ".join(res.output.split())
        assert "No space left on device (ENOSPC)" in message and "--resume" in message
        assert "Traceback" not in res.output and res.output.count("error:") == 1
        copy = tmp_path / "copy"
        shutil.copytree(disk, copy)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)
    monkeypatch.undo()
    _all_positive(monkeypatch)
    data = (copy / "preds.csv").read_bytes()
    assert data.endswith(b"\n")  # no torn line: the failed batch was cut back
    before = _rows(copy / "preds.csv")
    expected = [f for f in _inputs(folder) if f not in SKIPPED]
    assert len(before) < len(expected)
    res = CliRunner().invoke(
        cli, ["score", str(folder), "--out", str(copy / "preds.csv"), "--masks", str(copy / "m"),
              "--resume"] + args,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = _rows(copy / "preds.csv")
    assert [r["path"] for r in rows] == expected  # one row per file, in order
    for r in rows:
        if r["label"] == "1":  # every row in the CSV has its outputs
            assert (copy / "m" / (r["path"] + ".mask.png")).exists(), r["path"]


def test_shared_core_bound_from_model_and_decode_cost():
    model_only = 100.0  # 10 ms of the c cores per image
    s = speed.shared_core_bound(model_only, decode_cpu_s=0.02, cores=2, steady=45.0)  # + 10 ms
    assert s.shared_core_bound_images_per_s == pytest.approx(50.0)
    assert s.bound_share == pytest.approx(0.9) and s.cores == 2


def test_others_share_is_the_busy_time_the_run_did_not_use():
    # 2 cores x 10 s: the CPUs were busy 18 s, the run used 12 of them.
    assert speed.others_share(18.0, 12.0, cores=2, seconds=10.0) == pytest.approx(0.3)
    assert speed.others_share(11.0, 12.0, cores=2, seconds=10.0) == 0.0  # (tick rounding)
    assert speed.others_share(None, 12.0, cores=2, seconds=10.0) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_busy_cpu_counts_this_process():
    busy0, cpu0 = speed.busy_cpu_s(), time.process_time()
    while time.process_time() - cpu0 < 0.3:
        sum(range(10_000))
    assert speed.busy_cpu_s() - busy0 >= 0.8 * (time.process_time() - cpu0)


# ------------------------------------------------------------------ eligibility, operating point


def _retagged(src: Path, dst: Path, **tags) -> Path:
    import pydicom

    ds = pydicom.dcmread(src)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.SOPInstanceUID = uid.generate_uid()
    ds.save_as(dst)
    return dst


@pytest.fixture(scope="module")
def radiology(tmp_path_factory) -> Path:
    """A CT, an MR, an ultrasound, a structured report, a phantom re-tagged as a lateral view,
    and four chest radiographs (two CR, two DX phantoms)."""
    root = tmp_path_factory.mktemp("radiology")
    synth.write_dataset(root / "ph", 5, seed=3, size=SIZE, positive_rate=0.4, workers=1)
    phantoms = sorted((root / "ph").glob("**/*.dcm"))
    assert len(phantoms) == 5
    for i, p in enumerate(phantoms[:4]):
        _retagged(p, root / f"chest_{i}.dcm", Modality="CR" if i < 2 else "DX")
    _retagged(phantoms[4], root / "lateral.dcm", ViewPosition="LL")
    shutil.rmtree(root / "ph")
    px = F.gray_pixels(48, 48, bits=12)
    for modality in ("CT", "MR", "US"):
        ds = F.image_dataset(px, bits_stored=12)
        ds.Modality = modality
        F.save(ds, root / f"{modality.lower()}.dcm")
    F.structured_report(root / "report.dcm")
    return root


def test_only_chest_radiographs_get_probabilities(radiology, predictor, tmp_path):
    summary = score.score_folder(
        radiology, tmp_path / "p.csv", model=predictor, device="cpu", batch_size=2, workers=1,
        summary_json=tmp_path / "s.json", model_only_iters=0,
    )  # fmt: skip
    rows = by(_rows(tmp_path / "p.csv"))
    chest = {f"chest_{i}.dcm" for i in range(4)}
    assert {p for p, r in rows.items() if r["probability"]} == chest
    expect = {
        "ct.dcm": "Modality CT",
        "mr.dcm": "Modality MR",
        "us.dcm": "Modality US",
        "report.dcm": "Modality SR",
        "lateral.dcm": "ViewPosition LL (lateral)",
    }
    for name, reason in expect.items():
        assert rows[name]["error"] == (
            f"not eligible: {reason} (chest radiographs only; --eligibility off to score anyway)"
        )
        assert rows[name]["label"] == rows[name]["mask_area"] == ""
    assert (summary.scored, summary.failed, summary.not_eligible) == (4, 0, 5)
    js = json.loads((tmp_path / "s.json").read_text())
    assert js["eligibility"]["rule"] == "default" and js["not_eligible"] == 5
    assert js["eligibility"]["reasons"]["Modality CT"] == 1
    # off: every decodable image is scored; the SR has no pixels and fails as before.
    off = score.score_folder(
        radiology, tmp_path / "off.csv", model=predictor, device="cpu", batch_size=2,
        workers=0, model_only_iters=0, eligibility="off",
    )  # fmt: skip
    rows = by(_rows(tmp_path / "off.csv"))
    assert {p for p, r in rows.items() if r["probability"]} == set(rows) - {"report.dcm"}
    assert "without pixel data" in rows["report.dcm"]["error"]
    assert (off.scored, off.failed, off.not_eligible) == (8, 1, 0)
    with pytest.raises(score.ScoreError, match="choose one of strict, default, off"):
        score.score_folder(radiology, tmp_path / "x.csv", model=predictor, eligibility="no")


def test_score_labels_at_the_artifacts_operating_point(artifact, folder, tmp_path):
    from ptxfast.export import ExportConfig, export_model
    from ptxfast.inference.artifact import read_sidecar

    side = read_sidecar(artifact)
    ckpt = Path(side["sources"]["checkpoint"]["path"])
    threshold = 0.45
    cfg = ExportConfig(
        name="rn34un", runs=ckpt.parent.parent, out=tmp_path / "exports", checkpoint=ckpt,
        backend="torchscript", precision="fp32", device="cpu", parity_n=4, batch=(1, 2, 2),
        operating_point=f"threshold={threshold}",
    )  # fmt: skip
    op_artifact = export_model(cfg).sidecar_path
    result = CliRunner().invoke(
        cli,
        ["score", str(folder), "--out", str(tmp_path / "p.csv"), "--model", str(op_artifact),
         "--device", "cpu", "--json", str(tmp_path / "s.json"), "--model-only-iters", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "given: threshold=0.45" in result.output
    rows = [r for r in _rows(tmp_path / "p.csv") if r["probability"]]
    assert rows and all(r["label"] == str(int(float(r["probability"]) > threshold)) for r in rows)
    js = json.loads((tmp_path / "s.json").read_text())
    assert js["operating_point_detail"]["threshold"] == threshold
    assert "p > 0.45 (given: threshold=0.45" in js["operating_point"]
