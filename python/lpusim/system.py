"""Many chips (docs/system.md): a system configuration, and runs of one program per chip.

    from lpusim.system import System
    system = System.load({"topology": "node", "chips": 2, "seed": 1})   # or a JSON file path
    system.link(0, 1)              # (link on chip 0, link on chip 1, latency in cycles)
    result = system.run([asm0, asm1], threads=0)
    result.cycles, result.chips[1]["cycles"], result.links, result.sync_cycles

Chips can keep their SRAM from one run to the next (docs/system.md section 7), e.g. each chip's share of an LLM's KV
cache between decode steps: one `lpusim.ChipMemory` per chip,

    memories = [ChipMemory(system.chip_config) for _ in range(system.chips)]
    step = system.load_programs(binaries, static_inits)     # every chip's program and constant image, loaded once
    for i, m in enumerate(memories):
        if not step.installed_in(i, m):
            step.install_static(i, m)                       # the constant image, written once
    result = step.run(inputs, dumps, memories=memories)     # inputs written into the memories; they keep the rest

The simulation itself is the Rust core (`lpusim._lpusim.simulate_system`, `lpusim._lpusim.LoadedSystem`); this
module only converts arguments and results. Every chip runs on its own seeded oscillator; link transfers are exact
in global time.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from lpusim import _lpusim
from lpusim.errors import ConfigError
from lpusim.files import MAX_JSON_BYTES, read_text

if TYPE_CHECKING:
    from lpusim.runtime.memory import ChipMemory


@dataclass
class SystemResult:
    """What a system run returns."""

    cycles: int                     # the run's length in nominal cycles (the latest chip's end)
    seconds: float
    sync_cycles: int                # largest per-chip DESKEW/RUNTIME_DESKEW stall
    chips: list[dict[str, Any]]     # per chip: cycles, instructions, busy, events, configs, sync_cycles, drift_ppm, ...
    links: list[dict[str, Any]]     # per link direction: from/to chip and link, vectors, bytes, busy_fraction
    dumps: list[list[np.ndarray | None]] = field(default_factory=list)
    tree_height: int = 0
    windows: int = 0
    threads: int = 1

    @property
    def latency_us(self) -> float:
        return self.seconds * 1e6

    @property
    def events(self) -> list[dict[str, int]]:
        """Per chip: its energy events (docs/isa.md "Energy events"; also each `chips[i]["events"]`)."""
        return [{k: int(v) for k, v in c["events"].items()} for c in self.chips]

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


def _restated(error: ConfigError, message: str) -> ConfigError:
    """The same ConfigError (its `field` kept) with a new message: the file named, the field called a system's."""
    restated = ConfigError(message)
    if hasattr(error, "field"):
        restated.field = error.field
    return restated


