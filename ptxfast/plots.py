"""The paper's figures as PNG: mask overlays, confusion matrices, ROC curves, recall vs F1,
reliability diagrams of the calibration; and the figures of a scoring run (probability
histogram) and of a benchmark (throughput and latency against batch size).

Figures are built on `matplotlib.figure.Figure` objects and written by the Agg canvas, so nothing
here touches pyplot's global state or needs a display. Inputs are plain arrays and numbers; the
evaluation decides what to draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# One colour per model kind (recall-vs-F1 points); ROC curves add a line style per kind.
KIND_COLORS = {"classifier": "#1f77b4", "segmenter": "#e6550d", "cascade": "#2ca02c"}
KIND_LINES = {"classifier": "-", "segmenter": "--", "cascade": "-."}
OUTCOME_COLORS = {"TP": "#1a9641", "TN": "#404040", "FP": "#e66101", "FN": "#d7191c"}
TRUE_COLOR = "#00e5ff"  # true mask outline: cyan reads on gray and is apart from the prediction
PRED_COLOR = "#ff2d95"  # predicted mask: magenta fill, distinct for red-green colour blindness
# Recall-vs-F1 labels containing this word are operating points (drawn as diamonds).
OPERATING_POINT = "recall ≥"
_ROC_MARKERS = ("o", "s", "^", "D")  # one per operating point of a curve, in order
_DPI = 110

__all__ = [
    "KIND_COLORS",
    "OPERATING_POINT",
    "OverlayTile",
    "ReliabilityPanel",
    "RocMark",
    "confusion_matrices",
    "latency_by_batch",
    "overlay_grid",
    "probability_histogram",
    "recall_f1",
    "reliability_diagrams",
    "roc_curves",
    "throughput_by_batch",
]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _grid(n: int, columns: int, tile_height: float, title_height: float):
    """A figure of n 3-inch-wide panels, at most `columns` a row: (figure, the n axes); the
    grid's spare axes are hidden."""
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.0 * cols, tile_height * rows + title_height)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, facecolor="white")
    return path


@dataclass(frozen=True)
class OverlayTile:
    """One image of an overlay grid."""

    image: np.ndarray  # S×S in [0, 1]
    true_mask: np.ndarray  # S×S bool
    pred_mask: np.ndarray  # S×S bool: the pixels above the pixel threshold
    outcome: str  # "TP", "FP", "FN" or "TN"; FN and TN masks are not reported, so only outlined
    score: float  # the image probability (or a segmenter's k-th largest pixel)
    caption: str = ""  # e.g. a short image id
    dice: float | None = None


def _outline(ax, mask: np.ndarray, color: str, width: float) -> None:
    if mask.any() and not mask.all():  # contour of a constant field draws nothing and warns
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=width)


