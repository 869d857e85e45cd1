"""Export: fused graphs equal the eager models, artifacts are verified, the parity gate bites.

Everything runs at 64² with random-init models and checkpoints written in training's format.
TensorRT tests need torch-tensorrt and a CUDA GPU and skip without them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fresh_process import run_fresh

from ptxfast import CASCADES, MODEL_NAMES
from ptxfast.checkpoint import checkpoint_header, sha256_file
from ptxfast.cli import cli
from ptxfast.export import (
    DEFAULT_TOLERANCES,
    PROFILE_DIR,
    ExportConfig,
    ExportError,
    Tolerance,
    cpu_bf16,
    export_model,
    gate,
    load_profile,
    parse_batch,
    plan,
)
from ptxfast.inference.artifact import (
    SIDECAR_FIELDS,
    ArtifactError,
    latest_artifact,
    read_sidecar,
    verify,
)
from ptxfast.inference.cpu_fusion import (
    REWRITE_ATOL,
    cpu_fusion_available,
    fuse_for_cpu,
    is_cpu_fused,
)
from ptxfast.inference.fused import (
    DTYPE_NAMES,
    Fused,
    FusedError,
    example_input,
    fuse,
    quiet_jit,
    to_torchscript,
)
from ptxfast.inference.runtime import PredictorError, load_predictor
from ptxfast.models import (
    PIXEL_THRESHOLD,
    build,
    score_k,
    segmenter_label,
    segmenter_score,
)
from ptxfast.training import write_untrained

pytestmark = pytest.mark.usefixtures("offline", "one_thread")
S = 64
BATCH = (1, 2, 4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name in ("rn34un+rn34", "rn34"):  # the cascade writes its rn34un first
        write_untrained(root, name, S)
    return root


@pytest.fixture(scope="module")
def batch():
    return torch.rand(2, 1, S, S, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def cascades():
    """Each cascade at random init, fused at fp32 and traced + frozen once."""
    out = {}
    for i, name in enumerate(CASCADES):
        torch.manual_seed(i)
        model = build(name, weights=None).eval()
        # check=False: the tests below compare with eager at two batch sizes themselves.
        out[name] = (model, to_torchscript(fuse(model, name, S), BATCH, "cpu", check=False))
    return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> Path:
    """One fp32 TorchScript artifact of rn34un+rn34 made through the CLI; returns its sidecar."""
    out = tmp_path_factory.mktemp("exports")
    args = ["export", "--cascade", "rn34un+rn34", "--runs", str(runs), "--out", str(out)]
    args += ["--backend", "torchscript", "--precision", "fp32", "--device", "cpu"]
    args += ["--batch", "1:2:4", "--parity-n", "6"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out / "rn34un+rn34.torchscript-fp32.json"


# ------------------------------------------------------------------------------ the fused graph


@pytest.mark.parametrize("name", CASCADES)
def test_fused_graph_equals_eager_cascade(cascades, batch, name):
    model, scripted = cascades[name]
    with torch.inference_mode():
        logits, mask = model.forward_with_mask(batch)
        prob, area = scripted(batch)
    torch.testing.assert_close(prob, torch.sigmoid(logits)[:, 0], atol=1e-4, rtol=0)
    expected_area = (mask > PIXEL_THRESHOLD).flatten(1).sum(1)
    assert area.dtype == torch.int32 and prob.dtype == torch.float32
    assert (area.long() - expected_area).abs().max() <= 1  # a pixel may sit on 0.3 exactly
    assert area.shape == prob.shape == (2,)


@pytest.mark.parametrize("name", CASCADES)
def test_fused_graph_is_one_graph_with_both_subnetworks(cascades, batch, name):
    model, scripted = cascades[name]
    ran = set()
    hooks = [
        m.register_forward_hook(lambda mod, *_: ran.add(id(mod)))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.inference_mode():
        model(batch)
    for h in hooks:
        h.remove()
    seg_convs = sum(id(m) in ran for m in model.segmenter.modules())
    cls_convs = sum(id(m) in ran for m in model.classifier.modules())
    assert seg_convs > 10 and cls_convs > 10
    kinds = [n.kind() for n in scripted.graph.nodes()]
    convs = sum("conv" in k for k in kinds)
    assert convs >= seg_convs + cls_convs
    assert "prim::CallMethod" not in kinds and "prim::PythonOp" not in kinds
    assert "aten::topk" not in kinds and "aten::sigmoid" in kinds and "aten::cat" in kinds
    # One input (the image batch) besides the module itself, and a batch it was not traced at.
    assert len(list(scripted.graph.inputs())) == 2
    with torch.inference_mode():
        prob, area = scripted(torch.rand(3, 1, S, S))
    assert prob.shape == area.shape == (3,)


def test_fused_segmenter_reproduces_the_area_rule():
    torch.manual_seed(0)
    model = build("rn34un", weights=None).eval()
    fused = fuse(model, "rn34un", S, return_mask=True)
    x = torch.rand(4, 1, S, S)
    with torch.inference_mode():
        prob, area, mask = fused(x)
        expected = torch.sigmoid(model(x))
    # channels_last reorders the sums: equal up to float rounding, then the rule exactly.
    torch.testing.assert_close(mask, expected, atol=1e-4, rtol=0)
    assert torch.equal(prob, segmenter_score(mask, score_k(S)))
    assert torch.equal(prob > PIXEL_THRESHOLD, segmenter_label(mask))
    assert torch.equal(area.long(), (mask > PIXEL_THRESHOLD).flatten(1).sum(1))


def test_fused_classifier_has_probability_and_no_area():
    torch.manual_seed(0)
    model = build("rn34", weights=None).eval()
    x = torch.rand(2, 1, S, S)
    with torch.inference_mode():
        prob, area = fuse(model, "rn34", S)(x)
        torch.testing.assert_close(prob, torch.sigmoid(model(x))[:, 0])
    assert torch.equal(area, torch.full((2,), -1, dtype=torch.int32))
    with pytest.raises(ValueError, match="no mask"):
        Fused(model, "classifier", S, return_mask=True)


class _SameConvBlock(torch.nn.Module):
    """What fuse_for_cpu rewrites in EfficientNet / ResNet: TF-"same" zero pads (asymmetric at
    stride 2) before convolutions, SiLU, an SE gate and a BatchNorm'd residual sum + ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.dw = torch.nn.Conv2d(8, 8, 5, stride=2, groups=8)
        self.se_reduce, self.se_expand = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(4, 8, 1)
        self.pw, self.bn = torch.nn.Conv2d(8, 8, 1), torch.nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.silu(self.stem(torch.nn.functional.pad(x, (0, 1, 0, 1))))
        x = torch.nn.functional.silu(self.dw(torch.nn.functional.pad(x, (1, 2, 1, 2))))
        s = self.se_expand(torch.nn.functional.silu(self.se_reduce(x.mean((2, 3), keepdim=True))))
        x = x * torch.sigmoid(s)
        return torch.relu(self.bn(self.pw(x)) + x)


