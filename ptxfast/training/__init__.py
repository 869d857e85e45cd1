"""Training: the loop as small functions wired together.

`train_one_epoch` runs one pass of the recipe's loss (BCE with logits; segmenters may add soft
Dice) + Adam (channels_last; AMP on CUDA), `evaluate` scores a validation set through the
fused forward the exported artifact runs, under `torch.inference_mode`, and returns a dict of
metrics, `fit` wires them together with negative rotation, checkpoints (`last.pt` every epoch,
`best.pt` by validation F1, ties to the higher ROC-AUC), `summary.csv`, `recipe.toml`,
`result.json` and exact `--resume`. Launched by `torchrun` it trains with
DistributedDataParallel; rank 0 alone writes files and prints.

Reproducibility: the order of the training data is a function of (seed, epoch) and the global RNG
states travel in `last.pt`, so a run stopped after epoch k and resumed ends with the same weights
as one that never stopped (same device, same number of workers).

Modules: `data` (datasets, caches, loaders), `step` (a batch, the loss, one step, one epoch,
evaluate), `build` (the model of a recipe), `loop` (fit, resume, checkpoints, train_models),
`render` (progress, per-epoch lines, the results table).
"""

from ptxfast.checkpoint import CheckpointError
from ptxfast.recipes import TrainConfig, TrainError, load_recipe, with_overrides
from ptxfast.training.build import build_for_training, write_untrained
from ptxfast.training.data import TrainData, load_data
from ptxfast.training.loop import fit, train_models
from ptxfast.training.step import (
    Step,
    evaluate,
    mirror,
    soft_dice_loss,
    train_one_epoch,
    train_step,
    training_loss,
)

__all__ = [
    "CheckpointError",
    "Step",
    "TrainConfig",
    "TrainData",
    "TrainError",
    "build_for_training",
    "evaluate",
    "fit",
    "load_data",
    "load_recipe",
    "mirror",
    "soft_dice_loss",
    "train_models",
    "train_one_epoch",
    "train_step",
    "training_loss",
    "with_overrides",
    "write_untrained",
]