def overlay_grid(
    tiles: Sequence[OverlayTile],
    path: str | Path,
    title: str,
    score_name: str = "p",
    columns: int = 4,
) -> Path:
    """A grid of images with the true mask outlined and the predicted mask filled, each titled
    with its outcome (TP/FP/FN/TN), score and Dice. In images called negative (FN, TN) the
    pixels above the threshold are only outlined: the pipeline reports no mask there."""
    from matplotlib.patches import Patch

    if not tiles:
        raise ValueError("no images to draw")
    fig, axes = _grid(len(tiles), columns, 3.2, 0.6)
    for ax in axes:
        ax.set_axis_off()
    width = 1.4 if max(t.image.shape[0] for t in tiles) > 128 else 1.0
    for ax, t in zip(axes, tiles, strict=True):
        ax.imshow(t.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased")
        if t.outcome in ("TP", "FP"):
            fill = np.zeros((*t.pred_mask.shape, 4), dtype=np.float32)
            fill[t.pred_mask] = (1.0, 0.18, 0.58, 0.38)  # PRED_COLOR, translucent
            ax.imshow(fill, interpolation="nearest")
        _outline(ax, t.pred_mask, PRED_COLOR, 0.8 * width)
        _outline(ax, t.true_mask, TRUE_COLOR, width)
        text = f"{t.outcome}  {score_name} = {t.score:.2f}"
        if t.dice is not None and t.true_mask.any():
            text += f"  Dice {t.dice:.2f}"
        if t.caption:
            text += f"\n{t.caption}"
        ax.set_title(text, fontsize=9, color=OUTCOME_COLORS.get(t.outcome, "black"))
    handles = [
        Patch(facecolor="none", edgecolor=TRUE_COLOR, linewidth=2, label="true mask (outline)"),
        Patch(facecolor=PRED_COLOR, alpha=0.5, edgecolor=PRED_COLOR, label="predicted mask"),
        Patch(
            facecolor="none",
            edgecolor=PRED_COLOR,
            label="pixels above threshold, image called negative",
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def confusion_matrices(
    panels: Sequence[tuple[str, dict[str, int]]], path: str | Path, columns: int = 4
) -> Path:
    """One 2×2 confusion matrix per (title, {"tn", "fp", "fn", "tp"}), rows = truth.

    Cells show the count and the share of their true class, and are shaded by that share, so
    recall and specificity read off the diagonal whatever the class balance.
    """
    if not panels:
        raise ValueError("no confusion matrices to draw")
    fig, axes = _grid(len(panels), columns, 3.1, 0.4)
    for ax, (name, c) in zip(axes, panels, strict=True):
        counts = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]], dtype=float)
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                color = "white" if share[i, j] > 0.55 else "black"
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j])}\n{100 * share[i, j]:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=10,
                    color=color,
                )
        ax.set_xticks([0, 1], ["no PTX", "PTX"], fontsize=8)
        ax.set_yticks([0, 1], ["no PTX", "PTX"], fontsize=8, rotation=90, va="center")
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(name, fontsize=10)
    fig.suptitle("confusion matrices (test split)", fontsize=11)
    return _save(fig, path)


@dataclass(frozen=True)
class RocMark:
    """An operating point on a ROC curve: where its threshold lands on the plotted split."""

    fpr: float  # 1 − specificity
    tpr: float  # recall
    label: str  # e.g. "recall ≥ 0.9 on val"


