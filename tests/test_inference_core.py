"""The inference core's contracts: the backend registry, the validated artifact spec, the newest
artifact lookup.

One 64² rn34un TorchScript artifact (conftest's `rn34un_artifact`) serves every test; damaged
copies of its sidecar go through the `ptxfast score` command line, which must answer each with
one line and a non-zero exit, never a traceback or a run with the wrong model.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ptxfast.benchmarking.config import BenchConfig
from ptxfast.benchmarking.plan import resolve_source
from ptxfast.cli import cli
from ptxfast.inference import backends
from ptxfast.inference.artifact import (
    ArtifactError,
    ArtifactSpec,
    file_stem,
    latest_artifact,
    read_sidecar,
)
from ptxfast.inference.runtime import PredictorError, build_predictor, load_predictor

pytestmark = pytest.mark.usefixtures("offline", "one_thread")


@pytest.fixture(scope="module")
def artifact(rn34un_artifact) -> Path:
    return rn34un_artifact()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pngs")
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "a.png")
    return root


def _copy(artifact: Path, to: Path, **changes) -> Path:
    """The artifact's model file and sidecar copied into `to`, with `changes` to the sidecar."""
    to.mkdir(parents=True, exist_ok=True)
    side = json.loads(artifact.read_text())
    shutil.copy(artifact.parent / side["file"], to / side["file"])
    (to / artifact.name).write_text(json.dumps({**side, **changes}))
    return to / artifact.name


def _score(folder: Path, out: Path, *args: str):
    return CliRunner().invoke(cli, ["score", str(folder), "--out", str(out / "p.csv"), *args])


