"""`ptxfast report`: a scoring run as one self-contained HTML worklist.

`build_report(preds, out, masks_dir=..., summary_json=...)` reads a predictions CSV (the
`ptxfast score` ledger) and writes one HTML file that needs nothing else: images are JPEG data
URIs, the script and styles are inline, and a Content Security Policy stops the browser from
fetching anything (see `pages`). The page holds, top to bottom:

- the run's summary: model, artifact sha256, the label threshold (and the operating point when
  the artifact records one), files, scored, failed, positives, images/s (from `--json`, the
  score summary; the counts are read from the CSV, the record of every run that wrote it);
- a histogram of the probabilities with the threshold marked;
- the worklist: positives by probability, highest first; the `top` most probable as cards
  with a thumbnail of the radiograph and, with `masks_dir`, the overlay of the predicted mask
  and its area; the other positives, then the failures with their error messages, then the
  negatives (collapsed) as paginated lists.

Scale. Every row of the CSV is in the page exactly once (a card or a list entry), but only the
cards have images, and the lists hold their rows as JSON that a little inline script shows
one page at a time (the first page of each list is also written as HTML, so it shows without
script). 100,000 rows make a page of about 12 MB. StudyInstanceUID is not in the CSV: it is
read from the DICOM header (without pixels) of the cards and of the first page of each list,
and shown as "not read" elsewhere; the page says so.

Trust. File names and header values come from archives nobody vetted: every one is escaped
(`pages.esc`, `pages.json_script`), and the script writes them with `textContent` only. A
source that is missing, unreadable or outside the scored folder shows as "no thumbnail" with
the reason, never as an error of the report.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ptxfast import pages
from ptxfast.pages import esc

DEFAULT_TOP = 48  # positives shown as cards with images
DEFAULT_PAGE = 200  # rows per page of a list
THUMB = 256  # longest side of a thumbnail, pixels
_JPEG_QUALITY = 82
# How the scorer writes the CSV: any POSIX file name round-trips.
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


class ReportError(ValueError):
    """A report that cannot be made as asked; the message names the file and the fix."""


@dataclass(slots=True)
class Row:
    """One row of the predictions CSV, parsed."""

    path: str
    sop: str
    prob: float | None  # None for a file that could not be scored
    label: str
    area: int | None
    error: str

    @property
    def failed(self) -> bool:
        return self.prob is None


@dataclass
class ReportResult:
    """What `build_report` wrote."""

    path: Path
    rows: int
    positives: int
    failed: int
    negatives: int
    cards: int  # positives shown with images
    thumbnails: int  # cards whose radiograph thumbnail could be made
    overlays: int  # cards with the overlay of their mask
    bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading


def read_predictions(path: str | os.PathLike) -> tuple[list[Row], list[str]]:
    """The rows of a `ptxfast score` CSV, and notes about what was left out.

    A torn last line (a run killed mid-write; `--resume` completes it) is left out with a
    note; any other row that is not six fields, or a probability that is not a number, is an
    error naming the line.
    """
    from ptxfast.scoring import CSV_COLUMNS

    path = Path(path)
    try:
        with open(path, newline="", **_ENCODING) as f:
            records = list(csv.reader(f))
    except FileNotFoundError:
        raise ReportError(f"{path} not found; give the CSV `ptxfast score --out` wrote") from None
    except (OSError, csv.Error) as err:
        raise ReportError(f"cannot read {path}: {err}") from None
    if not records or tuple(records[0]) != CSV_COLUMNS:
        raise ReportError(
            f"{path} is not a ptxfast predictions CSV (its first line is not "
            f"{','.join(CSV_COLUMNS)!r}); give the CSV `ptxfast score --out` wrote"
        )
    rows, notes = [], []
    for n, rec in enumerate(records[1:], start=2):
        if len(rec) != len(CSV_COLUMNS):
            if n == len(records):
                notes.append(
                    f"line {n} of {path.name} is incomplete (a run cut short) and is left out"
                )
                break
            raise ReportError(
                f"{path}: line {n} has {len(rec)} fields, not {len(CSV_COLUMNS)}; fix or remove it"
            )
        p, sop, prob, label, area, error = rec
        try:
            value = float(prob) if prob else None
            pixels = int(area) if area else None
        except ValueError:
            raise ReportError(
                f"{path}: line {n} has probability {prob!r} and mask_area {area!r}; "
                "expected numbers (or empty for a failed file)"
            ) from None
        if value is None and not error:
            error = "no probability and no error recorded"
        rows.append(Row(p, sop, value, label, pixels, error if value is None else ""))
    return rows, notes


def _read_summary(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(
            f"--json {path} not found; give the file `ptxfast score --json` wrote"
        ) from None
    except (OSError, ValueError) as err:
        raise ReportError(f"--json {path} is not readable JSON ({err})") from None
    if not isinstance(data, dict) or "model" not in data:
        raise ReportError(f"--json {path} is not a ptxfast score summary (no 'model' field)")
    return data


@dataclass
class _Model:
    """What the report says about the model: from the score summary and its sidecar."""

    name: str | None = None
    detail: str = ""  # backend, precision, device
    artifact: str | None = None
    sha256: str | None = None
    threshold: float | None = None
    rule: str = ""  # how labels are decided, in words
    operating_point: dict[str, Any] | None = None
    size: int | None = None
    note: str = ""


def _model(summary: dict[str, Any]) -> _Model:
    from ptxfast import artifact

    m = _Model(name=summary.get("model"), artifact=summary.get("artifact"))
    parts = [summary.get(k) for k in ("backend", "precision")]
    if any(parts):
        m.detail = " ".join(str(p) for p in parts if p)
    if summary.get("device"):
        m.detail += f" on {summary['device']}"
    side = None
    if m.artifact:
        try:
            side = artifact.read_sidecar(m.artifact)
        except artifact.ArtifactError as err:
            m.note = f"sidecar not read: {err}"
    if side is not None:
        m.sha256 = str(side.get("sha256") or "") or None
        thresholds = side.get("thresholds") or {}
        if thresholds.get("label") is not None:
            m.threshold = float(thresholds["label"])
        op = side.get("operating_point")
        m.operating_point = op if isinstance(op, dict) else None
        if isinstance(op, dict) and op.get("threshold") is not None:
            m.threshold = float(op["threshold"])
        m.size = (side.get("input") or {}).get("size")
        if side.get("kind") == "segmenter" and m.threshold is not None:
            m.rule = (
                f"positive when the k-th largest pixel probability exceeds {m.threshold:g} "
                f"(more than {thresholds.get('min_area')} pixels above {thresholds.get('pixel')})"
            )
        elif m.threshold is not None:
            m.rule = f"positive when the probability exceeds {m.threshold:g}"
    return m


# ------------------------------------------------------------------------------ images


def _inside(root: Path, rel: str) -> Path | None:
    """root/rel when `rel` is a plain relative path (no "..", not absolute), else None."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        return None
    return root.joinpath(*parts)


