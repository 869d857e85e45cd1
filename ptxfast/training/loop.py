"""The fit: one run's state (`_Run`) moved from epoch to epoch, checkpoints (`last.pt` every
epoch, `best.pt` by the selection metric, ties to the better tie-breaker), `summary.csv`,
`recipe.toml`, `result.json`, exact `--resume`, DistributedDataParallel under torchrun (rank 0
alone writes files and prints), and `train_models` over one model, several or all eight."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ptxfast import MODEL_NAMES
from ptxfast.checkpoint import (
    checkpoint_header,
    link_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ptxfast.environment import resolve_device
from ptxfast.files import atomic_write, write_json, write_text
from ptxfast.models import kind_of
from ptxfast.recipes import (
    RESUME_FIXED,
    TrainConfig,
    TrainError,
    config_toml,
    load_recipe,
    recipe_path,
    with_overrides,
)
from ptxfast.training.build import build_for_training
from ptxfast.training.data import TrainData, load_data, make_loader, prepare
from ptxfast.training.render import epoch_line, progress_bar, test_line
from ptxfast.training.step import CascadeOnMasks, Step, evaluate, train_one_epoch

__all__ = ["fit", "model_names", "train_models"]


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    """`cfg.device` by the one device rule; a CUDA device without an index is this process's
    GPU under torchrun (its local rank)."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when not launched."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


@dataclass
class _Run:
    """The state of one training run as `fit` moves it from epoch to epoch."""

    cfg: TrainConfig
    model: nn.Module  # the bare model (what checkpoints hold)
    module: nn.Module  # what is trained: the model, its cached-mask view, maybe in DDP
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: Step
    data: TrainData
    device: torch.device
    rank: int = 0
    world: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    start: int = 0  # epochs already done (resume)
    best: float = -math.inf  # the selection metric of the best epoch so far
    best_tie: float = -math.inf  # its tie-breaker (ROC-AUC, or F1 when selecting by AUC)
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _setup(cfg: TrainConfig, data: TrainData | None, dist: tuple[int, int, int]) -> _Run:
    rank, world, local_rank = dist
    device = _device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    model, info = build_for_training(cfg)
    cuda = device.type == "cuda"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.amp) if cuda else None
    # NHWC on CPU too: oneDNN's convolutions train eb3un at 64² 1.5x faster than in NCHW.
    fmt = torch.channels_last if cfg.channels_last else torch.preserve_format
    model.to(device, memory_format=fmt)
    if data is None:
        cached = kind_of(cfg.arch) == "cascade" and cfg.cache_images and cfg.cache_masks
        # Rank 0 makes splits.csv when it is missing; the others read it once it is there.
        if world > 1 and rank != 0:
            torch.distributed.barrier()
        data = load_data(cfg, model.segmenter if cached else None, info.get("segmenter_sha256", ""))
        if world > 1 and rank == 0:
            torch.distributed.barrier()
    step = Step(
        kind_of(cfg.arch),
        device,
        amp_dtype,
        cfg.channels_last,
        data.segmenter_masks,
        loss=cfg.loss,
        hflip=cfg.hflip,
    )
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    module: nn.Module = CascadeOnMasks(model) if data.segmenter_masks else model
    if world > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if cuda else None
        )
    return _Run(cfg, model, module, optimizer, scaler, step, data, device, rank, world, info)


def _restore(run: _Run, path: Path) -> None:
    """Continue from `path` (last.pt): weights, optimizer, scaler, RNG, best-so-far, history."""
    state = load_checkpoint(path)
    saved = state["recipe"]
    changed = [k for k in RESUME_FIXED if k in saved and saved[k] != getattr(run.cfg, k)]
    if changed:
        what = ", ".join(f"{k} {saved[k]!r} → {getattr(run.cfg, k)!r}" for k in changed)
        raise TrainError(
            f"cannot resume {path} with a different recipe ({what}); keep the settings or train "
            "afresh without --resume"
        )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    run.start, run.best, run.best_epoch = state["epoch"], state["best_metric"], state["best_epoch"]
    run.best_tie = state["best_tie"]
    run.history = list(state["history"])


