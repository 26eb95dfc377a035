"""Repetition and summary: the one helper every row uses, plus the table and the JSON file."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool = False


@dataclass
class Summary:
    """One metric of one contender: every repetition's value and their median, min and max."""

    values: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "values": self.values,
            "note": self.note,
        }


@dataclass
class NotAvailable:
    """A contender that could not produce a metric, and why."""

    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"na": self.reason}


Cell = Summary | NotAvailable


@dataclass
class RowResult:
    key: str
    number: int
    title: str
    metrics: list[Metric]
    base: str  # the contender every other one is compared with
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # contender -> metric -> cell
    seconds: float = 0.0


def repeat(reps: int, once: Callable[[], Mapping[str, float]]) -> dict[str, Summary]:
    """Call ``once`` ``reps`` times; each call returns {metric key: value}. Summaries per key.

    A repetition may leave a key out (the metric was not observed that time); a key seen in no
    repetition has no summary, and the caller reports it as not available.
    """
    if reps < 1:
        raise ValueError("reps must be >= 1")
    return summarize([once() for _ in range(reps)])


def summarize(samples: list[Mapping[str, float]]) -> dict[str, Summary]:
    """{metric key: Summary} over repetitions already taken (for loops ``repeat`` cannot drive)."""
    values: dict[str, list[float]] = {}
    for sample in samples:
        for key, value in sample.items():
            values.setdefault(key, []).append(float(value))
    return {key: Summary(vals) for key, vals in values.items()}


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# -- output ------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1e6:
        return f"{value / 1e6:.2f}M"
    if mag >= 1000:
        return f"{value:,.0f}"
    if mag >= 100:
        return f"{value:.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    if mag >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ratio(base: Cell | None, other: Cell) -> str:
    if not isinstance(base, Summary) or not isinstance(other, Summary) or other.median == 0:
        return ""
    return f"{base.median / other.median:.2f}"


def render(rows: list[RowResult], previous: Mapping[str, Any] | None = None) -> str:
    """The whole table as text. ``previous`` (an earlier JSON file) adds a now/before column."""
    header = ["metric / contender", "median", "[min..max]", "ap/this", "note"]
    if previous is not None:
        header.insert(4, "now/before")
    lines: list[list[str]] = []
    bars: list[int] = []  # indexes of title lines
    for row in rows:
        bars.append(len(lines))
        lines.append([f"{row.number}. {row.title}  ({row.seconds:.1f} s)"])
        for metric in row.metrics:
            better = "higher" if metric.higher_is_better else "lower"
            lines.append([f"  {metric.label} [{metric.unit}, {better} is better]"])
            base = row.cells.get(row.base, {}).get(metric.key)
            for contender, cells in row.cells.items():
                cell = cells.get(metric.key)
                if cell is None:
                    continue
                name = f"    {contender}"
                if isinstance(cell, NotAvailable):
                    line = [name, f"n/a ({cell.reason})"]
                else:
                    rng = f"[{fmt(cell.min)}..{fmt(cell.max)}]"
                    r = "" if contender == row.base else ratio(base, cell)
                    line = [name, fmt(cell.median), rng, r]
                    if previous is not None:
                        line.append(_versus(previous, row.key, metric.key, contender, cell))
                    line.append(cell.note)
                lines.append(line)
    widths = [0] * len(header)
    for line in [header, *lines]:
        if len(line) == 1 or (len(line) == 2 and line[1].startswith("n/a")):
            widths[0] = max(widths[0], len(line[0])) if len(line) == 2 else widths[0]
            continue
        for i, text in enumerate(line):
            widths[i] = max(widths[i], len(text))
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("-" * len(out[0]))
    for i, line in enumerate(lines):
        if i in bars and i:
            out.append("")
        if len(line) == 1:
            out.append(line[0])
        elif line[1].startswith("n/a"):
            out.append(f"{line[0].ljust(widths[0])}  {line[1]}")
        else:
            out.append("  ".join(t.ljust(w) for t, w in zip(line, widths, strict=False)).rstrip())
    return "\n".join(out)


def _versus(
    previous: Mapping[str, Any], row: str, metric: str, contender: str, cell: Summary
) -> str:
    try:
        before = previous["rows"][row]["metrics"][metric]["results"][contender]["median"]
    except (KeyError, TypeError):
        return ""
    return f"{cell.median / before:.2f}" if before else ""


def rows_to_json(rows: list[RowResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in rows:
        metrics: dict[str, Any] = {}
        for metric in row.metrics:
            results = {
                contender: cells[metric.key].to_json()
                for contender, cells in row.cells.items()
                if metric.key in cells
            }
            metrics[metric.key] = {
                "label": metric.label,
                "unit": metric.unit,
                "higher_is_better": metric.higher_is_better,
                "base": row.base,
                "results": results,
            }
        out[row.key] = {
            "number": row.number,
            "title": row.title,
            "seconds": row.seconds,
            "metrics": metrics,
        }
    return out
