"""The runtime: one Predictor interface over eager, TorchScript, TensorRT and inductor."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from float_checks import area_slack

from ptxfast.export import ExportConfig, export_model
from ptxfast.inference.cpu_fusion import cpu_fusion_available, is_cpu_fused
from ptxfast.inference.fused import fuse
from ptxfast.inference.runtime import (
    BACKENDS,
    Outputs,
    Predictor,
    PredictorError,
    available_backends,
    build_predictor,
    load_predictor,
    require_backend,
)
from ptxfast.models import PIXEL_THRESHOLD, build

pytestmark = pytest.mark.usefixtures("offline", "one_thread")
S = 64
NAME = "rn34un+rn34"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build(NAME, weights=None).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(3, 1, S, S, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def eager(model):
    return build_predictor("eager", model, name=NAME, size=S, device="cpu")


@pytest.fixture(scope="module")
def scripted(model):
    return build_predictor("torchscript", model, name=NAME, size=S, device="cpu", batch=(1, 2, 4))


def test_available_backends_name_what_is_missing():
    backends = available_backends("cpu")
    assert set(backends) == set(BACKENDS)
    assert backends["eager"] is None and backends["torchscript"] is None
    if not torch.cuda.is_available():
        assert "CUDA" in backends["tensorrt"]
        # The registry adds what to use instead once; the reason itself is bare.
        assert backends["tensorrt"].count("Use --backend torchscript.") == 1
        assert "--backend" not in BACKENDS["tensorrt"].unavailable(torch.device("cpu"))
        with pytest.raises(PredictorError, match="needs a CUDA GPU"):
            require_backend("tensorrt", torch.device("cpu"))
    has_cxx = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    assert (backends["inductor"] is None) == (has_cxx or bool(os.environ.get("CXX")))
    with pytest.raises(PredictorError, match="unknown backend"):
        require_backend("onnx", torch.device("cpu"))


def test_eager_predictor_outputs(eager, model, x):
    out = eager(x)
    assert isinstance(out, Outputs) and out.mask is None
    assert out.prob.dtype == torch.float32 and out.prob.shape == (3,)
    assert out.area.dtype == torch.int32 and out.area.shape == (3,)
    with torch.inference_mode():
        logits, mask = model.forward_with_mask(x)
    torch.testing.assert_close(out.prob, torch.sigmoid(logits)[:, 0], atol=1e-4, rtol=0)
    expected_area = (mask > PIXEL_THRESHOLD).flatten(1).sum(1)
    assert (out.area.long() - expected_area).abs().max() <= 1
    assert torch.equal(eager.label(out.prob), out.prob > 0.5)
    assert eager.thresholds == {"label": 0.5, "pixel": 0.3, "min_area": 6, "score_k": None}
    assert (eager.name, eager.kind, eager.size, eager.backend) == (NAME, "cascade", S, "eager")
    assert eager.device == torch.device("cpu") and eager.input_dtype == torch.float32


def test_torchscript_predictor_equals_eager(eager, scripted, x):
    a, b = eager(x), scripted(x)
    torch.testing.assert_close(b.prob, a.prob, atol=1e-4, rtol=0)
    assert (b.area.long() - a.area.long()).abs().max() <= 1
    assert scripted.path == "trace" and isinstance(scripted.module, torch.jit.ScriptModule)
    # A non-contiguous float64 batch is cast and laid out by the predictor.
    y = x.double().transpose(2, 3).transpose(2, 3)
    torch.testing.assert_close(scripted(y).prob, b.prob)


def test_wrong_shape_is_a_clear_error(eager):
    with pytest.raises(PredictorError, match=r"N×1×64×64.*got shape \(2, 3, 64, 64\)"):
        eager(torch.rand(2, 3, S, S))
    with pytest.raises(PredictorError, match="resize"):
        eager(torch.rand(1, 1, 32, 32))


def test_bf16_autocast_predictor_runs_on_cpu(model, eager, x):
    p = build_predictor("eager", model, name=NAME, size=S, precision="bf16", device="cpu")
    out = p(x)
    assert out.prob.dtype == torch.float32 and p.autocast_dtype == torch.bfloat16
    assert (out.prob - eager(x).prob).abs().max() < 0.05


def test_fp16_on_cpu_is_refused(model):
    with pytest.raises(PredictorError, match="fp16 runs on CUDA"):
        build_predictor("torchscript", model, name=NAME, size=S, precision="fp16", device="cpu")


def test_build_from_name_and_checkpoint(tmp_path):
    from ptxfast.checkpoint import checkpoint_header, save_checkpoint

    p = build_predictor("eager", "rn34", size=S, device="cpu")  # a name: random init
    assert p.kind == "classifier" and p.thresholds["pixel"] is None
    assert torch.equal(p(torch.rand(2, 1, S, S)).area, torch.full((2,), -1, dtype=torch.int32))
    torch.manual_seed(1)
    state = {"model": build("rn34", weights=None).state_dict(), **checkpoint_header("rn34", 96)}
    path = save_checkpoint(state, tmp_path / "best.pt")
    q = build_predictor("eager", path, device="cpu")
    assert (q.name, q.size) == ("rn34", 96)  # the training size comes from the checkpoint
    with pytest.raises(PredictorError, match="needs name="):
        build_predictor("eager", build("rn34", weights=None), size=S)


def test_strict_batch_range_pads_and_splits(model, x):
    # The TensorRT engine's fixed batch range, exercised on the eager fused module.
    fused = fuse(model, NAME, S)
    direct = Predictor(fused, name=NAME, size=S, backend="eager", precision="fp32", device="cpu")
    ranged = Predictor(
        fused,
        name=NAME,
        size=S,
        backend="tensorrt",
        precision="fp32",
        device=torch.device("cpu"),
        batch=(2, 2, 2),
    )
    seen = []
    ranged.module = lambda t: seen.append(t.shape[0]) or fused(t)
    big = torch.cat([x, x, x[:1]])  # 7 images
    out, ref = ranged(big), direct(big)
    assert seen == [2, 2, 2, 2]  # three full chunks and one padded from 1 to 2
    torch.testing.assert_close(out.prob, ref.prob, atol=1e-5, rtol=0)
    # oneDNN may pick other kernels for a batch of 2 than of 7: areas agree but for pixels
    # within the probabilities' tolerance of the threshold.
    with torch.inference_mode():
        mask = fuse(model, NAME, S, return_mask=True)(big)[2]
    slack = torch.from_numpy(area_slack(mask, 1e-5))
    assert out.prob.shape == (7,) and ((out.area - ref.area).abs() <= slack).all()


def test_load_predictor_runs_the_artifact(tmp_path, x):
    from ptxfast.checkpoint import checkpoint_header, save_checkpoint

    torch.manual_seed(2)
    classifier = build("rn34", weights=None).eval()
    save_checkpoint(
        {"model": classifier.state_dict(), **checkpoint_header("rn34", S)},
        tmp_path / "runs" / "rn34" / "best.pt",
    )
    cfg = ExportConfig(
        "rn34", runs=tmp_path / "runs", out=tmp_path / "exports", device="cpu", parity_n=4,
        backend="torchscript",
    )  # fmt: skip
    result = export_model(cfg)
    p = load_predictor(result.sidecar_path)
    assert (p.name, p.kind, p.size, p.backend, p.precision, p.path) == (
        "rn34",
        "classifier",
        S,
        "torchscript",
        "fp32",
        "trace",
    )
    assert p.batch == (1, 8, 32) and p.input_dtype == torch.float32 and p.sidecar is not None
    assert p.thresholds == {"label": 0.5, "pixel": None, "min_area": None, "score_k": None}
    reference = build_predictor("eager", classifier, name="rn34", size=S, device="cpu")
    torch.testing.assert_close(p(x).prob, reference(x).prob, atol=1e-4, rtol=0)
    # "auto" keeps a CPU artifact on the CPU even where a GPU is present.
    assert load_predictor(result.model_path, device="auto").device.type == "cpu"
    # optimize_for_inference is a load-time choice (its graphs cannot be saved): same answers.
    optimized = load_predictor(result.model_path, device="cpu", optimize=True)
    assert optimized.path == "trace+optimized"
    torch.testing.assert_close(optimized(x).prob, reference(x).prob, atol=1e-4, rtol=0)


@pytest.mark.skipif(not cpu_fusion_available(), reason="this torch has no oneDNN fused conv")
def test_unfused_cpu_artifact_is_fused_on_load(tmp_path, x, monkeypatch):
    import functools

    import ptxfast.inference.backends
    from ptxfast.checkpoint import checkpoint_header, save_checkpoint

    torch.manual_seed(3)
    classifier = build("rn34", weights=None).eval()
    save_checkpoint(
        {"model": classifier.state_dict(), **checkpoint_header("rn34", S)},
        tmp_path / "runs" / "rn34" / "best.pt",
    )
    # An artifact as exported before the CPU rewrite existed: the plain frozen graph.
    plain = functools.partial(ptxfast.inference.backends.to_torchscript, cpu_fusion=False)
    monkeypatch.setattr(ptxfast.inference.backends, "to_torchscript", plain)
    cfg = ExportConfig(
        "rn34", runs=tmp_path / "runs", out=tmp_path / "exports", device="cpu", parity_n=4,
        backend="torchscript",
    )  # fmt: skip
    result = export_model(cfg)
    assert not is_cpu_fused(torch.jit.load(str(result.model_path)))
    loaded = load_predictor(result.sidecar_path, device="cpu")
    as_saved = load_predictor(result.sidecar_path, device="cpu", cpu_fusion=False)
    assert is_cpu_fused(loaded.module) and not is_cpu_fused(as_saved.module)
    torch.testing.assert_close(loaded(x).prob, as_saved(x).prob, atol=1e-5, rtol=0)


@pytest.mark.skipif(
    not os.environ.get("PTXFAST_SLOW_TESTS"),
    reason="torch.compile on CPU builds C++ kernels for minutes on 2 cores; PTXFAST_SLOW_TESTS=1",
)
@pytest.mark.slow
def test_inductor_predictor_matches_eager(eager, model, x):
    if available_backends("cpu")["inductor"] is not None:
        pytest.skip(available_backends("cpu")["inductor"])
    p = build_predictor("inductor", model, name=NAME, size=S, device="cpu")
    torch.testing.assert_close(p(x).prob, eager(x).prob, atol=1e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_predictors_fp16(model, x):
    ref = build_predictor("eager", model, name=NAME, size=S, device="cuda")(x).prob
    for backend in ("eager", "torchscript"):
        p = build_predictor(backend, model, name=NAME, size=S, precision="fp16", device="cuda")
        out = p(x)  # CPU float32 in, moved and cast inside
        assert out.prob.device.type == "cuda" and out.prob.dtype == torch.float32
        assert (out.prob - ref).abs().max() < 0.02, backend