def _train_epoch(run: _Run, epoch: int, console) -> dict[str, Any]:
    """Train and validate one epoch; returns its summary row (and updates the best-so-far)."""
    cfg = run.cfg
    train_ds = run.data.train(epoch)
    prepare(train_ds, run.model, cfg, run.device)
    loader = make_loader(
        train_ds, cfg, run.device, train=True, epoch=epoch, world=(run.rank, run.world)
    )
    label = f"{cfg.arch} {epoch + 1}/{cfg.epochs}"
    bar, progress = progress_bar(console, label, len(loader.dataset), run.world)
    if bar is not None:
        bar.start()
    try:
        stats = train_one_epoch(run.module, loader, run.optimizer, run.step, run.scaler, progress)
    finally:
        if bar is not None:
            bar.stop()
    metrics = evaluate(run.model, make_loader(run.data.val, cfg, run.device, train=False), run.step)
    score = _metric(metrics, cfg.select)
    # Small validation sets tie often (e.g. F1 of "all positive" for several epochs); the tie
    # goes to the better ranking rather than to the earliest, least trained epoch.
    tie = _metric(metrics, "f1" if cfg.select == "auc" else "auc")
    improved = (score, tie) > (run.best, run.best_tie)
    if improved:
        run.best, run.best_tie, run.best_epoch = score, tie, epoch + 1
    row = {
        "epoch": epoch + 1,
        "train_loss": stats["loss"],
        "train_images": stats["images"] * run.world,
        "images_per_s": stats["images_per_s"] * run.world,
        "seconds": stats["seconds"],
        **{f"val_{k}": v for k, v in metrics.items()},
        "best": int(improved),
    }
    run.history.append(row)
    return row


def _metric(metrics: dict[str, float], name: str) -> float:
    value = metrics.get(name, math.nan)
    return -math.inf if math.isnan(value) else value  # an undefined metric never wins


def _save(run: _Run, epoch: int) -> None:
    """last.pt (and best.pt when this epoch is the best) plus summary.csv; rank 0 only."""
    cfg, row = run.cfg, run.history[-1]
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "epoch": epoch + 1,
        "metric": _metric({k[4:]: v for k, v in row.items() if k.startswith("val_")}, cfg.select),
        **checkpoint_header(cfg.arch, cfg.size),
        "recipe": {**dataclasses.asdict(cfg), **run.info},
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "rng": rng_state(),
        "best_metric": run.best,
        "best_tie": run.best_tie,
        "best_epoch": run.best_epoch,
        "history": run.history,
        # Negatives are a pure function of the epoch (NegativeRotation.records), so the epoch
        # fixes the rotation; the block index is kept for people reading the checkpoint.
        "rotation_block": epoch // cfg.rotate_every if cfg.rotate_every else 0,
    }
    last = save_checkpoint(state, cfg.run_dir / "last.pt")
    if row["best"]:
        link_checkpoint(last, cfg.run_dir / "best.pt")
    _write_summary(run.history, cfg.run_dir / "summary.csv")


