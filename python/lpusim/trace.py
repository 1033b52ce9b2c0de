"""Perfetto / Chrome trace and a utilisation plot of a compiled program's schedule.

The schedule is exactly what the simulator executes (the run checks that its cycle count equals the compiler's
prediction), so the trace shows every instruction burst of every queue at its cycle: open the JSON in
https://ui.perfetto.dev or chrome://tracing. Timestamps are microseconds at the chip's clock.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

from lpusim.errors import LpusimError
from lpusim.files import write_text


def _unit(queue: str) -> str:
    return queue.split(".")[0]


def chrome_trace(program) -> dict:
    issues = program._schedule.issues
    us = 1e6 / program.chip.clock_hz
    queues = sorted({i.queue for i in issues})
    units = sorted({_unit(q) for q in queues})
    events = []
    for pid, unit in enumerate(units):
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": unit}})
    tids = {}
    for q in queues:
        tids[q] = len(tids)
        events.append({"ph": "M", "name": "thread_name", "pid": units.index(_unit(q)), "tid": tids[q],
                       "args": {"name": q}})
    for issue in issues:
        span = (issue.n - 1) * issue.d + 1
        events.append({"ph": "X", "name": issue.text.split()[0], "pid": units.index(_unit(issue.queue)),
                       "tid": tids[issue.queue], "ts": issue.cycle * us, "dur": span * us,
                       "args": {"instruction": issue.text, "cycle": issue.cycle, "repeat": issue.n,
                                "every": issue.d}})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"chip": program.chip.name, "predicted_cycles": program.predicted_cycles}}


def write_chrome_trace(program, path: str | os.PathLike) -> None:
    write_text(path, json.dumps(chrome_trace(program)), "the trace")  # never a half-written trace


def busy_over_time(program, bins: int = 200) -> tuple[list[float], dict[str, list[float]]]:
    """Fraction of each unit kind's queues issuing, per time bin (x in cycles)."""
    issues = program._schedule.issues
    total = max(program.predicted_cycles, 1)
    width = max(1, -(-total // bins))
    counts: dict[str, list[float]] = defaultdict(lambda: [0.0] * bins)
    for issue in issues:
        for r in range(issue.n):
            c = issue.cycle + r * issue.d
            counts[_unit(issue.queue)][min(c // width, bins - 1)] += 1
    queues_per_unit = defaultdict(int)
    for q in {i.queue for i in issues}:
        queues_per_unit[_unit(q)] += 1
    series = {u: [v / (width * queues_per_unit[u]) for v in vals] for u, vals in counts.items()}
    return [i * width for i in range(bins)], series


def plot_utilization(program, path: str | os.PathLike) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LpusimError("plotting needs matplotlib: pip install 'lpusim[plot]'") from None
    x, series = busy_over_time(program)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for unit, ys in sorted(series.items()):
        ax.plot(x, ys, label=unit)
    ax.set_xlabel("cycle")
    ax.set_ylabel("issuing fraction of the unit's used queues")
    ax.set_title(f"{program.chip.name}: {program.predicted_cycles:,} cycles")
    ax.legend(loc="upper right")
    fig.tight_layout()
    name = os.fspath(path)
    if os.path.isdir(name):
        raise LpusimError(f"{name}: a directory; cannot write the plot there")
    stem, ext = os.path.splitext(name)
    tmp = f"{stem}.partial{ext}"  # the extension names the format; renamed whole, never a half-written plot
    try:
        fig.savefig(tmp)
        os.replace(tmp, name)
    except (OSError, ValueError) as e:  # ValueError: matplotlib knows no format of that extension
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise LpusimError(f"{name}: cannot write the plot: {getattr(e, 'strerror', None) or e}") from None
    finally:
        plt.close(fig)
