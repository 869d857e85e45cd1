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

Besides the paper's cut-offs, each model gets operating points for target recalls (default 0.90
and 0.95): the highest threshold whose recall on the validation split reaches the target
(`metrics.threshold_for_recall`; segmenters on their k-th-pixel score, whose threshold is then
also the mask's pixel threshold), applied unchanged to the test split. Every row reports
sensitivity, specificity, PPV, NPV, F1 and ROC-AUC with 95% stratified-bootstrap CIs (Wilson
intervals beside them). A temperature fitted on the validation logits calibrates each model
(ECE before and after, `reliability.png`). The thresholds and the temperature are written to
`<runs>/<model>/evaluation.json` beside best.pt (`checkpoint.write_evaluation`), where `ptxfast
export --operating-point` reads them; the checkpoint itself is not touched.
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
from ptxfast.checkpoint import model_from_checkpoint, sha256_file, write_evaluation
from ptxfast.models import PIXEL_THRESHOLD, kind_of, min_area, score_k, segmenter_score

CLASSIFIER_THRESHOLD = 0.5  # image probability above which classifiers and cascades say positive
DEFAULT_OVERLAYS = 8
DEFAULT_TARGET_RECALLS = (0.90, 0.95)
N_BOOT = 2000  # bootstrap resamples per confidence interval
# Decoded splits are kept in memory (fp16 images, uint8 masks) up to this size, so the eight
# models decode each DICOM once; larger splits are streamed from disk for every model.
_CACHE_BYTES = 3 << 30

METRIC_KEYS = (
    "f1",
    "recall",
    "precision",
    "specificity",
    "npv",
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
# 95% CI columns of the CSV: <metric>_lo, <metric>_hi (bootstrap) for each of M.CI_METRICS.
CI_COLUMNS = tuple(f"{k}_{end}" for k in M.CI_METRICS for end in ("lo", "hi"))
CSV_COLUMNS = (
    "model",
    "kind",
    "cutoffs",
    "size",
    "threshold",
    "min_area",
    "target_recall",
    "val_recall",
    "val_specificity",
    *METRIC_KEYS,
    *CI_COLUMNS,
    "temperature",
    "checkpoint",
)

__all__ = [
    "CI_COLUMNS",
    "CLASSIFIER_THRESHOLD",
    "CSV_COLUMNS",
    "DEFAULT_TARGET_RECALLS",
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
    ci: dict[str, dict[str, float]]  # M.bootstrap_ci of `metrics`: {metric: {value, lo, hi, …}}
    # Segmenters with tune=True: {"pixel_threshold", "min_area", "val_f1"} chosen on the
    # validation split and METRIC_KEYS ("metrics") and CIs ("ci") on the test split at them.
    tuned: dict[str, Any] | None
    image_ids: list[str]
    labels: np.ndarray  # 0/1 per test image
    scores: np.ndarray  # per test image: its probability (segmenters: the k-th largest pixel)
    # The logit behind each score: the same order, without float32 sigmoid saturation (many
    # confident images share p = 1.0), so ROC-AUC and the ROC curve rank by it.
    ranks: np.ndarray
    # Per target recall: {"target_recall", "threshold", "chosen_on": "val", "reached", "note",
    # "val": CIs on validation, "metrics" and "ci" on test} (see `_operating_points`).
    operating_points: list[dict[str, Any]] = field(default_factory=list)
    # M.Calibration.as_dict() (temperature fitted on validation logits), or None when the
    # validation split holds one class; then `notes` says why.
    calibration: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class EvalReport:
    """What `evaluate_runs` measured and wrote."""

    runs: Path
    out: Path
    device: str
    results: list[ModelResult]  # in the paper's order: classifiers, segmenters, cascades
    missing: list[str]  # asked-for models without <runs>/<name>/best.pt
    # metrics_json, metrics_csv, confusion, roc, recall_f1, reliability, overlays_<m>,
    # evaluation_<m> (the evaluation.json beside each best.pt)
    files: dict[str, Path]
    seconds: float = 0.0
    n_boot: int = N_BOOT


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
    n_boot: int,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(METRIC_KEYS at `threshold`, their 95% CIs by `M.bootstrap_ci`)."""
    result = M.binary_metrics(labels, score, threshold, ranking=ranks)
    result["dice"] = dice.mean if dice is not None else math.nan
    result["dice_pos"] = dice.mean_positive if dice is not None else math.nan
    ci = M.bootstrap_ci(labels, score, threshold, ranking=ranks, n_boot=n_boot)
    return {k: result[k] for k in METRIC_KEYS}, ci


def _choose_thresholds(
    name: str, root: Path, val: _Outputs, targets: Sequence[float]
) -> list[M.OperatingPoint]:
    """The operating point of each target recall on the validation outputs."""
    if targets and not val.labels.any():
        raise EvalError(
            f"{name}: the validation split of {root} holds no pneumothorax ({len(val.labels)} "
            "images), so no threshold can be chosen for a target recall; remake the splits "
            f"with `ptxfast split --data {root} --force` or pass --target-recall none"
        )
    return [M.threshold_for_recall(val.labels, val.scores, r) for r in targets]


def _operating_points(
    kind: str,
    chosen: Sequence[M.OperatingPoint],
    val: _Outputs,
    test: _Outputs,
    n_boot: int,
) -> list[dict[str, Any]]:
    """Each validation-chosen threshold applied to the test split: figures and CIs on both."""
    points = []
    for op in chosen:
        t = op.threshold
        called = test.scores > t
        # Segmenters: the threshold is the pixel threshold of the k-th-pixel rule, so the mask
        # reported is the pixels above it; cascades keep the paper's 0.3 for their masks.
        pixel = t if kind == "segmenter" else PIXEL_THRESHOLD
        dice = _reported_dice(test, pixel, called) if kind != "classifier" else None
        metrics, ci = _figures(test.labels, test.scores, t, dice, test.ranks, n_boot)
        val_ci = M.bootstrap_ci(val.labels, val.scores, t, ranking=val.ranks, n_boot=n_boot)
        points.append(
            {
                "target_recall": op.target_recall,
                "threshold": t,
                "chosen_on": "val",
                "reached": op.reached,
                "note": op.note,
                "val": {"n": op.n, "n_pos": op.n_pos, **val_ci},
                "metrics": metrics,
                "ci": ci,
            }
        )
    return points


def _calibration(val: _Outputs, test: _Outputs) -> tuple[dict[str, float] | None, str]:
    """Temperature scaling on the validation logits (segmenters: the k-th pixel's logit)."""
    if not (0 < val.labels.sum() < len(val.labels)):
        return None, "not calibrated: the validation split holds one class only"
    cal = M.calibrate(val.ranks, val.labels, test.ranks, test.labels)
    return cal.as_dict(), ""


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
    targets: Sequence[float] = DEFAULT_TARGET_RECALLS,
    n_boot: int = N_BOOT,
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
    top_k = max(M.area_grid(size)) + 1 if tune and kind == "segmenter" else 0
    # Validation first: it chooses the operating thresholds, whose masks the test pass counts.
    val_out = _infer(
        model, kind, shared.loader(shared.dataset(root, seed, "val", size)), device, (), top_k
    )
    chosen = _choose_thresholds(name, root, val_out, targets)
    test = shared.dataset(root, seed, "test", size)
    records = shared.records(root, seed, "test")
    thresholds = set(M.THRESHOLD_GRID if top_k else (PIXEL_THRESHOLD,))
    if kind == "segmenter":
        thresholds |= {op.threshold for op in chosen}
    res = _infer(model, kind, shared.loader(test), device, sorted(thresholds), top_k)

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
    metrics, ci = _figures(res.labels, res.scores, threshold, dice, res.ranks, n_boot)
    calibration, note = _calibration(val_out, res)
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
        tuned=None,
        image_ids=[r.image_id for r in records],
        labels=res.labels,
        scores=res.scores,
        ranks=res.ranks,
        operating_points=_operating_points(kind, chosen, val_out, res, n_boot),
        calibration=calibration,
        notes=[note] if note else [],
    )
    result.notes += [op.note for op in chosen if op.note]

    if top_k:
        cut = M.tune_cutoffs(val_out.top, val_out.labels, size)
        # The (A+1)-th largest pixel is the score of the tuned rule, as the k-th is the paper's.
        tuned_score = res.top[:, cut.min_area]
        tuned_rank = res.top_ranks[:, cut.min_area]
        tuned_called = tuned_score > cut.pixel_threshold
        tuned_dice = _reported_dice(res, cut.pixel_threshold, tuned_called)
        tuned_metrics, tuned_ci = _figures(
            res.labels, tuned_score, cut.pixel_threshold, tuned_dice, tuned_rank, n_boot
        )
        result.tuned = {
            **cut.as_dict(),
            "n_val": int(len(val_out.labels)),
            "metrics": tuned_metrics,
            "ci": tuned_ci,
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
                "ci": r.ci,
                "tuned": r.tuned,
                "operating_points": r.operating_points,
                "calibration": r.calibration,
                "notes": r.notes,
                "files": r.files,
            }
            for r in report.results
        },
        "missing": report.missing,
        "bootstrap": {"resamples": report.n_boot, "seed": 0, "level": 0.95, "stratified": True},
        "files": {**report.files, "metrics_json": path},
    }
    path.write_text(json.dumps(_clean(doc), indent=2) + "\n")
    return path


def _ci_columns(ci: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{k}_{end}": ci[k][end] for k in M.CI_METRICS for end in ("lo", "hi")}


def operating_point_name(target_recall: float) -> str:
    """How an operating point is named in tables and files: "recall>=0.90"."""
    return f"recall>={target_recall:.2f}"


def _csv_rows(result: ModelResult) -> list[dict[str, Any]]:
    base = {
        "model": result.name,
        "kind": result.kind,
        "size": result.size,
        "checkpoint": result.checkpoint,
        "temperature": (result.calibration or {}).get("temperature", ""),
    }
    min_area_paper = result.cutoffs.get("min_area", "")
    rows = [
        {
            **base,
            "cutoffs": "paper",
            "threshold": result.cutoffs.get("threshold", result.cutoffs.get("pixel_threshold")),
            "min_area": min_area_paper,
            **result.metrics,
            **_ci_columns(result.ci),
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
                **_ci_columns(t["ci"]),
            }
        )
    for op in result.operating_points:
        rows.append(
            {
                **base,
                "cutoffs": operating_point_name(op["target_recall"]),
                "threshold": op["threshold"],
                "min_area": min_area_paper,
                "target_recall": op["target_recall"],
                "val_recall": op["val"]["recall"]["value"],
                "val_specificity": op["val"]["specificity"]["value"],
                **op["metrics"],
                **_ci_columns(op["ci"]),
            }
        )
    return rows


def _evaluation_results(result: ModelResult, n_boot: int) -> dict[str, Any]:
    """What evaluation learnt about one checkpoint on validation data, for evaluation.json:
    the operating points (validation figures only: the test split is for reporting) and the
    temperature. `ptxfast export --operating-point` reads it."""
    from ptxfast import __version__

    def val_only(op: dict[str, Any]) -> dict[str, Any]:
        keep = ("target_recall", "threshold", "chosen_on", "reached", "note")
        return {
            **{k: op[k] for k in keep},
            "score": "k-th largest pixel probability" if result.kind == "segmenter" else "p",
            "val": op["val"],
        }

    return _clean(
        {
            "ptxfast": __version__,
            "model": result.name,
            "kind": result.kind,
            "size": result.size,
            "epoch": result.epoch,
            "data": result.data,
            "bootstrap": {"resamples": n_boot, "seed": 0, "level": 0.95, "stratified": True},
            "operating_points": [val_only(op) for op in result.operating_points],
            "calibration": result.calibration,
            "notes": result.notes,
        }
    )


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
        # evaluation.json files live beside their checkpoints, not in this folder
        if p.suffix in (".json", ".csv") and p.parent == report.out
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
    marks = [
        [
            plots.RocMark(
                1 - op["metrics"]["specificity"],
                op["metrics"]["recall"],
                f"recall ≥ {op['target_recall']:g} on val",
            )
            for op in r.operating_points
        ]
        for r in results
    ]
    files = {
        "confusion": plots.confusion_matrices(
            [(r.name, r.metrics) for r in results], out / "confusion.png"
        ),
        "roc": plots.roc_curves(
            [(r.name, r.kind, r.labels, r.ranks) for r in results], out / "roc.png", marks
        ),
    }
    points = [(r.name, r.kind, r.metrics["recall"], r.metrics["f1"]) for r in results]
    points += [
        (f"{r.name} (tuned)", r.kind, r.tuned["metrics"]["recall"], r.tuned["metrics"]["f1"])
        for r in results
        if r.tuned
    ]
    # The first target's operating points (more would crowd the figure; all are in the files).
    points += [
        (
            f"{r.name} ({plots.OPERATING_POINT} {r.operating_points[0]['target_recall']:g})",
            r.kind,
            r.operating_points[0]["metrics"]["recall"],
            r.operating_points[0]["metrics"]["f1"],
        )
        for r in results
        if r.operating_points
    ]
    files["recall_f1"] = plots.recall_f1(points, out / "recall_f1.png")
    calibrated = [r for r in results if r.calibration]
    if calibrated:
        files["reliability"] = plots.reliability_diagrams(
            [
                plots.ReliabilityPanel(
                    r.name,
                    M.reliability_bins(r.labels, M.calibrated(r.ranks, 1.0)),
                    M.reliability_bins(r.labels, M.calibrated(r.ranks, t)),
                    r.calibration["ece_test_before"],
                    r.calibration["ece_test_after"],
                    t,
                )
                for r in calibrated
                for t in [r.calibration["temperature"]]
            ],
            out / "reliability.png",
        )
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
    target_recalls: Sequence[float] = DEFAULT_TARGET_RECALLS,
    n_boot: int = N_BOOT,
) -> EvalReport:
    """Evaluate every trained model under `runs` on its test split and write the report.

    runs: folder of `<name>/best.pt`; data: the dataset (default: the one each checkpoint's
    recipe names); out: where metrics.json, metrics.csv, the PNGs and index.html (a page
    showing them all) go (default `<runs>/eval`);
    models: names (list or comma-separated; default all eight, missing ones are listed, not an
    error); tune: also choose the segmenters' (pixel threshold, min area) on the validation split
    by F1 and report the test figures at them; overlays: images per overlay figure (0: none);
    progress: called with one line per model; target_recalls: the operating points chosen on
    validation and reported on test (empty: none); n_boot: bootstrap resamples per CI.
    Each model's operating thresholds and temperature also go to <runs>/<name>/evaluation.json.
    """
    start = time.perf_counter()
    runs = Path(runs)
    if not runs.is_dir():
        raise EvalError(
            f"runs folder {runs} not found; train first (`ptxfast train`) or pass --runs"
        )
    if batch_size < 1:
        raise EvalError(f"batch size must be at least 1, got {batch_size}")
    bad = [r for r in target_recalls if not 0 < r <= 1]
    if bad:
        raise EvalError(f"target recall {bad[0]} must be in (0, 1], e.g. --target-recall 0.9")
    if n_boot < 100:
        raise EvalError(f"{n_boot} bootstrap resamples are too few for a 95% CI; use 100 or more")
    targets = sorted(set(float(r) for r in target_recalls))
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
        ckpt = runs / name / "best.pt"
        r = _evaluate_model(
            name, ckpt, data, shared, dev, tune, overlays, out, targets=targets, n_boot=n_boot
        )
        r.files["evaluation"] = write_evaluation(ckpt, _evaluation_results(r, n_boot))
        ops = ", ".join(
            f"t {op['threshold']:.3g} for recall ≥ {op['target_recall']:g}"
            for op in r.operating_points
        )
        say(
            f"{name}: {r.metrics['n']} test images at {r.size}² on {dev}, F1 "
            f"{r.metrics['f1']:.3f}{'; ' + ops if ops else ''} ({time.perf_counter() - t0:.1f} s)"
        )
        for note in r.notes:
            say(f"  {name}: {note}")
        results.append(r)
    files: dict[str, Path] = _plot_all(results, out)
    for r in results:
        files.update({f"{k}_{r.name}": v for k, v in r.files.items()})
    report = EvalReport(runs, out, str(dev), results, missing, files, n_boot=n_boot)
    files["metrics_csv"] = _write_csv(results, out / "metrics.csv")
    files["metrics_json"] = _write_json(report, out / "metrics.json")
    files["index"] = _write_index(report, out / "index.html")
    report.seconds = time.perf_counter() - start
    return report
