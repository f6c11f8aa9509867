"""The HTML of `tsweep report`: sections, embedded figures, tables and the page itself. Pure functions of
their arguments (no I/O), tested directly; every text that reaches the page is escaped here.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from tsweep.search.leaderboard import fmt
from tsweep.search.objective import is_number

FILES_META = "tsweep-report-files"  # <meta> naming the PNGs written beside the page


@dataclass
class Section:
    """One <section> of the page: an id (the anchor links and tests use), a heading and HTML blocks."""

    id: str
    title: str
    blocks: list[str] = field(default_factory=list)


@dataclass
class Figures:
    """PNG plots collected while building sections: file name -> bytes, in page order."""

    items: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, data: bytes, alt: str, caption: str) -> str:
        """Keep `data` as `<name>.png` and return its <figure> HTML."""
        self.items[f"{name}.png"] = data
        return figure_html(data, alt, caption)


def note(text: str) -> str:
    """A highlighted paragraph (text is escaped)."""
    return f'<p class="note">{html.escape(text)}</p>'


def figure_html(data: bytes, alt: str, caption: str) -> str:
    """An <img> with the PNG embedded as a base64 data URI, and its caption."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="{uri}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _cell(value: Any) -> str:
    kind = "num" if is_number(value, finite=False) else "text"
    return f'<td class="{kind}">{html.escape(fmt(value))}</td>'


def dict_table(rows: list[dict], css: str = "") -> str:
    """A plain HTML table of dicts sharing keys (cells formatted like the leaderboard, escaped)."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(_cell(v) for v in r.values()) + "</tr>" for r in rows)
    return f'<table class="{html.escape(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def facts_table(facts: list[tuple[str, Any]]) -> str:
    """Two columns: what, value."""
    items = "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v)}</tr>" for k, v in facts)
    return f'<table class="facts">{items}</table>'


def importance_table(rows: list[dict], metric: str) -> str:
    """The importance ranking of `report_stats.importance`, with a bar proportional to each spread."""
    top = max([r["spread"] for r in rows if r["spread"] is not None] + [0.0]) or 1.0
    lines = []
    for r in rows:
        width = 0 if r["spread"] is None else round(120 * r["spread"] / top)
        bar = f'<span class="bar" style="width:{width}px"></span> ' if width else ""
        lines.append(f"<tr><td>{html.escape(r['param'])}</td><td>{bar}{html.escape(fmt(r['spread']))}</td>"
                     + "".join(_cell(r[k]) for k in ("spearman", "best", "best_mean", "n")) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("hyperparameter", f"spread of mean best {html.escape(metric)}",
                                              "|&rho;|", "best group", "its mean", "trials"))
    return f'<table class="importance"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:16px 24px;color:#1d2430;background:#fff}
h1{margin:.2em 0}h2{border-bottom:2px solid #dde3ec;padding-bottom:4px;margin-top:1.6em}
nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #dde3ec;padding:3px 8px;text-align:left}th{background:#f3f6fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}.status-pruned{color:#b35c00}
.status-failed{color:#b00020}.status-running{color:#0062b3}.status-completed{color:#1b7f3b}
.note{background:#fff6dd;border-left:4px solid #f0b400;padding:6px 10px}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eef1f5}figcaption{font-size:13px;color:#555}
.bar{display:inline-block;height:10px;background:#4c78a8;vertical-align:middle}
code{background:#f3f6fa;padding:1px 4px}.generated{color:#777;font-size:12px}
"""


def files_written(page: str) -> list[str]:
    """The PNG files a page made by `render_page` says it wrote beside it (none for any other page)."""
    match = re.search(f'<meta name="{FILES_META}" content="([^"]*)">', page)
    names = html.unescape(match.group(1)).split() if match else []
    return [n for n in names if n.endswith(".png") and "/" not in n and "\\" not in n and not n.startswith(".")]


def render_page(title: str, sections: list[Section], generated: str = "", files: Iterable[str] = ()) -> str:
    """The whole HTML document: title, links to the sections, then each section.

    Args:
        title: the page's <title> and <h1>.
        sections: in page order; their blocks are HTML already.
        generated: a timestamp shown under the title; default "" (none).
        files: the PNG files written beside the page, listed in a <meta> (FILES_META) so that the next report
            at the same place removes only those; default () (none).
    """
    toc = " ".join(f'<a href="#{html.escape(s.id)}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{html.escape(s.id)}">\n<h2>{html.escape(s.title)}</h2>\n'
                     + "\n".join(s.blocks) + "\n</section>" for s in sections)
    stamp = f'<p class="generated">generated {html.escape(generated)} by tsweep report</p>\n' if generated else ""
    listed = " ".join(sorted(files))
    meta = f'<meta name="{FILES_META}" content="{html.escape(listed)}">\n' if listed else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n{meta}'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{stamp}<nav>{toc}</nav>\n{body}\n</body>\n</html>\n")