def _mask_files(masks_dir: Path, rel: str) -> tuple[Path, Path] | None:
    """The mask and overlay PNGs `ptxfast score --masks` wrote for the input `rel`, when the
    mask exists (named by the scorer's own rule, `outputs.mask_outputs`)."""
    from ptxfast.outputs import UnsafeOutputPath, mask_outputs

    try:
        mask, overlay = mask_outputs(masks_dir, rel)
    except UnsafeOutputPath:
        return None
    return (mask.path, overlay.path) if mask.path.is_file() else None


def _jpeg(rgb_or_gray: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb_or_gray).save(buf, format="JPEG", quality=_JPEG_QUALITY, subsampling=0)
    return pages.data_uri(buf.getvalue(), "image/jpeg")


def _shrink(image: np.ndarray, size: int) -> np.ndarray:
    """A float [0, 1] image scaled (area average) so its longer side is at most `size`."""
    from PIL import Image

    h, w = image.shape
    scale = min(1.0, size / max(h, w))
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    if shape == (w, h):
        return image.astype(np.float32)
    small = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.asarray(small.resize(shape, Image.Resampling.BOX), dtype=np.float32)


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 200 else text[:197] + "…"


@dataclass
class _Card:
    row: Row
    rank: int
    study: str | None = None
    image: str | None = None  # data URI
    image_reason: str = ""
    overlay: str | None = None
    overlay_reason: str = ""


