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
CPU, `fuse_for_cpu` then moves every convolution onto oneDNN with its activation, residual sum
and padding fused into it (1.1–1.2× the frozen graph's speed on eb3un+eb3 at 256², one thread).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ptxfast.models import PIXEL_THRESHOLD, kind_of, min_area, score_k, segmenter_score
from ptxfast.training import CLASSIFIER_THRESHOLD

TTAS = ("none", "hflip")  # test-time augmentation inside the graph

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
DTYPE_NAMES = {v: k for k, v in PRECISIONS.items()}


class FusedError(ValueError):
    """A model that cannot be fused or traced as asked; the message says what to change."""


def label_threshold(kind: str) -> float:
    """The probability above which the fused model's image label is positive: 0.5 for classifiers
    and cascades (as training scores them); 0.3 on a segmenter's k-th largest pixel."""
    return PIXEL_THRESHOLD if kind == "segmenter" else CLASSIFIER_THRESHOLD


def thresholds(kind: str, size: int) -> dict[str, float | int | None]:
    """The label rule of a fused model as recorded in sidecars and on predictors."""
    has_mask = kind != "classifier"
    return {
        "label": label_threshold(kind),
        "pixel": PIXEL_THRESHOLD if has_mask else None,
        "min_area": min_area(size) if has_mask else None,
        "score_k": score_k(size) if kind == "segmenter" else None,
    }


class Fused(nn.Module):
    """N×1×S×S images in [0, 1] → (probability N float32, area N int32[, mask N×1×S×S float32]).

    `dtype` is the compute dtype: the input is cast to it inside the graph (a no-op when the
    caller already sends it), the model must already hold weights of that dtype. `return_mask`
    is fixed at construction so the traced graph has one output signature.
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
        x = x.to(self.dtype)
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
    model.requires_grad_(False)
    return Fused(model, kind_of(name), size, dtype, return_mask, tta).eval()


def example_input(
    fused: Fused, batch: int, device: str | torch.device, channels_last: bool = True
) -> torch.Tensor:
    """A random batch in [0, 1] of the fused model's input shape and dtype."""
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 1, fused.size, fused.size, generator=g).to(device, fused.dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch's deprecation notices for torch.jit (TorchScript is what ships here) and the
    tracer's notes on Python values it records as constants (sizes fixed by design)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


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

    The trace runs at the optimal batch and is checked (`check_trace`) at another batch size of
    the range, so a graph that baked a batch dimension in fails here rather than in production.
    Freezing inlines every submodule and folds weights and BatchNorm into constants. On the CPU
    (with `cpu_fusion`, where this torch has oneDNN) the frozen graph is then rewritten by
    `fuse_for_cpu`; with `check`, an fp32 graph must then still give the eager probabilities.
    """
    lo, opt, hi = batch
    example = example_input(fused, opt, device, channels_last)
    other = lo if lo != opt else min(hi, opt + 1)
    checks = [(example_input(fused, other, device, channels_last),)] if check else None
    with quiet_jit(), torch.no_grad():
        try:
            traced = torch.jit.trace(
                fused, example, check_trace=check, check_inputs=checks, check_tolerance=1e-4
            )
        except torch.jit.TracingCheckError as err:
            first = str(err).strip().splitlines()[0]
            raise FusedError(
                f"the traced graph of the fused model is not the eager one ({first}); "
                "report this with the model name and size"
            ) from None
        frozen = torch.jit.freeze(traced.eval())
    if not cpu_fusion or torch.device(device).type != "cpu":
        return frozen
    small = example_input(fused, lo, device, channels_last)  # shapes only: the smallest batch
    fuse_for_cpu(frozen, small)  # before the frozen graph first runs: its executor keeps a copy
    if check and fused.dtype == torch.float32:
        with torch.inference_mode():
            want, got = fused(small)[0], frozen(small)[0]
        if not torch.allclose(got, want, atol=1e-4, rtol=0):
            raise FusedError(
                "the CPU-fused graph disagrees with the eager model (max |Δprob| "
                f"{float((got - want).abs().max()):.2g}); report this with the model name and size"
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


# ------------------------------------------------------------------------ CPU graph (oneDNN)

_POINTWISE = "mkldnn::_convolution_pointwise"
# Activations oneDNN applies to a convolution's accumulator before it stores the output.
_UNARY_POSTOPS = {
    "aten::silu": "swish",
    "aten::silu_": "swish",
    "aten::relu": "relu",
    "aten::relu_": "relu",
    "aten::sigmoid": "sigmoid",
    "aten::sigmoid_": "sigmoid",
}
_POOLS = ("aten::mean", "aten::adaptive_avg_pool2d")


def cpu_fusion_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch and CPU run the oneDNN fused convolution that `fuse_for_cpu` writes
    into graphs at `dtype` (x86-64 and ARM builds of torch >= 2.0 do at fp32; bf16 needs a CPU
    that oneDNN has bf16 kernels for: avx512bw/vl/dq or avx_ne_convert, else the op raises)."""
    try:
        found = torch._C._jit_get_schemas_for_operator(_POINTWISE)
    except (AttributeError, RuntimeError):  # a private API: absent or changed in some torch
        return False
    if not (found and torch.backends.mkldnn.is_available()):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def is_cpu_fused(scripted: torch.jit.ScriptModule) -> bool:
    """Whether a frozen graph already runs its convolutions through `fuse_for_cpu`'s kernels."""
    return any(True for _ in scripted.graph.findAllNodes(_POINTWISE))


def fuse_for_cpu(scripted: torch.jit.ScriptModule, example: torch.Tensor) -> dict[str, int]:
    """Rewrite a frozen graph, in place, into the form that runs fastest on a CPU; counts by kind.

    Frozen as traced, the graph leaves kernel choice to `aten::_convolution`, which on one
    thread sends fp32 1×1 convolutions at batch < 16 to the unblocked `_slow_conv2d` (205 of
    the 270 in eb3un+eb3), and it runs every activation, padding, residual sum and SE pooling as
    a separate pass over memory. The rewrite, with each step exact up to float rounding:

    - every 2-D convolution → `mkldnn::_convolution_pointwise` (oneDNN, whatever the thread
      count), with the SiLU / ReLU / sigmoid after it, or the residual add (+ ReLU), applied to
      the accumulator before the store (`convs`, `unary`, `adds`);
    - a zero `pad` before a convolution → the convolution's own padding; an asymmetric one
      (TF "same" at stride 2) by zero-extending the kernel on its short side (`pads`);
    - SE global means (`mean` over H, W / `adaptive_avg_pool2d(1)`) → `avg_pool2d` over the
      plane: bf16 `mean` of an NHWC tensor is 9–20× slower than the pooling kernel (`pools`);
    - the SE gate multiplies the activation it was computed from in place (`muls`).

    Ops the rewrite adds are aten/mkldnn operators, so the graph still saves and loads with
    `torch.jit.save` / `torch.jit.load` in a process that has only torch. `example` (one input
    batch of the graph's size, dtype and layout) is run once to learn the shapes the residual
    adds, SE products and pools need checked. A graph that already has fused convolutions is
    left as it is. Call it before the module first runs: a TorchScript method's executor keeps
    its own copy of the graph from the first call on.
    """
    counts = {"convs": 0, "unary": 0, "adds": 0, "pads": 0, "pools": 0, "muls": 0}
    graph = scripted.graph
    if is_cpu_fused(scripted) or not cpu_fusion_available(example.dtype):
        return counts
    shapes = _probe(scripted, example)
    for conv in list(graph.findAllNodes("aten::_convolution")):
        _fuse_convolution(graph, conv, shapes, counts)
    for node in [n for kind in _POOLS for n in graph.findAllNodes(kind)]:
        _plane_pool(graph, node, shapes, counts)
    for node in list(graph.findAllNodes("aten::mul")):
        _gate_in_place(graph, node, shapes, counts)
    # Leave the insert point on the graph, not on a node destroyed above: later passes
    # (e.g. optimize_for_inference) insert there.
    graph.setInsertPoint(graph.return_node())
    torch._C._jit_pass_dce(graph)
    torch._C._jit_pass_constant_pooling(graph)
    torch._C._jit_pass_lint(graph)
    return counts


_Shapes = dict[int, tuple[tuple[int, ...], torch.dtype]]


def _const(value: torch._C.Value):
    """The value of a constant (or a list of constants, as a graph read back from a file writes
    `[1, 1]`); None when it is computed."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return node.output().toIValue()
    if node.kind() == "prim::ListConstruct":
        items = [_const(v) for v in node.inputs()]
        return None if any(i is None for i in items) else items
    return None


def _probe(scripted: torch.jit.ScriptModule, example: torch.Tensor) -> _Shapes:
    """{value id: (shape, dtype)} of the tensors the rewrite must know, from one run of a copy of
    the graph that returns them; empty (so shape-checked steps are skipped) if it cannot run."""
    graph = scripted.graph
    wanted = []
    for kind in ("aten::add", "aten::add_", "aten::mul", *_POOLS):
        for node in graph.findAllNodes(kind):
            wanted += [v for v in node.inputs() if isinstance(v.type(), torch._C.TensorType)]
    if not wanted:
        return {}
    copy_graph = graph.copy()
    where = {v.unique(): ("in", i) for i, v in enumerate(graph.inputs())}
    for i, node in enumerate(graph.nodes()):
        where.update({v.unique(): (i, j) for j, v in enumerate(node.outputs())})
    # Once each, and only the top block's values (a traced graph has no other).
    wanted = [v for k, v in {v.unique(): v for v in wanted}.items() if k in where]
    nodes, inputs = list(copy_graph.nodes()), list(copy_graph.inputs())
    mapped = []
    for v in wanted:
        i, j = where[v.unique()]
        mapped.append(inputs[j] if i == "in" else nodes[i].outputsAt(j))
    tup = copy_graph.create("prim::TupleConstruct", mapped, 1)
    tup.output().setType(torch._C.TupleType([v.type() for v in mapped]))
    tup.insertBefore(copy_graph.return_node())
    copy_graph.eraseOutput(0)
    copy_graph.registerOutput(tup.output())
    try:
        probe = torch._C._create_function_from_graph("ptxfast_probe", copy_graph)
        with torch.inference_mode():
            values = probe(scripted._c, example)
    except (AttributeError, RuntimeError):
        return {}
    return {
        v.unique(): (tuple(t.shape), t.dtype)
        for v, t in zip(wanted, values, strict=True)
        if isinstance(t, torch.Tensor)
    }


def _replace(old: torch._C.Value, new: torch._C.Value, shapes: _Shapes) -> None:
    new.setType(old.type())
    if old.unique() in shapes:
        shapes[new.unique()] = shapes[old.unique()]
    old.replaceAllUsesWith(new)


def _fold_pad(
    x: torch._C.Value, weight: torch.Tensor, padding: list[int]
) -> tuple[torch._C.Value, torch.Tensor, list[int], torch._C.Node | None]:
    """(input, weight, padding, pad node to drop) with a zero `pad` before `conv` folded in.

    Padding (l, r) with l < r equals symmetric padding r with the kernel extended by r - l zero
    taps in front (and the mirror case behind): the same taps meet the same pixels and the
    output size is unchanged, whatever the stride.
    """
    src = x.node()
    if src.kind() not in ("aten::pad", "aten::constant_pad_nd") or len(x.uses()) != 1:
        return x, weight, padding, None
    pads = _const(src.inputsAt(1))
    if src.kind() == "aten::pad":
        mode, value = _const(src.inputsAt(2)), _const(src.inputsAt(3))
    else:
        mode, value = "constant", _const(src.inputsAt(2))
    if mode != "constant" or value not in (None, 0) or not pads or len(pads) != 4 or min(pads) < 0:
        return x, weight, padding, None
    left, right, top, bottom = pads
    extend = (
        max(right - left, 0),
        max(left - right, 0),
        max(bottom - top, 0),
        max(top - bottom, 0),
    )
    if any(extend):
        weight = torch.nn.functional.pad(weight, extend)
    padding = [padding[0] + max(top, bottom), padding[1] + max(left, right)]
    return src.inputsAt(0), weight, padding, src


def _fuse_convolution(
    graph: torch._C.Graph, conv: torch._C.Node, shapes: _Shapes, counts: dict[str, int]
) -> None:
    x, w, b, stride, padding, dilation, transposed, _, groups = list(conv.inputs())[:9]
    weight = _const(w)
    params = [_const(v) for v in (stride, padding, dilation, groups)]
    if (
        _const(transposed) is not False
        or not isinstance(weight, torch.Tensor)
        or weight.dim() != 4
        or weight.device.type != "cpu"
        or any(p is None for p in params)
    ):
        return
    stride, padding, dilation, groups = list(params[0]), list(params[1]), list(params[2]), params[3]
    drop = None
    if dilation == [1, 1]:
        x, weight, padding, drop = _fold_pad(x, weight, padding)
    out = conv.output()
    uses = out.uses()
    doomed, unary, other = [conv], "none", None
    if len(uses) == 1 and uses[0].user.kind() in _UNARY_POSTOPS:
        doomed.append(uses[0].user)
        unary = _UNARY_POSTOPS[uses[0].user.kind()]
    elif len(uses) == 1 and uses[0].user.kind() in ("aten::add", "aten::add_"):
        add, pos = uses[0].user, uses[0].offset
        operand = add.inputsAt(1 - pos) if pos in (0, 1) else None
        known = operand is not None and out.unique() in shapes
        same = known and shapes.get(operand.unique()) == shapes[out.unique()]
        # add_ writes into its first operand: fusable only when that is the convolution's output.
        writable = add.kind() == "aten::add" or pos == 0
        if same and writable and _const(add.inputsAt(2)) == 1:
            doomed.append(add)
            other = operand
            after = add.output().uses()
            if len(after) == 1 and _UNARY_POSTOPS.get(after[0].user.kind()) == "relu":
                doomed.append(after[0].user)  # oneDNN fuses only a ReLU after a sum
                unary = "relu"
    # At the last node replaced: an add comes after both its operands (a ResNet shortcut
    # convolution may run after the convolution whose sum it joins).
    with graph.insert_point_guard(doomed[-1]):
        if drop is not None:
            w = graph.insertConstant(weight)
        common = [w, b] + [graph.insertConstant(v) for v in (padding, stride, dilation, groups)]
        scalars = graph.create("prim::ListConstruct", [], 1)
        scalars.output().setType(
            torch._C.ListType(torch._C.OptionalType(torch._C.NumberType.get()))
        )
        graph.insertNode(scalars)
        none = graph.insertConstant(None)
        if other is None:
            args = [x, *common, graph.insertConstant(unary), scalars.output(), none]
        else:
            post = [graph.insertConstant("add"), graph.insertConstant(1)]
            post.append(none if unary == "none" else graph.insertConstant(unary))
            args = [x, other, *common, *post, scalars.output(), none]
        fused = graph.insertNode(graph.create(_POINTWISE, args, 1))
    _replace(doomed[-1].output(), fused.output(), shapes)
    for node in reversed(doomed):  # users before producers
        node.destroy()
    counts["convs"] += 1
    counts["unary"] += unary != "none"
    counts["adds"] += other is not None
    if drop is not None:
        drop.destroy()
        counts["pads"] += 1


def _plane_pool(
    graph: torch._C.Graph, node: torch._C.Node, shapes: _Shapes, counts: dict[str, int]
) -> None:
    """A mean over H and W (keepdim) of an N×C×H×W tensor → avg_pool2d with an H×W window."""
    x = node.inputsAt(0)
    if x.unique() not in shapes or len(shapes[x.unique()][0]) != 4:
        return
    if node.kind() == "aten::mean":
        dims, keepdim, dtype = (_const(v) for v in list(node.inputs())[1:4])
        if not dims or {d % 4 for d in dims} != {2, 3} or keepdim is not True or dtype is not None:
            return
    elif _const(node.inputsAt(1)) not in ([1, 1], [1]):
        return
    window = list(shapes[x.unique()][0][2:])
    with graph.insert_point_guard(node):
        args = [x, graph.insertConstant(window), graph.insertConstant(window)]
        args += [graph.insertConstant(v) for v in ([0, 0], False, True)]
        args.append(graph.insertConstant(None))
        pool = graph.insertNode(graph.create("aten::avg_pool2d", args, 1))
    _replace(node.output(), pool.output(), shapes)
    node.destroy()
    counts["pools"] += 1


def _gate_in_place(
    graph: torch._C.Graph, node: torch._C.Node, shapes: _Shapes, counts: dict[str, int]
) -> None:
    """x * gate → x.mul_(gate) where x is a fused convolution's fresh output that only the pool
    computing the gate (already run) and this product read, and the product has x's shape."""
    a, b = node.inputs()
    for x, gate in ((a, b), (b, a)):
        readers = [u.user for u in x.uses() if u.user is not node]
        if (
            x.node().kind() != _POINTWISE
            or len(readers) != 1
            or readers[0].kind() != "aten::avg_pool2d"
            or not readers[0].isBefore(node)
            or x.unique() not in shapes
            or gate.unique() not in shapes
        ):
            continue
        (xs, xt), (gs, gt) = shapes[x.unique()], shapes[gate.unique()]
        if xt != gt or torch.broadcast_shapes(xs, gs) != xs:
            continue
        with graph.insert_point_guard(node):
            product = graph.insertNode(graph.create("aten::mul_", [x, gate], 1))
        _replace(node.output(), product.output(), shapes)
        node.destroy()
        counts["muls"] += 1
        return
