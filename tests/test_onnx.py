"""ONNX: the fused graph as one .onnx file, run by ONNX Runtime and OpenVINO like any backend.

A classifier, a segmenter and a cascade at 64² (random init) give eager fp32's probabilities
within 1e-4 and its areas but for pixels that close to the threshold, at batch 1 and 3 (the file is exported at batch 2, so a
baked-in batch fails); the artifact runs in a process that imports only onnxruntime and numpy;
a modified file is refused; a missing runtime is one line naming what to install; the CPU
default choice keeps the fastest candidate that passes its gate.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from float_checks import area_slack
from fresh_process import run_fresh

from ptxfast.export import ExportConfig, ExportError, choose_default, export_model
from ptxfast.inference.artifact import ArtifactError, read_sidecar
from ptxfast.inference.fused import fuse
from ptxfast.inference.onnx_graph import onnxruntime_module, openvino_module, to_onnx
from ptxfast.inference.runtime import PredictorError, build_predictor, load_predictor
from ptxfast.models import build
from ptxfast.training import write_untrained

pytestmark = pytest.mark.usefixtures("offline", "one_thread")
S = 64


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_untrained(root, "rn34un+rn34", S)  # writes its rn34un first
    return root


@pytest.fixture(scope="module")
def cascade_artifact(runs, tmp_path_factory) -> Path:
    """`ptxfast export --backend onnx` of rn34un+rn34: the sidecar of <name>.onnx-fp32.onnx."""
    out = tmp_path_factory.mktemp("exports")
    cfg = ExportConfig(
        "rn34un+rn34", runs=runs, out=out, device="cpu", backend="onnx", batch=(1, 2, 4),
        parity_n=6,
    )  # fmt: skip
    return export_model(cfg).sidecar_path


def _inputs() -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {n: torch.rand(n, 1, S, S, generator=g) for n in (1, 3)}


PROB_TOL = 1e-4  # the runtimes' kernels differ from eager fp32's in the last bits


def _close(got, want, mask: torch.Tensor | None) -> None:
    """Probabilities within PROB_TOL, areas equal but for the pixels of the reference's
    probability map `mask` (None: no mask, area -1) within PROB_TOL of the threshold."""
    assert float((got[0] - want[0]).abs().max()) <= PROB_TOL
    slack = 0 if mask is None else torch.from_numpy(area_slack(mask, PROB_TOL))
    assert ((got[1] - want[1]).abs() <= slack).all(), (got[1], want[1], slack)


@pytest.mark.parametrize("name", ["rn34", "rn34un"])
def test_classifier_and_segmenter_run_in_both_runtimes(name, tmp_path):
    torch.manual_seed(1)
    model = build(name, weights=None)
    fused = fuse(model, name, S, channels_last=False)
    segmenter = name == "rn34un"
    with_mask = fuse(model, name, S, channels_last=False, return_mask=True) if segmenter else None
    info = to_onnx(fused, tmp_path / "m.onnx")
    assert info["opset"] == 18 and info["exporter"] in ("torchscript", "dynamo")
    assert info["outputs"] == (["prob", "area"] if name == "rn34" else ["prob", "area", "mask"])
    runtimes = [onnxruntime_module(tmp_path / "m.onnx", threads=1)]
    runtimes.append(openvino_module(tmp_path / "m.onnx", threads=1))
    for n, x in _inputs().items():
        with torch.inference_mode():
            want = fused(x)
            mask = with_mask(x)[2] if with_mask else None
        for module in runtimes:
            got = module(x)
            assert got[0].shape == (n,) and got[1].dtype == torch.int32
            _close(got, want, mask)


def test_cascade_artifact_matches_eager_in_both_runtimes(cascade_artifact, runs):
    side = read_sidecar(cascade_artifact)
    assert side["file"] == "rn34un+rn34.onnx-fp32.onnx" and side["backend"] == "onnxruntime"
    assert side["onnx"]["opset"] == 18 and side["path"] == f"onnx:{side['onnx']['exporter']}"
    assert side["runtime"]["providers"][-1] == "CPUExecutionProvider"
    assert side["input"]["channels_last"] is False and side["parity"]["passed"]
    parity = side["parity"]
    # A pixel or two on the threshold may count differently in ONNX Runtime than in eager.
    assert parity["max_abs_diff"] <= 1e-4 and parity["max_abs_delta_area"] <= 2
    # The ONNX graph carries the mask, so Dice is measured.
    assert parity["delta_dice"] is not None and abs(parity["delta_dice"]) < 0.01
    reference = build_predictor(
        "eager", runs / "rn34un+rn34" / "best.pt", device="cpu", return_mask=True
    )
    ort = load_predictor(cascade_artifact)
    assert (ort.backend, ort.device.type, ort.return_mask) == ("onnxruntime", "cpu", False)
    ov = openvino_module(side.model_path, threads=1)
    for x in _inputs().values():
        want = reference(x)
        got = ort(x)
        assert got.mask is None
        _close(got, want, want.mask)
        _close(ov(x), want, want.mask)


def test_onnx_runs_in_a_process_with_only_onnxruntime(cascade_artifact, tmp_path):
    x = _inputs()[3]
    want = load_predictor(cascade_artifact)(x)
    np.savez(tmp_path / "io.npz", x=x.numpy(), prob=want.prob.numpy(), area=want.area.numpy())
    model = read_sidecar(cascade_artifact).model_path
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        f"io = np.load({str(tmp_path / 'io.npz')!r})\n"
        f"s = ort.InferenceSession({str(model)!r}, providers=['CPUExecutionProvider'])\n"
        "prob, area = s.run(['prob', 'area'], {'image': io['x']})\n"
        "assert np.abs(prob - io['prob']).max() <= 1e-5 and (area == io['area']).all()\n"
        "assert 'torch' not in sys.modules and 'ptxfast' not in sys.modules, 'imported'\n"
        "print('ok', prob.shape[0])\n"
    )
    assert run_fresh(code, tmp_path) == "ok 3"


def test_modified_onnx_is_refused(cascade_artifact, tmp_path):
    side = read_sidecar(cascade_artifact)
    copy = tmp_path / side.path.name
    copy.write_text(side.path.read_text())
    data = bytearray(side.model_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / side["file"]).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its recorded sha256") as err:
        load_predictor(copy)
    assert "--backend onnxruntime" in str(err.value)


def test_missing_runtime_is_one_clear_line(cascade_artifact, runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = build("rn34", weights=None)
    with pytest.raises(PredictorError, match="pip install openvino"):
        build_predictor("openvino", model, name="rn34", size=S, device="cpu")
    with pytest.raises(PredictorError, match="pip install onnxruntime"):
        load_predictor(cascade_artifact)
    cfg = ExportConfig("rn34un+rn34", runs=runs, out=tmp_path, device="cpu", backend="openvino")
    with pytest.raises(ExportError, match="pip install openvino"):
        export_model(cfg)
    assert not any(tmp_path.iterdir())


def test_default_choice_keeps_the_fastest_that_passes():
    def candidate(label, ips, failed=()):
        return SimpleNamespace(label=label, images_per_s=ips, failed=list(failed))

    slow, fast = candidate("torchscript fp32", 100.0), candidate("openvino fp32", 150.0)
    assert choose_default([slow, fast]) is fast
    assert choose_default([fast, slow]) is fast
    broken = candidate("openvino bf16", 400.0, ["max |Δprob| 0.3 > 0.15"])
    assert choose_default([slow, broken, fast]) is fast  # the fastest failed its gate
    with pytest.raises(ExportError, match="openvino bf16: max"):
        choose_default([broken])
