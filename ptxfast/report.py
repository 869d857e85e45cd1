"""`ptxfast report`: a scoring run as one self-contained HTML worklist.

`build_report(preds, out, masks_dir=..., summary_json=...)` reads a predictions CSV (the
`ptxfast score` ledger) and writes one HTML file that needs nothing else: images are JPEG data
URIs, the script and styles are inline, and a Content Security Policy stops the browser from
fetching anything (see `pages`; the HTML itself is `report_page`). The page holds, top to bottom:

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
from pathlib import Path
from typing import Any

import numpy as np

from ptxfast import pages, report_page
from ptxfast.data.eligibility import reason_of
from ptxfast.errors import PtxfastError
from ptxfast.score.folders import not_regular
from ptxfast.score.pacs import is_url, redact

DEFAULT_TOP = 48  # positives shown as cards with images
DEFAULT_PAGE = 200  # rows per page of a list
THUMB = 256  # longest side of a thumbnail, pixels
_JPEG_QUALITY = 82
# How the scorer writes the CSV: any POSIX file name round-trips.
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


class ReportError(PtxfastError):
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
        """Not scored: a failure, or refused by the eligibility rule (`not_eligible`)."""
        return self.prob is None

    @property
    def not_eligible(self) -> bool:
        """Refused by the eligibility rule (not a chest radiograph), not a failure."""
        return self.prob is None and reason_of(self.error) is not None


@dataclass
class ReportResult:
    """What `build_report` wrote."""

    path: Path
    rows: int
    positives: int
    failed: int  # failures only: not-eligible rows are counted apart, as score counts them
    negatives: int
    cards: int  # positives shown with images
    thumbnails: int  # cards whose radiograph thumbnail could be made
    overlays: int  # cards with the overlay of their mask
    bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    masks: bool = False  # the run's masks were given (cards carry overlays)
    not_eligible: int = 0  # rows the eligibility rule refused (not chest radiographs)

    def lines(self) -> list[str]:
        """What the command prints: the notes, then one line of counts, size and time."""
        overlays = f", {self.overlays} with overlays" if self.masks else ""
        return [f"note: {note}" for note in self.notes] + [
            f"{self.rows:,} rows: {self.positives:,} positive, {self.failed:,} failed, "
            + (f"{self.not_eligible:,} not eligible, " if self.not_eligible else "")
            + f"{self.negatives:,} negative; "
            f"{self.thumbnails} of {self.cards} cards with "
            f"thumbnails{overlays}; {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s"
        ]


# ----------------------------------------------------------------------------- reading


def read_predictions(path: str | os.PathLike) -> tuple[list[Row], list[str]]:
    """The rows of a `ptxfast score` CSV, and notes about what was left out.

    A torn last line (a run killed mid-write; `--resume` completes it) is left out with a
    note; any other row that is not six fields, or a probability that is not a number, is an
    error naming the line.
    """
    from ptxfast.score.ledger import CSV_COLUMNS, decode_record

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
        p, sop, prob, label, area, error = decode_record(rec)
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
class Model:
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


def _model(summary: dict[str, Any]) -> Model:
    from ptxfast.inference import artifact

    m = Model(name=summary.get("model"), artifact=summary.get("artifact"))
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
        m.sha256 = side.sha256
        thresholds = side.thresholds
        m.threshold = float(thresholds["label"])
        op = side.operating_point
        m.operating_point = dict(op) if op is not None else None
        if op is not None:
            m.threshold = float(op["threshold"])
        m.size = side.size
        if side.kind == "segmenter":
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
    mask exists (named by the scorer's own rule, `score.writer.mask_outputs`)."""
    from ptxfast.score.writer import UnsafeOutputPath, mask_outputs

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
    """A float [0, 1] image scaled (`resize`, the area average) so its longer side is at most
    `size`."""
    from ptxfast.data.resize import resize

    h, w = image.shape
    scale = min(1.0, size / max(h, w))
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))))


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 200 else text[:197] + "…"


@dataclass
class Card:
    """A positive shown with images: its radiograph thumbnail and mask overlay as data URIs,
    or the reason each is missing."""

    row: Row
    rank: int
    study: str | None = None
    image: str | None = None  # data URI
    image_reason: str = ""
    overlay: str | None = None
    overlay_reason: str = ""


def _card(row: Row, rank: int, root: Path | None, root_reason: str, masks_dir: Path | None) -> Card:
    """A positive's images: the radiograph shrunk to THUMB, and its mask outlined on it."""
    from PIL import Image

    from ptxfast.data.dicom import load_image
    from ptxfast.data.resize import resize
    from ptxfast.score.writer import overlay_rgb

    card = Card(row, rank)
    thumb = None
    source = _inside(root, row.path) if root is not None else None
    if root is None:
        card.image_reason = root_reason
    elif source is None:
        card.image_reason = "the path leaves the scored folder"
    elif (reason := not_regular(source)) is not None:  # never opened: a FIFO would block
        card.image_reason = reason
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
        small = resize(np.asarray(mask_img, dtype=np.float32), (h, w)) >= 63.5
        card.overlay = _jpeg(overlay_rgb(thumb, small, fill=0.3))
    except Exception as err:
        card.overlay_reason = f"mask not read: {_reason(err)}"
    return card


