"""A Triton Inference Server model repository from an exported artifact (`ptxfast export --triton`).

`write_repository(spec, out, onnx_file)` writes

```
OUT/<model>/config.pbtxt     platform onnxruntime_onnx, from the artifact's spec
OUT/<model>/1/model.onnx     the fused fp32 graph (the ONNX artifact itself, or the same graph
                             exported beside a TorchScript / TensorRT artifact)
OUT/<model>_tensorrt/...     platform tensorrt_plan, 1/model.plan: where a TensorRT engine was
                             built (a GPU export), the same engine serialized for Triton
```

`<model>` is the artifact's name with `+` written `_` (`eb3un_eb3`), a name that reads the same
in Triton's URLs. The config comes from the spec: `max_batch_size` is the artifact's largest
batch, the input `image` is N×1×S×S, the outputs are what the graph returns (`prob` and `area`
per image, `mask` N×1×S×S for segmenters and cascades) with their ONNX types, dynamic batching
prefers the artifact's optimal and largest batch, one instance on the GPU (or the CPU for a CPU
artifact), and a warm-up request of random images at the optimal batch, so the first real
request does not pay for the session's start. The text is written here (no protobuf needed to
export); the tests parse it with Triton's own `ModelConfig` message.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ptxfast.export.config import ExportError
from ptxfast.files import atomic_write, write_text
from ptxfast.inference.spec import ArtifactSpec

# ONNX TensorProto element types and TensorRT data types → Triton data types.
_TRITON_TYPES = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16", 16: "TYPE_BF16"}
_TRT_TYPES = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "BF16": "TYPE_BF16", "INT32": "TYPE_INT32",
              "INT64": "TYPE_INT64"}  # fmt: skip
_QUEUE_DELAY_US = 500  # how long Triton may hold a request to batch it with others


def model_name(spec: ArtifactSpec) -> str:
    """The Triton model name of an artifact: its name with `+` as `_` (`eb3un_eb3`)."""
    return spec.name.replace("+", "_")


def _tensors(onnx_file: Path, size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of the ONNX graph: name, Triton type and dims without the batch. A
    dimension the file leaves symbolic (an exporter's choice for the mask) is the fused graph's
    own: 1×S×S for a four-dimensional tensor, else variable (-1)."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value or None for d in t.shape.dim][1:]  # the first is the batch
            if None in dims:
                dims = [1, size, size] if len(dims) == 3 else [d or -1 for d in dims]
            out.append({"name": v.name, "type": _TRITON_TYPES[t.elem_type], "dims": dims})
        return out

    return describe(graph.input), describe(graph.output)


def _tensor_text(t: dict[str, Any]) -> str:
    # A tensor of one value per image has no dims beyond the batch; Triton wants at least one,
    # so it is declared [1] and reshaped to [] (the graph's own shape).
    dims = t["dims"] or [1]
    reshape = "\n    reshape: { shape: [ ] }" if not t["dims"] else ""
    return (
        f'  {{\n    name: "{t["name"]}"\n    data_type: {t["type"]}\n'
        f"    dims: [ {', '.join(str(d) for d in dims)} ]{reshape}\n  }}"
    )


def config_text(
    spec: ArtifactSpec,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    *,
    name: str,
    platform: str,
    gpu: bool,
) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for one model."""
    lo, opt, hi = spec.batch
    preferred = sorted({b for b in (opt, hi) if b >= 1})
    image = inputs[0]
    warmup = (
        'model_warmup [\n  {\n    name: "random images"\n'
        f'    batch_size: {opt}\n    inputs {{\n      key: "{image["name"]}"\n'
        f"      value: {{\n        data_type: {image['type']}\n"
        f"        dims: [ {', '.join(str(d) for d in image['dims'])} ]\n"
        "        random_data: true\n      }\n    }\n  }\n]\n"
    )
    tensors = {
        kind: ",\n".join(_tensor_text(t) for t in group)
        for kind, group in (("input", inputs), ("output", outputs))
    }
    return (
        f"# Written by ptxfast export from {spec.path.name} (sha256 {spec.sha256[:16]}…):\n"
        f"# {spec.name} at {spec.size}², {spec.backend} {spec.precision}; label: prob > "
        f"{float(spec.thresholds['label']):g} (the artifact's rule).\n"
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {hi}\n'
        f"input [\n{tensors['input']}\n]\noutput [\n{tensors['output']}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]\n"
        f"  max_queue_delay_microseconds: {_QUEUE_DELAY_US}\n}}\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]\n"
        + warmup
    )


def _engine_tensors(
    plan: Path, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ONNX graph's tensors renamed and retyped as the engine binds them (in order: the
    image; prob, area and, when the engine returns it, the mask)."""
    from ptxfast.inference import trt

    tensors = trt.engine_io(plan.read_bytes())
    ins = [(n, t) for n, t, is_input in tensors if is_input]
    outs = [(n, t) for n, t, is_input in tensors if not is_input]
    return (
        [{**d, "name": n, "type": _TRT_TYPES[t]} for d, (n, t) in zip(inputs, ins, strict=True)],
        # The ONNX graph always carries the mask; an engine fused without it has two outputs.
        [{**d, "name": n, "type": _TRT_TYPES[t]} for d, (n, t) in zip(outputs, outs, strict=False)],
    )


def _place(source: Path, target: Path) -> None:
    """Copy `source` to `target` through a temporary name, so a model file is whole or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def write_repository(
    spec: ArtifactSpec, out: str | Path, onnx_file: Path, plan_file: Path | None = None
) -> list[Path]:
    """Write the model repository for `spec` under `out` (see the module docstring) from the
    fused graph's ONNX file (and a serialized TensorRT engine); returns the config files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--triton {out} is a file; give a folder for the model repository")
    name = model_name(spec)
    inputs, outputs = _tensors(onnx_file, spec.size)
    gpu = spec.device == "cuda"
    written = []
    models = [(name, "onnxruntime_onnx", onnx_file, "model.onnx")]
    if plan_file is not None:
        models.append((f"{name}_tensorrt", "tensorrt_plan", plan_file, "model.plan"))
    for model, platform, source, target in models:
        if platform == "tensorrt_plan":
            inputs, outputs = _engine_tensors(source, inputs, outputs)
        _place(source, out / model / "1" / target)
        config = out / model / "config.pbtxt"
        text = config_text(spec, inputs, outputs, name=model, platform=platform, gpu=gpu)
        write_text(config, text)
        written.append(config)
    return written