@pytest.mark.skipif(not cpu_fusion_available(), reason="this torch has no oneDNN fused conv")
@pytest.mark.parametrize("size", [32, 33])
def test_cpu_fusion_rewrites_every_step_exactly(size):
    torch.manual_seed(0)
    block = _SameConvBlock().eval()
    block.bn.running_mean.uniform_(-1, 1)
    block.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 3, size, size).contiguous(memory_format=torch.channels_last)
    with quiet_jit(), torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(block, x[:2]))
    counts = fuse_for_cpu(frozen, x[:1])
    assert counts == {"convs": 5, "unary": 5, "adds": 1, "pads": 2, "pools": 1, "muls": 1}
    kinds = {n.kind() for n in frozen.graph.nodes()}
    assert not kinds & {"aten::_convolution", "aten::pad", "aten::silu", "aten::mean", "aten::add"}
    with torch.inference_mode():
        torch.testing.assert_close(frozen(x), block(x), atol=1e-5, rtol=1e-5)  # another batch
    assert fuse_for_cpu(frozen, x[:1])["convs"] == 0  # already fused: left alone


@pytest.mark.skipif(not cpu_fusion_available(), reason="this torch has no oneDNN fused conv")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cpu_rewrite_of_every_model_equals_eager(name):
    """Each of the eight models at 64², batch 1: every convolution moves onto oneDNN and the
    rewritten graph gives the eager probabilities and areas (bf16 too, on CPUs with bf16 units)."""
    torch.manual_seed(0)
    model = build(name, weights=None).eval()
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_fusion_available(torch.bfloat16) else [])
    for dtype in dtypes:
        fused = fuse(model, name, S, precision=DTYPE_NAMES[dtype])
        frozen = to_torchscript(fused, (1, 1, 1), "cpu", check=False, cpu_fusion=False)
        x = example_input(fused, 1, "cpu")
        convs = len(list(frozen.graph.findAllNodes("aten::_convolution")))
        counts = fuse_for_cpu(frozen, x)
        assert counts["convs"] == convs > 0 and is_cpu_fused(frozen)
        assert not list(frozen.graph.findAllNodes("aten::_convolution"))
        with torch.inference_mode():
            want, got = fused(x), frozen(x)
        torch.testing.assert_close(got[0], want[0], atol=REWRITE_ATOL[dtype], rtol=0)
        assert (got[1].long() - want[1].long()).abs().max() <= (1 if dtype == torch.float32 else 4)


