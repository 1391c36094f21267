"""Metadata a person would rather look at: markdown tables and small charts for the Dagster UI."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from face_pipeline import markdown


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> dg.MetadataValue:
    """`markdown.markdown_table` as Dagster metadata (the UI renders it)."""
    return dg.MetadataValue.md(markdown.markdown_table(headers, rows))


def bar_chart_md(title: str, values: Mapping[str, float], *, xlabel: str = "", ylabel: str = "") -> dg.MetadataValue:
    """A PNG bar chart embedded in markdown (the UI renders it inline)."""
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{_bar_png(title, values, xlabel, ylabel)})")


def line_chart_md(title: str, series: Mapping[str, Sequence[float]], *, xlabel: str = "epoch") -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{_line_png(title, series, xlabel)})")


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in worker processes
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5, 2.6), dpi=90)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar_png(title: str, values: Mapping[str, float], xlabel: str, ylabel: str) -> str:
    fig, ax = _figure()
    ax.bar(list(values), list(values.values()), color="#4f6d9a")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _png(fig)


def _line_png(title: str, series: Mapping[str, Sequence[float]], xlabel: str) -> str:
    fig, ax = _figure()
    for name, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend()
    return _png(fig)
