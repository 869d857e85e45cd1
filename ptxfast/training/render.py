"""What training shows: the progress bar an epoch feeds, the per-epoch and test lines, and the
table of results `ptxfast train` prints."""

from __future__ import annotations

import math
from typing import Any

from ptxfast.recipes import TrainConfig

__all__ = ["epoch_line", "progress_bar", "results_table", "test_line"]


def progress_bar(console, description: str, total: int, world: int):
    """A rich progress bar and the callback train_one_epoch feeds (None, None when quiet)."""
    if console is None or not console.is_terminal:  # logs get the per-epoch lines only
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(description, total=total, loss=math.nan, ips=0.0)

    def update(images: int, loss: float, ips: float) -> None:
        bar.update(task, completed=images * world, loss=loss, ips=ips * world)

    return bar, update


def epoch_line(cfg: TrainConfig, row: dict[str, Any]) -> str:
    dice = f"  dice {row['val_dice']:.3f}" if "val_dice" in row else ""
    mark = "  [green]best[/]" if row["best"] else ""
    return (
        f"[bold]{cfg.arch}[/] epoch {row['epoch']}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
        f"val F1 {row['val_f1']:.3f}  recall {row['val_recall']:.3f}  AUC {row['val_auc']:.3f}"
        f"{dice}  {row['images_per_s']:.1f} img/s  {row['seconds']:.1f}s{mark}"
    )


def test_line(arch: str, best_epoch: int, t: dict[str, float]) -> str:
    """The test-set figures of the epoch a run selected."""
    return (
        f"[bold]{arch}[/] test (best epoch {best_epoch}): F1 {t['f1']:.3f}  "
        f"recall {t['recall']:.3f}  precision {t['precision']:.3f}  AUC {t['auc']:.3f}  "
        f"n {t['n']}"
    )


def results_table(results: list[dict[str, Any]], recipe: str):
    """The rich table of `train_models` results: best epoch, validation and test figures."""
    from rich.table import Table

    table = Table(title=f"training ({recipe})")
    for name in ("model", "best epoch", "val F1", "test F1", "test recall", "test AUC", "run"):
        table.add_column(name, justify="left" if name in ("model", "run") else "right")
    for r in results:
        t = r["test"] or {}
        table.add_row(
            r["arch"],
            f"{r['best_epoch']}/{r['epochs']}",
            f"{r['val'].get('val_f1', math.nan):.3f}",
            f"{t.get('f1', math.nan):.3f}",
            f"{t.get('recall', math.nan):.3f}",
            f"{t.get('auc', math.nan):.3f}",
            r["run_dir"],
        )
    return table
