"""Decoder sizing from what a run measures, and the decoding figures of the summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from dicom_factory import codestream, gray_pixels, image_dataset, with_frame
from pydicom import uid
from rich.console import Console

from ptxfast.score import sizing


@pytest.mark.parametrize(
    ("decode", "compute", "cores", "expected"),
    [
        (0.158, 0.0028, 2, 2),  # a 2500² JPEG-lossless file, a 64² artifact: both cores decode
        (0.005, 0.100, 2, 1),  # 1024² uncompressed, a 512² model: the model keeps its cores
        # Half the work: as many decoders as model threads, since each runnable one gets an
        # equal share of the cores.
        (0.050, 0.050, 16, 16),
        (0.045, 0.085, 2, 2),  # 2500² JPEG lossless, a 256² artifact: one decoder got 0.55 core
        (0.045, 0.200, 2, 1),
        (0.010, 0.0, 8, 8),
        (0.0, 0.010, 8, 1),  # at least one
        (0.3, 0.01, 1, 1),
    ],
)
def test_decoders_get_decodings_share_of_the_cores(decode, compute, cores, expected) -> None:
    assert sizing.decoders(decode, compute, cores) == expected


def test_decoders_to_keep_the_model_busy() -> None:
    assert sizing.decoders_to_keep_busy(600.0, 0.03) == 18  # an H200 against JPEG lossless
    assert sizing.decoders_to_keep_busy(None, 0.03) is None
    per = sizing.by_syntax({"JPEG-LS Lossless Image Compression": [10, 2.0]})
    assert per["JPEG-LS Lossless Image Compression"] == {"files": 10, "files_per_s_per_core": 5.0}


def test_score_sizes_its_decoders_and_reports_decoding(
    tmp_path: Path, rn34un_artifact, monkeypatch
) -> None:
    from ptxfast import score
    from ptxfast.score import engine_local

    monkeypatch.setattr(engine_local, "cores", lambda: 2)  # what this test's machine may lack
    folder = tmp_path / "in"
    folder.mkdir()
    for i, syntax in enumerate([uid.JPEGLosslessSV1] * 3 + [uid.JPEGLSLossless] * 2):
        pixels = gray_pixels(96, 96, seed=i)
        ds = image_dataset(pixels, bits_stored=12, window=(2048, 3000))
        with_frame(ds, folder / f"{i}.dcm", syntax, codestream(pixels, syntax, 12))
    config = score.ScoreConfig(
        root=folder, out=tmp_path / "p.csv", model=rn34un_artifact(), device="cpu",
        batch_size=2, model_only_iters=1, summary_json=tmp_path / "s.json",
    )  # fmt: skip
    s = score.score_folder(config)
    sized = s.decoding["sizing"]
    assert sized["cores"] == 2 and s.workers in (1, 2)
    assert s.workers == sizing.decoders(sized["decode_ms"], sized["compute_ms"], 2)
    per = s.decoding["by_syntax"]
    assert (
        per[
            "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"
        ]["files"]
        == 3
    )
    assert per["JPEG-LS Lossless Image Compression"]["files"] == 2
    assert s.decoding["decoders_to_keep_busy"] >= 1
    assert (
        json.loads((tmp_path / "s.json").read_text())["decoding"]["sizing"]["workers"] == s.workers
    )
    out = io.StringIO()
    monkeypatch.setattr("ptxfast.score.summary.Console", lambda: Console(file=out, width=300))
    score.print_summary(s, config, Console(file=io.StringIO()))
    text = out.getvalue()
    assert "files/s per core (3)" in text and "would keep the model busy" in text
    assert f"this run: {s.workers} decoder(s) from D" in text


@pytest.mark.parametrize("decoder", ["dies", "hangs"])
def test_a_probe_whose_decoder_dies_or_hangs_sizes_nothing(decoder, forking, tmp_path) -> None:
    """The probe decodes in a child process: a file that kills or hangs its decoder leaves the
    scoring process standing, and the run keeps its default decoders."""
    import os
    import time

    import torch

    from ptxfast.score.decode import Files

    files = Files(tmp_path, ["a.dcm"], 8, torch.zeros(1, dtype=torch.int64))
    bad = (lambda self, i: os._exit(11)) if decoder == "dies" else (lambda self, i: time.sleep(60))
    forking.setattr(Files, "__getitem__", bad)
    t0 = time.monotonic()
    assert sizing._probe(files, [0], timeout=2.0) is None
    assert time.monotonic() - t0 < 30
