"""Evaluate trained models on the test split the way the paper reports them.

`evaluate_runs` finds `<runs>/<model>/best.pt` for each of the eight models (one not trained is
listed as missing), scores the test split of the dataset it was trained on at the size it was
trained at, and writes `metrics.json`, `metrics.csv` and the paper's figures (mask overlays,
confusion matrices, ROC curves, recall vs F1) to the output folder.

Labels follow the paper: classifiers and cascades call an image positive when its probability is
above 0.5; segmenters when more than `models.min_area(size)` pixels are above 0.3 (375 at 512²),
ranked for ROC-AUC by the k-th largest pixel probability (`models.segmenter_score`), which gives
the same labels at 0.3. Dice is that of the mask the pipeline reports: the pixels above 0.3 of an
image called positive, an empty mask otherwise (empty vs empty = 1); `dice` averages all test
images, `dice_pos` the images with a pneumothorax (the figure SIIM papers usually quote).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ptxfast import MODEL_NAMES, plots
from ptxfast import metrics as M
from ptxfast.checkpoint import model_from_checkpoint, sha256_file
from ptxfast.models import PIXEL_THRESHOLD, kind_of, min_area, score_k, segmenter_score

CLASSIFIER_THRESHOLD = 0.5  # image probability above which classifiers and cascades say positive
DEFAULT_OVERLAYS = 8
# Decoded splits are kept in memory (fp16 images, uint8 masks) up to this size, so the eight
# models decode each DICOM once; larger splits are streamed from disk for every model.
_CACHE_BYTES = 3 << 30

METRIC_KEYS = (
    "f1",
    "recall",
    "precision",
    "specificity",
    "accuracy",
    "auc",
    "tn",
    "fp",
    "fn",
    "tp",
    "n",
    "n_pos",
    "dice",
    "dice_pos",
)
CSV_COLUMNS = (
    "model",
    "kind",
    "cutoffs",
    "size",
    "threshold",
    "min_area",
    *METRIC_KEYS,
    "checkpoint",
)

__all__ = [
    "CLASSIFIER_THRESHOLD",
    "CSV_COLUMNS",
    "METRIC_KEYS",
    "EvalError",
    "EvalReport",
    "ModelResult",
    "evaluate_runs",
]


class EvalError(ValueError):
    """Evaluation cannot run as asked; the message says what to do."""


@dataclass
class ModelResult:
    """One model's test-split figures and where they came from."""

    name: str
    kind: str  # "classifier", "segmenter" or "cascade"
    checkpoint: Path
    sha256: str
    epoch: int | None  # the epoch best.pt was saved at
    size: int  # the input side it was trained (and is evaluated) at
    data: Path  # the dataset whose test split was scored
    cutoffs: dict[str, float]  # {"threshold"} or {"pixel_threshold", "min_area"}
    metrics: dict[str, float]  # METRIC_KEYS at `cutoffs` (dice NaN for classifiers)
    # Segmenters with tune=True: {"pixel_threshold", "min_area", "val_f1"} chosen on the
    # validation split and METRIC_KEYS on the test split at those cut-offs.
    tuned: dict[str, Any] | None
    image_ids: list[str]
    labels: np.ndarray  # 0/1 per test image
    scores: np.ndarray  # per test image: its probability (segmenters: the k-th largest pixel)
    # The logit behind each score: the same order, without float32 sigmoid saturation (many
    # confident images share p = 1.0), so ROC-AUC and the ROC curve rank by it.
    ranks: np.ndarray
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class EvalReport:
    """What `evaluate_runs` measured and wrote."""

    runs: Path
    out: Path
    device: str
    results: list[ModelResult]  # in the paper's order: classifiers, segmenters, cascades
    missing: list[str]  # asked-for models without <runs>/<name>/best.pt
    files: dict[str, Path]  # metrics_json, metrics_csv, confusion, roc, recall_f1, overlays_<m>
    seconds: float = 0.0


# ------------------------------------------------------------------------------------ data


