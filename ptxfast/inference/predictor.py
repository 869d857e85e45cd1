"""The Predictor: one call interface over every backend, so scoring and benchmarks run any alike.

A predictor takes a float32 batch N×1×S×S in [0, 1] (on the CPU or its device) and returns
`Outputs(prob, area, mask)` on its device: the image probability (float32 N), the mask area above
PIXEL_THRESHOLD (int32 N, -1 for classifiers) and the mask (float32 N×1×S×S) when the model was
fused with `return_mask`. It moves and casts the input itself (non_blocking, channels_last), pads
and splits batches for engines built for a fixed batch range, and labels by its `LabelRule`.
`ptxfast.inference.runtime` makes them (`build_predictor`, `load_predictor`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ptxfast.inference.backends import BACKENDS, PredictorError
from ptxfast.inference.operating import LabelRule
from ptxfast.models import kind_of
from ptxfast.models import thresholds as model_thresholds


class Outputs(NamedTuple):
    """What a predictor returns for a batch of N images, on the predictor's device."""

    prob: torch.Tensor  # float32 N: image probability (label = prob > thresholds["label"])
    area: torch.Tensor  # int32 N: mask pixels above PIXEL_THRESHOLD; -1 for classifiers
    mask: torch.Tensor | None = None  # float32 N×1×S×S mask probability (return_mask only)


def pad_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """`x` (N×…) grown to `n` rows by repeating its last image (a real image, so padded rows
    take the same path through every kernel); `x` itself when it has `n` rows or more.
    Compiled graphs and engines specialise on batch shapes: padding a short last batch up to
    the run's batch size avoids a recompile (a TorchScript fuser spent seconds on a last batch
    of 16 after 32s) and meets an engine's smallest batch."""
    if x.shape[0] >= n:
        return x
    return torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])


class Predictor:
    """A model ready to score batches: `predictor(x) -> Outputs`, plus what it is.

    Attributes: name, kind, size, backend, precision, device, input_dtype, thresholds (label,
    pixel, min_area, score_k: an artifact's from its sidecar, else the model's rule at `size`),
    batch ((min, opt, max) or None), return_mask, channels_last, path (how it was made: trace,
    ts, dynamo, eager, inductor, onnx:<exporter>), sidecar (artifacts only), mask_output (the
    module returns a mask, whether or not `return_mask` hands it to callers: ONNX graphs always
    carry it, so the parity gate measures Dice), rule (`operating.LabelRule`: the artifact's
    operating point, else the model's default threshold; `label` and `reported` apply it).
    """

    def __init__(
        self,
        module: Callable[[torch.Tensor], Any],
        *,
        name: str,
        size: int,
        backend: str,
        precision: str,
        device: torch.device,
        input_dtype: torch.dtype = torch.float32,
        batch: tuple[int, int, int] | None = None,
        return_mask: bool = False,
        channels_last: bool = True,
        autocast_dtype: torch.dtype | None = None,
        path: str = "",
        sidecar: Any = None,
        mask_output: bool | None = None,
        rule: LabelRule | None = None,
        thresholds: dict[str, float | int | None] | None = None,
    ) -> None:
        self.module = module
        self.name = name
        self.kind = kind_of(name)
        self.size = size
        self.backend = backend
        self.precision = precision
        self.device = device
        self.input_dtype = input_dtype
        # An artifact's are its sidecar's (what the export gate measured); else the model's rule.
        self.thresholds = dict(thresholds) if thresholds else model_thresholds(self.kind, size)
        self.rule = rule or LabelRule(float(self.thresholds["label"]))
        # The cut on the raw probability (the operating point's, when there is one).
        self.thresholds["label"] = self.rule.raw_threshold
        self.batch, self.return_mask, self.channels_last = batch, return_mask, channels_last
        self.autocast_dtype, self.path, self.sidecar = autocast_dtype, path, sidecar
        self.mask_output = return_mask if mask_output is None else mask_output
        # Engines built for a batch range (TensorRT) take no other; other backends take any batch.
        known = BACKENDS.get(backend)
        self._strict_batch = known is not None and known.fixed_batch and batch is not None
        # ONNX Runtime and OpenVINO run their own threads: one batch at a time on every core.
        self.threads_itself = known is not None and known.threads_itself

    def __repr__(self) -> str:
        return (
            f"Predictor({self.name}, {self.backend}/{self.path}, {self.precision}, "
            f"{self.size}², {self.device})"
        )

    def label(self, prob: torch.Tensor) -> torch.Tensor:
        """The image label (bool) of the raw probabilities the model returns, by its rule."""
        return self.rule.label(prob)

    def reported(self, prob: torch.Tensor) -> torch.Tensor:
        """The probability to report for raw ones: temperature-scaled when the artifact's
        operating point is calibrated, else unchanged."""
        return self.rule.reported(prob)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        s = self.size
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != (s, s):
            raise PredictorError(
                f"{self.name} takes N×1×{s}×{s} images in [0, 1], got shape {tuple(x.shape)}; "
                f"resize to {s}×{s} (ptxfast.data.dicom.load_image(path, size={s}))"
            )
        x = x.to(self.device, non_blocking=True)
        if x.dtype != self.input_dtype:
            x = x.to(self.input_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, x: torch.Tensor, with_mask: bool) -> Outputs:
        out = self.module(x)
        if isinstance(out, torch.Tensor):  # a bare module returns logits; predictors never do
            raise PredictorError(f"{self.name}: the module returned one tensor, not (prob, area)")
        mask = out[2] if len(out) > 2 and with_mask else None
        return Outputs(out[0].float(), out[1], mask)

    def __call__(self, x: torch.Tensor, with_mask: bool | None = None) -> Outputs:
        """Score a batch: x is N×1×S×S in [0, 1], float32 (or already `input_dtype`).

        `with_mask` (default `return_mask`) asks for the mask; True needs `mask_output`."""
        with_mask = self.return_mask if with_mask is None else with_mask
        if with_mask and not self.mask_output:
            raise PredictorError(f"{self!r} returns no mask; export it with --return-mask")
        x = self._prepare(x)
        with torch.inference_mode(), self._autocast():
            if not self._strict_batch:
                return self._run(x, with_mask)
            lo, _, hi = self.batch
            parts = []
            for chunk in x.split(hi):
                n = chunk.shape[0]
                if n < lo:  # pad up to the engine's smallest batch, drop the padding after
                    chunk = pad_batch(chunk, lo).contiguous(memory_format=torch.channels_last)
                out = self._run(chunk, with_mask)
                parts.append(Outputs(*(t[:n] if t is not None else None for t in out)))
            if len(parts) == 1:
                return parts[0]
            mask = torch.cat([p.mask for p in parts]) if parts[0].mask is not None else None
            return Outputs(
                torch.cat([p.prob for p in parts]), torch.cat([p.area for p in parts]), mask
            )

    def warmup(self, batch: int | None = None, iters: int = 2) -> None:
        """Run a few random batches (compiles lazy backends, fills caches)."""
        n = batch or (self.batch[1] if self.batch else 1)
        x = torch.rand(n, 1, self.size, self.size)
        for _ in range(iters):
            self(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
