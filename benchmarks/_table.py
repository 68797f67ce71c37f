"""The benchmarks' one table printer: right-aligned plain text, or a markdown table for docs."""

from __future__ import annotations


def table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    out.append("-" * len(out[0]))
    return "\n".join(
        out + ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    )