class _Decoded(Dataset):
    """A split decoded once into memory; items as PTXDataset's (float32 image, mask, label)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.masks, self.labels = images, masks, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].float(), self.masks[i].float(), self.labels[i]


class _Data:
    """Splits and decoded datasets shared by every model of one evaluation."""

    def __init__(self, batch_size: int, workers: int) -> None:
        self.batch_size, self.workers = batch_size, workers
        self._splits: dict[tuple[str, int], dict] = {}
        self._sets: dict[tuple[str, int, str, int], Dataset] = {}

    def records(self, root: Path, seed: int, split: str) -> list:
        from ptxfast.data.datasets import ensure_splits

        key = (str(root), seed)
        if key not in self._splits:
            self._splits[key] = ensure_splits(root, seed=seed)
        return self._splits[key][split]

    def dataset(self, root: Path, seed: int, split: str, size: int) -> Dataset:
        from ptxfast.data.datasets import PTXDataset

        key = (str(root), seed, split, size)
        if key in self._sets:
            return self._sets[key]
        records = self.records(root, seed, split)
        if not records:
            raise EvalError(f"the {split} split of {root} is empty; remake it with `ptxfast split`")
        ds: Dataset = PTXDataset(records, size, with_mask=True)
        if len(records) * size * size * 3 <= _CACHE_BYTES:
            images, masks, labels = [], [], []
            for x, m, y in self.loader(ds):
                images.append(x.half())
                masks.append(m.to(torch.uint8))
                labels.append(y)
            ds = _Decoded(torch.cat(images), torch.cat(masks), torch.cat(labels))
        self._sets[key] = ds
        return ds

    def loader(self, ds: Dataset) -> DataLoader:
        workers = 0 if isinstance(ds, _Decoded) else self.workers
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=workers)


# ------------------------------------------------------------------------------- inference


@dataclass
class _Outputs:
    """Per-image outputs of one model over one split (numpy, in split order)."""

    labels: np.ndarray
    scores: np.ndarray  # image probability, or a segmenter's k-th largest pixel probability
    ranks: np.ndarray  # the logits behind `scores`
    true_area: np.ndarray | None = None
    # Per pixel threshold: (|P∩T|, |P|) of the mask above it, N each.
    counts: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # Segmenters when tuning: the N×K largest pixel probabilities and their logits, descending.
    top: np.ndarray | None = None
    top_ranks: np.ndarray | None = None


def _sigmoid_pair(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, logits) as numpy. Sigmoid is monotonic, so the sigmoid of the k-th largest
    logit is exactly `models.segmenter_score` of the probability map; it runs on the device that
    computed the masks, so labels agree with the pixel counts to the last bit."""
    return torch.sigmoid(logits).cpu().numpy(), logits.cpu().numpy()


@torch.inference_mode()
def _infer(
    model: torch.nn.Module,
    kind: str,
    loader: DataLoader,
    device: torch.device,
    thresholds: Sequence[float] = (),
    top_k: int = 0,
) -> _Outputs:
    """Run `model` over `loader`; masks are reduced on the device to counts (and top pixels)."""
    size = None
    labels, ranks, true_area, tops = [], [], [], []
    counts: dict[float, tuple[list, list]] = {t: ([], []) for t in thresholds}
    for x, mask, y in loader:
        x = x.to(device, non_blocking=True)
        size = x.shape[-1]
        labels.append(y.numpy())
        if kind == "classifier":
            ranks.append(_sigmoid_pair(model(x).float()[:, 0]))
            continue
        if kind == "segmenter":
            logits = model(x).float()
            ranks.append(_sigmoid_pair(segmenter_score(logits, score_k(size))))
            if top_k:
                k = min(top_k, logits[0].numel())
                tops.append(_sigmoid_pair(torch.topk(logits.flatten(1), k, dim=1).values))
            prob = torch.sigmoid(logits)
        else:
            logits, prob = model.forward_with_mask(x)
            ranks.append(_sigmoid_pair(logits.float()[:, 0]))
            prob = prob.float()
        truth = mask.to(device).flatten(1) > 0.5
        true_area.append(truth.sum(1).cpu().numpy())
        flat = prob.flatten(1)
        for t in thresholds:
            pred = flat > t
            counts[t][0].append((pred & truth).sum(1).cpu().numpy())
            counts[t][1].append(pred.sum(1).cpu().numpy())
    out = _Outputs(
        np.concatenate(labels).astype(int),
        np.concatenate([p for p, _ in ranks]),
        np.concatenate([r for _, r in ranks]),
    )
    if kind != "classifier":
        out.true_area = np.concatenate(true_area)
        out.counts = {t: (np.concatenate(i), np.concatenate(p)) for t, (i, p) in counts.items()}
    if tops:
        out.top = np.concatenate([p for p, _ in tops])
        out.top_ranks = np.concatenate([r for _, r in tops])
    return out


