"""Scoring through the artifact's forward: `ptxfast.inference.fused.Fused` run eagerly, plus its logits.

Training's validation and `ptxfast evaluate` score a model exactly as its exported graph does,
through the same `Fused.forward` (the per-kind image probability, the mask above
PIXEL_THRESHOLD), instead of re-deriving the rule. They also need what the graph drops: the
logits behind its probabilities, for the BCE loss and for ranking and calibration without
float32 sigmoid saturation (many confident images share p = 1.0). `FusedScorer` taps them with a
forward hook on the module that produces them: the model itself (a classifier's image logit, a
segmenter's mask logits) or a cascade's classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptxfast.inference.fused import Fused
from ptxfast.models import segmenter_score

__all__ = ["FusedScorer", "Scores"]


@dataclass
class Scores:
    """One batch through the fused forward."""

    prob: torch.Tensor  # N float32: the image probability the artifact reports
    logit: torch.Tensor  # N float32: the logit behind it (segmenters: the k-th largest pixel's)
    mask: torch.Tensor | None  # N×1×S×S float32 mask probability; None for classifiers
    raw: torch.Tensor  # the model's own output in float32: image logits N×1, or mask logits


class FusedScorer:
    """Calls `Fused(model, kind, size)` (with the mask for models that have one) on batches and
    returns its outputs with the logits behind them. The model is used as it is: no copy, no
    change of dtype, device or memory format (the caller has put it in eval mode)."""

    def __init__(self, model: nn.Module, kind: str, size: int) -> None:
        self.kind = kind
        self.fused = Fused(model, kind, size, return_mask=kind != "classifier")
        # The module whose output is the logit: a cascade's classifier, else the model.
        self._logits_of = model.classifier if kind == "cascade" else model

    def __call__(self, x: torch.Tensor) -> Scores:
        seen: list[torch.Tensor] = []
        hook = self._logits_of.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            out = self.fused(x)
        finally:
            hook.remove()
        raw = seen[-1].float()
        logit = segmenter_score(raw, self.fused.k) if self.kind == "segmenter" else raw[:, 0]
        return Scores(out[0], logit, out[2] if len(out) > 2 else None, raw)
