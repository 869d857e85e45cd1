"""Fixtures several test modules share; a module opts in with
`pytestmark = pytest.mark.usefixtures(...)`."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def offline(monkeypatch):
    """Weight lookup reads disk caches only; this makes any accidental download fail loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: on a shared 2-core machine two OpenMP
    threads that wait on each other run several times slower than one, and 64² models gain
    little from a second anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def rn34un_artifact(tmp_path_factory):
    """`rn34un_artifact(head_bias=0.0)`: the sidecar of a 64² rn34un TorchScript artifact with
    its mask output, random weights (seed 0), exported by ptxfast.export once per bias and run.

    Random weights call nearly every 64² phantom positive; `head_bias` is added to the
    segmentation head's bias, so a negative one (about -11.85) spreads the phantoms' scores
    on both sides of the threshold.
    """
    from ptxfast import models
    from ptxfast.checkpoint import checkpoint_header, save_checkpoint
    from ptxfast.export import ExportConfig, export_model

    made: dict[float, object] = {}

    def make(head_bias: float = 0.0):
        if head_bias in made:
            return made[head_bias]
        base = tmp_path_factory.mktemp("artifact")
        torch.manual_seed(0)
        model = models.build("rn34un", weights=None)
        with torch.no_grad():
            model.net.segmentation_head[0].bias += head_bias
        ckpt = base / "runs" / "rn34un" / "best.pt"
        state = {**checkpoint_header("rn34un", 64), "model": model.state_dict(), "epoch": 0}
        save_checkpoint({**state, "metric": 0.0, "recipe": {}}, ckpt)
        cfg = ExportConfig(
            name="rn34un",
            runs=base / "runs",
            out=base / "exports",
            checkpoint=ckpt,
            backend="torchscript",
            precision="fp32",
            device="cpu",
            return_mask=True,
            parity_n=2,
            batch=(1, 2, 2),
        )
        made[head_bias] = export_model(cfg).sidecar_path
        return made[head_bias]

    return make


@pytest.fixture
def forking(monkeypatch):
    """Scoring's helper processes fork, so they inherit the test's monkeypatches: without this,
    a gRPC module loaded by an earlier test in the same process (Ray, tritonclient) switches
    them to a forkserver, whose children start clean (`ptxfast.score.processes.start_method`)."""
    import sys

    monkeypatch.delitem(sys.modules, "grpc", raising=False)
    return monkeypatch
