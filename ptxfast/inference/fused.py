"""One model, one graph: the fused inference module every backend runs, and its TorchScript form.

`Fused` wraps any of the eight models so that the whole path from a batch of N×1×S×S images in
[0, 1] to what a reader needs — the image probability, the mask area above PIXEL_THRESHOLD and,
on request, the mask — is a single forward with no Python between the parts:

- cascade: segmenter → sigmoid → concat [img, img, mask] → classifier; probability =
  sigmoid(logit), area = count(mask > 0.3);
- segmenter: probability = the k-th largest pixel probability (`segmenter_score`), so
  `probability > 0.3` is exactly the paper's "more than min_area pixels above 0.3"; area = count;
- classifier: probability = sigmoid(logit), area = -1 (no mask).

With `tta="hflip"` the graph runs the model once on the batch and its left-right mirror stacked
(2N images) and averages: image probabilities, and masks after mirroring the mirror's mask back,
so area and the segmenter's k-th pixel come from the averaged mask. An image and its mirror then
get the same probability (the same two terms, summed in the other order).

Outputs are float32 probabilities and int32 areas whatever the compute dtype, so every backend
and precision answers in the same types. `to_torchscript` traces it (checked at a second batch
size, so no batch dimension is baked in), freezes it and keeps channels_last weights; for the
CPU, `ptxfast.inference.cpu_fusion.fuse_for_cpu` then moves every convolution onto oneDNN with its
activation, residual sum and padding fused into it (1.1–1.2× the frozen graph's speed on
eb3un+eb3 at 256², one thread), and the rewritten graph is compared with the eager model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ptxfast.errors import PtxfastError
from ptxfast.inference.cpu_fusion import REWRITE_ATOL, fuse_for_cpu
from ptxfast.models import (
    PIXEL_THRESHOLD,
    kind_of,
    normalise_in_float32,
    score_k,
    segmenter_score,
)

TTAS = ("none", "hflip")  # test-time augmentation inside the graph

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
DTYPE_NAMES = {v: k for k, v in PRECISIONS.items()}


def input_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a fused graph computing in `dtype` takes its images in: float16 for fp16
    (TensorRT's explicitly typed engines want half inputs), float32 otherwise (bf16 graphs
    normalise the float32 image before they cast)."""
    return torch.float16 if dtype == torch.float16 else torch.float32


class FusedError(PtxfastError):
    """A model that cannot be fused or traced as asked; the message says what to change."""


class Fused(nn.Module):
    """N×1×S×S images in [0, 1] → (probability N float32, area N int32[, mask N×1×S×S float32]).

    `dtype` is the compute dtype; the model must already hold weights of that dtype. The graph
    takes `input_dtype(dtype)` (cast inside, a no-op when the caller already sends it); `fuse`
    makes the model normalise in float32 and cast to `dtype` after
    (`models.normalise_in_float32`): a bf16 input would round the image before it is
    normalised. `return_mask` is fixed at
    construction so the traced graph has one output signature.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        size: int,
        dtype: torch.dtype = torch.float32,
        return_mask: bool = False,
        tta: str = "none",
    ) -> None:
        super().__init__()
        if kind == "classifier" and return_mask:
            raise FusedError("a classifier has no mask; export it without --return-mask")
        if tta not in TTAS:
            raise FusedError(f"test-time augmentation {tta!r}; choose one of {', '.join(TTAS)}")
        self.model = model
        self.kind = kind
        self.size = size
        self.dtype = dtype
        self.return_mask = return_mask
        self.tta = tta
        self.k = score_k(size)

    def _mirrored(self, x: torch.Tensor) -> torch.Tensor:
        """The batch and its left-right mirror, stacked: 2N images, one model call."""
        return torch.cat([x, x.flip(-1)]) if self.tta == "hflip" else x

    def _average(self, t: torch.Tensor, n: int, image: bool = False) -> torch.Tensor:
        """Mean over an image and its mirror (a mirrored mask flipped back first)."""
        if self.tta != "hflip":
            return t
        a, b = t[:n], t[n:]
        return (a + (b.flip(-1) if image else b)) * 0.5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.to(input_dtype(self.dtype))
        n = x.shape[0]
        x = self._mirrored(x)
        if self.kind == "cascade":
            logits, mask = self.model.forward_with_mask(x)
            prob = self._average(torch.sigmoid(logits.float())[:, 0], n)
            mask = self._average(mask.float(), n, image=True)
        elif self.kind == "segmenter":
            # Sigmoid and top-k in float32: the k-th largest pixel decides the label at 0.3.
            mask = self._average(torch.sigmoid(self.model(x).float()), n, image=True)
            prob = segmenter_score(mask, self.k)
        else:
            prob = self._average(torch.sigmoid(self.model(x).float())[:, 0], n)
            # -1 marks "no mask"; full_like keeps the batch dimension symbolic in the trace.
            return prob, torch.full_like(prob, -1, dtype=torch.int32)
        area = (mask > PIXEL_THRESHOLD).flatten(1).sum(1, dtype=torch.int32)
        if self.return_mask:
            return prob, area, mask
        return prob, area


def fuse(
    model: nn.Module,
    name: str,
    size: int,
    *,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    return_mask: bool = False,
    channels_last: bool = True,
    copy_model: bool = True,
    tta: str = "none",
) -> Fused:
    """The fused module of `model` (one of the eight, by `name`) at `precision` on `device`.

    The model is copied first (unless `copy_model=False`), so the caller's fp32 model stays the
    reference for parity checks. Weights go to `device`, the dtype and (with `channels_last`) NHWC.
    `tta="hflip"` averages each image with its mirror inside the graph (see the module notes).
    """
    if size < 32 or (kind_of(name) != "classifier" and size % 32):
        raise FusedError(f"size {size} must be a multiple of 32 (U-Net strides), at least 32")
    if precision not in PRECISIONS:
        raise FusedError(f"precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    model = copy.deepcopy(model) if copy_model else model
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model = model.eval().to(device=device, dtype=dtype, memory_format=fmt)
    normalise_in_float32(model)
    if dtype == torch.bfloat16:
        _batchnorm_in_float32(model)
    model.requires_grad_(False)
    return Fused(model, kind_of(name), size, dtype, return_mask, tta).eval()


def _batchnorm_in_float32(model: nn.Module) -> None:
    """BatchNorm layers of a bf16 model back in float32. `torch.jit.freeze` folds each into the
    convolution before it in the dtype of their constants; in bf16 the scale γ/√(σ²+ε), the
    weights and their product are each rounded. Folded in float32 (and rounded once to bf16:
    the frozen graph still holds bf16 weights only), and with the float32 normalisation of
    `models.normalise_in_float32`, the TorchScript bf16 graphs of the demo's trained models
    moved less from eager fp32 on its validation split (42 images): eb3un max |Δp| 0.028 →
    0.012 (mean 0.0039 → 0.0017), eb3un+eb3 0.45 → 0.18 (mean 0.019 → 0.009, label
    agreement 97.6% → 100%)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.float()