def _card(
    row: Row, rank: int, root: Path | None, root_reason: str, masks_dir: Path | None
) -> _Card:
    """A positive's images: the radiograph shrunk to THUMB, and its mask outlined on it."""
    from PIL import Image

    from ptxfast.data.dicom import load_image
    from ptxfast.outputs import overlay_rgb

    card = _Card(row, rank)
    thumb = None
    source = _inside(root, row.path) if root is not None else None
    if root is None:
        card.image_reason = root_reason
    elif source is None:
        card.image_reason = "the path leaves the scored folder"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "N frames; using the first"
                image, info = load_image(source)
            card.study = info.study_instance_uid
            thumb = _shrink(image, THUMB)
            card.image = _jpeg(np.clip(np.rint(thumb * 255), 0, 255).astype(np.uint8))
        except Exception as err:  # a missing or unreadable source is a card without image
            card.image_reason = _reason(err) if source.exists() else "source file not found"
    if masks_dir is None:
        return card
    found = _mask_files(masks_dir, row.path)
    if found is None:
        card.overlay_reason = "no mask file"
        return card
    mask_path, overlay_path = found
    try:
        with Image.open(mask_path) as im:
            mask_img = im.convert("L")
            mask_img.load()
        if thumb is None:  # no source: the overlay PNG beside the mask holds the image
            with Image.open(overlay_path) as im:
                gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            thumb = _shrink(gray, THUMB)
        h, w = thumb.shape
        # A pixel of the thumbnail is in the mask when a quarter of what it covers is: thin
        # masks stay visible at a quarter of the source's size.
        small = np.asarray(mask_img.resize((w, h), Image.Resampling.BOX)) > 63
        card.overlay = _jpeg(overlay_rgb(thumb, small, fill=0.3))
    except Exception as err:
        card.overlay_reason = f"mask not read: {_reason(err)}"
    return card


def _study(root: Path | None, rel: str) -> str | None:
    """StudyInstanceUID from the DICOM header of root/rel, without its pixels; None if unread."""
    from ptxfast.data.dicom import read_dataset

    path = _inside(root, rel) if root is not None else None
    if path is None:
        return None
    try:
        return str(read_dataset(path, stop_before_pixels=True).get("StudyInstanceUID", "")) or None
    except Exception:
        return None


def _histogram(rows: Sequence[Row], threshold: float | None) -> str | None:
    from ptxfast import plots

    probs = [r.prob for r in rows if r.prob is not None]
    if not probs:
        return None
    with tempfile.TemporaryDirectory(prefix="ptxfast-report-") as tmp:
        path = plots.probability_histogram(probs, threshold, Path(tmp) / "hist.png")
        return pages.data_uri(path.read_bytes(), "image/png")


# ------------------------------------------------------------------------------- HTML


def _num(n: int) -> str:
    return f"{n:,}"


def _uid(value: str | None, missing: str = "—") -> str:
    return f"<code>{esc(value)}</code>" if value else f'<span class="muted">{esc(missing)}</span>'