def _study(root: Path | None, rel: str) -> str | None:
    """StudyInstanceUID from the DICOM header of root/rel, without its pixels; None if unread."""
    from ptxfast.data.dicom import read_dataset

    path = _inside(root, rel) if root is not None else None
    if path is None or not_regular(path):  # a FIFO among the failures would block the read
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


@dataclass
class _Worklist:
    """The rows of a run in the page's order: positives and negatives by probability, highest
    first, and the failures in the CSV's order."""

    positives: list[Row]
    negatives: list[Row]
    failures: list[Row]

    @classmethod
    def of(cls, rows: Sequence[Row]) -> _Worklist:
        """`rows` sorted into the page's three groups."""
        scored = sorted((r for r in rows if not r.failed), key=lambda r: (-r.prob, r.path))
        return cls(
            positives=[r for r in scored if r.label == "1"],
            negatives=[r for r in scored if r.label != "1"],
            failures=[r for r in rows if r.failed],
        )

    def counts(self) -> dict[str, int]:
        """Rows, scored, failed, not eligible and positives, for the summary."""
        not_eligible = sum(r.not_eligible for r in self.failures)
        return dict(
            rows=len(self.positives) + len(self.negatives) + len(self.failures),
            scored=len(self.positives) + len(self.negatives),
            failed=len(self.failures) - not_eligible,
            not_eligible=not_eligible,
            positives=len(self.positives),
        )


def _scored_folder(
    root: str | os.PathLike | None, summary: dict[str, Any]
) -> tuple[Path | None, str]:
    """The folder the radiographs are read from (the given one, else the summary's), and why
    there is none ("" when there is). A run that read a DICOMweb server (its root a URL) has
    no folder: its files were fetched, and only the CSV's text is shown."""
    if root is None and summary.get("root"):
        root = summary["root"]
    if root is None:
        return None, "scored folder unknown (give --json or --root)"
    if is_url(root):
        return None, (
            f"the run fetched the radiographs from the DICOMweb server {redact(root)}, so there is "
            "no folder to read them from"
        )
    if not Path(root).is_dir():
        return None, f"scored folder {Path(root)} not found"
    return Path(root), ""


def _list_rows(
    work: _Worklist, top: int, root: Path | None, page_size: int
) -> tuple[list[list[Any]], list[list[Any]], list[list[Any]]]:
    """The rows of the three lists (positives after the cards, failures, negatives) as the
    page's script reads them, with the StudyInstanceUID of each list's first page."""

    def scored(part: list[Row]) -> list[list[Any]]:
        return [[r.path, r.sop, None, round(r.prob, 6), r.area] for r in part]

    lists = (
        scored(work.positives[top:]),
        [[r.path, r.sop, None, r.error] for r in work.failures],
        scored(work.negatives),
    )
    for data in lists:
        for entry in data[:page_size]:  # the first page only: the rest say "not read"
            entry[2] = _study(root, entry[0])
    # Display text from here on: file names that are not UTF-8 show with U+FFFD.
    for data in lists:
        for entry in data:
            for j in (0, 1, 2):
                entry[j] = pages.text(entry[j]) if entry[j] is not None else None
            if len(entry) == 4:
                entry[3] = pages.text(entry[3])
    return lists


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
    root_path, root_reason = _scored_folder(root, summary)
    work = _Worklist.of(rows)
    cards = [
        _card(r, i + 1, root_path, root_reason, masks) for i, r in enumerate(work.positives[:top])
    ]
    rest, failures, negatives = _list_rows(work, top, root_path, page_size)
    content = report_page.PageContent(
        title=title or f"ptxfast worklist: {preds.name}",
        preds=preds,
        model=model,
        summary=summary,
        counts=work.counts(),
        notes=notes,
        histogram=_histogram(rows, model.threshold),
        cards=cards,
        n_positives=len(work.positives),
        rest=rest,
        failures=failures,
        negatives=negatives,
        masks=masks is not None,
        root_reason=root_reason,
        top=top,
        page_size=page_size,
    )
    pages.write_page(out, report_page.document(content))
    return ReportResult(
        path=out,
        rows=len(rows),
        positives=len(work.positives),
        failed=content.counts["failed"],
        not_eligible=content.counts["not_eligible"],
        negatives=len(work.negatives),
        cards=len(cards),
        thumbnails=sum(c.image is not None for c in cards),
        overlays=sum(c.overlay is not None for c in cards),
        bytes=out.stat().st_size,
        seconds=time.perf_counter() - t0,
        notes=notes + ([model.note] if model.note else []),
        masks=masks is not None,
    )