def _reported_dice(out: _Outputs, threshold: float, called: np.ndarray) -> M.DiceScores:
    """Dice of the reported masks: pixels above `threshold` where the image is called positive,
    nothing where it is not."""
    inter, area = out.counts[threshold]
    return M.dice_from_counts(np.where(called, inter, 0), np.where(called, area, 0), out.true_area)


def _figures(
    labels: np.ndarray,
    score: np.ndarray,
    threshold: float,
    dice: M.DiceScores | None,
    ranks: np.ndarray,
) -> dict[str, float]:
    result = M.binary_metrics(labels, score, threshold, ranking=ranks)
    result["dice"] = dice.mean if dice is not None else math.nan
    result["dice_pos"] = dice.mean_positive if dice is not None else math.nan
    return {k: result[k] for k in METRIC_KEYS}


# ------------------------------------------------------------------------------- overlays


def _pick(outcomes: np.ndarray, order: dict[str, np.ndarray], n: int) -> list[int]:
    """Up to n images, taking TP, FN, FP, TN in turn (each list in its own order of interest)."""
    queues = {k: [int(i) for i in order[k] if outcomes[i] == k] for k in ("TP", "FN", "FP", "TN")}
    chosen: list[int] = []
    while len(chosen) < n and any(queues.values()):
        for k in ("TP", "FN", "FP", "TN"):
            if queues[k] and len(chosen) < n:
                chosen.append(queues[k].pop(0))
    return chosen


@torch.inference_mode()
def _overlay(
    model: torch.nn.Module,
    result: ModelResult,
    ds: Dataset,
    device: torch.device,
    n: int,
    batch_size: int,
    dice: np.ndarray,
    true_area: np.ndarray,
    captions: Sequence[str],
    path: Path,
) -> Path:
    """Overlay figure of up to n test images (the model is rerun on just those)."""
    y, s, rank = result.labels.astype(bool), result.scores, result.ranks
    pixel = float(result.cutoffs.get("pixel_threshold", PIXEL_THRESHOLD))
    called = s > (result.cutoffs.get("threshold", pixel))
    outcomes = np.where(y, np.where(called, "TP", "FN"), np.where(called, "FP", "TN"))
    order = {
        "TP": np.argsort(-true_area, kind="stable"),  # large pneumothoraces read best
        # By logit: probabilities of confident models tie at 1.0.
        "FN": np.argsort(rank, kind="stable"),  # the most confident misses
        "FP": np.argsort(-rank, kind="stable"),  # the most confident false alarms
        "TN": np.argsort(rank, kind="stable"),
    }
    idx = _pick(outcomes, order, n)
    preds = []
    for start in range(0, len(idx), batch_size):
        x = torch.stack([ds[i][0] for i in idx[start : start + batch_size]]).to(device)
        if result.kind == "segmenter":
            prob = torch.sigmoid(model(x).float())
        else:
            prob = model.forward_with_mask(x)[1].float()
        preds.append((prob[:, 0] > pixel).cpu().numpy())
    pred = np.concatenate(preds)
    tiles = [
        plots.OverlayTile(
            image=ds[i][0][0].numpy(),
            true_mask=ds[i][1][0].numpy() > 0.5,
            pred_mask=pred[j],
            outcome=str(outcomes[i]),
            score=float(s[i]),
            caption=_short(captions[i]),
            dice=float(dice[i]),
        )
        for j, i in enumerate(idx)
    ]
    what = (
        f"more than {result.cutoffs['min_area']} px with p > {pixel:g}"
        if result.kind == "segmenter"
        else f"p > {result.cutoffs['threshold']:g}, mask p > {pixel:g}"
    )
    return plots.overlay_grid(
        tiles,
        path,
        f"{result.name} ({result.kind}) on the test split: positive when {what}",
        score_name="score" if result.kind == "segmenter" else "p",
    )


