"""Running an evaluation: each asked-for model's best.pt loaded and checked, scored on the
validation split (which chooses its operating thresholds and temperature) and the test split
(which reports), its figures drawn, and everything written."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ptxfast import MODEL_NAMES
from ptxfast import metrics as M
from ptxfast.checkpoint import model_from_checkpoint, sha256_file, write_evaluation
from ptxfast.environment import resolve_device
from ptxfast.evaluation.figures import overlay, plot_all
from ptxfast.evaluation.infer import SharedData, infer
from ptxfast.evaluation.points import (
    calibration,
    choose_thresholds,
    operating_points,
    paper_figures,
    tuned_cutoffs,
)
from ptxfast.evaluation.results import EvalConfig, EvalError, EvalReport, ModelResult
from ptxfast.evaluation.write import (
    evaluation_results,
    write_csv,
    write_index,
    write_metrics_json,
)
from ptxfast.models import PIXEL_THRESHOLD, kind_of

__all__ = ["evaluate_runs", "run_evaluation"]


def _names(models: str | Sequence[str] | None) -> list[str]:
    if models is None:
        return list(MODEL_NAMES)
    if isinstance(models, str):
        models = [m for m in models.replace(" ", ",").split(",") if m]
    wanted = set()
    for m in models:
        if m == "all":
            wanted.update(MODEL_NAMES)
        elif m in MODEL_NAMES:
            wanted.add(m)
        else:
            raise EvalError(f"unknown model {m!r}; choose from {', '.join(MODEL_NAMES)} or all")
    return [m for m in MODEL_NAMES if m in wanted]  # the paper's order


def _load(name: str, path: Path, data: Path | None, device: torch.device):
    """(model in eval mode on `device`, checkpoint state, size, dataset folder, split seed)."""
    model, state = model_from_checkpoint(path)
    model.to(device).eval()
    if state["model_args"].get("name") != name:
        raise EvalError(
            f"{path} holds {state['model_args'].get('name')!r}, not {name}; "
            f"retrain it with `ptxfast train --arch {name}`"
        )
    size = int(state["model_args"]["size"])
    recipe = state.get("recipe") or {}
    root = Path(data) if data else Path(recipe["data"]) if recipe.get("data") else None
    if root is None:
        raise EvalError(
            f"{path} records no dataset; pass --data DIR (the folder it was trained on)"
        )
    if not root.is_dir():
        raise EvalError(f"dataset folder {root} (of {name}) not found; pass --data DIR")
    return model, state, size, root, int(recipe.get("seed", 0))


def _evaluate_model(
    name: str, path: Path, cfg: EvalConfig, shared: SharedData, device: torch.device
) -> ModelResult:
    """One model's ModelResult: validation chooses, test reports (see the package notes)."""
    kind = kind_of(name)
    model, state, size, root, seed = _load(name, path, cfg.data, device)
    top_k = max(M.area_grid(size)) + 1 if cfg.tune and kind == "segmenter" else 0
    # Validation first: it chooses the operating thresholds, whose masks the test pass counts.
    val_set = shared.dataset(root, seed, "val", size)
    val = infer(model, kind, shared.loader(val_set), device, (), top_k)
    chosen = choose_thresholds(name, root, val, cfg.target_recalls)
    test_set = shared.dataset(root, seed, "test", size)
    records = shared.records(root, seed, "test")
    pixel = set(M.THRESHOLD_GRID if top_k else (PIXEL_THRESHOLD,))
    if kind == "segmenter":
        pixel |= {op.threshold for op in chosen}
    test = infer(model, kind, shared.loader(test_set), device, sorted(pixel), top_k)
    cutoffs, metrics, ci, dice = paper_figures(kind, size, test, cfg.n_boot)
    cal, note = calibration(val, test)
    result = ModelResult(
        name=name,
        kind=kind,
        checkpoint=path,
        sha256=sha256_file(path),
        epoch=state.get("epoch"),
        size=size,
        data=root,
        cutoffs=cutoffs,
        metrics=metrics,
        ci=ci,
        tuned=tuned_cutoffs(val, test, size, cfg.n_boot) if top_k else None,
        image_ids=[r.image_id for r in records],
        labels=test.labels,
        scores=test.scores,
        ranks=test.ranks,
        operating_points=operating_points(kind, chosen, val, test, cfg.n_boot),
        calibration=cal,
        notes=([note] if note else []) + [op.note for op in chosen if op.note],
    )
    if cfg.overlays and kind != "classifier":
        result.files["overlays"] = overlay(
            model,
            result,
            test_set,
            device,
            cfg.overlays,
            shared.batch_size,
            dice.per_image,
            test.true_area,
            [r.path.name for r in records],  # CANDID names the patient (P17_2.dcm)
            cfg.out / f"overlays_{name}.png",
        )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _progress_line(r: ModelResult, device: torch.device, seconds: float) -> str:
    ops = ", ".join(
        f"t {op['threshold']:.3g} for recall ≥ {op['target_recall']:g}" for op in r.operating_points
    )
    return (
        f"{r.name}: {r.metrics['n']} test images at {r.size}² on {device}, F1 "
        f"{r.metrics['f1']:.3f}{'; ' + ops if ops else ''} ({seconds:.1f} s)"
    )