class System:
    """A validated system configuration with every random draw made (latencies, drifts, HAC alignment)."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)
        self.json = json.dumps(self.config)
        try:
            self.info = _lpusim.describe_system(self.json)
        except ConfigError as e:  # the Rust ConfigError says "chip configuration field 'system.<field>'"
            raise _restated(e, str(e).replace("chip configuration field 'system.", "system configuration field "
                                                                                  "'system.", 1)) from None

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Mapping[str, Any] | None = None, **overrides: Any) -> "System":
        """From a dict, a JSON file path or JSON text (None: the default 8-chip node); keyword overrides win."""
        where = None
        if source is None:
            config: dict[str, Any] = {}
        elif isinstance(source, Mapping):
            config = dict(source)
        else:
            text = str(source)
            if text.lstrip().startswith("{"):  # JSON text itself
                where = "the system configuration given as JSON text"
            else:  # a file: bounded, regular files only
                where = text
                text = read_text(text, "a system configuration", MAX_JSON_BYTES, ConfigError)
            try:
                config = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: not valid JSON: {e}") from None
            except RecursionError:
                raise ConfigError(f"{where}: nested too deeply to be a configuration") from None
            if not isinstance(config, dict):
                raise ConfigError(f"{where}: a JSON object is needed")
        config.update(overrides)
        try:
            return cls(config)
        except ConfigError as e:
            raise _restated(e, f"{where}: {e}" if where else str(e)) from None

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

    @property
    def chip_config(self) -> dict[str, Any]:
        """The configuration of every chip (a `ChipMemory` for this system is made for it)."""
        return json.loads(self.info["chip_config"])

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
        memories: "Sequence[ChipMemory | None] | None" = None,
    ) -> SystemResult:
        """Run programs[i] on chip i (missing or None: idle). threads=0 uses every core; results do not depend on it.

        `memories`: None runs every chip on fresh, zeroed SRAM (its `.init`s, then mem_inits[i]). Otherwise one
        `lpusim.ChipMemory` (or None: a fresh chip) per chip of the system; another count raises SimulationError
        before anything runs. Chip i then runs on that memory's contents: its program's `.init`s and mem_inits[i]
        are written into it before the run (every run: this call has no separate constant image; `load_programs`
        writes one once), the memory keeps whatever the run leaves, and dumps[i] are read from it. The memories are
        moved into the run and back, never copied. A functional run that faults flags every memory of the run
        (`ChipMemory.fault`, later runs on it refused until `clear_fault()`): the faulting chip's holds every write
        committed before its fault and records the error; the others hold what their chips wrote until the run
        stopped, flagged with an error naming the faulting chip. A timing-only run changes no memory. Errors before
        the first cycle (counts, a memory of another chip configuration or already faulted, bad images) change
        nothing."""
        stats, arrays = _lpusim.simulate_system(
            self.json, list(programs), [list(m) for m in (mem_inits or [])], [list(d) for d in (dumps or [])],
            timing_only, threads, max_cycles, _handles(memories))
        return _result(stats, arrays)

    def load_programs(
        self,
        programs: Sequence[str | bytes | None],
        static_inits: Sequence[Sequence[tuple[int, int, np.ndarray]]] | None = None,
    ) -> "LoadedSystem":
        """Load programs[i] for chip i once (decoded, checked, the HACs aligned), with static_inits[i] as chip i's
        constant image: a `LoadedSystem` to run many times, on fresh chips or on kept `ChipMemory`s."""
        return LoadedSystem(self, programs, static_inits)


class LoadedSystem:
    """A system's programs loaded once, each chip's constant image (its program's `.init`s and static_inits[i]) kept
    (the arrays referenced, not copied): the system analogue of a single chip's `LoadedProgram`.

    The constant image is written into a chip's `ChipMemory` once, by `install_static(i, memory)`, never by a run:
    `run(..., memories=...)` writes only that run's inputs (mem_inits), so what runs write over the constant image
    or beside it (a KV cache) stays for the next run. A program that reuses its constants' space for later tensors
    needs `install_static` before every run. Without memories (or for a chip given None) a run starts that chip
    fresh from its constant image and inputs, as `System.run` does.
    """

    def __init__(self, system: System, programs: Sequence[str | bytes | None],
                 static_inits: Sequence[Sequence[tuple[int, int, np.ndarray]]] | None = None):
        self.system = system
        self._handle = _lpusim.LoadedSystem(system.json, list(programs), [list(s) for s in (static_inits or [])])

    @property
    def chips(self) -> int:
        return int(self._handle.chips)

    def run(
        self,
        mem_inits: Sequence[Sequence[tuple[int, int, np.ndarray]]] | None = None,
        dumps: Sequence[Sequence[tuple[int, int, int]]] | None = None,
        *,
        timing_only: bool = False,
        threads: int = 0,
        max_cycles: int | None = None,
        memories: "Sequence[ChipMemory | None] | None" = None,
    ) -> SystemResult:
        """One run; mem_inits[i] are chip i's inputs. `memories` as for `System.run` (one `ChipMemory` or None per
        chip), except that a chip on a memory gets no constant image written, neither `.init`s nor static_inits
        (`install_static` writes them once): only mem_inits[i]. Faults and timing-only runs as for `System.run`."""
        stats, arrays = self._handle.run(
            [list(m) for m in (mem_inits or [])], [list(d) for d in (dumps or [])], timing_only, threads, max_cycles,
            _handles(memories))
        return _result(stats, arrays)

    def install_static(self, chip: int, memory: "ChipMemory") -> "LoadedSystem":
        """Write chip `chip`'s constant image into `memory` now (copied once); runs with `memory` at position `chip`
        do not write it again. Installing again rewrites it. Raises SimulationError for a chip outside the system,
        or a memory of another chip configuration or holding a fault (nothing written then)."""
        self._handle.install_static(chip, _handle(memory))
        return self

    def installed_in(self, chip: int, memory: "ChipMemory") -> bool:
        """Whether `install_static(chip, memory)` of this object wrote into `memory` since the memory's last
        `clear()` (whatever runs wrote over it since)."""
        return bool(self._handle.installed_in(chip, _handle(memory)))


def _handle(memory):
    """The binding's memory of an `lpusim.ChipMemory` (or the binding's own object, passed through)."""
    return getattr(memory, "_handle", memory)


def _handles(memories):
    return None if memories is None else [None if m is None else _handle(m) for m in memories]


def _result(stats: dict[str, Any], arrays: list) -> SystemResult:
    return SystemResult(
        cycles=stats["cycles"], seconds=stats["seconds"], sync_cycles=stats["sync_cycles"],
        chips=stats["chips"], links=stats["links"], dumps=arrays, tree_height=stats["tree_height"],
        windows=stats["windows"], threads=stats["threads"])


__all__ = ["System", "SystemResult", "LoadedSystem"]