def _short(image_id: str, keep: int = 18) -> str:
    return image_id if len(image_id) <= keep else "…" + image_id[-keep:]


# ------------------------------------------------------------------------------- one model


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EvalError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"device {device} asked for but CUDA is not available; use cpu or auto")
    return dev


def _evaluate_model(
    name: str,
    path: Path,
    data: Path | None,
    shared: _Data,
    device: torch.device,
    tune: bool,
    overlays: int,
    out: Path,
) -> ModelResult:
    kind = kind_of(name)
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
    seed = int(recipe.get("seed", 0))
    test = shared.dataset(root, seed, "test", size)
    records = shared.records(root, seed, "test")
    top_k = max(M.area_grid(size)) + 1 if tune and kind == "segmenter" else 0
    thresholds = M.THRESHOLD_GRID if top_k else (PIXEL_THRESHOLD,)
    res = _infer(model, kind, shared.loader(test), device, thresholds, top_k)

    if kind == "classifier":
        cutoffs: dict[str, float] = {"threshold": CLASSIFIER_THRESHOLD}
        dice = None
        called = res.scores > CLASSIFIER_THRESHOLD
    elif kind == "segmenter":
        cutoffs = {"pixel_threshold": PIXEL_THRESHOLD, "min_area": min_area(size)}
        called = res.scores > PIXEL_THRESHOLD
        dice = _reported_dice(res, PIXEL_THRESHOLD, called)
    else:
        cutoffs = {"threshold": CLASSIFIER_THRESHOLD, "pixel_threshold": PIXEL_THRESHOLD}
        called = res.scores > CLASSIFIER_THRESHOLD
        dice = _reported_dice(res, PIXEL_THRESHOLD, called)
    threshold = cutoffs.get("threshold", PIXEL_THRESHOLD)
    result = ModelResult(
        name=name,
        kind=kind,
        checkpoint=path,
        sha256=sha256_file(path),
        epoch=state.get("epoch"),
        size=size,
        data=root,
        cutoffs=cutoffs,
        metrics=_figures(res.labels, res.scores, threshold, dice, res.ranks),
        tuned=None,
        image_ids=[r.image_id for r in records],
        labels=res.labels,
        scores=res.scores,
        ranks=res.ranks,
    )

    if top_k:
        val = shared.dataset(root, seed, "val", size)
        val_out = _infer(model, kind, shared.loader(val), device, (), top_k)
        cut = M.tune_cutoffs(val_out.top, val_out.labels, size)
        # The (A+1)-th largest pixel is the score of the tuned rule, as the k-th is the paper's.
        tuned_score = res.top[:, cut.min_area]
        tuned_rank = res.top_ranks[:, cut.min_area]
        tuned_called = tuned_score > cut.pixel_threshold
        tuned_dice = _reported_dice(res, cut.pixel_threshold, tuned_called)
        result.tuned = {
            **cut.as_dict(),
            "n_val": int(len(val_out.labels)),
            "metrics": _figures(
                res.labels, tuned_score, cut.pixel_threshold, tuned_dice, tuned_rank
            ),
        }

    if overlays and kind != "classifier":
        path_png = out / f"overlays_{name}.png"
        result.files["overlays"] = _overlay(
            model,
            result,
            test,
            device,
            overlays,
            shared.batch_size,
            dice.per_image,
            res.true_area,
            [r.path.name for r in records],  # CANDID names the patient (P17_2.dcm)
            path_png,
        )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ------------------------------------------------------------------------------- writing


