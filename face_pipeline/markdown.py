"""Markdown tables as plain text: one format for Dagster metadata (`defs.metadata`) and the evaluation's report."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["markdown_table"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A header row, the `|---|` rule and one line per row; cells are `str()`-ed as they are (a `|` inside a
    cell is the caller's to escape)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
