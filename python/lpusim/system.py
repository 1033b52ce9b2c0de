"""Many chips (docs/system.md): a system configuration, and runs of one program per chip.

    from lpusim.system import System
    system = System.load({"topology": "node", "chips": 2, "seed": 1})   # or a JSON file path
    system.link(0, 1)              # (link on chip 0, link on chip 1, latency in cycles)
    result = system.run([asm0, asm1], threads=0)
    result.cycles, result.chips[1]["cycles"], result.links, result.sync_cycles

The simulation itself is the Rust core (`lpusim._lpusim.simulate_system`); this module only converts arguments and
results. Every chip runs on its own seeded oscillator; link transfers are exact in global time.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from lpusim import _lpusim
from lpusim.errors import ConfigError


@dataclass
class SystemResult:
    """What a system run returns."""

    cycles: int                     # the run's length in nominal cycles (the latest chip's end)
    seconds: float
    sync_cycles: int                # largest per-chip DESKEW/RUNTIME_DESKEW stall
    chips: list[dict[str, Any]]     # per chip: cycles, instructions, busy, sync_cycles, drift_ppm, hac_error, ...
    links: list[dict[str, Any]]     # per link direction: from/to chip and link, vectors, bytes, busy_fraction
    dumps: list[list[np.ndarray | None]] = field(default_factory=list)
    tree_height: int = 0
    windows: int = 0
    threads: int = 1

    @property
    def latency_us(self) -> float:
        return self.seconds * 1e6

    def link_summary(self) -> dict[str, Any]:
        """Total vectors and bytes, and the busiest link direction's busy fraction."""
        used = [link for link in self.links if link["vectors"]]
        return {
            "vectors": sum(link["vectors"] for link in used),
            "bytes": sum(link["bytes"] for link in used),
            "links_used": len(used),
            "max_busy_fraction": max((link["busy_fraction"] for link in used), default=0.0),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "latency_us": self.latency_us,
            "sync_cycles": self.sync_cycles,
            "chips": [{k: v for k, v in c.items() if k != "dumps"} for c in self.chips],
            "links": [link for link in self.links if link["vectors"]],
            "link_summary": self.link_summary(),
            "tree_height": self.tree_height,
        }


class System:
    """A validated system configuration with every random draw made (latencies, drifts, HAC alignment)."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)
        self.json = json.dumps(self.config)
        self.info = _lpusim.describe_system(self.json)

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Mapping[str, Any] | None = None, **overrides: Any) -> "System":
        """From a dict, a JSON file path or JSON text (None: the default 8-chip node); keyword overrides win."""
        if source is None:
            config: dict[str, Any] = {}
        elif isinstance(source, Mapping):
            config = dict(source)
        else:
            text = str(source)
            if not text.lstrip().startswith("{"):
                try:
                    with open(text, encoding="utf-8") as f:
                        text = f.read()
                except OSError as e:
                    raise ConfigError(f"cannot read system configuration {source}: {e}") from None
            try:
                config = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"system configuration {source}: not valid JSON: {e}") from None
            if not isinstance(config, dict):
                raise ConfigError(f"system configuration {source}: a JSON object is needed")
        config.update(overrides)
        return cls(config)

    @property
    def chips(self) -> int:
        return int(self.info["chips"])

    @property
    def links(self) -> list[dict[str, Any]]:
        return list(self.info["links"])

    @property
    def hac_period(self) -> int:
        return int(self.info["hac_period"])

    @property
    def min_send_interval_cycles(self) -> int:
        return int(self.info["min_send_interval_cycles"])

    def link(self, chip_a: int, chip_b: int) -> tuple[int, int, float]:
        """The first link joining two chips: (link on chip_a, link on chip_b, latency in nominal cycles)."""
        for lk in self.info["links"]:
            if (lk["chip_a"], lk["chip_b"]) == (chip_a, chip_b):
                return lk["link_a"], lk["link_b"], lk["latency_cycles"]
            if (lk["chip_b"], lk["chip_a"]) == (chip_a, chip_b):
                return lk["link_b"], lk["link_a"], lk["latency_cycles"]
        raise ConfigError(f"no link joins chip {chip_a} and chip {chip_b}")

    def run(
        self,
        programs: Sequence[str | bytes | None],
        mem_inits: Sequence[Sequence[tuple[int, int, np.ndarray]]] | None = None,
        dumps: Sequence[Sequence[tuple[int, int, int]]] | None = None,
        *,
        timing_only: bool = False,
        threads: int = 0,
        max_cycles: int | None = None,
    ) -> SystemResult:
        """Run programs[i] on chip i (missing or None: idle). threads=0 uses every core; results do not depend on it."""
        stats, arrays = _lpusim.simulate_system(
            self.json, list(programs), [list(m) for m in (mem_inits or [])], [list(d) for d in (dumps or [])],
            timing_only, threads, max_cycles)
        return SystemResult(
            cycles=stats["cycles"], seconds=stats["seconds"], sync_cycles=stats["sync_cycles"],
            chips=stats["chips"], links=stats["links"], dumps=arrays, tree_height=stats["tree_height"],
            windows=stats["windows"], threads=stats["threads"])


__all__ = ["System", "SystemResult"]