def roc_curves(
    curves: Sequence[tuple[str, str, np.ndarray, np.ndarray]],
    path: str | Path,
    marks: Sequence[Sequence[RocMark]] | None = None,
) -> Path:
    """ROC curves of (name, kind, labels, scores) on one plot, AUC in the legend; a model whose
    labels hold one class has no curve and is listed as "AUC n/a". `marks` (one list per curve)
    are operating points, drawn on the curve in its colour, one marker shape per position."""
    from matplotlib.lines import Line2D
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure(6.4, 5.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle=":", label="chance")
    palette = [f"C{i}" for i in range(10)]
    mark_names: dict[int, str] = {}
    for i, (name, kind, labels, scores) in enumerate(curves):
        y = np.asarray(labels).astype(bool).ravel()
        s = np.asarray(scores, dtype=np.float64).ravel()
        style = dict(color=palette[i % 10], linestyle=KIND_LINES.get(kind, "-"), linewidth=1.6)
        if y.any() and not y.all():
            fpr, tpr, _ = roc_curve(y, s)
            auc = roc_auc_score(y, s)
            ax.plot(fpr, tpr, label=f"{name} ({kind}) AUC {auc:.3f}", **style)
        else:
            ax.add_line(Line2D([], [], label=f"{name} ({kind}) AUC n/a", **style))
        for j, m in enumerate((marks[i] if marks else ()) or ()):
            shape = _ROC_MARKERS[j % len(_ROC_MARKERS)]
            mark_names.setdefault(j, m.label)
            ax.plot(
                [m.fpr],
                [m.tpr],
                marker=shape,
                markersize=7,
                color=style["color"],
                markerfacecolor="white",
                markeredgewidth=1.6,
                linestyle="",
                zorder=4,
            )
    for j, label in mark_names.items():
        ax.add_line(
            Line2D(
                [],
                [],
                marker=_ROC_MARKERS[j % len(_ROC_MARKERS)],
                linestyle="",
                color="gray",
                markerfacecolor="white",
                label=f"threshold for {label}",
            )
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title("ROC curves (test split)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _distance(box, point: tuple[float, float]) -> float:
    """Display distance from a point to the nearest edge of a box (0 inside it)."""
    x, y = point
    return math.hypot(max(box.x0 - x, 0, x - box.x1), max(box.y0 - y, 0, y - box.y1))


def _place_labels(fig, ax, texts: list, gaps: list[float], radii: list[float]) -> None:
    """Put each annotation where it overlaps no label placed before it and no marker and is
    nearer its own point than any other: beside its point (on its preferred side, else the
    other), else one, two, ... lines above or below.

    `gaps` are the horizontal offsets (points) that clear each point's rings, `radii` the
    markers' radii in points. Greedy, in the order given: plenty for the eight models.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = FigureCanvasAgg(fig).get_renderer()

    def extent(t) -> Bbox:  # the text alone: an Annotation's own extent includes its leader
        t.update_positions(renderer)
        return Text.get_window_extent(t, renderer)

    px = fig.dpi / 72  # pixels per point
    obstacles, centers = [], []
    for t, r in zip(texts, radii, strict=True):
        x, y = ax.transData.transform(t.xy)
        obstacles.append(Bbox([[x - r * px, y - r * px], [x + r * px, y + r * px]]))
        centers.append((round(float(x), 1), round(float(y), 1)))
    inside = ax.bbox.padded(-2)
    placed: list = []
    for i, (t, gap) in enumerate(zip(texts, gaps, strict=True)):
        right = t.get_ha() == "right"
        line = t.get_fontsize() + 2
        candidates = [(0, right), (0, not right)]
        for n in range(1, 9):
            for dy in (n * line, -n * line):
                candidates += [(dy, right), (dy, not right)]
        best: tuple[float, float, bool] | None = None
        best_cost = math.inf
        for order, (dy, to_left) in enumerate(candidates):
            t.set_ha("right" if to_left else "left")
            t.set_position((-gap if to_left else gap, dy))
            box = extent(t)
            hits = sum(box.overlaps(o) for o in placed + obstacles)
            own = _distance(box, centers[i])
            # A label nearer another point than its own would name the wrong one.
            mine = all(own <= _distance(box, c) for c in centers if c != centers[i])
            inner = inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
            # Nothing perfect in a crowd: least overlap first, then the nearest place.
            cost = 100 * (not inner) + 10 * hits + 5 * (not mine) + order / len(candidates)
            if cost < best_cost:
                best, best_cost = (dy, gap, to_left), cost
            if cost < 1:
                break
        dy, gap, to_left = best
        t.set_ha("right" if to_left else "left")
        t.set_position((-gap if to_left else gap, dy))
        placed.append(extent(t))


def _draw_points(ax, points: Sequence[tuple[str, str, float, float]], x0: float, x1: float):
    """Scatter and label each (label, kind, recall, f1) point; returns the labels, their gaps
    and the ring radii (for `_place_labels`) and the kinds in order of appearance."""

    def place(f1: float, recall: float) -> tuple[float, float]:
        return round(f1, 3), round(recall, 3)

    crowd: dict[tuple[float, float], int] = {}
    for _, _, recall, f1 in points:
        crowd[place(f1, recall)] = crowd.get(place(f1, recall), 0) + 1
    seen: dict[tuple[float, float], int] = {}
    kinds_seen: list[str] = []
    texts, gaps, radii = [], [], []
    for label, kind, recall, f1 in points:
        tuned = "tuned" in label
        operating = OPERATING_POINT in label
        color = KIND_COLORS.get(kind, "black")
        # Models at the same place become concentric rings, so each colour stays visible; the
        # label starts outside the outermost ring.
        k = seen.get(place(f1, recall), 0)
        seen[place(f1, recall)] = k + 1
        radius = 4.2 * (1 + 1.3 * (crowd[place(f1, recall)] - 1))  # of the outermost ring
        gap = radius + 4
        ax.scatter(
            [f1],
            [recall],
            s=70 * (1 + 1.3 * k) ** 2,
            marker="D" if operating else "o",
            color="none" if k else "white" if tuned or operating else color,
            edgecolors=color,
            linewidths=1.8,
            zorder=3 - 0.01 * k,
            clip_on=False,
        )
        right = f1 > x0 + 0.7 * (x1 - x0)  # labels near the right edge go to the left
        texts.append(
            ax.annotate(
                label,
                (f1, recall),
                xytext=(-gap if right else gap, 0),
                textcoords="offset points",
                ha="right" if right else "left",
                va="center",
                fontsize=8,
                color=color,
                zorder=4,
                # A leader line, seen when the label had to move off its point's row.
                arrowprops=dict(arrowstyle="-", color=color, lw=0.5, shrinkA=1, shrinkB=radius),
            )
        )
        gaps.append(gap)
        radii.append(radius)
        if kind not in kinds_seen:
            kinds_seen.append(kind)
    return texts, gaps, radii, kinds_seen


def _recall_f1_legend(points: Sequence[tuple[str, str, float, float]], kinds: list[str]) -> list:
    """Legend handles: one filled marker per kind, hollow ones for tuned and chosen points."""
    from matplotlib.lines import Line2D

    def hollow(marker: str, label: str) -> Line2D:
        return Line2D(
            [], [], marker=marker, linestyle="", markerfacecolor="white", color="gray", label=label
        )

    handles = [
        Line2D([], [], marker="o", linestyle="", color=KIND_COLORS.get(k, "black"), label=k)
        for k in kinds
    ]
    if any("tuned" in p[0] for p in points):
        handles.append(hollow("o", "tuned cut-offs"))
    if any(OPERATING_POINT in p[0] for p in points):
        handles.append(hollow("D", "threshold chosen on validation"))
    return handles


def recall_f1(points: Sequence[tuple[str, str, float, float]], path: str | Path) -> Path:
    """Recall (y) against F1 (x) of (label, kind, recall, f1) points, coloured by kind; labels
    containing "tuned" are drawn hollow. Labels move apart where points crowd."""
    fig = _figure(6.6, 5.8)
    ax = fig.add_subplot()
    xs = [p[3] for p in points] or [0.0]
    ys = [p[2] for p in points] or [0.0]
    pad = 0.06
    x0, x1 = max(-0.03, min(xs) - pad), min(1.03, max(xs) + pad)
    y0, y1 = max(-0.03, min(ys) - pad), min(1.03, max(ys) + pad)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    texts, gaps, radii, kinds = _draw_points(ax, points, x0, x1)
    _place_labels(fig, ax, texts, gaps, radii)
    handles = _recall_f1_legend(points, kinds)
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    ax.set_xlabel("F1")
    ax.set_ylabel("recall")
    ax.set_title("recall vs F1 (test split)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------- scoring and benchmarks

BELOW_COLOR, ABOVE_COLOR = "#8a96a3", "#b3261e"  # histogram bars under / over the threshold


def probability_histogram(
    probs: Sequence[float] | np.ndarray, threshold: float | None, path: str | Path, bins: int = 50
) -> Path:
    """Counts of image probabilities in `bins` equal bins over [0, 1] (a log count axis past
    50 in a bin: a triage run is mostly negatives), bars above `threshold` in the positive colour and the
    threshold drawn as a line."""
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(p, bins=edges)
    fig = _figure(6.0, 2.6)
    ax = fig.add_subplot()
    mids = (edges[:-1] + edges[1:]) / 2
    if threshold is None:
        colors = [BELOW_COLOR] * bins
    else:
        colors = [ABOVE_COLOR if m > threshold else BELOW_COLOR for m in mids]
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colors, linewidth=0)
    if counts.max(initial=0) > 50:
        _log_y(ax)
        ax.set_ylim(0.7, counts.max() * 1.8)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if threshold is not None:
        ax.axvline(threshold, color="black", linewidth=1.2, linestyle="--")
        ax.annotate(
            f"threshold {threshold:g}",
            (threshold, 1),
            xycoords=("data", "axes fraction"),
            xytext=(4, -4),
            textcoords="offset points",
            va="top",
            fontsize=9,
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of pneumothorax")
    ax.set_ylabel("images")
    ax.set_title(f"{p.size:,} scored images", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _log_y(ax) -> None:
    """A log y axis labelled with plain numbers (1, 10, 100, 1,000; 300, 500 in between)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if ax.get_ylim()[1] / ax.get_ylim()[0] < 20 else "")


def _titled(ax, what: str, where: str) -> None:
    import textwrap

    ax.set_title(what + ("\n" + textwrap.fill(where, 90) if where else ""), fontsize=9)


@dataclass(frozen=True)
class BatchSeries:
    """One backend variant's figures against batch size (NaN where a size did not run)."""

    name: str
    batches: Sequence[int]
    images_per_s: Sequence[float]
    images_per_s_std: Sequence[float]
    latency_p50_ms: Sequence[float]
    latency_p99_ms: Sequence[float]


def _batch_axis(ax, series: Sequence[BatchSeries]) -> None:
    sizes = sorted({b for s in series for b in s.batches})
    if len(sizes) > 1 and sizes[-1] / sizes[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.grid(alpha=0.3)


def throughput_by_batch(series: Sequence[BatchSeries], path: str | Path, where: str = "") -> Path:
    """Images/s against batch size, one line per variant (± the std over repeats); `where`
    (model, device, load) goes under the title."""
    if not series:
        raise ValueError("no benchmark rows to draw")
    fig = _figure(6.6, 4.4)
    ax = fig.add_subplot()
    for i, s in enumerate(series):
        ax.errorbar(
            s.batches, s.images_per_s, yerr=s.images_per_s_std, marker="o", capsize=3,
            color=f"C{i % 10}", label=s.name,
        )  # fmt: skip
    _batch_axis(ax, series)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("images/s")
    _titled(ax, "throughput against batch size", where)
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency_by_batch(series: Sequence[BatchSeries], path: str | Path, where: str = "") -> Path:
    """Latency of one batch against batch size: p50 (solid) and p99 (dashed) per variant."""
    from matplotlib.lines import Line2D

    if not series:
        raise ValueError("no benchmark rows to draw")
    fig = _figure(6.6, 4.4)
    ax = fig.add_subplot()
    for i, s in enumerate(series):
        color = f"C{i % 10}"
        ax.plot(s.batches, s.latency_p50_ms, marker="o", color=color, label=s.name)
        ax.plot(s.batches, s.latency_p99_ms, marker="v", color=color, linestyle="--")
    _batch_axis(ax, series)
    _log_y(ax)
    ax.set_ylabel("ms per batch")
    _titled(ax, "latency of one batch: p50 solid, p99 dashed", where)
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="gray", marker="o", label="p50"),
        Line2D([], [], color="gray", marker="v", linestyle="--", label="p99"),
    ]
    ax.legend(handles=handles, fontsize=8)
    return _save(fig, path)


