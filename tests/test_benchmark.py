"""`ptxfast bench`: the arithmetic of its figures, parity through metrics.parity, the JSON schema,
backends that cannot run or break, and one end-to-end run at 64² (eager, torchscript) via the CLI.

The end-to-end run is made once for the module: rn34un+rn34 at random init, batch 1 and 2, one
timed call per repeat, a 4-image phantom parity set and one synthetic DICOM for the stages.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ptxfast import benchmarking as benchmark
from ptxfast.benchmarking import (
    PARITY_KEYS,
    ROW_KEYS,
    STAGE_KEYS,
    BenchConfig,
    agreement_row,
    percentiles,
    plan_variants,
    run_bench,
    stage_figures,
    summarize_times,
)
from ptxfast.benchmarking import run as bench_run
from ptxfast.cli import cli
from ptxfast.inference.runtime import Outputs
from ptxfast.timing import (
    INPUT_BUFFERS,
    model_only_images_per_s,
    time_predictor,
    timed_calls,
)

NAME = "rn34un+rn34"
pytestmark = pytest.mark.usefixtures("offline", "one_thread")
S = 64


# ------------------------------------------------------------------------------- arithmetic


def test_percentiles_interpolate_linearly():
    ms = list(range(1, 101))  # 1..100
    p = percentiles(ms)
    assert p == pytest.approx({"p50": 50.5, "p90": 90.1, "p95": 95.05, "p99": 99.01})
    assert percentiles([7.0]) == {"p50": 7.0, "p90": 7.0, "p95": 7.0, "p99": 7.0}
    with pytest.raises(ValueError):
        percentiles([])


def test_throughput_and_latency_from_known_timings():
    # Two repeats of batch 4: 0.1 s per call, then 0.2 s per call.
    times = [[0.1, 0.1], [0.2, 0.2]]
    f = summarize_times(times, batch=4)
    assert f["samples"] == 4
    assert f["images_per_s"] == pytest.approx(16 / 0.6)  # all images / all seconds
    assert f["images_per_s_min"] == pytest.approx(20.0)  # 8 images in 0.4 s
    assert f["images_per_s_max"] == pytest.approx(40.0)  # 8 images in 0.2 s
    assert f["images_per_s_std"] == pytest.approx(np.std([40.0, 20.0], ddof=1))
    assert f["latency_ms_p50"] == pytest.approx(150.0)
    assert f["latency_ms_p90"] == pytest.approx(200.0)
    assert f["latency_ms_mean"] == pytest.approx(150.0)
    assert f["image_ms_p50"] == pytest.approx(150.0 / 4)
    assert f["image_ms_p99"] == pytest.approx(200.0 / 4)
    one = summarize_times([[0.5, 0.25]], batch=1)
    assert one["images_per_s_std"] == 0.0 and one["images_per_s"] == pytest.approx(2 / 0.75)
    with pytest.raises(ValueError):
        summarize_times([[]], batch=1)


def test_energy_per_image_prefers_the_counter():
    assert benchmark.energy_per_image(50.0, 300.0, 1.0, 100) == (0.5, "nvml_energy_counter")
    per, source = benchmark.energy_per_image(None, 300.0, 2.0, 100)
    assert per == pytest.approx(6.0) and source == "nvml_mean_power_x_time"
    assert benchmark.energy_per_image(None, None, 2.0, 100) == (None, None)


def test_stage_figures_find_the_bound():
    f = stage_figures({"decode": 20.0, "h2d": 0.5, "compute": 4.0, "d2h": 0.1}, decode_workers=8)
    assert f["decode_images_per_s"] == pytest.approx(8 * 50.0)  # 8 processes of 50/s
    assert f["compute_images_per_s"] == pytest.approx(250.0)
    assert f["bound"] == "compute" and f["bound_images_per_s"] == pytest.approx(250.0)
    assert f["serial_images_per_s"] == pytest.approx(1000 / 24.6)
    cpu = stage_figures({"decode": 2.0, "h2d": None, "compute": 1.0, "d2h": None}, 1)
    assert cpu["h2d_images_per_s"] is None and cpu["bound"] == "decode"


# ----------------------------------------------------------------------------------- timing


class _Recorder:
    """A predictor stand-in that records which input each call got."""

    device = torch.device("cpu")
    size, input_dtype, channels_last = 8, torch.float32, False

    def __init__(self):
        self.seen = []

    def __call__(self, x):
        self.seen.append(x.data_ptr())


def test_timed_calls_time_each_call_and_stop_at_the_deadline():
    cpu = torch.device("cpu")
    seconds = timed_calls(lambda: time.sleep(0.01), cpu, 3)
    assert len(seconds) == 3 and all(s >= 0.009 for s in seconds)
    # A deadline already passed: still one call, so a slow model gives a figure.
    assert len(timed_calls(lambda: None, cpu, 5, deadline=time.perf_counter() - 1)) == 1


def test_time_predictor_warms_up_then_times_repeats_on_rotated_inputs():
    p = _Recorder()
    times, first = time_predictor(p, 2, warmup=3, iters=5, repeats=2)
    assert [len(r) for r in times] == [5, 5] and first >= 0
    assert len(p.seen) == 3 + 10  # the warm-up calls are not timed
    timed = p.seen[3:]
    assert timed[0] == p.seen[0]  # the timed calls start again from the first buffer
    assert len(set(timed)) == INPUT_BUFFERS and timed[INPUT_BUFFERS] == timed[0]


def test_model_only_images_per_s_counts_every_lane_and_keeps_to_the_budget():
    p = _Recorder()
    x = torch.zeros(4, 1, 8, 8)
    before = torch.get_num_threads()
    assert model_only_images_per_s(p, x, iters=3, lanes=2, threads=2) > 0
    assert len(p.seen) == 1 + 2 * 3  # one warm call, then 3 per lane
    assert torch.get_num_threads() == before
    p.seen.clear()
    model_only_images_per_s(p, x, iters=3, lanes=2, budget_s=0.0)
    assert len(p.seen) == 1 + 2  # past the budget: one timed batch per lane


# ----------------------------------------------------------------------------------- parity


class _Fixed:
    """A predictor stand-in that returns fixed probabilities, batch after batch."""

    thresholds = {"label": 0.5}

    def __init__(self, probs):
        self.probs = list(torch.tensor(probs, dtype=torch.float32).split(2))

    def __call__(self, x):
        p = self.probs.pop(0)
        return Outputs(p, torch.full_like(p, -1, dtype=torch.int32))


def test_parity_figures_on_constructed_predictions():
    labels = np.array([1, 1, 0, 0, 1, 0], dtype=np.float32)
    ref = np.array([0.9, 0.8, 0.2, 0.6, 0.4, 0.1], dtype=np.float32)  # TP TP TN FP FN TN
    new = [0.9, 0.3, 0.2, 0.7, 0.6, 0.1]  # TP FN TN FP TP TN: one label flips each way
    batches = [(torch.zeros(2, 1, 4, 4), torch.zeros(2))] * 3
    row = agreement_row(_Fixed(new), batches, labels, ref, {"variant": "x"})
    assert set(row) == set(PARITY_KEYS) and row["status"] == "ok" and row["variant"] == "x"
    assert row["agreement"] == pytest.approx(4 / 6) and row["n_disagree"] == 2
    assert row["f1_ref"] == pytest.approx(2 / 3) and row["f1"] == pytest.approx(2 / 3)
    assert row["recall_ref"] == pytest.approx(2 / 3) and row["recall"] == pytest.approx(2 / 3)
    assert row["delta_f1"] == pytest.approx(0.0)
    assert row["max_abs_diff"] == pytest.approx(0.5)
    assert row["n"] == 6 and row["n_pos"] == 3 and row["threshold"] == 0.5
    # All positive: recall rises to 1, F1 to 2·3/(2·3+3).
    row = agreement_row(_Fixed([0.9] * 6), batches, labels, ref)
    assert row["recall"] == 1.0 and row["delta_recall"] == pytest.approx(1 / 3)
    assert row["f1"] == pytest.approx(6 / 9)
    # A predictor that raises is a failed row, not an exception.
    broken = agreement_row(_Fixed([0.5] * 2), batches, labels, ref)
    assert broken["status"] == "failed" and "IndexError" in broken["error"]


# ------------------------------------------------------------------------------- availability


def test_backends_that_cannot_run_are_listed_with_their_reason(monkeypatch):
    import ptxfast.inference.runtime as runtime

    real = runtime.available_backends

    def fake(device="auto"):
        out = real(device)
        out["torchscript"] = "torchscript is switched off on this machine (test)"
        return out

    monkeypatch.setattr(runtime, "available_backends", fake)
    plan = {v: (reason, status) for v, reason, status in plan_variants(None, torch.device("cpu"))}
    assert plan["torchscript"] == (
        "torchscript is switched off on this machine (test)",
        "unavailable",
    )
    assert plan["eager"] == (None, "")
    assert plan["inductor"][1] == "skipped" and "--backends inductor" in plan["inductor"][0]
    assert plan["tensorrt"][1] == "unavailable" and "CUDA" in plan["tensorrt"][0]
    asked = {v: s for v, _, s in plan_variants(["eager-fp16", "inductor"], torch.device("cpu"))}
    assert asked["inductor"] == ""  # asked for: it runs
    assert asked["eager-fp16"] == "unavailable"  # fp16 is for CUDA devices
    with pytest.raises(benchmark.BenchError, match="unknown backend"):
        plan_variants(["eager", "onnx"], torch.device("cpu"))


def test_a_backend_that_fails_at_run_time_is_reported_and_the_rest_go_on(monkeypatch):
    real_build = bench_run.build_variant

    class Broken:
        device = torch.device("cpu")
        size, input_dtype, channels_last, path = S, torch.float32, True, "trace"

        def __call__(self, x):
            raise RuntimeError("kernel exploded\nsecond line")

    def build(variant, *args, **kwargs):
        return Broken() if variant == "torchscript" else real_build(variant, *args, **kwargs)

    monkeypatch.setattr(bench_run, "build_variant", build)
    cfg = BenchConfig(
        name=NAME, size=S, backends=("torchscript", "eager"), batch_sizes=(1,), device="cpu",
        warmup=1, iters=1, repeats=1, parity_n=0, stage_n=0,
    )  # fmt: skip
    report = run_bench(cfg)
    rows = {r["variant"]: r for r in report.rows}
    assert rows["torchscript"]["status"] == "failed"
    assert rows["torchscript"]["error"] == "RuntimeError: kernel exploded"
    assert rows["eager"]["status"] == "ok" and rows["eager"]["images_per_s"] > 0
    assert report.complete


def test_variants_that_cannot_be_built_get_rows_that_say_why(monkeypatch):
    from ptxfast.benchmarking.plan import Unavailable

    def build(variant, *args, **kwargs):
        if variant == "torchscript":
            raise RuntimeError("tracer broke\nsecond line")
        raise Unavailable("no model to build this variant from")

    monkeypatch.setattr(bench_run, "build_variant", build)
    cfg = BenchConfig(
        name="rn34", size=S, backends=("torchscript", "eager"), batch_sizes=(1,), device="cpu",
        parity_n=0, stage_n=0,
    )  # fmt: skip
    report = run_bench(cfg)
    rows = {r["variant"]: r for r in report.rows}
    parity = {p["variant"]: p for p in report.parity}
    assert rows["torchscript"]["status"] == "failed"
    assert rows["torchscript"]["error"] == "RuntimeError: tracer broke"
    assert (
        parity["torchscript"]["status"] == "failed"
        and parity["torchscript"]["error"] == "not built"
    )
    assert rows["eager"]["status"] == parity["eager"]["status"] == "unavailable"
    assert (
        parity["eager"]["error"] == rows["eager"]["error"] == "no model to build this variant from"
    )
    assert report.complete and report.notes == ["no parity set (--parity-n 0)"]


def test_inductor_is_built_by_the_one_builder_in_the_default_mode(monkeypatch):
    import ptxfast.inference.runtime as runtime
    from ptxfast.benchmarking.plan import Source, build_variant

    seen = {}

    def fake(backend, model, **kwargs):
        seen.update(kwargs, backend=backend)
        return "predictor"

    monkeypatch.setattr(runtime, "build_predictor", fake)
    src = Source(NAME, S, torch.nn.Identity(), None, "random init", None)
    cpu = torch.device("cpu")
    assert build_variant("inductor-bf16", src, cpu, (1, 32), BenchConfig()) == "predictor"
    assert seen["backend"] == "inductor" and seen["precision"] == "bf16"
    assert seen["inductor_mode"] == "default" and seen["dynamic"] is None
    assert seen["batch"] == (1, 8, 32)
    seen.clear()
    build_variant("inductor", src, cpu, (2,), BenchConfig(inductor_mode="max-autotune"))
    assert seen["inductor_mode"] == "max-autotune" and seen["batch"] == (2, 2, 2)
    seen.clear()
    build_variant("torchscript", src, cpu, (1, 2), BenchConfig())
    assert "inductor_mode" not in seen and seen["backend"] == "torchscript"


def test_inductor_predictor_names_its_mode(monkeypatch):
    from ptxfast.inference.runtime import available_backends, build_predictor
    from ptxfast.models import build

    if available_backends("cpu")["inductor"]:
        pytest.skip(available_backends("cpu")["inductor"])
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(kw) or m)
    model = build("rn34", weights=None).eval()
    p = build_predictor(
        "inductor", model, name="rn34", size=S, device="cpu", inductor_mode="default", dynamic=None
    )
    assert p.path == "inductor:default" and p.backend == "inductor"
    assert build_predictor("inductor", model, name="rn34", size=S, device="cpu").path == "inductor"
    assert compiled == [{"mode": "default", "dynamic": None}, {"mode": None, "dynamic": False}]


# ------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = [
        "bench", "--cascade", NAME, "--size", str(S), "--device", "cpu",
        "--backends", "eager,torchscript,tensorrt,eager-fp16", "--batch-sizes", "1,2",
        "--warmup", "2", "--iters", "1", "--repeats", "2", "--parity-n", "4",
        "--stage-files", "1", "--threads", "1", "--exports", str(out / "none"),
        "--json", str(out / "b.json"), "--markdown", str(out / "b.md"),
        "--plots", str(out / "plots"),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "b.json").read_text()), (out / "b.md").read_text()


def test_cli_plots_throughput_and_latency_against_batch_size(cli_run, tmp_path_factory):
    from PIL import Image

    from ptxfast.benchmarking import BenchError, write_plots

    result, doc, _ = cli_run
    (folder,) = tmp_path_factory.getbasetemp().glob("bench[0-9]*/plots")
    assert sorted(p.name for p in folder.iterdir()) == ["latency.png", "throughput.png"]
    assert "throughput.png" in result.output
    for p in folder.iterdir():
        img = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
        assert img.shape[0] > 300 and img.std() > 10  # drawn, not blank
    # Rows that did not run are left out; a report with none measured has nothing to draw.
    with pytest.raises(BenchError, match="nothing to plot"):
        write_plots({**doc, "rows": [r for r in doc["rows"] if r["status"] != "ok"]}, folder)


def _type_ok(value, types) -> bool:
    return value is None or isinstance(value, types)


NUMBER = (int, float)
ROW_TYPES = {k: NUMBER for k in ROW_KEYS}
ROW_TYPES.update(
    {k: str for k in ("variant", "backend", "precision", "path", "status", "error", "model")}
)
ROW_TYPES.update(
    {k: str for k in ("device", "memory_source", "energy_source")},
    **{k: int for k in ("size", "batch", "warmup", "iters", "repeats", "samples")},
)


def test_cli_writes_json_with_every_row_in_one_schema(cli_run):
    _, doc, _ = cli_run
    assert doc["schema"] == 1 and doc["complete"] is True
    assert {"rows", "parity", "stages", "environment", "config", "model", "data"} <= set(doc)
    assert doc["model"] == {"name": NAME, "size": S, "weights": "random init", "artifact": None}
    for row in doc["rows"]:
        assert set(row) == set(ROW_KEYS), set(row) ^ set(ROW_KEYS)
        for key, value in row.items():
            assert _type_ok(value, ROW_TYPES[key]), (key, value)
    ok = [r for r in doc["rows"] if r["status"] == "ok"]
    assert sorted((r["variant"], r["batch"]) for r in ok) == [
        ("eager", 1), ("eager", 2), ("torchscript", 1), ("torchscript", 2),
    ]  # fmt: skip
    for r in ok:
        assert r["samples"] == 2 and r["images_per_s"] > 0
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["image_ms_p50"] == pytest.approx(r["latency_ms_p50"] / r["batch"])
        assert r["peak_memory_mib"] > 0 and r["memory_source"].startswith("process_rss")
        assert r["gpu_util_mean"] is None  # no NVML on a CPU
    eager = {r["batch"]: r for r in ok if r["variant"] == "eager"}
    assert all(r["speedup_vs_eager"] == 1.0 for r in eager.values())
    ts = next(r for r in ok if r["variant"] == "torchscript" and r["batch"] == 2)
    assert ts["speedup_vs_eager"] == pytest.approx(ts["images_per_s"] / eager[2]["images_per_s"])
    assert ts["path"] == "trace" and ts["first_call_s"] > 0


def test_cli_reports_what_cannot_run_with_the_reason(cli_run):
    result, doc, md = cli_run
    rows = {r["variant"]: r for r in doc["rows"] if r["status"] != "ok"}  # --device cpu
    assert rows["tensorrt"]["status"] == "unavailable" and "CUDA" in rows["tensorrt"]["error"]
    assert "fp16 runs on CUDA" in rows["eager-fp16"]["error"]
    assert rows["tensorrt"]["batch"] is None and rows["tensorrt"]["images_per_s"] is None
    assert "tensorrt" in result.output and "unavailable" in result.output
    assert "**tensorrt**: unavailable" in md


def test_cli_parity_and_stages(cli_run):
    _, doc, md = cli_run
    parity = {p["variant"]: p for p in doc["parity"]}
    assert set(doc["parity"][0]) == set(PARITY_KEYS)
    for variant in ("eager", "torchscript"):
        p = parity[variant]
        assert p["status"] == "ok" and p["n"] == 4 and p["agreement"] == 1.0
        assert 0 <= p["f1"] <= 1 and 0 <= p["recall"] <= 1
        assert p["max_abs_diff"] < 1e-4  # fp32 trace: rounding differences only
    assert parity["eager"]["max_abs_diff"] == 0.0
    assert doc["data"]["source"] == "synthetic phantoms" and doc["data"]["n"] == 4
    assert len(doc["stages"]) == 2
    for s in doc["stages"]:
        assert set(s) == set(STAGE_KEYS) and s["status"] == "ok"
        assert s["files"] == 1 and s["decode_errors"] == 0
        assert s["decode_ms_per_image"] > 0 and s["compute_ms_per_image"] > 0
        assert s["h2d_ms_per_image"] is None  # no copy on a CPU
        assert s["bound"] in ("decode", "compute")
        rates = {k: s[f"{k}_images_per_s"] for k in ("decode", "compute")}
        assert s["bound_images_per_s"] == pytest.approx(min(rates.values()))
    # The markdown holds the same figures as the JSON.
    assert "## Parity against eager fp32" in md and "## Stages of scoring" in md
    row = next(r for r in doc["rows"] if r["variant"] == "torchscript" and r["batch"] == 2)
    assert f"{row['images_per_s']:.1f} ± {row['images_per_s_std']:.1f}" in md
    assert not any(isinstance(v, float) and math.isnan(v) for v in doc["rows"][0].values())


def test_cli_refuses_bad_options(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(cli, ["bench", "--cascade", NAME, "--batch-sizes", "1,x"])
    assert bad.exit_code != 0 and "positive integers" in bad.output
    both = runner.invoke(cli, ["bench", "--cascade", NAME, "--model", str(tmp_path / "a.ts")])
    assert both.exit_code != 0 and "not both" in both.output
    missing = runner.invoke(cli, ["bench", "--cascade", NAME, "--runs", str(tmp_path)])
    assert missing.exit_code != 0 and "no checkpoint" in missing.output
    unknown = runner.invoke(cli, ["bench", "--cascade", NAME, "--backends", "onnx", "--size", "64"])
    assert unknown.exit_code != 0 and "unknown backend" in unknown.output


def test_partial_report_is_written_before_measuring(tmp_path, monkeypatch):
    """The files exist from the start, marked incomplete, so a run cut short leaves a record."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_run, "labelled_set", interrupted)
    cfg = BenchConfig(
        name=NAME, size=S, backends=("eager", "tensorrt"), device="cpu",
        json_out=tmp_path / "b.json", markdown_out=tmp_path / "b.md",
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg)
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["complete"] is False and doc["rows"] == []
    assert doc["config"]["variants"] == ["eager", "tensorrt"]
    assert "Partial" in (tmp_path / "b.md").read_text()
