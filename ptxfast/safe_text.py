"""Text that came from a file, made safe for where ptxfast writes it: one rule for all of them.

File names and DICOM header values come from archives nobody vetted. They reach four places,
and in none of them may they act:

- a terminal or a log (the summary, warnings, error messages, `--json`): `visible` writes every
  control character as a visible escape (`\\x1b`, `\\r`, `\\n`, `\\t`, `\\u202e` for the
  bidirectional overrides and line separators), so an escape sequence in a Modality cannot
  retitle, clear or recolour the operator's terminal, and a CR cannot overwrite a line;
- the predictions CSV: `to_cell` escapes control characters the same way and doubles the
  backslash (so the escape is reversible), then neutralises what a spreadsheet would evaluate
  (OWASP's CSV injection rule: a cell starting with `=`, `+`, `-`, `@`, tab or CR gets a leading
  `'`; so does one already starting with `'`, which keeps the rule reversible). A cell that is a
  plain number (a probability, a negative number) is left alone: a number is not a formula.
  `from_cell` undoes both exactly, so paths and UIDs read back from the CSV (`--resume`, the
  summary's counts, `ptxfast report`) compare equal to the names on disk. Every value then fits
  on one line, so the CSV's records are its lines.
- an HTML page (`pages.text` uses `visible`, then HTML-escapes).

Bytes of a file name that are not UTF-8 (Python's surrogate escapes) are left to the writer's
`errors="surrogateescape"`, which writes them back as the same bytes.
"""

from __future__ import annotations

import re

__all__ = ["FORMULA_START", "from_cell", "to_cell", "visible"]

# What a spreadsheet may evaluate at the start of a cell (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NEUTRAL = "'"
# Characters that act on a terminal or break a line: C0 and C1 controls, DEL, the Unicode line
# and paragraph separators, and the bidirectional marks and overrides ("Trojan Source").
_CONTROL = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_SHORT = {"\t": "t", "\n": "n", "\r": "r"}
_VISIBLE = re.compile(f"[{_CONTROL}]")
_CELL = re.compile(f"[{_CONTROL}\\\\]")
_UNCELL = re.compile(r"\\(?:\\|[tnr]|x[0-9a-f]{2}|u[0-9a-f]{4})")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch in _SHORT:
        return "\\" + _SHORT[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object) -> str:
    """`text` (str() of it) with every control character written as a visible escape, for a
    terminal, a log, a JSON summary or an error message; None becomes ""."""
    s = "" if text is None else str(text)
    return _VISIBLE.sub(lambda m: _escape(m[0]), s)


def to_cell(text: object) -> str:
    """`text` as a CSV cell of the predictions file: control characters escaped, backslash
    doubled, and a leading `'` on anything a spreadsheet would evaluate; `from_cell` undoes it."""
    s = "" if text is None else str(text)
    s = _CELL.sub(lambda m: _escape(m[0]), s)
    if s.startswith((*FORMULA_START, _NEUTRAL)) and not _NUMBER.fullmatch(s):
        s = _NEUTRAL + s
    return s


def _unescape(m: re.Match) -> str:
    code = m[0][1:]
    if code == "\\":
        return "\\"
    if code in ("t", "n", "r"):
        return {"t": "\t", "n": "\n", "r": "\r"}[code]
    return chr(int(code[1:], 16))


def from_cell(cell: str) -> str:
    """The value `to_cell` wrote as `cell`, exactly."""
    if cell.startswith(_NEUTRAL):
        cell = cell[1:]
    return _UNCELL.sub(_unescape, cell) if "\\" in cell else cell
