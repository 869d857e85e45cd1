"""`ptxfast report`: every row once, in the worklist's order, valid HTML with no network
reference, escaped names, 100,000 rows fast and small, and a page Chromium draws.

The scoring run is a small one (64² phantoms, a PNG, a truncated DICOM and a text file named
.dcm) by the conftest's rn34un artifact with its mask output.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import dicom_factory as F
import numpy as np
import pytest
from click.testing import CliRunner
from html_check import check_html
from PIL import Image

from ptxfast import report
from ptxfast import score as scoring
from ptxfast.cli import cli
from ptxfast.data import synth

pytestmark = pytest.mark.usefixtures("one_thread")
HEAD_BIAS = -11.85  # puts the random model's scores of these phantoms on both sides of 0.3
TOP = 3


def page_rows(text: str) -> tuple[list[str], dict[str, list]]:
    """(the card paths in page order, the JSON rows of each list by id)."""
    cards = [
        m.group(1)
        .replace("&quot;", '"')
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")  # fmt: skip
        for m in re.finditer(r'<article class="card" data-path="([^"]*)"', text)
    ]
    lists = {
        m.group(1): json.loads(m.group(2))
        for m in re.finditer(
            r'<script type="application/json" id="([^"]+)">(.*?)</script>', text, re.S
        )
    }
    return cards, lists


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run(rn34un_artifact, tmp_path_factory):
    """A scored folder with masks and DICOM SEGs: (folder, out folder, summary)."""
    root = tmp_path_factory.mktemp("scored")
    synth.write_dataset(root / "ph", 12, seed=3, size=64, positive_rate=0.5, workers=1)
    for p in list((root / "ph").glob("*.csv")) + list((root / "ph").glob("*.json")):
        p.unlink()
    ramp = np.linspace(0, 255, 64 * 48).reshape(48, 64).astype(np.uint8)
    Image.fromarray(ramp).save(root / "photo.png")
    good = F.save(F.image_dataset(F.gray_pixels(64, 64), bits_stored=12), root / "trunc.dcm")
    good.write_bytes(good.read_bytes()[:-3000])
    (root / "notes.dcm").write_text("not DICOM, but named as if it were\n")
    out = tmp_path_factory.mktemp("run")
    summary = scoring.score_folder(
        root, out / "preds.csv", model=rn34un_artifact(head_bias=HEAD_BIAS), device="cpu", batch_size=2, workers=0,
        masks_dir=out / "masks", seg_dir=out / "seg", summary_json=out / "score.json",
        model_only_iters=1,
    )  # fmt: skip
    return root, out, summary


@pytest.fixture(scope="module")
def page(run):
    root, out, _ = run
    result = report.build_report(
        out / "preds.csv", out / "report.html", masks_dir=out / "masks",
        summary_json=out / "score.json", top=TOP, page_size=3,
    )  # fmt: skip
    return result, (out / "report.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------ tests


def test_every_row_once_in_worklist_order(run, page):
    root, out, summary = run
    result, text = page
    check_html(text)
    rows = csv_rows(out / "preds.csv")
    positives = [r for r in rows if r["label"] == "1"]
    assert len(positives) > TOP and len(positives) < len(rows) - 2, "positives and negatives"
    cards, lists = page_rows(text)
    assert set(lists) == {"rows-positives", "rows-failures", "rows-negatives"}
    listed = cards + [r[0] for rows_ in lists.values() for r in rows_]
    assert sorted(listed) == sorted(r["path"] for r in rows)  # each row exactly once
    # Positives: the cards, then the list, by probability highest first.
    probs = {r["path"]: float(r["probability"]) for r in rows if r["probability"]}
    order = cards + [r[0] for r in lists["rows-positives"]]
    assert order == sorted((r["path"] for r in positives), key=lambda p: (-probs[p], p))
    assert [r[3] for r in lists["rows-positives"]] == [probs[p] for p in order[TOP:]]
    negs = [r[3] for r in lists["rows-negatives"]]
    assert negs == sorted(negs, reverse=True) and len(negs) == summary.scored - len(positives)
    # Failures with their messages, the PNG among the scored rows.
    failures = {r[0]: r[3] for r in lists["rows-failures"]}
    assert set(failures) == {"trunc.dcm", "notes.dcm"}
    assert "truncated" in failures["trunc.dcm"] and "neither DICOM" in failures["notes.dcm"]
    assert "photo.png" in listed
    # The first page of each list is HTML too (it shows without script).
    assert text.count('<td class="err">') == 2
    assert (result.rows, result.positives, result.failed) == (len(rows), len(positives), 2)


def test_summary_cards_images_and_uids(run, page):
    root, out, summary = run
    result, text = page
    side = json.loads(Path(str(summary.artifact)).read_text())
    assert side["sha256"] in text and "rn34un" in text
    assert f"positive when the k-th largest pixel probability exceeds {side['thresholds']['label']:g}" in text  # fmt: skip
    assert re.search(r"<th scope=\"row\">failed</th><td>2</td>", text)
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="histogram', text)
    # Every card has its radiograph and overlay (the sources and masks exist).
    assert result.cards == result.thumbnails == result.overlays == TOP
    assert text.count('alt="thumbnail"') == text.count('alt="overlay"') == TOP
    # UIDs as copyable text: the SOPInstanceUID of each card and its StudyInstanceUID from
    # the header (not in the CSV).
    import pydicom

    cards, _ = page_rows(text)
    for rel in cards:
        if rel.endswith(".png"):
            continue
        ds = pydicom.dcmread(root / rel, stop_before_pixels=True)
        assert f"<code>{ds.SOPInstanceUID}</code>" in text
        assert f"<code>{ds.StudyInstanceUID}</code>" in text
    assert f"Thumbnails for the {TOP} most probable of" in text


def test_a_dicomweb_run_has_a_url_not_a_folder(run, tmp_path):
    # A run that fetched its files from a DICOMweb server names the server as its root: the
    # page shows the URL as it is and says why there are no thumbnails, never "not found".
    _, out, _ = run
    url = "http://pacs.example:8042/dicom-web"
    summary = json.loads((out / "score.json").read_text())
    (tmp_path / "score.json").write_text(json.dumps({**summary, "root": url}))
    res = CliRunner().invoke(
        cli, ["report", str(out / "preds.csv"), "--json", str(tmp_path / "score.json"),
              "--masks", str(out / "masks"), "--top", str(TOP), "--out", str(tmp_path / "r.html")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = " ".join(res.output.split())
    assert "not found" not in lines and f"; 0 of {TOP} cards with thumbnails" in lines
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert f'<th scope="row">DICOMweb server</th><td><code>{url}</code>' in text
    assert "not found" not in text and "http:/pacs" not in text
    assert f"fetched the radiographs from the DICOMweb server {url}" in text
    assert text.count('alt="overlay"') == TOP  # the masks folder is still read


def test_names_from_the_archive_are_escaped(tmp_path):
    evil = [
        ["<script>alert(1)</script>.dcm", '"><img src=x onerror=alert(2)>', "0.9", "1", "7", ""],
        ["a&b/</script><b>x.dcm", "1.2.3", "", "", "", "error with </script> and <i>tags</i>"],
        ["ctrl\x1bname\udcff.dcm", "1.2.4", "0.1", "0", "0", ""],
    ]
    preds = tmp_path / "preds.csv"
    with open(preds, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(scoring.CSV_COLUMNS)
        w.writerows(evil)
    report.build_report(preds, tmp_path / "r.html", root=tmp_path)
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    p = check_html(text)
    assert "<script>alert" not in text and "<img src=x" not in text and "<i>tags" not in text
    assert [t for t, _ in p.tags].count("script") == 3  # two data blocks and the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.dcm" in text
    assert "ctrl\\x1bname\ufffd.dcm" in text  # control character and undecodable byte shown
    _, lists = page_rows(text)
    assert lists["rows-failures"][0][3] == "error with </script> and <i>tags</i>"
    assert "no thumbnail" in text and "source file not found" in text


def test_a_hundred_thousand_rows(tmp_path):
    rng = np.random.default_rng(0)
    n = 100_000
    probs = rng.beta(0.5, 3.0, n)
    preds = tmp_path / "preds.csv"
    with open(preds, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(scoring.CSV_COLUMNS)
        for i, p in enumerate(probs):
            path = f"site{i % 7}/P{i}_x/{i:06d}.dcm"  # none of these exist
            sop = f"1.2.826.0.1.3680043.8.498.{rng.integers(1 << 62)}{i:07d}"
            if i % 500 == 0:
                w.writerow([path, sop, "", "", "", "decoding did not finish"])
            else:
                w.writerow([path, sop, f"{p:.6f}", int(p > 0.5), int(p * 900), ""])
    t0 = time.perf_counter()
    result = report.build_report(preds, tmp_path / "big.html", root=tmp_path)
    seconds = time.perf_counter() - t0
    size = (tmp_path / "big.html").stat().st_size
    assert seconds < 60 and size < 20e6, (seconds, size)
    assert result.rows == n and result.failed == n // 500
    text = (tmp_path / "big.html").read_text()
    check_html(text)
    cards, lists = page_rows(text)
    assert len(cards) + sum(len(v) for v in lists.values()) == n
    assert result.thumbnails == 0 and text.count("source file not found") == report.DEFAULT_TOP
    # Only the first page of each list is HTML.
    assert text.count("<tr>") < 4 * (report.DEFAULT_PAGE + 1) + 20


def test_cli_writes_the_page_and_refuses_bad_input(run, tmp_path):
    _, out, _ = run
    runner = CliRunner()
    res = runner.invoke(
        cli, ["report", str(out / "preds.csv"), "--json", str(out / "score.json"),
              "--out", str(tmp_path / "r.html")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == str(tmp_path / "r.html")
    assert "0 with overlays" not in res.output and "positive" in res.output
    (tmp_path / "not.csv").write_text("a,b\n1,2\n")
    res = runner.invoke(cli, ["report", str(tmp_path / "not.csv")])
    assert res.exit_code == 1 and "not a ptxfast predictions CSV" in res.output
    res = runner.invoke(cli, ["report", str(tmp_path / "missing.csv")])
    assert res.exit_code == 1 and "not found" in res.output
    torn = tmp_path / "torn.csv"
    torn.write_text((out / "preds.csv").read_text() + "cut/off.dcm,1.2")
    res = runner.invoke(cli, ["report", str(torn), "--out", str(tmp_path / "t.html")])
    assert res.exit_code == 0 and "incomplete" in res.output


def _chromium() -> str | None:
    return next(
        (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
    )


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install chromium)")
def test_chromium_draws_the_summary_and_the_cards(page, tmp_path):
    result, _ = page
    shot = tmp_path / "report.png"
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1400,1100", result.path.resolve().as_uri(),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert img.shape[:2] == (1100, 1400)
    assert img.std() > 20  # not a blank page
    # The cards' images (dark radiographs with a red outline) are drawn: red pixels exist.
    red = (img[..., 0] > 180) & (img[..., 1] < 90) & (img[..., 2] < 90)
    assert red.sum() > 50
