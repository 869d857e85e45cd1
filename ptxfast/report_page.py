"""The HTML of `ptxfast report`'s worklist page: its sections, styles and inline script.

`document(content)` turns a `PageContent` (everything `report.build_report` gathered: the
summary, the histogram, the cards and the rows of each list) into one page through
`pages.page`. Every value from the archive goes through `pages.esc` or `pages.json_script`,
and the script writes rows with `textContent` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptxfast import pages
from ptxfast.pages import esc
from ptxfast.score.pacs import is_url

if TYPE_CHECKING:
    from ptxfast.report import Card, Model

__all__ = ["PageContent", "document"]


@dataclass
class PageContent:
    """What the worklist page shows, gathered by `report.build_report`."""

    title: str
    preds: Path  # the predictions CSV
    model: Model
    summary: dict[str, Any]  # the score summary (`--json`), {} without one
    counts: dict[str, int]  # rows, scored, failed, not_eligible, positives
    notes: list[str]
    histogram: str | None  # data URI of the probability histogram
    cards: list[Card]  # the most probable positives, with images
    n_positives: int
    # List rows (see `_list_html`): the positives after the cards, failures, negatives.
    rest: list[list[Any]]
    failures: list[list[Any]]
    negatives: list[list[Any]]
    masks: bool  # the run's masks were given (cards show overlays)
    root_reason: str  # why there are no radiograph thumbnails, "" when there are
    top: int
    page_size: int


def _num(n: int) -> str:
    return f"{n:,}"


def _uid(value: str | None, missing: str = "—") -> str:
    return f"<code>{esc(value)}</code>" if value else f'<span class="muted">{esc(missing)}</span>'


def _summary_html(
    model: Model, summary: dict[str, Any], counts: dict[str, int], preds: Path, notes: list[str]
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
        *([("not eligible", _num(counts["not_eligible"]))] if counts.get("not_eligible") else []),
        ("positives", f"<strong>{_num(counts['positives'])}</strong>{share}"),
        (
            "images/s",
            f"{rate:.1f} end to end" if rate else '<span class="muted">— (no --json)</span>',
        ),
    ]
    if summary.get("root"):
        where = "DICOMweb server" if is_url(summary["root"]) else "scored folder"
        items.append((where, f"<code>{esc(summary['root'])}</code>"))
    if model.note:
        notes = [*notes, model.note]
    body = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in items)
    note_html = "".join(f'<p class="muted">note: {esc(n)}</p>' for n in notes)
    return f'<section id="summary"><table class="summary">{body}</table>{note_html}</section>'


def _card_html(card: Card, masks: bool, size: int | None) -> str:
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


def document(content: PageContent) -> str:
    """The whole worklist page of `content`, as one self-contained HTML document."""
    c = content
    from ptxfast import __version__

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<h1>{esc(c.title)}</h1>",
        f'<p class="muted">Written {generated} by ptxfast {__version__} from '
        f"<code>{esc(c.preds)}</code>. Every row of the CSV appears once below.</p>",
        '<div class="top">',
        _summary_html(c.model, c.summary, c.counts, c.preds, c.notes),
    ]
    if c.histogram:
        parts.append(
            f'<section id="histogram"><img src="{c.histogram}" '
            'alt="histogram of probabilities with the threshold marked"></section>'
        )
    parts.append("</div>")
    parts.append(
        '<div class="tools"><input id="filter" type="search" placeholder="filter by file name '
        'or UID" aria-label="filter by file name or UID"> <span class="muted">'
        "Click a UID or file name to select it for copying.</span></div>"
    )
    parts += [_positives_html(c), _failures_html(c), _negatives_html(c)]
    return pages.page(c.title, "\n".join(parts), style=_STYLE, script=_SCRIPT)


def _positives_html(c: PageContent) -> str:
    what = (
        f"Thumbnails for the {_num(len(c.cards))} most probable of {_num(c.n_positives)} positives"
        + (" with the predicted mask outlined" if c.masks else "")
        + ("; the other positives are listed as text below." if c.rest else ".")
    )
    if c.root_reason:
        what += f" No radiograph thumbnails: {c.root_reason}."
    cards = "".join(_card_html(card, c.masks, c.model.size) for card in c.cards)
    parts = [
        f'<section id="positives"><h2>Positives: {_num(c.n_positives)}, highest probability '
        f'first</h2><p class="muted">{esc(what)} StudyInstanceUID is read from the DICOM header '
        f"of the cards and of the first page of each list.</p>"
        f'<div class="cards">{cards}</div>'
    ]
    if c.rest:
        parts.append(_list_html("rows-positives", "scored", c.rest, c.top + 1, c.page_size, True))
    parts.append("</section>")
    return "\n".join(parts)


def _failures_html(c: PageContent) -> str:
    return (
        f'<section id="failures"><h2>Failures: {_num(c.counts["failed"])}'
        + (
            f", not eligible: {_num(c.counts['not_eligible'])}"
            if c.counts.get("not_eligible")
            else ""
        )
        + "</h2>"
        + (
            _list_html("rows-failures", "failed", c.failures, 1, c.page_size, False)
            if c.failures
            else '<p class="muted">Every file was scored.</p>'
        )
        + "</section>"
    )


def _negatives_html(c: PageContent) -> str:
    return (
        f'<section id="negatives"><details><summary>Negatives: {_num(len(c.negatives))}, highest '
        "probability first (click to show)</summary>"
        + (
            _list_html("rows-negatives", "scored", c.negatives, 1, c.page_size, True)
            if c.negatives
            else ""
        )
        + "</details></section>"
    )
