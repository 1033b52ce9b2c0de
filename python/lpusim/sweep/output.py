"""A sweep's files: `sweep.csv`, `sweep.parquet` (with pyarrow) and the plots (with matplotlib) in one directory."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from lpusim.sweep.plots import PLOT_MISSING, plot_sweep
from lpusim.sweep.table import write_csv, write_parquet

PARQUET_MISSING = "no sweep.parquet: it needs pyarrow, an optional extra: pip install 'lpusim[parquet]'"


def save_sweep(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike,
               plots: bool = True) -> tuple[list[Path], list[str]]:
    """Write the rows' files to `out_dir` (made if missing): the paths written, and a note per file left out."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, notes = [write_csv(rows, out / "sweep.csv")], []
    parquet = write_parquet(rows, out / "sweep.parquet")
    if parquet is None:
        notes.append(PARQUET_MISSING)
    else:
        written.append(parquet)
    if plots:
        try:
            written += plot_sweep(rows, out)
        except ImportError:
            notes.append(PLOT_MISSING)
    return written, notes
