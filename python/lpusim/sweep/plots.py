"""A sweep's plots (docs/llm.md 4.4), with matplotlib (the optional `plot` extra): tokens/s per user against chips,
J/token against concurrency (when the plans carry an energy block), and the latency-throughput frontier."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lpusim.sweep.spec import ASKED, AXES

INPUTS = [ASKED.get(a, a) for a in AXES]
PLOT_MISSING = "plots need matplotlib, an optional extra: pip install 'lpusim[plot]'"


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (larger is better), by the first."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def energy_column(rows: Sequence[dict[str, Any]]) -> str | None:
    """The plans' joules per token (`energy.j_per_token` or any field so named), if they have one."""
    names = [k for row in rows for k in row if k.split(".")[-1] == "j_per_token"]
    return names[0] if names else None


def series(rows: Sequence[dict[str, Any]], x: str, y: str, over: Sequence[str]) -> dict[str, list]:
    """Feasible rows' (x, y) grouped by the inputs that vary in the sweep, other than `over` (the x axis's own
    inputs): one labelled series per combination."""
    feasible = [r for r in rows if not r.get("error") and r.get(x) is not None and r.get(y) is not None]
    varying = [c for c in INPUTS if c not in over and len({str(r.get(c)) for r in feasible}) > 1]
    out: dict[str, list] = {}
    for r in feasible:
        label = ", ".join(f"{c.removesuffix('_asked')} {r[c]}" for c in varying) or "all points"
        out.setdefault(label, []).append((r[x], r[y]))
    return out


def _line(ax, points: list, best) -> Any:
    """Every point as a marker, a line through the best y at each x."""
    chosen: dict = {}
    for x, y in points:
        chosen[x] = y if x not in chosen else best(chosen[x], y)
    xs = sorted(chosen)
    line = ax.plot(xs, [chosen[x] for x in xs], "-")[0]
    ax.plot([p[0] for p in points], [p[1] for p in points], "o", color=line.get_color(), alpha=0.5)
    return line


def plot_sweep(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """The plots of `rows` as PNG files in `out_dir`; ImportError when matplotlib is missing."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir, written = Path(out_dir), []
    out_dir.mkdir(parents=True, exist_ok=True)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        written.append(out_dir / name)

    def against_log2_x(groups, pick, xlabel, ylabel, title, name):
        """One line per group over a base-2 x axis; `pick` chooses among points that share an x."""
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, points in groups.items():
            _line(ax, points, pick).set_label(label)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, name)

    groups = series(rows, "chips", "tokens_per_s", ("chips_asked", "tp_asked", "pp_asked", "concurrency"))
    if groups:
        against_log2_x(groups, max, "chips", "tokens/s per user", "Decode speed against chips (best layout per count)",
                       "tokens_per_s_vs_chips.png")

    energy = energy_column(rows)
    groups = series(rows, "concurrency", energy, ("concurrency",)) if energy else {}
    if groups:
        against_log2_x(groups, min, "concurrency (sequences in flight)", "J/token",
                       "Energy per token against concurrency", "j_per_token_vs_concurrency.png")

    feasible = [r for r in rows if not r.get("error") and r.get("tokens_per_s") is not None]
    if feasible:
        points = [(r["throughput_tokens_per_s"], r["tokens_per_s"]) for r in feasible]
        front = pareto(points)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", color="0.6", alpha=0.6, label="points")
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "o-", color="C3",
                label="Pareto frontier")
        for i in front:
            r = feasible[i]
            ax.annotate(f"{r['chips']}c {r['precision']} x{r['concurrency']}", points[i], fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
        ax.set(xlabel="throughput, tokens/s (all sequences)", ylabel="tokens/s per user",
               title="Latency-throughput frontier")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "frontier.png")
    return written