def _summary_html(
    model: _Model, summary: dict[str, Any], counts: dict[str, int], preds: Path, notes: list[str]
) -> str:
    rate = summary.get("steady_images_per_s") or summary.get("images_per_s")
    items = [
        (
            "model",
            esc(model.name or "unknown (no --json)")
            + (f' <span class="muted">{esc(model.detail)}</span>' if model.detail else ""),
        ),
        ("artifact", _uid(model.artifact, "unknown")),
        ("artifact sha256", _uid(model.sha256, "unknown")),
        ("operating point", esc(model.rule or "unknown (no sidecar)")),
    ]
    if model.operating_point:
        op = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in model.operating_point.items()
            if isinstance(v, str | int | float) and not isinstance(v, bool)
        )
        items.append(("chosen as", esc(op)))
    scored = counts["scored"]
    share = f" ({100 * counts['positives'] / scored:.1f}% of scored)" if scored else ""
    items += [
        ("files", f"{_num(counts['rows'])} rows in <code>{esc(preds)}</code>"),
        ("scored", _num(scored)),
        ("failed", _num(counts["failed"])),
        ("positives", f"<strong>{_num(counts['positives'])}</strong>{share}"),
        (
            "images/s",
            f"{rate:.1f} end to end" if rate else '<span class="muted">— (no --json)</span>',
        ),
    ]
    if summary.get("root"):
        items.append(("scored folder", f"<code>{esc(summary['root'])}</code>"))
    if model.note:
        notes = [*notes, model.note]
    body = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in items)
    note_html = "".join(f'<p class="muted">note: {esc(n)}</p>' for n in notes)
    return f'<section id="summary"><table class="summary">{body}</table>{note_html}</section>'


def _card_html(card: _Card, masks: bool, size: int | None) -> str:
    r = card.row

    def figure(uri: str | None, alt: str, reason: str) -> str:
        if uri:
            return f'<img src="{uri}" alt="{esc(alt)}">'
        return f'<div class="noimg">no {esc(alt)}<br><span>{esc(reason)}</span></div>'

    area = ""
    if r.area is not None:
        at = f" at the model's {size}×{size} input" if size else ""
        area = f"<div>mask area <strong>{_num(r.area)}</strong> px{esc(at)}</div>"
    images = figure(card.image, "thumbnail", card.image_reason)
    if masks:
        images += figure(card.overlay, "overlay", card.overlay_reason)
    search = " ".join((r.path, r.sop, card.study or "")).lower()
    return (
        f'<article class="card" data-path="{esc(r.path)}" data-search="{esc(search)}">'
        f'<div class="imgs">{images}</div><div class="facts">'
        f'<div class="rank">#{card.rank} <span class="prob">p = {r.prob:.3f}</span></div>{area}'
        f"<dl><dt>file</dt><dd><code>{esc(r.path)}</code></dd>"
        f"<dt>SOPInstanceUID</dt><dd>{_uid(r.sop)}</dd>"
        f"<dt>StudyInstanceUID</dt><dd>{_uid(card.study, 'not read')}</dd></dl></div></article>"
    )


_SCORED_COLUMNS = ("#", "file", "SOPInstanceUID", "StudyInstanceUID", "probability", "mask area")
_FAILED_COLUMNS = ("#", "file", "SOPInstanceUID", "StudyInstanceUID", "error")


