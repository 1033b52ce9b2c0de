"""The pieces of a rack-scale plan (docs/llm.md section 4.2), each compiled and simulated once: one chip's parts
of a layer and of the model's ends (single-chip programs, timing-only), the collectives of a tensor-parallel group
(simulated multi-chip programs), and pipeline hops (the pipeline compiler's transfer rules). `llm/plan.py` composes
them.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from lpusim.chip import Chip
from lpusim.compiler.schedule.kv_cache import CacheRegion
from lpusim.energy import all_chips
from lpusim.errors import CompileError, ModelError, OutOfSram
from lpusim.llm.shard import DecoderShape, attention_part, embed_part, head_part, mlp_part
from lpusim.multichip.collectives import allgather, allreduce
from lpusim.multichip.compose import hop_cycles
from lpusim.runtime.program import compile_program

F32_PLANES = 4          # activations travel between chips as f32 (the parts' inputs and the partial sums)


class PartDoesNotFit(ModelError):
    """A part of one layer's share does not compile for one chip (its SRAM, mostly): that tp cannot hold it."""


@dataclass(frozen=True)
class Piece:
    """One compiled and simulated program: a part on one chip or a collective on a group."""

    name: str
    cycles: int
    sram_bytes: int = 0          # parts: the program's SRAM peak on its chip
    install_cycles: int = 0      # parts: cycles in which some MXM plane is loading or installing weights
    sync_cycles: int = 0         # collectives and hops: RUNTIME_DESKEW stalls
    link_vectors: int = 0        # collectives and hops: the most vectors one link direction carries
    compile_s: float = 0.0
    # energy events (docs/energy.md) of one run, summed over the chips it runs on (a part: one chip)
    events: dict[str, int] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if (v or k in ("name", "cycles")) and k != "events"}


def install_cycles(program) -> int:
    """Cycles covered by weight loads (LW bursts) and installs (IW) on any MXM plane of a compiled program."""
    spans = sorted((i.cycle, i.cycle + (i.n - 1) * i.d + 1) for i in program._schedule.issues
                   if i.queue.startswith("MXM.") and i.queue.endswith((".LW", ".IW")))
    total, end = 0, -1
    for lo, hi in spans:
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