def _write_summary(history: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for row in history:
                writer.writerow(
                    {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}
                )

    atomic_write(path, write)


def _test(run: _Run) -> dict[str, float] | None:
    """Test-set metrics of best.pt (the model the run selected), or None without a test set."""
    best = run.cfg.run_dir / "best.pt"
    if run.data.test is None or not best.is_file():
        return None
    run.model.load_state_dict(load_checkpoint(best)["model"])
    prepare(run.data.test, run.model, run.cfg, run.device)
    return evaluate(
        run.model, make_loader(run.data.test, run.cfg, run.device, train=False), run.step
    )


def fit(
    cfg: TrainConfig,
    data: TrainData | None = None,
    *,
    resume: bool = False,
    console=None,
) -> dict[str, Any]:
    """Train `cfg.arch` per `cfg`; returns the best epoch and its validation and test metrics.

    `data` defaults to `load_data(cfg)`; tests pass small in-memory datasets. With `resume`,
    training continues from `<run_dir>/last.pt` (starting afresh when there is none). Writes
    last.pt, best.pt, summary.csv, recipe.toml and result.json to `cfg.run_dir`. Under torchrun
    (RANK / WORLD_SIZE set) it joins or starts the process group (nccl on CUDA, gloo on CPU).
    """
    rank, world, local_rank = _distributed()
    own_group = world > 1 and not torch.distributed.is_initialized()
    if own_group:
        cuda = _device(cfg, local_rank).type == "cuda"
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    threads = torch.get_num_threads()
    if cfg.threads and _device(cfg, local_rank).type == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(cfg, data, resume, console if rank == 0 else None, (rank, world, local_rank))
    finally:
        torch.set_num_threads(threads)
        if own_group:
            torch.distributed.destroy_process_group()


def _fit(cfg, data, resume, console, dist) -> dict[str, Any]:
    say = console.print if console is not None else (lambda *a, **k: None)
    started = time.perf_counter()
    run = _setup(cfg, data, dist)
    last = cfg.run_dir / "last.pt"
    if resume and last.is_file():
        _restore(run, last)
        say(f"[bold]{cfg.arch}[/]: resuming after epoch {run.start} from {last}")
    elif resume:
        say(f"[bold]{cfg.arch}[/]: no {last} to resume; starting afresh")
    if run.info.get("segmenter_size") not in (None, cfg.size):
        say(f"[yellow]warning:[/] {cfg.arch}: segmenter trained at {run.info['segmenter_size']}²")
    if run.rank == 0:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(cfg.run_dir / "recipe.toml", config_toml(cfg, run.info))
    if run.data.notes:
        say(f"[bold]{cfg.arch}[/]: " + ", ".join(f"{k} {v}" for k, v in run.data.notes.items()))
    prepare(run.data.val, run.model, cfg, run.device)

    for epoch in range(run.start, cfg.epochs):
        row = _train_epoch(run, epoch, console)
        if run.rank == 0:
            _save(run, epoch)
        say(epoch_line(cfg, row))

    if run.world > 1:
        torch.distributed.barrier()  # best.pt is complete before anyone reads it
    result = {
        "arch": cfg.arch,
        "run_dir": str(cfg.run_dir),
        "epochs": cfg.epochs,
        "best_epoch": run.best_epoch,
        "select": cfg.select,
        "best_metric": run.best,
        "val": next((r for r in run.history if r["epoch"] == run.best_epoch), {}),
        "test": _test(run) if run.rank == 0 else None,
        "seconds": round(time.perf_counter() - started, 1),  # this process: build, data, epochs
        **run.info,
    }
    if run.rank == 0:
        write_json(cfg.run_dir / "result.json", result)
    if result["test"] is not None:
        say(test_line(cfg.arch, run.best_epoch, result["test"]))
    return result


def model_names(arch: str) -> tuple[str, ...]:
    """The models `arch` names (one, a comma list, or "all") in MODEL_NAMES order: classifiers,
    then segmenters, then the cascades that need them."""
    if arch == "all":
        return MODEL_NAMES
    asked = [a.strip() for a in arch.split(",") if a.strip()]
    for a in asked or [arch]:
        if a not in MODEL_NAMES:
            raise TrainError(
                f"unknown model {a!r}; choose one of: {', '.join(MODEL_NAMES)}, a comma list "
                "of them, or all"
            )
    return tuple(n for n in MODEL_NAMES if n in asked)


def train_models(
    arch: str,
    recipe: str | Path = "paper",
    *,
    resume: bool = False,
    console=None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Train one model, several (`arch="eb3un,eb3un+eb3"`) or all eight (`arch="all"`), in one
    process (the decoded images are cached once for all of them), segmenters before their
    cascades.

    `overrides` replace recipe settings (data, runs, epochs, size, batch_size, lr, device,
    workers, seed, weights); None values keep the recipe's.
    """
    names = model_names(arch)
    if len(names) > 1 and overrides.get("weights") not in (None, "imagenet", "none"):
        raise TrainError("--weights PATH fits one architecture; use it with a single --arch")
    recipe_path(recipe)  # a wrong recipe name fails before anything trains
    results = []
    for name in names:
        cfg = with_overrides(load_recipe(recipe, name), **overrides)
        results.append(fit(cfg, resume=resume, console=console))
    return results