def _one_line_refusal(result, *phrases: str) -> str:
    """The one error line of a command that must stop; checks exit status and no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


# ------------------------------------------------------------------------------ the registry


def test_every_backend_is_one_registry_entry():
    assert list(backends.available_backends("cpu")) == list(backends.BACKENDS)
    for name, b in backends.BACKENDS.items():
        assert b.name == name and set(b.precisions) <= {"fp32", "fp16", "bf16"}
        assert callable(b.build) and callable(b.unavailable)
        if name in backends.EXPORTABLE:  # what export writes, load_predictor can read
            assert callable(b.export) and callable(b.load)
    assert set(backends.EXPORTABLE) == {"torchscript", "tensorrt", "onnxruntime", "openvino"}
    assert file_stem("rn34", "onnxruntime", "fp32") == "rn34.onnx-fp32"
    assert file_stem("rn34", "openvino", "bf16") == "rn34.openvino-bf16"
    assert backends.BACKENDS["onnxruntime"].threads_itself
    assert not backends.BACKENDS["torchscript"].threads_itself


@pytest.mark.parametrize("name", ["tensorflow-lite", None, "onnx"])
def test_an_unknown_backend_is_one_clear_error(name):
    with pytest.raises(PredictorError, match="unknown backend") as err:
        build_predictor(name, "rn34", size=64, device="cpu")
    assert "\n" not in str(err.value)
    for known in backends.BACKENDS:
        assert known in str(err.value)


def test_an_unavailable_backend_or_precision_is_one_clear_error(monkeypatch):
    off = replace(backends.BACKENDS["torchscript"], unavailable=lambda d: "switched off (test)")
    monkeypatch.setitem(backends.BACKENDS, "torchscript", off)
    with pytest.raises(PredictorError, match=r"^switched off \(test\)$"):
        build_predictor("torchscript", "rn34", size=64, device="cpu")
    with pytest.raises(PredictorError, match="fp32 ONNX graph"):
        backends.check_precision("onnxruntime", "bf16", torch.device("cpu"))
    with pytest.raises(PredictorError, match="fp16 runs on CUDA"):
        backends.check_precision("eager", "fp16", torch.device("cpu"))


# ------------------------------------------------------------------------------ the spec


def test_spec_is_typed_and_keeps_the_record(artifact):
    spec = read_sidecar(artifact)
    assert isinstance(spec, ArtifactSpec)
    assert (spec.name, spec.kind, spec.backend, spec.precision) == (
        "rn34un",
        "segmenter",
        "torchscript",
        "fp32",
    )
    assert spec.size == 64 and spec.batch == (1, 2, 2) and spec.return_mask and spec.mask_output
    assert spec["parity"]["passed"] and spec.model_path.is_file()
    with pytest.raises(TypeError):
        spec.record["backend"] = "eager"  # read-only: what was validated stays valid


def test_spec_names_the_torch_a_fused_graph_is_bound_to(artifact):
    record = json.loads(artifact.read_text())
    spec = ArtifactSpec.from_record(record, artifact)
    assert spec.torch_if_fused == spec.fused_by_torch == (record["cpu_fusion"] or {}).get("torch")
    # A sidecar from before `cpu_fusion`: the torch that exported it, should the graph be fused.
    old = {k: v for k, v in record.items() if k != "cpu_fusion"}
    old["versions"] = {**record["versions"], "torch": "2.0.1"}
    spec = ArtifactSpec.from_record(old, artifact)
    assert spec.fused_by_torch is None and spec.torch_if_fused == "2.0.1"
    old["versions"]["torch"] = 2.0
    with pytest.raises(ArtifactError, match="'versions.torch'"):
        ArtifactSpec.from_record(old, artifact)


DAMAGED = {
    "tensorflow-lite": ({"backend": "tensorflow-lite"}, "'backend'"),
    "backend null": ({"backend": None}, "'backend'"),
    "input null": ({"input": None}, "'input'"),
    "thresholds text": ({"thresholds": "0.3"}, "'thresholds'"),
    "label out of range": ({"thresholds": {"label": 1.5}}, "'thresholds.label'"),
    "batch reversed": ({"batch": {"min": 4, "opt": 2, "max": 1}}, "'batch'"),
    "precision for backend": ({"precision": {"requested": "fp8"}}, "'precision.requested'"),
    "file outside": ({"file": "../rn34un.ts"}, "'file'"),
    "format version": ({"format_version": 2}, "format version 2"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_sidecar_is_one_line_naming_the_field(case, artifact, folder, tmp_path):
    changes, field = DAMAGED[case]
    copy = _copy(artifact, tmp_path / "exports", **changes)
    with pytest.raises(ArtifactError, match="re-export it") as err:
        read_sidecar(copy)
    assert field in str(err.value) and "\n" not in str(err.value)
    result = _score(folder, tmp_path, "--model", str(copy))
    _one_line_refusal(result, field, "re-export it", str(copy))
    assert not (tmp_path / "p.csv").exists()


def test_every_command_shows_a_ptxfast_error_as_one_line(artifact, tmp_path):
    """The command group catches the common base once: bench and report raise their own
    errors, and the artifact's, with no re-wrapping of their own."""
    copy = _copy(artifact, tmp_path / "exports", backend=None)
    result = CliRunner().invoke(cli, ["bench", "--model", str(copy), "--device", "cpu"])
    _one_line_refusal(result, "'backend'", "re-export it")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "other.csv")])
    _one_line_refusal(result, "not a ptxfast predictions CSV")


def test_a_sidecar_value_cannot_act_on_the_terminal(artifact, tmp_path):
    copy = _copy(artifact, tmp_path, backend="\x1b[2J\x1b]0;owned\x07")
    with pytest.raises(ArtifactError) as err:
        read_sidecar(copy)
    assert "\x1b" not in str(err.value) and "\\x1b" in str(err.value)


def test_an_undamaged_copy_still_loads(artifact, tmp_path):
    copy = _copy(artifact, tmp_path)
    predictor = load_predictor(copy, device="cpu")
    assert predictor.sidecar.backend == "torchscript" and predictor.return_mask


# ------------------------------------------------------------------------------ the newest one


def test_a_damaged_newest_sidecar_is_named_not_skipped(artifact, folder, tmp_path):
    exports = tmp_path / "exports"
    good = _copy(artifact, exports)
    assert latest_artifact(exports) == good
    broken = exports / "rn34un.torchscript-fp32-new.json"
    broken.write_text(good.read_text()[:100])  # a write cut short
    later = good.stat().st_mtime + 60
    os.utime(broken, (later, later))
    with pytest.raises(ArtifactError, match="newest sidecar") as err:
        latest_artifact(exports)
    assert broken.name in str(err.value)
    result = _score(folder, tmp_path, "--exports", str(exports))
    _one_line_refusal(result, broken.name, "not readable JSON")
    with pytest.raises(ArtifactError, match="newest sidecar"):  # bench does not fall back either
        resolve_source(BenchConfig(exports=exports), False, lambda line: None)
    # Older than the newest readable one, the same file is not a candidate and is passed over.
    earlier = good.stat().st_mtime - 60
    os.utime(broken, (earlier, earlier))
    assert latest_artifact(exports) == good


