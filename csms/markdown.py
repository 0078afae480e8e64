"""A notice body in Markdown, turned into sanitised HTML and into plain text
that reads like a real CSMS notice (links as ``text [ url ]``, bullets as
`` * item``).

HTML goes through nh3 (an allow-list sanitiser) after markdown-it-py, so an
author's raw HTML can never carry scripts or handlers into subscribers'
mail; links are kept, with ``rel=noopener noreferrer``.
"""

from __future__ import annotations

from html.parser import HTMLParser

from markdown_it import MarkdownIt
from markdown_it.token import Token
import nh3

_MD = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table")

_TAGS = {"a", "p", "br", "strong", "b", "em", "i", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
         "blockquote", "code", "pre", "hr", "table", "thead", "tbody", "tr", "th", "td", "span"}
_ATTRS = {"a": {"href", "title"}, "th": {"align"}, "td": {"align"}}
_SCHEMES = {"http", "https", "mailto", "tel"}


def to_html(markdown: str) -> str:
    """Return the body as sanitised HTML (links kept, no scripts, styles or event handlers)."""
    raw = _MD.render(markdown)
    return nh3.clean(raw, tags=_TAGS, attributes=_ATTRS, url_schemes=_SCHEMES,
                     link_rel="noopener noreferrer")


class _Audit(HTMLParser):
    """Lists what :func:`to_html`'s allow-list will drop from rendered HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.removed: list[str] = []

    def _note(self, what: str) -> None:
        if what not in self.removed:
            self.removed.append(what)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAGS:
            self._note(f"<{tag}> element" + (" and its content" if tag in ("script", "style") else ""))
            return
        allowed = _ATTRS.get(tag, set())
        for name, value in attrs:
            if name not in allowed:
                self._note(f"{name} attribute on <{tag}>")
            elif name == "href" and value and ":" in value.split("/")[0] \
                    and value.split(":", 1)[0].strip().lower() not in _SCHEMES:
                self._note(f"{value.split(':', 1)[0].strip().lower()}: link on <{tag}>")


def removed(markdown: str) -> list[str]:
    """What the sanitiser removes from the body's HTML ("<script> element and its content",
    "onclick attribute on <a>" ...), in order, once each: an author is told, not silently edited."""
    audit = _Audit()
    audit.feed(_MD.render(markdown))
    audit.close()
    return audit.removed


def to_text(markdown: str) -> str:
    """Return the body as plain text in the style of CSMS text mail."""
    tokens = _MD.parse(markdown)
    out: list[str] = []
    lists: list[list[int]] = []   # stack of [ordered?, counter]
    prefix = ""
    for tok in tokens:
        kind = tok.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            lists.append([1 if kind == "ordered_list_open" else 0, int(tok.attrGet("start") or 1)])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                out.append("")
        elif kind == "list_item_open":
            ordered, counter = lists[-1]
            indent = "   " * (len(lists) - 1)
            if ordered:
                prefix = f"{indent} {counter}. "
                lists[-1][1] += 1
            else:
                prefix = f"{indent} * "
        elif kind == "inline":
            text = _inline(tok.children or [])
            if prefix:
                out.append(prefix + text.replace("\n", "\n" + " " * len(prefix)))
                prefix = ""
            elif lists:
                out.append("   " * len(lists) + text)
            else:
                out.append(text)
        elif kind == "paragraph_close" and not lists:
            out.append("")
        elif kind == "heading_close":
            out.append("")
        elif kind in ("fence", "code_block"):
            out.extend("    " + line for line in tok.content.rstrip("\n").split("\n"))
            out.append("")
        elif kind == "hr":
            out.extend(["-" * 40, ""])
        elif kind == "html_block":
            out.append(nh3.clean(tok.content, tags=set()).strip())
            out.append("")
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


def _inline(children: list[Token]) -> str:
    parts: list[str] = []
    hrefs: list[str] = []
    for child in children:
        kind = child.type
        if kind == "text" or kind == "code_inline":
            parts.append(child.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind in ("strong_open", "strong_close"):
            parts.append("*")
        elif kind in ("em_open", "em_close"):
            parts.append("_")
        elif kind == "link_open":
            hrefs.append(str(child.attrGet("href") or ""))
        elif kind == "link_close":
            href = hrefs.pop() if hrefs else ""
            if href:
                parts.append(f" [ {href} ]")
        elif kind == "image":
            parts.append(f"[{child.content}]")
        elif kind == "html_inline":
            continue
    return "".join(parts)
