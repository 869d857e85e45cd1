"""Training recipes as data: `train/*.toml` → `TrainConfig`.

A recipe file has a `[defaults]` table and optional `[models.<name>]` tables that override it for
one model; every key is a `TrainConfig` field. Command-line options fill the same dataclass via
`with_overrides`. Nothing is executed: TOML in, a typed, validated dataclass out.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptxfast import MODEL_NAMES, read_toml, shipped_toml
from ptxfast.errors import PtxfastError


class TrainError(PtxfastError):
    """A training run that cannot start or go on; the message says what to do."""


@dataclass
class TrainConfig:
    """Everything one training run depends on. Recipes and command-line options fill it."""

    arch: str  # one of the eight model names
    data: str = ""  # dataset root (CANDID-PTX or SIIM layout); "" when datasets are passed in
    runs: str = "runs"  # checkpoints and logs go to <runs>/<arch>/
    size: int = 512  # square input side in pixels; a multiple of 32 (U-Net strides)
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-4
    # "bce": BCE with logits, per pixel for segmenters and per image otherwise (the paper's).
    # "bce+dice": segmenters add a soft Dice term pooled over the batch, blind to the ~99%
    # background pixels that let plain BCE from random init settle on "no pneumothorax
    # anywhere"; classifiers and cascades keep BCE.
    loss: str = "bce"
    optimizer: str = "adam"
    # Chance of mirroring a training image (with its mask) left-right each time it is drawn; 0
    # (the paper's) never does. Pneumothorax occurs on either side, and a mirrored radiograph
    # doubles what a small training set shows a model trained from scratch.
    hflip: float = 0.0
    # BatchNorm running-statistics momentum while training; 0 keeps each model's own (0.1, but
    # 0.01 in the efficientnet-b3 U-Net encoder, which suits fine-tuning ImageNet statistics).
    # From random init a slow average lags the moving weights, and eval-mode predictions fail.
    bn_momentum: float = 0.0
    # Initial weights: "imagenet" (read from disk caches), "none", or a state-dict path.
    weights: str = "imagenet"
    # "paper": DESIGN.md policy per model; "none": all trainable; "auto": the paper's policy when
    # the model starts from pretrained weights, all trainable from random init (frozen random
    # layers would only add noise).
    freezing: str = "paper"
    # The paper's three ways of handling the imbalance: "rotate" (balanced, the negatives
    # swapped for unseen pool ones every `rotate_every` epochs; the paper's best), "all" (every
    # training negative, pool included, in every epoch), "grow" (balanced at first, then a block
    # of unseen negatives added every `rotate_every` epochs).
    negatives: str = "rotate"
    # Every N epochs "rotate" swaps and "grow" adds a block of negatives; 0: never.
    rotate_every: int = 4
    select: str = "f1"  # validation metric that picks best.pt
    seed: int = 0  # initial weights, data order, and the splits when splits.csv does not exist yet
    device: str = "auto"  # "auto": CUDA when available, else CPU
    workers: int = 0  # DataLoader worker processes
    # CPU runs: torch intra-op threads while training; 0 keeps torch's default (one per core).
    # On a busy machine threads that wait on each other can run slower than one alone.
    threads: int = 0
    amp: str = "fp16"  # CUDA autocast: "fp16" (+ GradScaler), "bf16" or "off"; CPU is always fp32
    channels_last: bool = True  # NHWC memory format (faster convolutions on CUDA and CPU)
    cache_images: bool = False  # keep decoded, resized images in memory across epochs (small runs)
    cache_masks: bool = True  # cascades with cache_images: run the frozen segmenter once per image
    segmenter: str = ""  # cascades: the segmenter checkpoint; "": <runs>/<segmenter name>/best.pt

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def run_dir(self) -> Path:
        """Where this run's checkpoints and logs live: <runs>/<arch>."""
        return Path(self.runs) / self.arch


