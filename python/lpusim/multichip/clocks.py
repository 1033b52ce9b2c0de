"""The clocks of a multi-chip system (docs/system.md sections 2 and 3): the exact cycle prediction each chip's
program is checked against, and the drift, lag and receive-buffer rules every C2C transfer is built with
(docs/multichip.md, Transfers)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from lpusim.chip import Chip
from lpusim.errors import CompileError, SimulationError
from lpusim.system import System

TICKS = 10 ** 12


@dataclass
class ChipClock:
    period: int
    root_period: int
    hac_offset: int

    def hac(self, k: int) -> int:
        return k * self.period // self.root_period + self.hac_offset

    def first_hac_at_least(self, x: int) -> int:
        if x <= self.hac_offset:
            return 0
        return -(-(x - self.hac_offset) * self.root_period // self.period)


def clocks(info: dict) -> list[ChipClock]:
    periods = [TICKS - round(c["drift_ppm"] * 1e6) for c in info["chip_info"]]
    root = info["root_chip"]
    out = []
    for i, c in enumerate(info["chip_info"]):
        reached = c["tree_depth"] is not None
        out.append(ChipClock(periods[i], periods[root] if reached else periods[i], int(c["hac_offset"])))
    return out


def predict_chip(clock: ChipClock, barriers: list[tuple[int, int]], last_effect: int, superlanes: int,
                 hac_period: int) -> int:
    """The chip's own cycle count: its program's last effect (program cycle) mapped through every barrier."""
    k_a, u_a, prog_a = 0, clock.hac(0), 0
    for at, d in barriers:
        t = k_a + (at - prog_a)
        sac = u_a + (t - k_a)
        delta = clock.hac(t) - sac
        if 2 * abs(delta) >= hac_period or delta >= d:
            raise SimulationError(f"predicted DriftOverrun: the chip has drifted {delta} cycles by its "
                                  f"RUNTIME_DESKEW {d} at program cycle {at}")
        k = clock.first_hac_at_least(sac + d)
        k_a, u_a, prog_a = k, clock.hac(k), at + d
    return k_a + (last_effect - prog_a) + 1 + superlanes - 1


def tolerance_ppm(config: dict) -> float:
    if config.get("chip_drift_ppm"):
        return max(abs(float(v)) for v in config["chip_drift_ppm"])
    return float(config.get("drift_ppm", 25.0))


def latency_bound(config: dict, link: dict) -> float:
    """The largest latency the link can have under any seed: its kind's mean (or its own) plus the spread."""
    kind = link.get("kind", "local")
    mean = float(config.get(f"{kind}_latency_cycles", 217.0 if kind == "local" else 650.0))
    spread = float(config.get("latency_spread_cycles", 3.0))
    for lk in config.get("links") or []:
        if {(lk["chip_a"], lk["link_a"]), (lk["chip_b"], lk["link_b"])} == \
                {(link["chip_a"], link["link_a"]), (link["chip_b"], link["link_b"])}:
            mean = float(lk.get("latency_cycles") or mean)
            spread = float(lk.get("spread_cycles") if lk.get("spread_cycles") is not None else spread)
    return max(mean + spread, float(link["latency_cycles"]))


def transfer_timing(system: System, chip: Chip, interval: int, max_free: int | None) -> dict[str, Any]:
    """The drift bounds and the lag and buffer rules every transfer uses (docs/multichip.md, Transfers)."""
    config = json.loads(system.info["config"])
    tol = tolerance_ppm(config) * 1e-6
    rel = 2 * tol / (1 - tol)
    if interval * (1 - rel) < float(system.info["send_interval_cycles"]):
        raise CompileError("the drift tolerance leaves no whole-cycle send interval that keeps links from LinkBusy")
    if max_free is None:
        max_free = int((chip.hac_period // 2 - 8) / rel) if rel > 0 else 10 ** 12
    spread = float(config.get("latency_spread_cycles", 3.0))

    def lag(info, f_send: int, f_recv: int) -> int:
        """Smallest lag for a transfer whose sender ran f_send cycles since its realignment at its last send and
        whose receiver runs f_recv + lag (+ one interval of slack) at its last receive."""
        bound = latency_bound(config, info)
        return math.ceil((bound * (1 + tol) + 3 + rel * (f_send + f_recv + interval)) / (1 - rel))

    def check_buffer(info, lag_used: int, f_send: int, f_recv: int) -> None:
        bound = latency_bound(config, info)
        early = lag_used + 2 + rel * (f_send + f_recv) - (bound - 2 * spread) * (1 - tol)
        waiting = int(early // interval) + 1
        if waiting > chip.c2c_rx_buffer_vectors:
            raise CompileError(f"a transfer over link {info['link_a']} of chip {info['chip_a']} could hold "
                               f"{waiting} vectors in a receive buffer of {chip.c2c_rx_buffer_vectors}")

    return {"config": config, "tol": tol, "rel": rel, "max_free": max_free, "lag": lag,
            "check_buffer": check_buffer}
