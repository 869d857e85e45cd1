"""`evaluate_runs` and `ptxfast evaluate` on tiny phantoms and tiny untrained checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re

import numpy as np
import pytest
import torch

from ptxfast import MODEL_NAMES
from ptxfast.checkpoint import checkpoint_header, model_from_checkpoint, save_checkpoint
from ptxfast.evaluation import CSV_COLUMNS, METRIC_KEYS, EvalError, evaluate_runs
from ptxfast.metrics import binary_metrics, dice, seg_labels
from ptxfast.models import PIXEL_THRESHOLD, build, min_area
from ptxfast.recipes import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
S = 64
TRAINED = ("rn34", "rn34un", "rn34un+rn34")
FIGURES = ("confusion.png", "roc.png", "recall_f1.png", "reliability.png")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from ptxfast.data.synth import write_dataset

    out = tmp_path_factory.mktemp("phantoms")
    write_dataset(out, n=30, seed=0, size=S, positive_rate=0.4, workers=1)
    return out


@pytest.fixture(scope="module")
def runs(phantoms, tmp_path_factory):
    """best.pt files as training writes them (model, header, recipe), from untrained models."""
    root = tmp_path_factory.mktemp("runs")
    logging.getLogger("ptxfast.models").setLevel(logging.ERROR)
    torch.manual_seed(0)
    for name in TRAINED:
        cfg = TrainConfig(arch=name, data=str(phantoms), runs=str(root), size=S, weights="none")
        state = {
            "model": build(name, weights=None).state_dict(),
            "optimizer": {},
            "epoch": 1,
            "metric": 0.0,
            **checkpoint_header(name, S),
            "recipe": dataclasses.asdict(cfg),
        }
        save_checkpoint(state, root / name / "best.pt")
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    import warnings

    out = tmp_path_factory.mktemp("eval")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny split's quotas are scaled down, on purpose
        return evaluate_runs(
            runs, out=out, device="cpu", batch_size=4, tune=True, overlays=4, n_boot=200
        )


def test_report_has_every_model_metric_and_file(report, runs):
    assert [r.name for r in report.results] == list(TRAINED)  # the paper's order
    assert report.missing == [n for n in MODEL_NAMES if n not in TRAINED]
    for key in ("metrics_json", "metrics_csv", "confusion", "roc", "recall_f1"):
        assert report.files[key].is_file() and report.files[key].stat().st_size > 0
    for name in ("rn34un", "rn34un+rn34"):
        png = report.out / f"overlays_{name}.png"
        assert report.files[f"overlays_{name}"] == png and png.stat().st_size > 1000
    assert not (report.out / "overlays_rn34.png").exists()  # classifiers draw no masks

    doc = json.loads((report.out / "metrics.json").read_text())
    assert set(doc["models"]) == set(TRAINED) and doc["missing"] == report.missing
    for name, entry in doc["models"].items():
        assert set(entry["metrics"]) == set(METRIC_KEYS)
        m = entry["metrics"]
        assert m["tn"] + m["fp"] + m["fn"] + m["tp"] == m["n"] == len(report.results[0].labels)
        assert entry["size"] == S and entry["epoch"] == 1 and len(entry["sha256"]) == 64
        assert (m["dice"] is None) == (name == "rn34")
        assert (entry["tuned"] is not None) == (name == "rn34un")
    tuned = doc["models"]["rn34un"]["tuned"]
    assert set(tuned) >= {"pixel_threshold", "min_area", "val_f1", "metrics"}
    assert set(tuned["metrics"]) == set(METRIC_KEYS)

    with open(report.out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    ops = [("recall>=0.90",), ("recall>=0.95",)]
    assert [(r["model"], r["cutoffs"]) for r in rows] == [
        ("rn34", "paper"),
        *[("rn34", *o) for o in ops],
        ("rn34un", "paper"),
        ("rn34un", "tuned"),
        *[("rn34un", *o) for o in ops],
        ("rn34un+rn34", "paper"),
        *[("rn34un+rn34", *o) for o in ops],
    ]
    assert rows[3]["min_area"] == str(min_area(S)) and rows[0]["threshold"] == "0.5"
    for row in rows:  # every row carries its 95% CIs
        for k in ("recall", "specificity", "precision", "npv", "f1"):
            assert float(row[f"{k}_lo"]) <= float(row[k]) <= float(row[f"{k}_hi"]), (row, k)


def test_segmenter_figures_match_a_direct_computation(report, runs, phantoms):
    """Rerun the segmenter by hand on the test split: same labels, confusion matrix and Dice."""
    from ptxfast.data.datasets import PTXDataset, ensure_splits

    model, _ = model_from_checkpoint(runs / "rn34un" / "best.pt")
    items = PTXDataset(ensure_splits(phantoms)["test"], S)
    x = torch.stack([items[i][0] for i in range(len(items))])
    true = torch.stack([items[i][1] for i in range(len(items))]).numpy() > 0.5
    y = np.array([int(items[i][2]) for i in range(len(items))])
    with torch.inference_mode():
        prob = torch.sigmoid(model(x)).numpy()
    called = seg_labels(prob, PIXEL_THRESHOLD, min_area(S))
    expect = binary_metrics(y, called.astype(float), 0.5)
    reported = np.where(called[:, None, None, None], prob > PIXEL_THRESHOLD, False)
    d = dice(reported, true)

    got = next(r for r in report.results if r.name == "rn34un")
    assert (got.scores > PIXEL_THRESHOLD).tolist() == called.tolist()
    for k in ("tn", "fp", "fn", "tp", "f1", "recall", "precision"):
        assert got.metrics[k] == pytest.approx(expect[k]), k
    assert got.metrics["dice"] == pytest.approx(d.mean)
    assert got.labels.tolist() == y.tolist()


def test_cli_evaluate_writes_every_file(runs, phantoms, tmp_path):
    from click.testing import CliRunner

    from ptxfast.cli import cli

    out = tmp_path / "eval"
    args = ["evaluate", "--runs", str(runs), "--data", str(phantoms), "--out", str(out)]
    args += ["--models", "rn34,rn34un+rn34,eb3", "--device", "cpu", "--batch-size", "3"]
    result = CliRunner().invoke(cli, [*args, "--overlays", "2"])
    assert result.exit_code == 0, result.output
    assert "rn34un+rn34" in result.output and re.search(r"eb3 +not trained", result.output)
    assert "operating points" in result.output
    for name in ("metrics.json", "metrics.csv", *FIGURES, "overlays_rn34un+rn34.png"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["models"]) == ["rn34", "rn34un+rn34"] and doc["missing"] == ["eb3"]


def test_errors_name_the_fix(runs, tmp_path):
    from click.testing import CliRunner

    from ptxfast.cli import cli

    with pytest.raises(EvalError, match="ptxfast train"):
        evaluate_runs(tmp_path, models="eb3")
    with pytest.raises(EvalError, match="unknown model 'vgg16'"):
        evaluate_runs(runs, models=["vgg16"])
    long = tmp_path / ("x" * 90) / "nowhere"  # wider than the 80 columns of a captured console
    result = CliRunner().invoke(cli, ["evaluate", "--runs", str(long)])
    assert result.exit_code != 0 and "not found" in result.output
    assert result.output.strip().count("\n") == 0, "an error is one line, unwrapped"


def test_index_shows_every_figure_and_file(report):
    from html_check import check_html

    text = (report.out / "index.html").read_text(encoding="utf-8")
    p = check_html(text)
    images = [a["src"] for t, a in p.tags if t == "img"]
    links = {a["href"] for t, a in p.tags if t == "a"}
    pngs = sorted(f.name for f in report.files.values() if f.suffix == ".png")
    assert sorted(images) == pngs and set(pngs) <= links  # shown and linked, by relative name
    assert {"metrics.json", "metrics.csv"} <= links
    assert all((report.out / name).is_file() for name in links)
    assert report.files["index"] == report.out / "index.html"
    for r in report.results:
        assert f"<td>{r.name}</td>" in text and f"{r.metrics['f1']:.3f}" in text


def test_operating_points_are_chosen_on_validation_and_applied_to_test(report, runs, phantoms):
    from ptxfast.checkpoint import read_evaluation
    from ptxfast.data.datasets import ensure_splits

    n_val_pos = sum(r.label for r in ensure_splits(phantoms)["val"])
    assert n_val_pos > 0
    for r in report.results:
        assert [op["target_recall"] for op in r.operating_points] == [0.9, 0.95]
        for op in r.operating_points:
            # The threshold reaches the target on validation, and a higher one would not.
            assert op["chosen_on"] == "val"
            if op["reached"]:
                assert op["val"]["recall"]["value"] >= op["target_recall"]
            # On test: exactly the figures of `score > threshold`.
            expect = binary_metrics(r.labels, r.scores, op["threshold"], ranking=r.ranks)
            for k in ("tp", "fp", "fn", "tn", "recall", "specificity", "npv"):
                assert op["metrics"][k] == pytest.approx(expect[k]), (r.name, k)
            for k in ("recall", "specificity", "precision", "npv", "f1", "auc"):
                c = op["ci"][k]
                assert c["lo"] <= c["value"] <= c["hi"]
        # evaluation.json beside best.pt holds the same thresholds and the temperature.
        saved = read_evaluation(runs / r.name / "best.pt")
        assert saved is not None and saved["sha256"] == r.sha256
        assert [p["threshold"] for p in saved["operating_points"]] == [
            op["threshold"] for op in r.operating_points
        ]
        assert "test" not in json.dumps(saved["operating_points"])  # validation figures only
        assert saved["calibration"]["temperature"] == r.calibration["temperature"] > 0
        assert r.files["evaluation"] == runs / r.name / "evaluation.json"
    seg = next(r for r in report.results if r.name == "rn34un")
    # The segmenter's threshold is on its k-th-pixel score (its validation probabilities).
    assert 0 <= seg.operating_points[0]["threshold"] < 1


def test_evaluation_json_is_ignored_once_the_checkpoint_changes(runs, tmp_path):
    import shutil

    from ptxfast.checkpoint import read_evaluation, write_evaluation

    ckpt = tmp_path / "best.pt"
    shutil.copyfile(runs / "rn34" / "best.pt", ckpt)
    write_evaluation(ckpt, {"operating_points": [{"threshold": 0.2}]})
    assert read_evaluation(ckpt)["operating_points"][0]["threshold"] == 0.2
    ckpt.write_bytes(ckpt.read_bytes() + b"0")  # retrained: other bytes
    assert read_evaluation(ckpt) is None


def test_target_recall_errors_and_none(runs, tmp_path):
    from click.testing import CliRunner

    from ptxfast.cli import cli

    base = ["evaluate", "--runs", str(runs), "--models", "rn34", "--device", "cpu"]
    bad = CliRunner().invoke(cli, [*base, "--target-recall", "1.5"])
    assert bad.exit_code != 0 and "give a recall in (0, 1]" in bad.output
    out = tmp_path / "e"
    plain = CliRunner().invoke(
        cli, [*base, "--target-recall", "none", "--out", str(out), "--bootstrap", "100"]
    )
    assert plain.exit_code == 0, plain.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["models"]["rn34"]["operating_points"] == []


def test_all_negative_validation_is_a_clear_error(tmp_path):
    from ptxfast.evaluation.infer import Outputs as _Outputs
    from ptxfast.evaluation.points import choose_thresholds as _choose_thresholds

    val = _Outputs(np.zeros(5, dtype=int), np.linspace(0.1, 0.9, 5), np.zeros(5))
    with pytest.raises(EvalError, match="holds no pneumothorax .*--target-recall none"):
        _choose_thresholds("rn34", tmp_path, val, (0.9,))
    assert _choose_thresholds("rn34", tmp_path, val, ()) == []


@pytest.mark.parametrize("name", TRAINED)
def test_scorer_is_the_fused_forward_with_its_logits(name, offline):
    """Evaluation and training score through Fused.forward itself; the logits they also need
    are the ones behind its probabilities, and the tap leaves no hook behind."""
    from ptxfast.inference.forward import FusedScorer
    from ptxfast.inference.fused import Fused
    from ptxfast.models import kind_of

    torch.manual_seed(0)
    model = build(name, weights=None).eval()
    for p in model.parameters():  # away from the zero-initialized head's p = 0.5 for all
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.05)
    kind, x = kind_of(name), torch.rand(2, 1, S, S)
    with torch.inference_mode():
        got = FusedScorer(model, kind, S)(x)
        want = Fused(model, kind, S, return_mask=kind != "classifier")(x)
    torch.testing.assert_close(got.prob, want[0], rtol=0, atol=0)
    # The logits still rank two images whose float32 probabilities may both saturate at 1.
    assert not torch.equal(got.logit[0], got.logit[1])
    torch.testing.assert_close(torch.sigmoid(got.logit), got.prob)
    if kind == "classifier":
        assert got.mask is None and got.raw.shape == (2, 1)
    else:
        torch.testing.assert_close(got.mask, want[2], rtol=0, atol=0)
    tapped = model.classifier if kind == "cascade" else model
    assert not tapped._forward_hooks
