"""Self-contained HTML pages (the score report, evaluate's index): one skeleton, one escape.

A page carries everything inline (styles, a little script, images as data URIs or files beside
it named by relative links) and a Content Security Policy that lets the browser fetch nothing
from anywhere else, so a report copied to a reading-room PC shows the same and reaches no
network. Every string that came from a file name or a DICOM header goes through `esc` (or
`json_script` for data the page's script reads): archives are not trusted, and a file named
`<img src=x onerror=...>.dcm` must show as text.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from ptxfast.files import write_text
from ptxfast.safe_text import visible

# Nothing but this page's own inline style and script, and images from data: URIs (and, for
# pages that link files beside them, from the same place); no fetches, no frames, no forms.
_CSP = (
    "default-src 'none'; img-src {images}; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)

BASE_STYLE = """
:root { --fg: #1b1f24; --muted: #5b6570; --line: #d5dbe1; --pos: #b3261e; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  margin: 0 auto; padding: 16px 24px 48px; max-width: 1400px; }
h1 { font-size: 20px; margin: 4px 0 12px; } h2 { font-size: 16px; margin: 24px 0 8px; }
table { border-collapse: collapse; } td, th { padding: 3px 8px; text-align: left;
  border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; user-select: all;
  overflow-wrap: anywhere; }
.muted { color: var(--muted); } .num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def text(value: Any) -> str:
    """`value` as display text: undecodable bytes of a file name (surrogate escapes) become
    U+FFFD and control characters visible escapes (`safe_text.visible`), so the page is valid
    UTF-8 and shows what is there."""
    s = "" if value is None else str(value)
    return visible(s.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def esc(value: Any) -> str:
    """`value` as HTML text or attribute content (quotes escaped too)."""
    return html.escape(text(value), quote=True)


def json_script(element_id: str, data: Any) -> str:
    """A `<script type="application/json">` block holding `data` for the page's script.

    `<`, `>` and `&` are written as JSON escapes, so no value (a file name holding
    `</script>`) can end the block or open a tag.
    """
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{esc(element_id)}">{payload}</script>'


def data_uri(data: bytes, mime: str) -> str:
    """`data:<mime>;base64,...` for an image embedded in the page."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def page(
    title: str, body: str, *, style: str = "", script: str = "", local_images: bool = False
) -> str:
    """A complete HTML5 document: the title, the shared style plus `style`, `body` (already
    HTML) and `script` (inline JavaScript, run after the body is parsed). Images come from
    data: URIs only, or with `local_images` also from files beside the page (a folder opened
    from disk or served as one)."""
    tail = f"<script>\n{script}\n</script>\n" if script else ""
    csp = _CSP.format(images="data: 'self' file:" if local_images else "data:")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{BASE_STYLE}{style}</style>\n</head>\n"
        f"<body>\n{body}\n{tail}</body>\n</html>\n"
    )


def write_page(path: str | os.PathLike, document: str) -> Path:
    """Write `document` to `path` (UTF-8) atomically (`files.write_text`), so a reader never
    opens half a page; the folder is created."""
    return write_text(path, document)