_CHOICES = {
    "loss": ("bce", "bce+dice"),
    "negatives": ("rotate", "all", "grow"),
    "optimizer": ("adam",),
    "freezing": ("paper", "none", "auto"),
    "select": ("f1", "auc", "recall", "precision"),
    "amp": ("fp16", "bf16", "off"),
}
# Fields that change the arithmetic of a run: a resume must not change them.
RESUME_FIXED = (
    "arch",
    "size",
    "batch_size",
    "lr",
    "loss",
    "optimizer",
    "bn_momentum",
    "hflip",
    "freezing",
    "negatives",
    "seed",
)


def _validate(cfg: TrainConfig) -> None:
    if cfg.arch not in MODEL_NAMES:
        raise TrainError(f"unknown model {cfg.arch!r}; choose one of: {', '.join(MODEL_NAMES)}")
    for name, allowed in _CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise TrainError(f"{name} = {getattr(cfg, name)!r}; choose one of {', '.join(allowed)}")
    if cfg.size < 32 or cfg.size % 32:
        raise TrainError(f"size {cfg.size} must be a positive multiple of 32 (U-Net strides)")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise TrainError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise TrainError(f"lr must be positive, got {cfg.lr}")
    if not 0.0 <= cfg.bn_momentum <= 1.0:
        raise TrainError(
            f"bn_momentum must be in [0, 1] (0: the model's own), got {cfg.bn_momentum}"
        )
    if not 0.0 <= cfg.hflip <= 1.0:
        raise TrainError(f"hflip is a probability in [0, 1], got {cfg.hflip}")
    if cfg.rotate_every < 0 or cfg.workers < 0 or cfg.threads < 0:
        raise TrainError("rotate_every, workers and threads must be >= 0")


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a recipe value against the field's type (TOML ints are fine where floats go)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if name not in fields:
        raise TrainError(f"{source}: unknown setting {name!r}; known: {', '.join(fields)}")
    want = type(fields[name].default) if name != "arch" else str
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is str and isinstance(value, Path):
        return str(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise TrainError(f"{source}: {name} = {value!r} should be a {want.__name__}")
    return value


def recipe_path(recipe: str | Path) -> Path:
    """`paper` / `quick` (the recipes in train/) or a path to a .toml file."""
    try:
        return shipped_toml(recipe, "train", "recipe")
    except FileNotFoundError as err:
        raise TrainError(str(err)) from None


def load_recipe(recipe: str | Path, arch: str) -> TrainConfig:
    """The TrainConfig of `arch` in a recipe: its [defaults] table overlaid by [models.<arch>]."""
    path = recipe_path(recipe)
    try:
        doc = read_toml(path)
    except ValueError as err:
        raise TrainError(str(err)) from None
    extra = set(doc) - {"defaults", "models"}
    if extra:
        raise TrainError(f"{path}: unknown table(s) {sorted(extra)}; use [defaults] and [models.X]")
    unknown = set(doc.get("models", {})) - set(MODEL_NAMES)
    if unknown:
        raise TrainError(f"{path}: unknown model(s) {sorted(unknown)}; known: {MODEL_NAMES}")
    values = {**doc.get("defaults", {}), **doc.get("models", {}).get(arch, {})}
    values = {k: _coerce(k, v, str(path)) for k, v in values.items()}
    values.pop("arch", None)
    return TrainConfig(arch=arch, **values)


def with_overrides(cfg: TrainConfig, **overrides: Any) -> TrainConfig:
    """A copy of `cfg` with the given settings replaced (None values are ignored)."""
    given = {k: _coerce(k, v, "override") for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **given)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings


def config_toml(cfg: TrainConfig, notes: dict[str, Any] | None = None) -> str:
    """The resolved config as a recipe file (`load_recipe` reads it back); `notes` become
    comments (e.g. the sha256 of a cascade's segmenter checkpoint)."""
    lines = [f"# resolved ptxfast training config of {cfg.arch}"]
    lines += [f"# {k} = {v}" for k, v in (notes or {}).items()]
    lines.append("[defaults]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in dataclasses.asdict(cfg).items() if k != "arch"]
    return "\n".join(lines) + "\n"