class Pieces:
    """Compiles and simulates each distinct piece once (in memory, for the life of the object; across runs too with
    a `store`)."""

    def __init__(self, shape: DecoderShape, precision: str, chip: Chip, progress: bool = False, store=None):
        self.shape, self.precision, self.chip, self.progress = shape, precision, chip, progress
        self.found: dict[tuple, Piece] = {}
        self.programs: dict[tuple, Any] = {}  # decode attention parts, whose cache addresses prefill claims
        self.compile_s = 0.0
        self.store = store  # pieces kept across runs (a PieceCache, llm/piece_cache.py); None: this object's only

    def _recall(self, key: tuple) -> bool:
        """Whether the piece `key` is measured: by this object, or by an earlier run (`store`, which raises
        PartDoesNotFit for a part found not to fit)."""
        if key not in self.found and self.store is not None:
            piece = self.store.load(self, key)
            if piece is not None:
                self.found[key] = piece
        return key in self.found

    def _keep(self, key: tuple, piece: Piece) -> None:
        self.found[key] = piece
        if self.store is not None:
            self.store.save(self, key, piece)

    def _note(self, text: str):
        if self.progress:
            print(f"lpusim llm: {text}", file=sys.stderr, flush=True)

    def part(self, kind: str, tp: int, seq: int, past: int = 0, groups: int = 1) -> Piece:
        key = ("part", kind, tp, seq, past, groups)
        if kind == "attention" and seq > 1 and past:
            self.part("attention", tp, 1, past + seq - 1)  # the decode step first: its cache addresses
        if not self._recall(key):
            build = {"attention": lambda: attention_part(self.shape, tp, seq=seq, past=past),
                     "mlp": lambda: mlp_part(self.shape, tp, seq=seq, groups=groups),
                     "embed": lambda: embed_part(self.shape, tp, seq=seq, row_blocks=groups),
                     "head": lambda: head_part(self.shape, tp, seq=seq)}[kind]
            name = (f"{kind} part (tp {tp}, {seq} token{'s' if seq > 1 else ''}" + (f", past {past}" if past else "")
                    + (f", 1/{groups} of it" if groups > 1 else "") + ")")
            self._note(f"compiling the {name} at {self.precision}")
            start = time.perf_counter()
            try:
                program = compile_program(build(), chip=self.chip, precision=self.precision,
                                          cache=self._cache(kind, tp, seq, past))
            except (CompileError, OutOfSram) as e:
                failure = PartDoesNotFit(f"the {name} does not fit one chip: {e}")
                if self.store is not None:  # kept too: a part that does not fit costs a whole compile to find
                    self.store.save_failure(self, key, str(failure))
                raise failure from None
            spent = time.perf_counter() - start
            self.compile_s += spent
            run = program.run(timing_only=True)
            if kind == "attention" and seq == 1:
                self.programs[("attention", tp, seq, past)] = program
            self._keep(key, Piece(name, run.cycles, program.sram_bytes, install_cycles(program),
                                  compile_s=round(spent, 2), events=run.events))
        return self.found[key]

    def _cache(self, kind: str, tp: int, seq: int, past: int) -> list[CacheRegion] | None:
        """The attention part's KV cache as cache regions (docs/llm.md 3.5): the past read in place, the present
        written over it, no copy. A prefill chunk claims the decode step's addresses, as generation does."""
        if kind != "attention" or not past:
            return None
        pairs = (("present_key", "past_key"), ("present_value", "past_value"))
        if seq == 1:
            return [CacheRegion(present, past_) for present, past_ in pairs]
        tiles = self._decode_program(tp, past + seq - 1).cache_tiles()
        return [CacheRegion(present, past_, tiles[present]) for present, past_ in pairs]

    def _decode_program(self, tp: int, past: int):
        """The decode attention program whose cache addresses a prefill chunk claims. Its piece may come from the
        store without its program: then it is compiled again (not simulated), the same program by the same code."""
        key = ("attention", tp, 1, past)
        if key not in self.programs:
            start = time.perf_counter()
            self.programs[key] = compile_program(attention_part(self.shape, tp, seq=1, past=past), chip=self.chip,
                                                 precision=self.precision, cache=self._cache("attention", tp, 1, past))
            self.compile_s += time.perf_counter() - start
        return self.programs[key]

    def collective(self, kind: str, tp: int, rows: int, cols: int) -> Piece:
        key = ("collective", kind, tp, rows, cols)
        if tp == 1:
            return Piece(f"{kind} (1 chip)", 0)
        if not self._recall(key):
            self._note(f"compiling the {kind} of [{rows}, {cols}] f32 over {tp} chips")
            start = time.perf_counter()
            make = allreduce if kind == "all-reduce" else allgather
            program = make(tp, rows, cols, chip=self.chip)
            spent = time.perf_counter() - start
            self.compile_s += spent
            run = program.run(timing_only=True)
            self._keep(key, Piece(f"{kind} [{rows}, {cols}] over {tp} chips", run.cycles,
                                  sync_cycles=run.sync_cycles, link_vectors=program.vectors_per_link,
                                  compile_s=round(spent, 2), events=all_chips(run.run.events)))
        return self.found[key]

    def hop(self, system, kind: str, rows: int, cols: int) -> Piece:
        vectors = rows * math.ceil(cols / self.chip.lanes) * F32_PLANES
        key = ("hop", kind, vectors)
        if key not in self.found:
            # composed, not simulated: each vector is read from the sender's SRAM, crosses the link once and is
            # written to the receiver's SRAM (the stream hops at either end are left out: a few positions)
            events = {"mem_read_vectors": vectors, "c2c_vectors": vectors, "mem_write_vectors": vectors}
            self.found[key] = Piece(f"{kind} hop of {vectors} vectors", hop_cycles(system, kind, vectors),
                                    link_vectors=vectors, events=events)
        return self.found[key]
