"""The CPU graph rewrite: a frozen TorchScript graph moved onto oneDNN's fused convolutions.

`fuse_for_cpu(frozen, example)` rewrites, in place, every 2-D convolution of a frozen graph into
`mkldnn::_convolution_pointwise` with the activation, residual sum and zero padding after it
fused into the kernel, SE means into plane pools and SE gates into in-place products (the
function's notes say why each step is exact). The result still saves and loads with
`torch.jit.save` / `torch.jit.load` in a process that has only torch.

The rewrite writes nodes of a private operator whose arguments are positional, so it is fenced:

- `POINTWISE_SCHEMAS` names the arguments, in order, of the two overloads it writes, and every
  node is built from those names; `schema_problem()` compares them with the schemas this torch
  registers (`torch._C._jit_get_schemas_for_operator`) and `cpu_fusion_available` says no when
  they differ, with one logged line: the graph then stays the plain frozen one (same answers,
  slower);
- `fused.to_torchscript` compares the rewritten graph with the eager model at fp32 and bf16;
- an artifact records the torch that rewrote it (`describe`, the sidecar's `cpu_fusion`) and
  `runtime.load_predictor` refuses to run it under another torch (`torch_mismatch`).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_POINTWISE = "mkldnn::_convolution_pointwise"
# The arguments, in order, of each overload the rewrite writes ("" is the default overload).
POINTWISE_SCHEMAS: dict[str, tuple[str, ...]] = {
    "": ("X", "W", "B", "padding", "stride", "dilation", "groups", "attr", "scalars", "algorithm"),
    "binary": (
        "X", "other", "W", "B", "padding", "stride", "dilation", "groups", "binary_attr",
        "alpha", "unary_attr", "unary_scalars", "unary_algorithm",
    ),
}  # fmt: skip
# How far the rewritten graph's probabilities may be from the eager model's: fp32 is the same
# arithmetic reordered (float rounding); bf16 rounds to 8 bits at every fused store, and a
# reordering of bf16 roundings moves a probability as far as the export gate lets bf16 move
# from fp32 (0.15), while a broken padding, layout or post-op moves it by 0.3 to 1.
REWRITE_ATOL = {torch.float32: 1e-4, torch.bfloat16: 0.15}
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
_logged: set[str] = set()


def _registered() -> dict[str, tuple[str, ...]] | None:
    """{overload: argument names} of the fused convolution in this torch; None when this torch
    cannot list operator schemas (a private API)."""
    try:
        schemas = torch._C._jit_get_schemas_for_operator(_POINTWISE)
    except (AttributeError, RuntimeError):
        return None
    return {s.overload_name: tuple(a.name for a in s.arguments) for s in schemas}


def schema_problem() -> str | None:
    """Why this torch's fused convolution is not the one the rewrite writes (an absent op, or
    an overload whose argument names or count differ); None when it is."""
    found = _registered()
    if found is None:
        return "this torch does not list operator schemas (torch._C._jit_get_schemas_for_operator)"
    if not found:
        return f"this torch has no {_POINTWISE}"
    for overload, names in POINTWISE_SCHEMAS.items():
        have = found.get(overload)
        if have != names:
            op = _POINTWISE + (f".{overload}" if overload else "")
            what = f"({', '.join(have)})" if have is not None else "no such overload"
            return f"{op} takes {what}, the rewrite writes ({', '.join(names)})"
    return None


def cpu_fusion_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch and CPU run the oneDNN fused convolution that `fuse_for_cpu` writes
    into graphs at `dtype` (x86-64 and ARM builds of torch >= 2.0 do at fp32; bf16 needs a CPU
    that oneDNN has bf16 kernels for: avx512bw/vl/dq or avx_ne_convert, else the op raises).
    A registered op whose schema is not the one the rewrite writes is logged once and refused."""
    problem = schema_problem()
    if problem is not None:
        if _registered() and problem not in _logged:  # present but changed: say so, once
            _logged.add(problem)
            log.warning("CPU graph rewrite skipped, the plain frozen graph runs: %s", problem)
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def _public(version: str) -> str:
    """ "2.14.1+cu130" → "2.14.1": builds of one release register the same operators."""
    return version.split("+")[0]


def describe(scripted: torch.jit.ScriptModule) -> dict[str, object] | None:
    """What a sidecar records of a CPU-fused graph (the torch that rewrote it, the operator and
    how many nodes use it); None for a graph without the rewrite."""
    n = sum(1 for _ in scripted.graph.findAllNodes(_POINTWISE))
    return {"torch": torch.__version__, "op": _POINTWISE, "nodes": n} if n else None


def torch_mismatch(recorded: str | None) -> str | None:
    """Why a graph rewritten by torch `recorded` cannot run here (its nodes are bound to the
    fused convolution's schema in that torch); None when this torch is the same release."""
    if recorded and _public(recorded) != _public(torch.__version__):
        return f"fused for the CPU by torch {recorded} and this is torch {torch.__version__}"
    return None


def is_cpu_fused(scripted: torch.jit.ScriptModule) -> bool:
    """Whether a frozen graph already runs its convolutions through `fuse_for_cpu`'s kernels."""
    return any(True for _ in scripted.graph.findAllNodes(_POINTWISE))


def fuse_for_cpu(
    scripted: torch.jit.ScriptModule, example: torch.Tensor, dtype: torch.dtype | None = None
) -> dict[str, int]:
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
    batch of the graph's size, input dtype and layout) is run once to learn the shapes the
    residual adds, SE products and pools need checked; `dtype` is the dtype the graph computes
    in (default: the example's; a bf16 graph takes float32 images). A graph that already has
    fused convolutions is left as it is. Call it before the module first runs: a TorchScript
    method's executor keeps its own copy of the graph from the first call on.
    """
    counts = {"convs": 0, "unary": 0, "adds": 0, "pads": 0, "pools": 0, "muls": 0}
    graph = scripted.graph
    if is_cpu_fused(scripted) or not cpu_fusion_available(dtype or example.dtype):
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


def _arguments(overload: str, values: dict[str, torch._C.Value]) -> list[torch._C.Value]:
    """The node's inputs in the order `POINTWISE_SCHEMAS` names them for `overload`."""
    names = POINTWISE_SCHEMAS[overload]
    if set(values) != set(names):
        raise ValueError(
            f"{_POINTWISE}.{overload or 'default'} takes {names}, not {sorted(values)}"
        )
    return [values[n] for n in names]


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
        common = {"padding": padding, "stride": stride, "dilation": dilation, "groups": groups}
        common = {k: graph.insertConstant(v) for k, v in common.items()}
        scalars = graph.create("prim::ListConstruct", [], 1)
        scalars.output().setType(
            torch._C.ListType(torch._C.OptionalType(torch._C.NumberType.get()))
        )
        graph.insertNode(scalars)
        none = graph.insertConstant(None)
        if other is None:
            overload = ""
            post = {"attr": graph.insertConstant(unary), "scalars": scalars.output()}
            post["algorithm"] = none
        else:
            overload = "binary"
            post = {"other": other, "binary_attr": graph.insertConstant("add")}
            post["alpha"] = graph.insertConstant(1)
            post["unary_attr"] = none if unary == "none" else graph.insertConstant(unary)
            post.update(unary_scalars=scalars.output(), unary_algorithm=none)
        args = _arguments(overload, {"X": x, "W": w, "B": b, **common, **post})
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