def _present(cfg: EvalConfig) -> tuple[list[str], list[str]]:
    """(asked-for models with a best.pt, those without); an error when none has one."""
    if not cfg.runs.is_dir():
        raise EvalError(
            f"runs folder {cfg.runs} not found; train first (`ptxfast train`) or pass --runs"
        )
    names = _names(cfg.models)
    present = [n for n in names if (cfg.runs / n / "best.pt").is_file()]
    if not present:
        raise EvalError(
            f"no trained model under {cfg.runs} (looked for {cfg.runs}/<model>/best.pt for "
            f"{', '.join(names)}); run `ptxfast train` first or pass --runs"
        )
    return present, [n for n in names if n not in present]


def run_evaluation(cfg: EvalConfig, progress: Callable[[str], None] | None = None) -> EvalReport:
    """Evaluate every trained model of `cfg` on its test split and write the report:
    metrics.json, metrics.csv, the PNGs and index.html in `cfg.out`, and each model's
    operating thresholds and temperature in <runs>/<name>/evaluation.json. `progress` is
    called with one line per model (and its notes)."""
    start = time.perf_counter()
    present, missing = _present(cfg)
    device = resolve_device(cfg.device)
    cfg.out.mkdir(parents=True, exist_ok=True)
    shared = SharedData(cfg.batch_size, cfg.workers)
    say = progress or (lambda _: None)
    results = []
    for name in present:
        t0 = time.perf_counter()
        ckpt = cfg.runs / name / "best.pt"
        r = _evaluate_model(name, ckpt, cfg, shared, device)
        r.files["evaluation"] = write_evaluation(ckpt, evaluation_results(r, cfg.n_boot))
        say(_progress_line(r, device, time.perf_counter() - t0))
        for note in r.notes:
            say(f"  {name}: {note}")
        results.append(r)
    files: dict[str, Path] = plot_all(results, cfg.out)
    for r in results:
        files.update({f"{k}_{r.name}": v for k, v in r.files.items()})
    report = EvalReport(cfg.runs, cfg.out, str(device), results, missing, files, n_boot=cfg.n_boot)
    files["metrics_csv"] = write_csv(results, cfg.out / "metrics.csv")
    files["metrics_json"] = write_metrics_json(report, cfg.out / "metrics.json")
    files["index"] = write_index(report, cfg.out / "index.html")
    report.seconds = time.perf_counter() - start
    return report


def evaluate_runs(
    runs: str | Path = "runs",
    progress: Callable[[str], None] | None = None,
    **settings: Any,
) -> EvalReport:
    """`run_evaluation` of `EvalConfig(runs=runs, **settings)`: data, out, models, device,
    batch_size, tune, overlays, workers, target_recalls, n_boot (see `EvalConfig`)."""
    return run_evaluation(EvalConfig(runs=Path(runs), **settings), progress)