def _list_html(
    list_id: str, kind: str, rows: list[list[Any]], start: int, page: int, sortable: bool
) -> str:
    """A paginated list: its data as JSON, its first page as HTML, and the pager's buttons.
    Row data: [file, SOP UID, Study UID or null, probability, area or null] for scored rows,
    [file, SOP UID, Study UID or null, error] for failures; `start` numbers the first row."""
    columns = _SCORED_COLUMNS if kind == "scored" else _FAILED_COLUMNS
    head = "".join(
        f'<th class="sort" title="reverse the order">{c} ⇅</th>'
        if sortable and c == "probability"
        else f"<th>{c}</th>"
        for c in columns
    )
    body = []
    for i, r in enumerate(rows[:page]):
        cells = [f'<td class="num">{start + i}</td>', f"<td><code>{esc(r[0])}</code></td>"]
        cells.append(f"<td>{_uid(r[1])}</td><td>{_uid(r[2], 'not read')}</td>")
        if kind == "scored":
            area = "—" if r[4] is None else _num(r[4])
            cells.append(f'<td class="num">{r[3]:.4f}</td><td class="num">{area}</td>')
        else:
            cells.append(f'<td class="err">{esc(r[3])}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    pages_n = max(1, -(-len(rows) // page))
    info = (
        f"rows {start}–{start + min(page, len(rows)) - 1} of {_num(len(rows))}, page 1 of {pages_n}"
    )
    controls = (
        '<div class="pager"><button type="button" class="prev">◀ previous</button>'
        f' <span class="pageinfo">{info}</span> '
        '<button type="button" class="next">next ▶</button></div>'
    )
    return (
        f'<div class="list" data-list="{list_id}" data-kind="{kind}" data-page="{page}" '
        f'data-start="{start}">{controls}<table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>{pages.json_script(list_id, rows)}</div>"
    )


_STYLE = """
.top { display: flex; flex-wrap: wrap; gap: 16px 24px; align-items: flex-start; }
.summary th { width: 9.5em; }
#histogram img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.tools { position: sticky; top: 0; background: #fff; padding: 8px 0; z-index: 2;
  border-bottom: 1px solid var(--line); }
.tools input { font: inherit; padding: 4px 8px; width: 28em; max-width: 100%; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.card { display: flex; gap: 12px; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
.card .imgs { display: flex; gap: 6px; flex: none; }
.card img, .noimg { width: 170px; height: 170px; object-fit: contain; background: #000; border-radius: 3px; }
.noimg { background: var(--bg); color: var(--muted); display: flex; flex-direction: column;
  align-items: center; justify-content: center; text-align: center; font-size: 12px; padding: 6px; }
.noimg span { font-size: 11px; overflow-wrap: anywhere; }
.facts { min-width: 0; } .rank { font-size: 16px; font-weight: 600; }
.prob { color: var(--pos); } dl { margin: 6px 0 0; } dt { color: var(--muted); font-size: 12px; }
dd { margin: 0 0 4px; }
.list table { width: 100%; } .err { color: var(--pos); overflow-wrap: anywhere; }
.pager { margin: 6px 0; } .pager button { font: inherit; }
th.sort { cursor: pointer; }
details > summary { cursor: pointer; font-weight: 600; font-size: 16px; margin: 24px 0 8px; }
[hidden] { display: none !important; }
"""

# Pagination, filtering and reversing the order of the lists; rows are written with
# textContent only (their values come from the archive).
_SCRIPT = """
"use strict";
(function () {
  function cell(tr, value, cls, code) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    if (code && value) {
      var c = document.createElement("code");
      c.textContent = value;
      td.appendChild(c);
    } else if (code) {
      var s = document.createElement("span");
      s.className = "muted";
      s.textContent = code;
      td.appendChild(s);
    } else {
      td.textContent = value;
    }
    tr.appendChild(td);
  }
  var lists = [];
  document.querySelectorAll("[data-list]").forEach(function (box) {
    var rows = JSON.parse(document.getElementById(box.dataset.list).textContent);
    var scored = box.dataset.kind === "scored";
    var size = +box.dataset.page, start = +box.dataset.start;
    var tbody = box.querySelector("tbody"), info = box.querySelector(".pageinfo");
    var order = rows.map(function (r, i) { return i; }), shown = order, page = 0;
    var reversed = false, needle = "";
    function render() {
      var pages = Math.max(1, Math.ceil(shown.length / size));
      page = Math.min(Math.max(page, 0), pages - 1);
      var part = shown.slice(page * size, (page + 1) * size);
      tbody.replaceChildren();
      part.forEach(function (i) {
        var r = rows[i], tr = document.createElement("tr");
        cell(tr, String(start + i), "num");
        cell(tr, r[0], "", "—");
        cell(tr, r[1], "", "—");
        cell(tr, r[2], "", "not read");
        if (scored) {
          cell(tr, r[3].toFixed(4), "num");
          cell(tr, r[4] === null ? "—" : r[4].toLocaleString("en"), "num");
        } else {
          cell(tr, r[3], "err");
        }
        tbody.appendChild(tr);
      });
      info.textContent = shown.length
        ? "rows " + (page * size + 1) + "–" + (page * size + part.length) + " of " +
          shown.length.toLocaleString("en") + (needle ? " matching" : "") +
          ", page " + (page + 1) + " of " + pages
        : "no rows" + (needle ? " match" : "");
    }
    function refresh() {
      shown = needle ? order.filter(function (i) {
        var r = rows[i];
        return (r[0] + " " + r[1] + " " + (r[2] || "")).toLowerCase().indexOf(needle) >= 0;
      }) : order.slice();
      if (reversed) shown.reverse();
      page = 0;
      render();
    }
    box.querySelector(".prev").addEventListener("click", function () { page--; render(); });
    box.querySelector(".next").addEventListener("click", function () { page++; render(); });
    var sort = box.querySelector("th.sort");
    if (sort) sort.addEventListener("click", function () { reversed = !reversed; refresh(); });
    lists.push(function (text) { needle = text; refresh(); });
    render();
  });
  var filter = document.getElementById("filter");
  if (filter) filter.addEventListener("input", function () {
    var text = filter.value.trim().toLowerCase();
    document.querySelectorAll(".card").forEach(function (c) {
      c.hidden = text !== "" && c.dataset.search.indexOf(text) < 0;
    });
    lists.forEach(function (f) { f(text); });
  });
})();
"""


def build_report(
    preds: str | os.PathLike,
    out: str | os.PathLike,
    *,
    masks_dir: str | os.PathLike | None = None,
    summary_json: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    top: int = DEFAULT_TOP,
    page_size: int = DEFAULT_PAGE,
    title: str | None = None,
) -> ReportResult:
    """Write the HTML worklist of the predictions CSV `preds` to `out`; see the module docstring.

    masks_dir: the `--masks` folder of the run (overlays on the cards); summary_json: its
    `--json` summary (model, artifact, throughput, and the scored folder); root: the scored
    folder, where the radiographs are read for thumbnails (default: the summary's); top:
    positives shown as cards with images; page_size: rows per page of the lists.
    """
    t0 = time.perf_counter()
    preds, out = Path(preds), Path(out)
    if top < 0 or page_size < 1:
        raise ReportError("--top must be 0 or more and --page-size at least 1")
    masks = Path(masks_dir) if masks_dir is not None else None
    if masks is not None and not masks.is_dir():
        raise ReportError(
            f"--masks {masks} is not a folder; give the folder `ptxfast score --masks` wrote"
        )
    rows, notes = read_predictions(preds)
    summary = _read_summary(Path(summary_json) if summary_json is not None else None)
    model = _model(summary)
    if root is None and summary.get("root"):
        root = summary["root"]
    root_path = Path(root) if root is not None else None
    root_reason = ""
    if root_path is None:
        root_reason = "scored folder unknown (give --json or --root)"
    elif not root_path.is_dir():
        root_reason = f"scored folder {root_path} not found"
        root_path = None

    positives = sorted(
        (r for r in rows if r.label == "1" and not r.failed), key=lambda r: (-r.prob, r.path)
    )
    negatives = sorted(
        (r for r in rows if r.label != "1" and not r.failed), key=lambda r: (-r.prob, r.path)
    )
    failures = [r for r in rows if r.failed]
    counts = dict(
        rows=len(rows),
        scored=len(positives) + len(negatives),
        failed=len(failures),
        positives=len(positives),
    )

    cards = [_card(r, i + 1, root_path, root_reason, masks) for i, r in enumerate(positives[:top])]
    rest = positives[top:]

    def scored_data(part: list[Row]) -> list[list[Any]]:
        return [[r.path, r.sop, None, round(r.prob, 6), r.area] for r in part]

    def read_studies(data: list[list[Any]]) -> None:
        for entry in data[:page_size]:  # the first page only: the rest say "not read"
            entry[2] = _study(root_path, entry[0])

    rest_data, neg_data = scored_data(rest), scored_data(negatives)
    fail_data = [[r.path, r.sop, None, r.error] for r in failures]
    for data in (rest_data, fail_data, neg_data):
        read_studies(data)
    # Display text from here on: file names that are not UTF-8 show with U+FFFD.
    for data in (rest_data, fail_data, neg_data):
        for entry in data:
            for j in (0, 1, 2):
                entry[j] = pages.text(entry[j]) if entry[j] is not None else None
            if len(entry) == 4:
                entry[3] = pages.text(entry[3])

    hist = _histogram(rows, model.threshold)
    made = sum(c.image is not None for c in cards)
    overlays = sum(c.overlay is not None for c in cards)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = title or f"ptxfast worklist: {preds.name}"

    from ptxfast import __version__

    parts = [
        f"<h1>{esc(name)}</h1>",
        f'<p class="muted">Written {generated} by ptxfast {__version__} from '
        f"<code>{esc(preds)}</code>. Every row of the CSV appears once below.</p>",
        '<div class="top">',
        _summary_html(model, summary, counts, preds, notes),
    ]
    if hist:
        parts.append(
            f'<section id="histogram"><img src="{hist}" '
            'alt="histogram of probabilities with the threshold marked"></section>'
        )
    parts.append("</div>")
    parts.append(
        '<div class="tools"><input id="filter" type="search" placeholder="filter by file name '
        'or UID" aria-label="filter by file name or UID"> <span class="muted">'
        "Click a UID or file name to select it for copying.</span></div>"
    )
    what = (
        f"Thumbnails for the {_num(len(cards))} most probable of {_num(len(positives))} positives"
        + (" with the predicted mask outlined" if masks is not None else "")
        + ("; the other positives are listed as text below." if rest else ".")
    )
    if root_reason:
        what += f" No radiograph thumbnails: {root_reason}."
    parts.append(
        f'<section id="positives"><h2>Positives: {_num(len(positives))}, highest probability '
        f'first</h2><p class="muted">{esc(what)} StudyInstanceUID is read from the DICOM header '
        f"of the cards and of the first page of each list.</p>"
        f'<div class="cards">{"".join(_card_html(c, masks is not None, model.size) for c in cards)}</div>'
    )
    if rest:
        parts.append(_list_html("rows-positives", "scored", rest_data, top + 1, page_size, True))
    parts.append("</section>")
    parts.append(
        f'<section id="failures"><h2>Failures: {_num(len(failures))}</h2>'
        + (
            _list_html("rows-failures", "failed", fail_data, 1, page_size, False)
            if failures
            else '<p class="muted">Every file was scored.</p>'
        )
        + "</section>"
    )
    parts.append(
        f'<section id="negatives"><details><summary>Negatives: {_num(len(negatives))}, highest '
        "probability first (click to show)</summary>"
        + (
            _list_html("rows-negatives", "scored", neg_data, 1, page_size, True)
            if negatives
            else ""
        )
        + "</details></section>"
    )
    document = pages.page(name, "\n".join(parts), style=_STYLE, script=_SCRIPT)
    pages.write_page(out, document)
    return ReportResult(
        path=out,
        rows=len(rows),
        positives=len(positives),
        failed=len(failures),
        negatives=len(negatives),
        cards=len(cards),
        thumbnails=made,
        overlays=overlays,
        bytes=out.stat().st_size,
        seconds=time.perf_counter() - t0,
        notes=notes + ([model.note] if model.note else []),
    )
