"""A model compiled for several chips (`MultiProgram`) and the result of running it (`MultiRunResult`)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpusim.chip import Chip
from lpusim.compiler import random_inputs
from lpusim.errors import ModelError
from lpusim.multichip.clocks import TICKS, clocks, predict_chip
from lpusim.runtime.host_layout import decode_output
from lpusim.runtime.program import Program, utilization
from lpusim.system import System, SystemResult


@dataclass
class MultiRunResult:
    outputs: dict[str, np.ndarray]
    cycles: int                      # the system's: the latest chip's end in nominal cycles (rounded up)
    predicted_cycles: int
    chip_cycles: list[int]           # every chip on its own clock
    predicted_chip_cycles: list[int]
    latency_us: float
    instructions: int
    sync_cycles: int                 # the largest per-chip RUNTIME_DESKEW stall
    chip_sync_cycles: list[int]
    links: list[dict[str, Any]]      # link directions that carried vectors
    link_summary: dict[str, Any]
    utilization: list[dict[str, float]]  # per chip
    busy: list[dict[str, int]]
    wall_simulate_s: float
    timing_only: bool = False
    system: SystemResult | None = field(default=None, repr=False)
    # per chip: energy events (docs/isa.md "Energy events"), the same functional and timing-only
    events: list[dict[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "predicted_cycles": self.predicted_cycles, "chip_cycles": self.chip_cycles,
                "predicted_chip_cycles": self.predicted_chip_cycles, "latency_us": self.latency_us,
                "instructions": self.instructions, "sync_cycles": self.sync_cycles,
                "chip_sync_cycles": self.chip_sync_cycles, "links": self.links, "link_summary": self.link_summary,
                "utilization_per_chip": self.utilization}


@dataclass
class MultiProgram:
    """A model compiled for a pipeline of chips: one single-chip `Program` per stage plus the sync plan."""

    chip: Chip
    chips: int
    parallel: str
    system: System
    stages: list[Program]
    barriers: list[list[tuple[int, int]]]  # per chip: (program cycle, d) of each RUNTIME_DESKEW barrier
    last_effects: list[int]                # per chip: program cycle of its last effect
    drift_tolerance_ppm: float
    transfers: list[dict[str, Any]]        # per cut: vectors, link, lag, first/last send cycle
    partition: dict[str, Any]
    input_shapes: dict[str, tuple]
    output_names: list[str]
    compile_s: float
    binaries: list[bytes] = field(repr=False, default_factory=list)
    # ONNX output -> {"axis": a, "blocks": [[chip, block output], ...]}: an output whose column blocks stay on the
    # chips that computed them, concatenated by the host along axis a (tensor parallelism)
    output_blocks: dict[str, dict] = field(default_factory=dict)

    @property
    def assembly(self) -> list[str]:
        return [p.assembly for p in self.stages]

    @property
    def instructions(self) -> int:
        return sum(p.instructions for p in self.stages)

    @property
    def sram_bytes(self) -> int:
        return max(p.sram_bytes for p in self.stages)

    def _loaded_system(self, system: System):
        """The stage programs loaded into `system` once, with their constant images (for runs on kept memories)."""
        loaded = self.__dict__.setdefault("_loaded", {})
        key = id(system)
        if key not in loaded:
            loaded[key] = (system, system.load_programs(self.binaries,
                                                        [list(p._schedule.static_init) for p in self.stages]))
        return loaded[key][1]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_loaded", None)  # loaded systems hold the binding's objects: made again on first use
        return state

    def cache_tiles(self) -> dict[str, list]:
        """Every stage's KV-cache regions (`Program.cache_tiles`), by ONNX output."""
        tiles = {}
        for p in self.stages:
            tiles.update(p.cache_tiles())
        return tiles

    def predict(self, system: System | None = None) -> tuple[int, list[int]]:
        """(system cycles, per-chip cycles) this program takes on `system` (its drifts and HAC offsets)."""
        system = system or self.system
        cl = clocks(system.info)
        per_chip = [predict_chip(cl[i], self.barriers[i], self.last_effects[i], self.chip.superlanes,
                                 system.hac_period) for i in range(self.chips)]
        end = max(c * cl[i].period for i, c in enumerate(per_chip))
        return -(-end // TICKS), per_chip

    @property
    def predicted_cycles(self) -> int:
        return self.predict()[0]

    @property
    def latency_us(self) -> float:
        return self.chip.seconds(self.predicted_cycles) * 1e6

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        # bool/integer inputs (token ids, masks) are drawn in their range, as on one chip (Program.random_inputs)
        kinds = {}
        for p in self.stages:
            kinds.update(p._graph.input_kinds)
        return random_inputs(self.input_shapes, seed, kinds)

    def run(self, inputs: dict[str, np.ndarray] | None = None, *, seed: int = 0, timing_only: bool = False,
            system: System | dict | None = None, threads: int = 0, memories=None, resident=(),
            outputs=None) -> MultiRunResult:
        """Simulate every chip (`simulate_system`); `system` overrides the drift seed/magnitude of the compile's.

        `memories`: one `ChipMemory` per chip of the program, each chip running on its memory as earlier runs left
        it (as `Program.run(memory=)` does for one chip): its stage's constant image is written on the first run
        there (before every run for a stage that reuses its constants' space), then only the inputs. `resident`:
        inputs already in the memories where the stages read them (a KV cache), not written. `outputs`: the output
        names read back (None: all)."""
        if isinstance(system, dict):  # the program's own system (its chip, topology, links) with these overrides
            system = System.load({**self.system.config, **system})
        system = system or self.system
        if json.loads(system.info["chip_config"]) != self.chip.config:
            raise ModelError("the system's chips are not the chips the program was compiled for")
        if system.chips < self.chips:
            raise ModelError(f"the program needs {self.chips} chips, the system has {system.chips}")
        if resident and memories is None:
            raise ModelError(f"resident input(s) {', '.join(sorted(resident))} need kept memories (memories=)")
        if memories is not None and len(memories) != self.chips:
            raise ModelError(f"{len(memories)} memories for a program of {self.chips} chips: give one per chip")
        resident = set(resident)
        if inputs is None:
            inputs = {k: v for k, v in self.random_inputs(seed).items() if k not in resident}
        missing = [n for n in self.input_shapes if n not in inputs and n not in resident]
        if missing:
            raise ModelError(f"missing input(s): {', '.join(missing)}")
        extra = [n for n in inputs if n not in self.input_shapes]
        if extra:
            raise ModelError(f"unknown input(s): {', '.join(extra)}")
        wanted = None if outputs is None else set(outputs)
        if wanted is not None:  # with an output the host concatenates, its blocks
            wanted |= {b for name, spec in self.output_blocks.items() if name in wanted for _, b in spec["blocks"]}
        mems, dumps = [], []
        for p in self.stages:
            given = {n: inputs[n] for n in p.input_shapes if n in inputs}
            if memories is None:
                mem, dump = p._mem_image(given)
            else:
                mem, dump = p._input_image(given, images=not timing_only, resident=resident, wanted=wanted)
            mems.append(mem)
            dumps.append(dump)
        start = time.perf_counter()
        if memories is None:
            res = system.run(self.binaries, mems, dumps, timing_only=timing_only, threads=threads)
        else:
            loaded = self._loaded_system(system)
            for i, (p, m) in enumerate(zip(self.stages, memories)):
                if not timing_only and (p._schedule.constants_released or not loaded.installed_in(i, m)):
                    loaded.install_static(i, m)
            kept = list(memories) + [None] * (system.chips - self.chips)
            res = loaded.run(mems, dumps, timing_only=timing_only, threads=threads, memories=kept)
        wall = time.perf_counter() - start
        outputs: dict[str, np.ndarray] = {}
        if not timing_only:
            for i, p in enumerate(self.stages):
                if p.output_names:
                    outputs.update(p._decode_outputs(res.dumps[i], wanted))
            types = self.stages[0]._graph.output_types
            for name, spec in self.output_blocks.items():
                if wanted is not None and name not in wanted:
                    continue
                whole = np.concatenate([outputs.pop(block) for _, block in spec["blocks"]], axis=spec["axis"])
                outputs[name] = decode_output(name, whole, types.get(name))
            outputs = {n: outputs[n] for n in self.output_names if wanted is None or n in wanted}
        predicted, per_chip = self.predict(system)
        chips = res.chips[:self.chips]
        busy = [{k: int(v) for k, v in c["busy"].items()} for c in chips]
        util = [utilization(self.chip, b, int(c["cycles"])) for b, c in zip(busy, chips)]
        return MultiRunResult(outputs, res.cycles, predicted, [int(c["cycles"]) for c in chips], per_chip,
                              res.latency_us, sum(int(c["instructions"]) for c in chips), res.sync_cycles,
                              [int(c["sync_cycles"]) for c in chips], [lk for lk in res.links if lk["vectors"]],
                              res.link_summary(), util, busy, wall, timing_only, res, res.events[:self.chips])
