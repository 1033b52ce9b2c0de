"""A sweep's rows as a table (docs/llm.md 4.4): CSV always, Parquet when pyarrow is installed, a short text table
for a terminal."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from lpusim.sweep.run import RUN_COLUMNS


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every column: the inputs, `error` and the plan's fields in the order rows first name them (an error row has
    no plan fields, so the first feasible row fixes their order), then `RUN_COLUMNS`."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return [c for c in seen if c not in RUN_COLUMNS] + [c for c in RUN_COLUMNS if c in seen]


def results(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without `RUN_COLUMNS`: what a point found, equal whatever executor and cache ran it."""
    return [{k: v for k, v in row.items() if k not in RUN_COLUMNS} for row in rows]


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """The rows as Parquet with pyarrow; None when it is not installed. A column holding more than one type (the
    asked chips: numbers and "auto") is written as text."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    table = {}
    for name in columns(rows):
        values = [row.get(name) for row in rows]
        types = {type(v) for v in values if v is not None}
        if len(types) > 1 and types != {int, float}:
            values = [None if v is None else str(v) for v in values]
        elif types == {int, float}:
            values = [None if v is None else float(v) for v in values]
        table[name] = values
    pq.write_table(pa.table(table), path)
    return Path(path)


SHOWN = (("point", "point", "{}"), ("model", "model", "{}"), ("chips", "chips", "{}"), ("tp", "tp", "{}"),
         ("pp", "pp", "{}"), ("precision", "prec", "{}"), ("context", "context", "{}"),
         ("concurrency", "conc", "{}"), ("tokens_per_s", "tok/s/user", "{:.1f}"),
         ("throughput_tokens_per_s", "tok/s", "{:.1f}"), ("ttft_ms", "TTFT ms", "{:.3f}"),
         ("energy.j_per_token", "J/token", "{:.4g}"))


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """One line per point: the main inputs and numbers, or the error."""
    shown = [(key, head, fmt) for key, head, fmt in SHOWN if any(key in row for row in rows)]
    lines = ["  ".join(f"{head:>10}" for _, head, _ in shown)]
    for row in rows:
        cells = []
        for key, _, fmt in shown:
            if row.get(key) not in ("", None):
                text = fmt.format(row[key])
            else:  # an error row: the layout as asked
                text = str(row.get(f"{key}_asked", ""))
            cells.append(f"{text:>10}")
        line = "  ".join(cells)
        lines.append(line + (f"  error: {row['error']}" if row.get("error") else ""))
    return "\n".join(lines)
