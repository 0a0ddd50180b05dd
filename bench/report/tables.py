"""Markdown cells and tables: numbers as the report prints them, a dash for what is missing."""

from __future__ import annotations

import math
from typing import Any


def fmt(v: Any, digits: int = 2) -> str:
    """A number for a table: thousands separated, 0 decimals from 100 up, else `digits`."""
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def cpu_cell(cpu: dict[str, Any]) -> str:
    """app / redis / client (driver+listener) / others, in % of one core."""
    return (
        f"{fmt(cpu.get('app'), 0)} / {fmt(cpu.get('redis'), 0)} / "
        f"{fmt(cpu.get('driver'), 0)}+{fmt(cpu.get('listener'), 0)} / "
        f"{fmt(cpu.get('others'), 0)}"
    )


def times(v: float | None) -> str:
    """A ratio: `12.3x`."""
    return "–" if v is None else f"{v:,.1f}x"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; non-string cells go through `fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |")
    return "\n".join(lines)