@dataclass(frozen=True)
class ReliabilityPanel:
    """One model's reliability diagram: `metrics.reliability_bins` before and after scaling."""

    name: str
    before: dict[str, np.ndarray]
    after: dict[str, np.ndarray]
    ece_before: float
    ece_after: float
    temperature: float


def reliability_diagrams(
    panels: Sequence[ReliabilityPanel], path: str | Path, columns: int = 4
) -> Path:
    """Share of positives against mean predicted probability per bin, before (gray) and after
    (blue) temperature scaling, one panel per model; marker area follows the bin's count."""
    if not panels:
        raise ValueError("no reliability diagrams to draw")
    fig, axes = _grid(len(panels), columns, 3.1, 0.5)
    for ax, p in zip(axes, panels, strict=True):
        ax.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle=":")
        for bins, color, what in ((p.before, "#7f7f7f", "raw"), (p.after, "#1f77b4", "scaled")):
            full = bins["count"] > 0
            size = 12 + 60 * bins["count"][full] / max(bins["count"].max(), 1)
            x, y = bins["confidence"][full], bins["frequency"][full]
            ax.plot(x, y, color=color, lw=1.2, label=what)
            ax.scatter(x, y, s=size, color=color)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("mean predicted probability", fontsize=8)
        ax.set_ylabel("share with pneumothorax", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(
            f"{p.name}  T = {p.temperature:.2f}\nECE {p.ece_before:.3f} → {p.ece_after:.3f}",
            fontsize=9,
        )
        ax.legend(loc="upper left", fontsize=7, frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle("reliability (test split), temperature fitted on validation", fontsize=11)
    return _save(fig, path)