def test_changed_schema_falls_back_to_the_frozen_graph(monkeypatch, caplog):
    """A fused convolution whose arguments are not the ones the rewrite writes: no rewrite, one
    logged line, and the plain frozen graph (still equal to eager)."""
    from ptxfast.inference import cpu_fusion

    changed = dict(cpu_fusion.POINTWISE_SCHEMAS)
    changed[""] = (*changed[""][:-1], "algorithm_v2")
    monkeypatch.setattr(cpu_fusion, "POINTWISE_SCHEMAS", changed)
    monkeypatch.setattr(cpu_fusion, "_logged", set())
    if cpu_fusion._registered():
        assert "algorithm_v2" in cpu_fusion.schema_problem()
    torch.manual_seed(0)
    model = build("rn34", weights=None).eval()
    fused = fuse(model, "rn34", S)
    with caplog.at_level("WARNING", logger="ptxfast.inference.cpu_fusion"):
        frozen = to_torchscript(fused, (1, 1, 2), "cpu")
        assert not cpu_fusion_available()
    assert not is_cpu_fused(frozen)
    if cpu_fusion._registered():
        lines = [r.getMessage() for r in caplog.records if r.name == "ptxfast.inference.cpu_fusion"]
        assert len(lines) == 1 and "plain frozen graph" in lines[0], lines
    x = torch.rand(2, 1, S, S)
    with torch.inference_mode():
        torch.testing.assert_close(frozen(x)[0], fused(x)[0], atol=1e-4, rtol=0)


class _BakedBatch(torch.nn.Module):
    """Outputs shaped like Fused's, with the area's batch size read as a Python int: a trace
    keeps the batch it was traced at."""

    dtype, size = torch.float32, 8

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1).mean(1), torch.zeros(int(x.shape[0]), dtype=torch.int32)


def test_a_graph_that_baked_its_batch_in_is_refused():
    with pytest.raises(FusedError, match=r"at batch 3 \(area: shape \(2,\) differ\)"):
        to_torchscript(_BakedBatch(), (2, 2, 3), "cpu", cpu_fusion=False)
    # The check itself passes a graph that follows the batch (the cascade's, checked at 1 and 2).
    frozen = to_torchscript(fuse(build("rn34", weights=None).eval(), "rn34", S), (1, 2, 2), "cpu")
    assert frozen(torch.rand(3, 1, S, S))[0].shape == (3,)


@pytest.mark.skipif(not cpu_fusion_available(), reason="this torch has no oneDNN fused conv")
def test_cpu_fused_artifact_from_another_torch_is_refused(exported, tmp_path):
    side = json.loads(exported.read_text())
    assert side["cpu_fusion"]["torch"] == torch.__version__ and side["cpu_fusion"]["nodes"] > 0
    for suffix in (".ts", ".json"):
        (tmp_path / exported.with_suffix(suffix).name).write_bytes(
            exported.with_suffix(suffix).read_bytes()
        )
    copy = tmp_path / exported.name
    copy.write_text(json.dumps({**side, "cpu_fusion": {**side["cpu_fusion"], "torch": "2.0.1"}}))
    with pytest.raises(PredictorError, match=r"torch 2\.0\.1 .*; re-export it") as err:
        load_predictor(copy, device="cpu")
    assert "\n" not in str(err.value) and "ptxfast export --cascade rn34un+rn34" in str(err.value)
    # A sidecar from before the `cpu_fusion` field: the torch of its `versions` decides.
    old = {k: v for k, v in side.items() if k != "cpu_fusion"}
    copy.write_text(json.dumps({**old, "versions": {**side["versions"], "torch": "2.0.1"}}))
    with pytest.raises(PredictorError, match="re-export it"):
        load_predictor(copy, device="cpu")
    copy.write_text(json.dumps(old))
    assert load_predictor(copy, device="cpu").sidecar["versions"]["torch"] == torch.__version__


# ------------------------------------------------------------------------------- the artifact


