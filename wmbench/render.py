"""The report's two faces from one list of sections: markdown (report.md) and one self-contained HTML page.

Long things fold away (``<details>``, which GitHub's markdown shows too), a table of contents follows the
at-a-glance figure, and the page fits a 1366 px window: intervals sit under their value, text cells wrap.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Section:
    """A heading and a short note, then (each optional) folded detail text, figures and a table; ``fold`` puts
    the figures and the table in a closed ``<details>`` with that summary line. Level-2 sections make the table of contents."""

    title: str
    note: str = ""
    table: pd.DataFrame | None = None
    fold: str | None = None
    more: tuple[str, str] | None = None  # (summary, text), folded
    figures: list[tuple[str, Path]] = field(default_factory=list)
    level: int = 2
    items: list[str] = field(default_factory=list)  # a bullet list after the note


def slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens (used for the HTML ids too)."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.4}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}.tw{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f4f4f4;
max-width:11em}td{max-width:22em}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{display:block;color:#777;font-size:.86em}code{background:#f4f4f4;padding:0 3px}
img{max-width:100%;height:auto;display:block;margin:.5em 0}.note{color:#555;font-size:.9em}.cap{font-weight:600;margin:1.2em 0 0}
details{margin:.4em 0}summary{cursor:pointer;color:#245;font-size:.92em}nav ul{columns:2;font-size:.92em}"""

_CI = re.compile(r"^(\S+) (\[[^\]]*\])$")
_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?(e[+-]?\d+)?|–|∞)( \(\d+/\d+\))?$")


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def _cell(v: object) -> str:
    """A number right-aligned; ``value [lo, hi]`` as the value over its interval, so wide tables stay narrow."""
    s = str(v)
    if m := _CI.match(s):
        return f"<td class=n>{html.escape(m[1])}<span class=ci>{html.escape(m[2])}</span></td>"
    return f"<td class=n>{html.escape(s)}</td>" if _NUM.match(s) else f"<td>{html.escape(s)}</td>"


def html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>no rows</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(_cell(r[c]) for c in df.columns) + "</tr>" for _, r in df.iterrows())
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def note_html(note: str) -> str:
    """The few markdown marks the notes use (`code`, **strong**, *em*) as HTML."""
    t = html.escape(note)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", t)


def img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _md_section(s: Section) -> list[str]:
    out = [f"{'#' * s.level} {s.title}", ""]
    if s.note:
        out += [s.note, ""]
    if s.more:
        out += [f"<details><summary>{html.escape(s.more[0])}</summary>", "", s.more[1], "", "</details>", ""]
    out += [*(f"- {x}" for x in s.items), ""] if s.items else []
    cap = len(s.figures) > 1  # several figures: each says what it shows above its own legend
    body = [(f"**{name}**\n\n" if cap else "") + f"![{name}]({p.name})\n" for name, p in s.figures]
    if s.table is not None:
        body.append(md_table(s.table) + "\n")
    if s.fold and body:
        body = [f"<details><summary>{html.escape(s.fold)}</summary>\n", *body, "</details>\n"]
    return out + body


def _html_section(s: Section) -> str:
    out = [f"<h{s.level} id={slug(s.title)}>{html.escape(s.title)}</h{s.level}>"]
    if s.note:
        out.append(f"<p class=note>{note_html(s.note)}</p>")
    if s.more:
        out.append(
            f"<details><summary>{html.escape(s.more[0])}</summary><p class=note>{note_html(s.more[1])}</p>"
        )
        out.append("</details>")
    if s.items:
        out.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in s.items) + "</ul>")
    cap = len(s.figures) > 1
    body = [
        (f"<p class=cap>{html.escape(name)}</p>" if cap else "") + img_tag(p, name) for name, p in s.figures
    ]
    if s.table is not None:
        body.append(html_table(s.table))
    if s.fold and body:
        body = [f"<details><summary>{html.escape(s.fold)}</summary>", *body, "</details>"]
    return "".join(out + body)


def render(title: str, meta: list[str], glance: Section | None, sections: list[Section]) -> tuple[str, str]:
    """(markdown, html): title, run facts, the at-a-glance section, contents, then every section."""
    toc = [s.title for s in sections if s.level == 2]
    md = [f"# {title}", "", *[f"- {x}" for x in meta], ""]
    ht = [f"<h1>{html.escape(title)}</h1><ul>" + "".join(f"<li>{note_html(x)}</li>" for x in meta) + "</ul>"]
    if glance is not None:
        md += _md_section(glance)
        ht.append(_html_section(glance))
    md += ["**Contents:** " + " · ".join(f"[{t}](#{slug(t)})" for t in toc), ""]
    ht.append(
        "<nav><strong>Contents</strong><ul>"
        + "".join(f"<li><a href='#{slug(t)}'>{html.escape(t)}</a></li>" for t in toc)
        + "</ul></nav>"
    )
    for s in sections:
        md += _md_section(s)
        ht.append(_html_section(s))
    page = (
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>{''.join(ht)}</body></html>\n"
    )
    return "\n".join(md) + "\n", page
