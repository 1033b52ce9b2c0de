"""The energy of a rack-scale plan (docs/energy.md, docs/llm.md section 4): a token's dynamic energy from the
events of its pieces, and the static power of every chip shared by the tokens in flight.

A token's pass does the same work whoever else is in flight (each sequence's token installs the weights and reads
its own cache), so its dynamic energy does not depend on concurrency. Static power does not depend on the work:
all chips draw it all the time, and the tokens produced in that time share it. With C sequences in flight the
system makes min(C / per-token time, 1 / pipeline beat) tokens per second, so

    J/token(C) = dynamic J/token + chips x static W / tokens per second(C).

One user on hundreds of chips pays for every chip's static power alone; the pipeline full of sequences shares it.
"""
from __future__ import annotations

from typing import Any, Mapping

from lpusim.chip import Chip
from lpusim.energy import TERMS, dynamic_energy, static_energy
from lpusim.errors import LpusimError


def tokens_per_s(sequences: int, per_token_s: float, beat_s: float) -> float:
    """The system's tokens per second with `sequences` in flight: each sequence makes a token per pass, the
    pipeline at most one per beat (its busiest group's time)."""
    return min(sequences / per_token_s, 1 / beat_s)


def concurrency_points(most: int, saturation: int) -> list[int]:
    """1, 2, 4, ... up to the pipeline's saturation, plus the saturation point and the most that fit."""
    top = max(1, min(most, saturation))
    points = {1, top}
    n = 2
    while n < top:
        points.add(n)
        n *= 2
    if most > saturation:
        points.add(min(most, 2 * saturation))  # past saturation: no more tokens per second, to show it
    return sorted(points)


def plan_energy(chip: Chip, chips: int, token_events: Mapping[str, int], prefill_events: Mapping[str, int],
                per_token_s: float, beat_s: float, ttft_s: float, concurrency: int,
                most_sequences: int) -> dict[str, Any]:
    """The plan's `energy` block: per token at the plan's concurrency, the prompt's prefill, and J/token against
    concurrency up to the pipeline's saturation (`fits` says whether the chips' SRAM holds that many caches)."""
    dynamic = dynamic_energy(chip, token_events)
    dynamic_j = sum(dynamic.values())
    static_w = static_energy(chip, 1.0, chips=chips)  # watts: compiled programs keep every superlane powered
    rate = tokens_per_s(concurrency, per_token_s, beat_s)
    static_j = static_w / rate
    saturation = max(1, round(per_token_s / beat_s))
    curve = []
    for c in concurrency_points(most_sequences, saturation):
        r = tokens_per_s(c, per_token_s, beat_s)
        curve.append({"concurrency": c, "tokens_per_s": round(r, 2), "j_per_token": dynamic_j + static_w / r,
                      "static_j_per_token": static_w / r, "power_w": dynamic_j * r + static_w,
                      "fits": c <= most_sequences})
    prefill = dynamic_energy(chip, prefill_events)
    prefill_j = sum(prefill.values()) + static_w * ttft_s
    return {
        # energy_j: per token, as run --json's is per inference (the same number as j_per_token)
        "energy_j": dynamic_j + static_j, "j_per_token": dynamic_j + static_j,
        "dynamic_j_per_token": dynamic_j, "static_j_per_token": static_j,
        "power_w": dynamic_j * rate + static_w, "static_power_w": static_w, "chips": chips,
        "breakdown_j_per_token": {**{k: dynamic.get(k, 0.0) for k in TERMS if k != "static"}, "static": static_j},
        "prefill_j": prefill_j, "concurrency": concurrency, "most_sequences": most_sequences,
        "saturation_concurrency": saturation, "by_concurrency": curve,
        "model": "docs/energy.md (per-event energies and static power are chosen, not published)",
    }


def plot_energy(plan: Mapping[str, Any], path) -> None:
    """J/token against sequences in flight, split into dynamic and static, with the pipeline's tokens/s: the
    plot `lpusim llm --plot` writes."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LpusimError("plotting needs matplotlib: pip install 'lpusim[plot]'") from None
    e = plan["energy"]
    curve = e["by_concurrency"]
    x = [p["concurrency"] for p in curve]
    dynamic = [e["dynamic_j_per_token"]] * len(curve)
    static = [p["static_j_per_token"] for p in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([str(c) for c in x], dynamic, label="dynamic (events)")
    ax.bar([str(c) for c in x], static, bottom=dynamic, label=f"static ({e['chips']} chips x "
           f"{e['static_power_w'] / e['chips']:.0f} W)")
    for i, p in enumerate(curve):
        if not p["fits"]:
            ax.text(i, p["j_per_token"], "caches do not fit", ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("sequences in flight")
    ax.set_ylabel("J per token (model: docs/energy.md)")
    rate = ax.twinx()
    rate.plot([str(c) for c in x], [p["tokens_per_s"] for p in curve], "k.-", label="tokens/s")
    rate.set_ylabel("tokens/s, all sequences")
    ax.set_title(f"{plan['model']} at {plan['precision']} on {plan['chips']} chips (tp {plan['tp']} x pp {plan['pp']})")
    ax.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