def test_cli_export_writes_a_complete_sidecar(exported, runs):
    sidecar = read_sidecar(exported)
    assert all(k in sidecar for k in SIDECAR_FIELDS)
    assert sidecar["name"] == "rn34un+rn34" and sidecar["kind"] == "cascade"
    assert sidecar["file"] == "rn34un+rn34.torchscript-fp32.ts"
    assert sidecar["input"] == {
        "shape": ["N", 1, S, S],
        "size": S,
        "dtype": "float32",
        "range": [0.0, 1.0],
        "channels_last": True,
    }
    assert sidecar["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert sidecar["thresholds"] == {"label": 0.5, "pixel": 0.3, "min_area": 6, "score_k": None}
    assert (sidecar["backend"], sidecar["path"]) == ("torchscript", "trace")
    assert sidecar["precision"]["requested"] == sidecar["precision"]["actual"] == "fp32"
    assert sidecar["versions"]["torch"] == torch.__version__
    assert {"torch_tensorrt", "tensorrt", "cuda", "gpu", "cpu_capability"} <= set(
        sidecar["versions"]
    )
    assert sidecar["sha256"] == sha256_file(exported.with_suffix(".ts"))
    sources = sidecar["sources"]
    assert sources["checkpoint"]["sha256"] == sha256_file(runs / "rn34un+rn34" / "best.pt")
    assert sources["segmenter_checkpoint"]["sha256"] == sha256_file(runs / "rn34un" / "best.pt")
    parity = sidecar["parity"]
    assert parity["passed"] and parity["n"] == 6 and parity["source"] == "synthetic phantoms"
    assert parity["agreement"] == 1.0 and parity["max_abs_diff"] <= 1e-4
    assert sidecar["recipe"]["size"] == S
    # Nothing but the artifact and its sidecar in the folder (no temporary files).
    assert sorted(p.name for p in exported.parent.iterdir()) == [
        "rn34un+rn34.torchscript-fp32.json",
        "rn34un+rn34.torchscript-fp32.ts",
    ]
    assert latest_artifact(exported.parent) == exported


def test_artifact_runs_in_a_process_without_ptxfast(exported, tmp_path):
    x = torch.rand(3, 1, S, S, generator=torch.Generator().manual_seed(5))
    expected = load_predictor(exported, device="cpu")(x)
    torch.save({"x": x, "prob": expected.prob, "area": expected.area}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.jit.load({str(exported.with_suffix('.ts'))!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "with torch.inference_mode():\n"
        "    prob, area = m(io['x'])\n"
        "torch.testing.assert_close(prob, io['prob'], atol=1e-5, rtol=0)\n"
        "assert torch.equal(area, io['area'])\n"
        "assert 'ptxfast' not in sys.modules, 'ptxfast was imported'\n"
        "print('ok', prob.shape[0])\n"
    )
    assert run_fresh(code, tmp_path) == "ok 3"


def test_modified_artifact_is_refused(exported, tmp_path):
    for suffix in (".ts", ".json"):
        (tmp_path / exported.with_suffix(suffix).name).write_bytes(
            exported.with_suffix(suffix).read_bytes()
        )
    copy = tmp_path / exported.name
    assert verify(read_sidecar(copy)) == copy.with_suffix(".ts")
    model = copy.with_suffix(".ts")
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its recorded sha256") as err:
        verify(read_sidecar(model))  # the model file's path finds the sidecar too
    assert "ptxfast export --cascade rn34un+rn34" in str(err.value)
    with pytest.raises(ArtifactError, match="recorded sha256"):
        load_predictor(copy)


def test_predictor_takes_the_sidecars_thresholds(exported, tmp_path):
    """A loaded artifact labels by what its sidecar records (what the gate measured), not by a
    rule recomputed from the model's kind and size."""
    for suffix in (".ts", ".json"):
        (tmp_path / exported.with_suffix(suffix).name).write_bytes(
            exported.with_suffix(suffix).read_bytes()
        )
    copy = tmp_path / exported.name
    side = json.loads(copy.read_text())
    recorded = {"label": 0.42, "pixel": 0.25, "min_area": 9, "score_k": None}
    assert side["thresholds"] != recorded
    copy.write_text(json.dumps({**side, "thresholds": recorded}))
    predictor = load_predictor(copy, device="cpu")
    assert predictor.thresholds == recorded
    prob = torch.tensor([0.1, 0.41, 0.43, 0.9])
    assert predictor.label(prob).tolist() == [False, False, True, True]
    assert load_predictor(exported, device="cpu").thresholds["min_area"] == 6  # the original


class _Payload:
    """Pickles to a call that writes a marker file: running it would prove code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_checkpoint_with_pickled_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "payload-ran"
    torch.manual_seed(0)
    state = {
        "model": build("rn34", weights=None).state_dict(),
        **checkpoint_header("rn34", S),
        "recipe": {"evil": _Payload(marker)},
    }
    (tmp_path / "runs" / "rn34").mkdir(parents=True)
    torch.save(state, tmp_path / "runs" / "rn34" / "best.pt")
    out = tmp_path / "exports"
    args = ["export", "--model", "rn34", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--device", "cpu", "--parity-n", "2"])
    assert result.exit_code != 0
    assert "refused" in result.output and "best.pt" in result.output
    assert not marker.exists()
    assert not out.exists() or not any(out.iterdir())


def test_parity_gate_fails_a_perturbed_artifact_and_writes_nothing(runs, tmp_path, monkeypatch):
    import ptxfast.inference.backends as backends_module

    real = backends_module.to_torchscript

    def perturbed(fused, *args, **kwargs):
        # The candidate is a copy of the model: shift its logit, not the reference's.
        fused.model.net.fc.bias.data += 4.0
        return real(fused, *args, **kwargs)

    monkeypatch.setattr(backends_module, "to_torchscript", perturbed)
    out = tmp_path / "exports"
    args = ["export", "--model", "rn34", "--runs", str(runs), "--out", str(out)]
    args += ["--device", "cpu", "--batch", "1:2:4", "--parity-n", "6", "--backend", "torchscript"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "parity gate failed" in result.output and "max |Δprob|" in result.output
    assert "label agreement" in result.output  # the figures are shown with the refusal
    assert not any(out.iterdir())  # neither the artifact, its sidecar, nor a temporary file


def test_gate_checks_each_tolerance():
    tol = Tolerance(0.995, max_df1=0.01, max_dprob=0.02, max_drecall=0.05, max_dauc=0.01,
                    max_ddice=0.01)  # fmt: skip
    good = {"agreement": 1.0, "delta_f1": 0.0, "delta_recall": 0.0, "delta_auc": 0.0,
            "delta_dice": 0.0, "max_abs_diff": 0.01}  # fmt: skip
    assert gate(good, tol) == []
    assert gate({**good, "delta_auc": None, "delta_dice": None}, tol) == []  # not measured
    for key, value in (
        ("agreement", 0.99),
        ("delta_f1", -0.02),
        ("delta_recall", 0.1),
        ("delta_auc", -0.02),
        ("delta_dice", 0.05),
        ("max_abs_diff", float("nan")),
    ):
        assert len(gate({**good, key: value}, tol)) == 1, key


def test_bf16_export_passes_its_gate(runs, tmp_path):
    cfg = ExportConfig(
        "rn34", runs=runs, out=tmp_path, device="cpu", backend="torchscript", precision="bf16",
        batch=BATCH, parity_n=6,
    )  # fmt: skip
    result = export_model(cfg)
    s = result.sidecar
    # bf16 weights, float32 images: the graph normalises them before it casts.
    assert s["input"]["dtype"] == "float32" and s["precision"]["actual"] == "bf16"
    # BatchNorm folded into the bf16 weights (in float32, then rounded): no batch_norm left and
    # no float32 constant but the normalisation's mean and std.
    weights = s["precision"]["weight_elements"]
    assert weights.get("fp32", 0) == 6 and weights["bf16"] > 1e6
    assert s["parity"]["tolerance"]["max_dprob"] == DEFAULT_TOLERANCES["bf16"].max_dprob
    assert s["thresholds"] == {"label": 0.5, "pixel": None, "min_area": None, "score_k": None}
    predictor = load_predictor(result.model_path)
    assert predictor.input_dtype == torch.float32
    out = predictor(torch.rand(2, 1, S, S))
    assert out.prob.dtype == torch.float32 and torch.equal(out.area, torch.full((2,), -1).int())
    with pytest.raises(ExportError, match="has no mask"):
        plan(replace(cfg, return_mask=True))


def test_segmenter_export_with_mask(runs, tmp_path):
    args = ["export", "--model", "rn34un", "--runs", str(runs), "--out", str(tmp_path)]
    args += ["--device", "cpu", "--batch", "2", "--parity-n", "4", "--return-mask"]
    args += ["--backend", "torchscript"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    predictor = load_predictor(tmp_path / "rn34un.torchscript-fp32.ts")
    assert predictor.thresholds["score_k"] == score_k(S) and predictor.return_mask
    out = predictor(torch.rand(5, 1, S, S))  # a batch outside 2:2:2 still runs (TorchScript)
    assert out.mask.shape == (5, 1, S, S) and out.prob.shape == (5,)
    assert torch.equal(out.area.long(), (out.mask > PIXEL_THRESHOLD).flatten(1).sum(1))


# ---------------------------------------------------------------------- options and profiles


def test_profiles_parse_and_resolve():
    names = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
    assert {"cpu-fp32", "cpu-bf16", "gpu-fp16"} <= set(names)
    for name in names:
        values = load_profile(name)
        assert values["backend"] in ("torchscript", "tensorrt", "onnxruntime", "openvino")
        assert values["precision"] in ("fp32", "bf16", "fp16")
        assert len(values["batch"]) == 3
    p = plan(ExportConfig("eb3un+eb3", profile="cpu-bf16"))
    assert (p.backend, p.precision, p.device.type) == ("torchscript", "bf16", "cpu")
    p = plan(ExportConfig("eb3un+eb3", profile="cpu-bf16", precision="fp32"))
    assert p.precision == "fp32"  # options win over the profile
    assert p.tolerance == DEFAULT_TOLERANCES["fp32"]
    p = plan(ExportConfig("eb3un+eb3", profile="cpu-openvino-bf16"))
    assert p.candidates == [("openvino", "bf16")] and p.tolerance == DEFAULT_TOLERANCES["bf16"]
    p = plan(ExportConfig("eb3un+eb3", device="cpu", backend="onnx"))
    assert p.candidates == [("onnxruntime", "fp32")]


def test_tolerance_overrides_profile_then_options(tmp_path):
    """A profile's [tolerance] over the precision's defaults, the options over the profile."""
    prof = tmp_path / "tight.toml"
    prof.write_text(
        'backend = "torchscript"\nprecision = "bf16"\ndevice = "cpu"\n'
        "[tolerance]\nmax_dprob = 0.05\nmin_agreement = 0.999\n"
    )
    p = plan(ExportConfig("eb3un+eb3", profile=str(prof)))
    want = replace(DEFAULT_TOLERANCES["bf16"], max_dprob=0.05, min_agreement=0.999)
    assert p.tolerance == want
    p = plan(ExportConfig("eb3un+eb3", profile=str(prof), tolerance={"max_dprob": 0.1}))
    assert p.tolerance == replace(want, max_dprob=0.1)
    for bad in ({"max_dp": 0.1},):
        with pytest.raises(ExportError, match="unknown tolerance"):
            plan(ExportConfig("eb3un+eb3", device="cpu", backend="onnx", tolerance=bad))
    prof.write_text('backend = "torchscript"\n[tolerance]\nmax_f1 = 0.1\n')
    with pytest.raises(ExportError, match="tight.toml: unknown tolerance"):
        plan(ExportConfig("eb3un+eb3", profile=str(prof)))
    p = plan(ExportConfig("eb3un+eb3", device="cpu"))  # the CPU default: every candidate here
    assert ("torchscript", "fp32") in p.candidates and ("onnxruntime", "fp32") in p.candidates
    assert len(p.candidates) == (5 if cpu_bf16() else 3)


def test_batch_ranges():
    assert parse_batch("1:8:32") == (1, 8, 32) and parse_batch("4") == (4, 4, 4)
    for bad in ("8:1:32", "0:1:2", "a:b:c", "1:2"):
        with pytest.raises(ExportError, match="MIN:OPT:MAX"):
            parse_batch(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_tensorrt_without_gpu_is_one_clear_line(runs, tmp_path):
    args = ["export", "--cascade", "rn34un+rn34", "--runs", str(runs), "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--backend", "tensorrt"])
    assert result.exit_code != 0
    assert "tensorrt backend needs a CUDA GPU" in result.output
    assert "--backend torchscript" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, [*args, "--profile", "cpu-fp32", "--precision", "fp16"])
    assert result.exit_code != 0 and "fp16 runs on CUDA" in result.output


def test_cli_names_the_model_once(runs):
    assert CliRunner().invoke(cli, ["export"]).exit_code != 0
    result = CliRunner().invoke(cli, ["export", "--cascade", "rn34"])
    assert result.exit_code != 0 and "not a cascade" in result.output
    result = CliRunner().invoke(cli, ["export", "--model", "rn34", "--runs", str(runs / "none")])
    assert result.exit_code != 0 and "ptxfast train --arch rn34" in result.output


def test_latest_artifact_is_the_newest(exported, tmp_path):
    with pytest.raises(ArtifactError, match="ptxfast export"):
        latest_artifact(tmp_path)
    for i, created in enumerate(("2030-01-02T00:00:00+00:00", "2030-01-01T00:00:00+00:00")):
        side = json.loads(exported.read_text())
        side["created"] = created
        (tmp_path / f"a{i}.json").write_text(json.dumps(side))
    assert latest_artifact(tmp_path) == tmp_path / "a0.json"


# ---------------------------------------------------------------------------------- TensorRT


def _trt_reason() -> str | None:
    from ptxfast.inference import trt

    return trt.unavailable_reason()


@pytest.mark.tensorrt
@pytest.mark.parametrize("path", ["ts", "dynamo"])
def test_tensorrt_fp16_compiles_passes_parity_and_reloads(runs, tmp_path, path, monkeypatch):
    reason = _trt_reason()
    if reason is not None:
        pytest.skip(reason)
    from ptxfast.inference import trt

    tt = trt.torch_tensorrt_module()
    if path == "ts" and not tt.ENABLED_FEATURES.torchscript_frontend:
        pytest.skip("this torch-tensorrt build has no TorchScript frontend")
    real = trt.compile_fused
    monkeypatch.setattr(trt, "compile_fused", lambda *a, **k: real(*a, **{**k, "path": path}))
    monkeypatch.setenv("PTXFAST_CACHE", str(tmp_path / "cache"))
    result = export_model(
        ExportConfig(
            "rn34un+rn34",
            runs=runs,
            out=tmp_path,
            backend="tensorrt",
            precision="fp16",
            device="cuda",
            batch=BATCH,
            parity_n=8,
        )
    )
    s = result.sidecar
    assert s["path"] == path and s["backend"] == "tensorrt" and s["parity"]["passed"]
    assert s["precision"]["actual"] == "fp16" and s["input"]["dtype"] == "float16"
    assert s["versions"]["torch_tensorrt"] and s["versions"]["tensorrt"]
    assert result.model_path.suffix == (".ts" if path == "ts" else ".ep")
    predictor = load_predictor(result.model_path)
    x = torch.rand(7, 1, S, S)  # 7 > max batch 4: the predictor splits it
    out = predictor(x)
    assert out.prob.shape == (7,) and out.prob.device.type == "cuda"
    model = build("rn34un+rn34", weights=None)
    model.load_state_dict(torch.load(runs / "rn34un+rn34" / "best.pt", weights_only=True)["model"])
    with torch.inference_mode():
        ref = torch.sigmoid(model.eval().cuda()(x.cuda()))[:, 0]
    assert (out.prob - ref).abs().max() <= DEFAULT_TOLERANCES["fp16"].max_dprob


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_torchscript_export(runs, tmp_path):
    result = export_model(
        ExportConfig(
            "rn34un+rn34",
            runs=runs,
            out=tmp_path,
            backend="torchscript",
            precision="fp16",
            device="cuda",
            batch=BATCH,
            parity_n=8,
        )
    )
    assert result.sidecar["precision"]["actual"] == "fp16" and result.sidecar["device"] == "cuda"
    predictor = load_predictor(result.sidecar_path)
    assert predictor.device.type == "cuda" and predictor.input_dtype == torch.float16
    out = predictor(torch.rand(3, 1, S, S))  # float32 on the CPU in, cast and moved inside
    assert out.prob.dtype == torch.float32 and out.prob.device.type == "cuda"


# --------------------------------------------------------------- operating points and TTA


def _segmenter_probs(runs: Path, x: torch.Tensor) -> torch.Tensor:
    model = build("rn34un", weights=None)
    model.load_state_dict(torch.load(runs / "rn34un" / "best.pt", weights_only=True)["model"])
    with torch.inference_mode():
        return fuse(model.eval(), "rn34un", S)(x)[0]


def test_operating_point_and_hflip_tta_artifact(runs, tmp_path):
    from ptxfast.checkpoint import write_evaluation
    from ptxfast.inference.operating import describe

    x = torch.rand(6, 1, S, S, generator=torch.Generator().manual_seed(11))
    raw = _segmenter_probs(runs, x)
    chosen = float(raw.median())  # splits these images: some above, some not
    write_evaluation(
        runs / "rn34un" / "best.pt",
        {
            "operating_points": [
                {"target_recall": 0.95, "threshold": chosen, "chosen_on": "val",
                 "reached": True, "note": ""}
            ],
            "calibration": {"temperature": 2.0},
        },
    )  # fmt: skip
    out = tmp_path / "exports"
    args = ["export", "--model", "rn34un", "--runs", str(runs), "--out", str(out)]
    args += ["--backend", "torchscript", "--precision", "fp32", "--device", "cpu"]
    args += ["--batch", "1:2:4", "--parity-n", "6", "--operating-point", "recall=0.95"]
    result = CliRunner().invoke(cli, [*args, "--tta", "hflip"])
    assert result.exit_code == 0, result.output
    assert "recall >= 0.95 on val" in result.output
    side = read_sidecar(out / "rn34un.torchscript-fp32-hflip.json")
    op = side["operating_point"]
    assert op["threshold"] == chosen and op["method"] == "target_recall" and op["split"] == "val"
    assert op["val"]["split"] == "synthetic phantoms" and op["val"]["n"] == 6
    for k in ("recall", "specificity"):
        assert op["val"][k]["lo"] <= op["val"][k]["value"] <= op["val"][k]["hi"]
    assert side["thresholds"]["label"] == chosen and side["tta"] == "hflip"
    assert side["probability"] == {"graph": "raw", "reported": "raw"}
    assert "recall >= 0.95 on val" in describe(side)

    predictor = load_predictor(side, "cpu")
    prob = predictor(x).prob
    # The artifact labels exactly `prob > threshold`, computed by hand.
    assert predictor.label(prob).tolist() == (prob > chosen).tolist()
    # A mirrored image gets the same probability (|Δ| ≤ 1e-5 in fp32), and the TTA graph is
    # not the plain one.
    mirrored = predictor(x.flip(-1)).prob
    assert (mirrored - prob).abs().max() <= 1e-5
    assert not torch.allclose(prob, raw, atol=1e-6)


def test_operating_point_errors_name_the_fix(runs, tmp_path):
    from ptxfast.checkpoint import evaluation_path

    evaluation_path(runs / "rn34" / "best.pt").unlink(missing_ok=True)
    cfg = ExportConfig(
        name="rn34", runs=runs, out=tmp_path, backend="torchscript", precision="fp32",
        device="cpu", parity_n=2, operating_point="recall=0.9",
    )  # fmt: skip
    with pytest.raises(ExportError, match="run `ptxfast evaluate --runs"):
        export_model(cfg)
    with pytest.raises(ExportError, match="use recall=R"):
        export_model(replace(cfg, operating_point="sensitivity=0.9"))
    assert not list(tmp_path.iterdir())


def test_label_rule_of_old_and_calibrated_sidecars():
    from ptxfast.inference.operating import LabelRule, label_rule
    from ptxfast.metrics import calibrated

    # An artifact made before operating points labels at its recorded threshold.
    old = label_rule({"thresholds": {"label": 0.3, "pixel": 0.3}})
    assert old == LabelRule(0.3) and old.raw_threshold == 0.3
    p = torch.tensor([0.05, 0.2, 0.45, 0.55, 0.8, 0.999])
    cal = label_rule({"operating_point": {"threshold": 0.5, "temperature": 3.0}})
    reported = cal.reported(p)
    logit = torch.logit(p.double())
    torch.testing.assert_close(reported.double(), torch.from_numpy(calibrated(logit.numpy(), 3.0)))
    # Temperature keeps the order: the calibrated label equals the raw one at the mapped cut.
    assert cal.label(p).tolist() == (p > cal.raw_threshold).tolist()
    high = LabelRule(0.7, 2.0)
    assert high.label(p).tolist() == (p > high.raw_threshold).tolist()
    assert high.raw_threshold == pytest.approx(torch.sigmoid(2 * torch.logit(torch.tensor(0.7))))


def test_hflip_tta_cascade_is_mirror_invariant():
    torch.manual_seed(5)
    model = build("rn34un+rn34", weights=None).eval()
    torch.nn.init.normal_(model.classifier.net.fc.weight, std=0.5)  # a head that says something
    x = torch.rand(3, 1, S, S, generator=torch.Generator().manual_seed(2))
    plain, tta = fuse(model, "rn34un+rn34", S), fuse(model, "rn34un+rn34", S, tta="hflip")
    with torch.inference_mode():
        p, area = tta(x)
        q, area_m = tta(x.flip(-1))
        plain_p = plain(x)[0]
    assert (p - q).abs().max() <= 1e-5 and (area - area_m).abs().max() <= 1
    assert not torch.allclose(p, plain_p)
    # The average of the two plain passes, by hand.
    with torch.inference_mode():
        expect = (plain(x)[0] + plain(x.flip(-1))[0]) / 2
    torch.testing.assert_close(p, expect, atol=1e-5, rtol=0)
