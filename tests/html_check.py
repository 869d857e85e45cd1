"""A strict check of the HTML pages ptxfast writes, on the standard library's html.parser.

html.parser recovers from anything and reports nothing, so `check_html` adds the checks a
validator would make that matter here: every element closed, in order; void elements never
closed; one <!DOCTYPE html> and one <html>; no duplicate attribute or id; no unknown
declaration; and no http:// or https:// anywhere in the text (the pages must not reach the
network, and markup such as inline SVG namespaces or old doctypes would bring one in).
"""

from __future__ import annotations

from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class StrictHTML(HTMLParser):
    """html.parser with the checks it does not make itself: every element closed, in order,
    void elements never closed, one <html>, no duplicate attribute and no unknown declaration."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, tuple[int, int]]] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.decls: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = [k for k, _ in attrs]
        if len(names) != len(set(names)):
            self.errors.append(f"duplicate attribute in <{tag}> at {self.getpos()}")
        d = dict(attrs)
        self.tags.append((tag, d))
        if "id" in d:
            self.ids.append(d["id"])
        if tag not in VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID:
            self.errors.append(f"self-closed <{tag}/> at {self.getpos()}")
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"</{tag}> closes a void element at {self.getpos()}")
        elif not self.stack or self.stack[-1][0] != tag:
            top = self.stack[-1] if self.stack else None
            self.errors.append(f"</{tag}> at {self.getpos()} does not close {top}")
        else:
            self.stack.pop()

    def handle_decl(self, decl):
        self.decls.append(decl)

    def unknown_decl(self, data):
        self.errors.append(f"unknown declaration {data!r}")


def check_html(text: str) -> StrictHTML:
    p = StrictHTML()
    p.feed(text)
    p.close()
    assert not p.errors, p.errors[:5]
    assert not p.stack, f"unclosed: {p.stack[:5]}"
    assert p.decls == ["DOCTYPE html"]
    assert [t for t, _ in p.tags].count("html") == 1
    assert len(p.ids) == len(set(p.ids)), "duplicate ids"
    assert "http://" not in text and "https://" not in text
    return p