def test_a_damaged_sidecar_of_another_model_does_not_block_one(artifact, tmp_path):
    exports = tmp_path / "exports"
    good = _copy(artifact, exports)
    later = good.stat().st_mtime + 60
    # Another model's name that starts with this one's: not its sidecar.
    broken = exports / "rn34un+rn34.torchscript-fp32.json"
    broken.write_text(good.read_text()[:100])
    os.utime(broken, (later, later))
    assert latest_artifact(exports, "rn34un") == good
    with pytest.raises(ArtifactError, match="newest sidecar"):  # with no name it may be the one
        latest_artifact(exports)
    with pytest.raises(ArtifactError, match="newest sidecar"):
        latest_artifact(exports, "rn34un+rn34")
    own = exports / "rn34un.torchscript-fp32-new.json"
    own.write_text(good.read_text()[:100])
    os.utime(own, (later, later))
    with pytest.raises(ArtifactError, match="newest sidecar") as err:
        latest_artifact(exports, "rn34un")
    assert own.name in str(err.value)


# ------------------------------------------------------------------------------ Triton


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_export_writes_a_triton_repository(backend, artifact, tmp_path, monkeypatch):
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    spec = read_sidecar(artifact)
    runs = spec.checkpoint.parent.parent
    repo = tmp_path / "triton"
    args = ["export", "--model", "rn34un", "--runs", str(runs), "--out", str(tmp_path / "out")]
    args += ["--backend", backend, "--device", "cpu", "--batch", "1:2:4", "--parity-n", "2"]
    result = CliRunner().invoke(cli, [*args, "--return-mask", "--triton", str(repo)])
    assert result.exit_code == 0, result.output
    written = read_sidecar(next((tmp_path / "out").glob("*.json")))
    config = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "rn34un" / "config.pbtxt").read_text(), config)
    assert (config.name, config.platform, config.max_batch_size) == (
        "rn34un",
        "onnxruntime_onnx",
        4,
    )
    (image,) = config.input
    assert image.name == "image" and list(image.dims) == [1, 64, 64]
    assert image.data_type == model_config_pb2.TYPE_FP32
    outputs = {o.name: o for o in config.output}
    assert set(outputs) == {"prob", "area", "mask"}
    assert outputs["area"].data_type == model_config_pb2.TYPE_INT32
    assert list(outputs["prob"].dims) == [1] and list(outputs["prob"].reshape.shape) == []
    assert list(outputs["mask"].dims) == [1, 64, 64]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 2 and warmup.inputs["image"].random_data
    # The model file answers like the artifact (onnxruntime alone, the names of the config).
    session = ort.InferenceSession(str(repo / "rn34un" / "1" / "model.onnx"))
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    prob, area = session.run(["prob", "area"], {"image": x.numpy()})
    want = load_predictor(written, device="cpu")(x)
    np.testing.assert_allclose(prob, want.prob.numpy(), atol=1e-4)
    np.testing.assert_array_equal(area, want.area.numpy())
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    if backend == "onnx":  # a TensorRT engine's model: the engine's own tensor names and types
        from ptxfast.export import triton
        from ptxfast.inference import trt

        bindings = [("x", "HALF", True), ("output0", "HALF", False), ("output1", "INT32", False)]
        monkeypatch.setattr(trt, "engine_io", lambda engine: bindings)
        plan = tmp_path / "engine.bin"
        plan.write_bytes(b"serialized engine")
        written = triton.write_repository(written, tmp_path / "trt", written.model_path, plan)
        config = model_config_pb2.ModelConfig()
        text_format.Parse(written[1].read_text(), config)
        assert (config.name, config.platform) == ("rn34un_tensorrt", "tensorrt_plan")
        assert [(t.name, t.data_type) for t in config.input] == [("x", model_config_pb2.TYPE_FP16)]
        assert [(t.name, t.data_type) for t in config.output] == [
            ("output0", model_config_pb2.TYPE_FP16),
            ("output1", model_config_pb2.TYPE_INT32),
        ]
        assert (
            tmp_path / "trt" / "rn34un_tensorrt" / "1" / "model.plan"
        ).read_bytes() == b"serialized engine"