def example_input(
    fused: Fused, batch: int, device: str | torch.device, channels_last: bool = True
) -> torch.Tensor:
    """A random batch in [0, 1] of the fused model's input shape and dtype."""
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 1, fused.size, fused.size, generator=g)
    x = x.to(device, input_dtype(fused.dtype))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch's deprecation notices for torch.jit (TorchScript is what ships here) and the
    tracer's notes on Python values it records as constants (sizes fixed by design)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _check_other_batch(traced: torch.jit.ScriptModule, fused: Fused, x: torch.Tensor) -> None:
    """The traced graph gives the eager outputs on `x`, a batch size it was not traced at: a
    baked-in batch dimension or a branch the trace froze fails here. One forward of each, where
    torch.jit.trace's own check_trace would trace the whole model a second time."""
    atol = 1e-4 if fused.dtype == torch.float32 else 2e-3
    want, got = fused(x), traced(x)
    for name, w, g in zip(("probability", "area", "mask"), want, got, strict=False):
        if g.shape != w.shape or not torch.allclose(g.float(), w.float(), rtol=1e-4, atol=atol):
            found = f"shape {tuple(g.shape)}" if g.shape != w.shape else "values"
            raise FusedError(
                f"the traced graph of the fused model is not the eager one at batch "
                f"{x.shape[0]} ({name}: {found} differ); report this with the model name and size"
            )


def to_torchscript(
    fused: Fused,
    batch: tuple[int, int, int],
    device: str | torch.device,
    *,
    channels_last: bool = True,
    check: bool = True,
    cpu_fusion: bool = True,
) -> torch.jit.ScriptModule:
    """Trace `fused` into one TorchScript graph and freeze it.

    The trace runs at the optimal batch and, with `check`, the traced graph must give the eager
    outputs at another batch size of the range (`_check_other_batch`), so a graph that baked a
    batch dimension in fails here rather than in production.
    Freezing inlines every submodule and folds weights and BatchNorm into constants. On the CPU
    (with `cpu_fusion`, where this torch has oneDNN) the frozen graph is then rewritten by
    `ptxfast.inference.cpu_fusion.fuse_for_cpu`; with `check`, the rewritten graph must then still give
    the eager probabilities (within `cpu_fusion.REWRITE_ATOL`: fp32 1e-4, bf16 0.15).
    """
    lo, opt, hi = batch
    example = example_input(fused, opt, device, channels_last)
    other = lo if lo != opt else min(hi, opt + 1)
    with quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(fused, example, check_trace=False)
        if check:
            _check_other_batch(traced, fused, example_input(fused, other, device, channels_last))
        frozen = torch.jit.freeze(traced.eval())
    if not cpu_fusion or torch.device(device).type != "cpu":
        return frozen
    small = example_input(fused, lo, device, channels_last)  # shapes only: the smallest batch
    # Before the frozen graph first runs: its executor keeps a copy of the graph from then on.
    counts = fuse_for_cpu(frozen, small, fused.dtype)
    rewritten = counts["convs"] > 0 or fused.dtype == torch.float32  # fp32: checked as before
    if check and rewritten and fused.dtype in REWRITE_ATOL:
        with torch.inference_mode():
            want, got = fused(small)[0], frozen(small)[0]
        if not torch.allclose(got, want, atol=REWRITE_ATOL[fused.dtype], rtol=0):
            raise FusedError(
                f"the CPU-fused graph disagrees with the eager model at {DTYPE_NAMES[fused.dtype]} "
                f"(max |Δprob| {float((got - want).abs().max()):.2g}); report this with the "
                "model name and size"
            )
    return frozen


def graph_precision(scripted: torch.jit.ScriptModule) -> tuple[str, dict[str, int]]:
    """(precision, elements per floating dtype) of the weights a frozen graph holds as constants:
    what the artifact computes in, read from the artifact itself rather than from the request."""
    counts: dict[str, int] = {}
    for node in scripted.graph.findAllNodes("prim::Constant"):
        out = node.output()
        if not isinstance(out.type(), torch._C.TensorType):
            continue
        value = out.toIValue()
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            key = DTYPE_NAMES.get(value.dtype, str(value.dtype).replace("torch.", ""))
            counts[key] = counts.get(key, 0) + value.numel()
    if not counts:
        return "unknown", counts
    return max(counts, key=counts.__getitem__), counts
