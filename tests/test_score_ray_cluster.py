"""`ptxfast score --engine ray` on a two-node cluster started in the test
(`ray.cluster_utils.Cluster`, one CPU per node, so the two model actors sit on different
nodes): every file scored once."""

from __future__ import annotations

import pytest
import test_scoring
from test_score_ray import _options, _phantoms
from test_scoring import _rows

from ptxfast import score

pytestmark = pytest.mark.usefixtures("one_thread")
# test_scoring's 64² rn34un artifact (with its mask output) and its mixed folder.
artifact = test_scoring.artifact
folder = test_scoring.folder


@pytest.fixture(scope="module")
def two_nodes():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_worker_niceness", "0")
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_nodes_score_every_file_once(two_nodes, folder, artifact, tmp_path):
    names = [f"p{i:02d}.dcm" for i in range(8)]
    root = _phantoms(folder, tmp_path / "in", names)
    s = score.score_folder(
        root, tmp_path / "p.csv", model=artifact, device="cpu", batch_size=2,
        model_only_iters=0, engine="ray", ray=_options(actors=2, decoders=2),
    )  # fmt: skip
    rows = _rows(tmp_path / "p.csv")
    assert [r["path"] for r in rows] == names
    assert all(r["probability"] and not r["error"] for r in rows)
    assert s.cluster["nodes"] == 2 and s.cluster["cpus"] == 2.0
    assert s.scored == len(names) and s.cluster["duplicates_dropped"] == 0
