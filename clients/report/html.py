"""A self-contained HTML report: the before/after table and the figures embedded as PNG."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .figures import Figure

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.35rem 0.7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5rem; }
figcaption { font-size: 0.85rem; color: #555; }
img { max-width: 100%; }
"""


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(
    rows: Sequence[tuple[str, Sequence[Any]]],
    columns: Sequence[str],
    table_id: str = "summary",
    first: str = "metric",
) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (first, *columns))
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>{''.join(f'<td>{_cell(v)}</td>' for v in values)}</tr>"
        for label, values in rows
    )
    return (
        f'<table id="{html.escape(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


@dataclass(frozen=True)
class Section:
    """A further titled table under the main one (e.g. the demo's prompt search)."""

    id: str
    title: str
    columns: Sequence[str]
    rows: Sequence[tuple[str, Sequence[Any]]]
    first: str = ""
    text: str = ""

    def html(self) -> str:
        text = f"<p>{html.escape(self.text)}</p>" if self.text else ""
        table = _table(self.rows, self.columns, f"{self.id}-table", self.first)
        return (
            f'<section id="{html.escape(self.id)}"><h2>{html.escape(self.title)}</h2>'
            f"{text}{table}</section>"
        )


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode()
    caption = html.escape(fig.caption)
    return (
        f'<figure class="figure" id="fig-{html.escape(fig.name)}">'
        f'<img alt="{caption}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def render_html(
    title: str,
    rows: Sequence[tuple[str, Sequence[Any]]],
    columns: Sequence[str],
    figures: Sequence[Figure],
    notes: Mapping[str, str] | None = None,
    sections: Sequence[Section] = (),
) -> str:
    """The report page; `rows` are (metric, value per column) as printed in the terminal;
    `sections` follow the main table."""
    notes_html = "".join(
        f"<p><b>{html.escape(k)}</b>: {html.escape(v)}</p>" for k, v in (notes or {}).items()
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{notes_html}{_table(rows, columns)}"
        f"{''.join(section.html() for section in sections)}"
        f'<section id="figures">{"".join(_figure(f) for f in figures)}</section>'
        "</body></html>"
    )