def _clean(value: Any) -> Any:
    """JSON-safe: NaN becomes null, paths strings, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(report: EvalReport, path: Path) -> Path:
    from ptxfast import __version__

    doc = {
        "ptxfast": __version__,
        "runs": report.runs,
        "split": "test",
        "device": report.device,
        "models": {
            r.name: {
                "kind": r.kind,
                "checkpoint": r.checkpoint,
                "sha256": r.sha256,
                "epoch": r.epoch,
                "size": r.size,
                "data": r.data,
                "cutoffs": r.cutoffs,
                "metrics": r.metrics,
                "tuned": r.tuned,
                "files": r.files,
            }
            for r in report.results
        },
        "missing": report.missing,
        "files": {**report.files, "metrics_json": path},
    }
    path.write_text(json.dumps(_clean(doc), indent=2) + "\n")
    return path


def _csv_rows(result: ModelResult) -> list[dict[str, Any]]:
    base = {
        "model": result.name,
        "kind": result.kind,
        "size": result.size,
        "checkpoint": result.checkpoint,
    }
    rows = [
        {
            **base,
            "cutoffs": "paper",
            "threshold": result.cutoffs.get("threshold", result.cutoffs.get("pixel_threshold")),
            "min_area": result.cutoffs.get("min_area", ""),
            **result.metrics,
        }
    ]
    if result.tuned:
        t = result.tuned
        rows.append(
            {
                **base,
                "cutoffs": "tuned",
                "threshold": t["pixel_threshold"],
                "min_area": t["min_area"],
                **t["metrics"],
            }
        )
    return rows


def _write_csv(results: Sequence[ModelResult], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in results:
            for row in _csv_rows(r):
                writer.writerow(
                    {
                        k: ("" if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in _clean(row).items()
                        if k in CSV_COLUMNS
                    }
                )
    return path


def _write_index(report: EvalReport, path: Path) -> Path:
    """index.html: the metrics of every model and the figures, linked and shown, so the folder
    opens in a browser as one page (files beside it, nothing from the network)."""
    from ptxfast import pages
    from ptxfast.pages import esc

    def cell(v: Any) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    head = ("model", "kind", "size", "F1", "recall", "precision", "ROC-AUC", "Dice (positives)")
    rows = []
    for r in report.results:
        m = r.metrics
        values = [m["f1"], m["recall"], m["precision"], m["auc"], m["dice_pos"]]
        rows.append(
            f'<tr><td>{esc(r.name)}</td><td>{esc(r.kind)}</td><td class="num">{r.size}²</td>'
            + "".join(f'<td class="num">{cell(v)}</td>' for v in values)
            + "</tr>"
        )
        if r.tuned:
            t = r.tuned["metrics"]
            values = [t["f1"], t["recall"], t["precision"], t["auc"], t["dice_pos"]]
            rows.append(
                f'<tr><td>{esc(r.name)} <span class="muted">(tuned cut-offs)</span></td>'
                f'<td>{esc(r.kind)}</td><td class="num">{r.size}²</td>'
                + "".join(f'<td class="num">{cell(v)}</td>' for v in values)
                + "</tr>"
            )
    table = (
        "<table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    data = sorted({str(r.data) for r in report.results})
    figures = []
    for key, p in report.files.items():
        if p.suffix != ".png":
            continue
        name = esc(p.name)
        caption = esc(key.replace("_", " "))
        figures.append(
            f'<figure><a href="{name}"><img src="{name}" alt="{caption}"></a>'
            f'<figcaption>{caption} · <a href="{name}">{name}</a></figcaption></figure>'
        )
    links = " · ".join(
        f'<a href="{esc(p.name)}">{esc(p.name)}</a>'
        for p in report.files.values()
        if p.suffix in (".json", ".csv")
    )
    missing = (
        f'<p class="muted">not trained: {esc(", ".join(report.missing))}</p>'
        if report.missing
        else ""
    )
    body = (
        f"<h1>ptxfast evaluate: {esc(report.runs)}</h1>"
        f'<p class="muted">test split of {esc(", ".join(data))} on {esc(report.device)}; '
        f"files: {links}</p>{missing}{table}<h2>Figures</h2>{''.join(figures)}"
    )
    style = (
        "figure { margin: 16px 0; } figure img { max-width: 100%; border: 1px solid var(--line); }"
    )
    doc = pages.page(f"ptxfast evaluate: {report.runs}", body, style=style, local_images=True)
    return pages.write_page(path, doc)


def _plot_all(results: Sequence[ModelResult], out: Path) -> dict[str, Path]:
    files = {
        "confusion": plots.confusion_matrices(
            [(r.name, r.metrics) for r in results], out / "confusion.png"
        ),
        "roc": plots.roc_curves(
            [(r.name, r.kind, r.labels, r.ranks) for r in results], out / "roc.png"
        ),
    }
    points = [(r.name, r.kind, r.metrics["recall"], r.metrics["f1"]) for r in results]
    points += [
        (f"{r.name} (tuned)", r.kind, r.tuned["metrics"]["recall"], r.tuned["metrics"]["f1"])
        for r in results
        if r.tuned
    ]
    files["recall_f1"] = plots.recall_f1(points, out / "recall_f1.png")
    return files


# ------------------------------------------------------------------------------- entry


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


def evaluate_runs(
    runs: str | Path = "runs",
    data: str | Path | None = None,
    out: str | Path | None = None,
    models: str | Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int = 8,
    tune: bool = False,
    overlays: int = DEFAULT_OVERLAYS,
    workers: int = 0,
    progress: Callable[[str], None] | None = None,
) -> EvalReport:
    """Evaluate every trained model under `runs` on its test split and write the report.

    runs: folder of `<name>/best.pt`; data: the dataset (default: the one each checkpoint's
    recipe names); out: where metrics.json, metrics.csv, the PNGs and index.html (a page
    showing them all) go (default `<runs>/eval`);
    models: names (list or comma-separated; default all eight, missing ones are listed, not an
    error); tune: also choose the segmenters' (pixel threshold, min area) on the validation split
    by F1 and report the test figures at them; overlays: images per overlay figure (0: none);
    progress: called with one line per model.
    """
    start = time.perf_counter()
    runs = Path(runs)
    if not runs.is_dir():
        raise EvalError(
            f"runs folder {runs} not found; train first (`ptxfast train`) or pass --runs"
        )
    if batch_size < 1:
        raise EvalError(f"batch size must be at least 1, got {batch_size}")
    names = _names(models)
    present = [n for n in names if (runs / n / "best.pt").is_file()]
    missing = [n for n in names if n not in present]
    if not present:
        raise EvalError(
            f"no trained model under {runs} (looked for {runs}/<model>/best.pt for "
            f"{', '.join(names)}); run `ptxfast train` first or pass --runs"
        )
    dev = _device(device)
    out = Path(out) if out is not None else runs / "eval"
    out.mkdir(parents=True, exist_ok=True)
    shared = _Data(batch_size, workers)
    say = progress or (lambda _: None)
    results = []
    for name in present:
        t0 = time.perf_counter()
        r = _evaluate_model(name, runs / name / "best.pt", data, shared, dev, tune, overlays, out)
        say(
            f"{name}: {r.metrics['n']} test images at {r.size}² on {dev}, F1 "
            f"{r.metrics['f1']:.3f} ({time.perf_counter() - t0:.1f} s)"
        )
        results.append(r)
    files: dict[str, Path] = _plot_all(results, out)
    files.update({f"overlays_{r.name}": r.files["overlays"] for r in results if r.files})
    report = EvalReport(runs, out, str(dev), results, missing, files)
    files["metrics_csv"] = _write_csv(results, out / "metrics.csv")
    files["metrics_json"] = _write_json(report, out / "metrics.json")
    files["index"] = _write_index(report, out / "index.html")
    report.seconds = time.perf_counter() - start
    return report
