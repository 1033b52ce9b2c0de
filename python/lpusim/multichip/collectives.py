"""Collectives over the chips of one node as simulated programs: all-reduce (sum) and all-gather of an f32
[rows, cols] tensor held in SRAM, for a planner that times a tensor-parallel layer as its chips' shards plus the
collectives between them (docs/multichip.md, "Collectives").

* **Blocks.** The columns are cut in whole 320-lane tiles as a column-split matmul cuts them (multichip/tensor.py):
  with `tiles` column tiles and T chips, m = min(tiles, T) chips own blocks, chip q the tiles
  [q*tiles//m, (q+1)*tiles//m) (`CollectiveProgram.blocks`, in columns).
* **All-reduce** = reduce-scatter then all-gather, over the node's direct links: every chip holds a partial sum (its
  input, T blocks); it sends each owner its partial of the owner's block; the owner adds the T partials on the VXM
  (a balanced tree in chip order, ((x0+x1)+(x2+x3))+... as the tensor-parallel compiler's reduction) and sends its
  summed block to every other chip, where the full sum is its blocks' stores side by side.
* **All-gather**: chip q holds block q of the tensor and sends it to every other chip.

Nothing here is a new scheduler: the per-chip graphs and the exchanges form a `tensor.TensorPlan` that the
tensor-parallel chip scheduler (compiler/schedule/tensor.py, one thread per chip in lockstep) schedules as it does a
row split's reduction and a column split's gather: each SEND as soon as its tile is in MEM, one vector per send
interval per link, each RECV at the send cycle plus the lag that covers the link's worst latency and both chips'
drift (clocks.transfer_timing), RUNTIME_DESKEW barriers only where a chip would run free too long. The result is a
`MultiProgram` run by the Rust system simulation; its cycles are predicted exactly (`predicted_cycles`).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpusim import _lpusim
from lpusim.chip import Chip
from lpusim.compiler import ir
from lpusim.compiler.schedule.resources import Clash, common_terms
from lpusim.compiler.schedule.tensor import Lockstep, TensorScheduler
from lpusim.errors import CompileError, ModelError
from lpusim.multichip.clocks import transfer_timing
from lpusim.multichip.program import MultiProgram, MultiRunResult
from lpusim.multichip.tensor import Collective, TensorPlan, stage_program
from lpusim.system import System

DTYPES = ("f32",)


@dataclass
class CollectiveResult:
    """One simulated run of a collective."""

    cycles: int                     # the system's (nominal cycles of the latest chip's end)
    predicted_cycles: int
    chip_cycles: list[int]          # every chip on its own clock
    predicted_chip_cycles: list[int]
    sync_cycles: int                # the largest per-chip RUNTIME_DESKEW stall
    links: list[dict[str, Any]]     # link directions that carried vectors
    link_summary: dict[str, Any]
    outputs: list[np.ndarray] | None  # per chip its [rows, cols] result (None: timing only)
    timing_only: bool
    run: MultiRunResult = field(repr=False)


@dataclass
class CollectiveProgram:
    """A collective compiled for `chips` chips of one node: the `MultiProgram` and how its inputs are cut."""

    kind: str                        # "all-reduce" | "all-gather"
    chips: int
    rows: int
    cols: int
    dtype: str
    blocks: list[tuple[int, int]]    # per owner chip (0..len-1): its columns [lo, hi)
    program: MultiProgram
    vectors_per_link: int            # the most vectors one link direction carries (both phases)

    @property
    def predicted_cycles(self) -> int:
        return self.program.predicted_cycles

    @property
    def chip_cycles(self) -> list[int]:
        """Every chip's predicted cycles on its own clock."""
        return self.program.predict()[1]

    @property
    def barriers(self) -> list[list[tuple[int, int]]]:
        return self.program.barriers

    @property
    def exchanges(self) -> list[dict]:
        """Per collective phase and chip: the sends (vectors, first and last send cycle per peer) and the lags."""
        return self.program.transfers

    def input_names(self) -> list[list[str]]:
        """Per chip the program's input names: its partial's blocks (all-reduce) or its block (all-gather)."""
        return [list(p.input_shapes) for p in self.program.stages]

    def random_inputs(self, seed: int = 0) -> np.ndarray:
        """Seeded standard-normal f32 inputs: [chips, rows, cols] partials (all-reduce) or the [rows, cols] tensor
        (all-gather)."""
        rng = np.random.default_rng(seed)
        shape = (self.chips, self.rows, self.cols) if self.kind == "all-reduce" else (self.rows, self.cols)
        return rng.standard_normal(shape).astype(np.float32)

    def _feed(self, inputs) -> dict[str, np.ndarray]:
        if self.kind == "all-reduce":
            x = np.asarray(inputs, dtype=np.float32)
            if x.shape != (self.chips, self.rows, self.cols):
                raise ModelError(f"all-reduce inputs: one [rows, cols] partial per chip, shape "
                                 f"{(self.chips, self.rows, self.cols)}; got {x.shape}")
            return {_part(c, q): x[c][:, lo:hi] for c in range(self.chips) for q, (lo, hi) in enumerate(self.blocks)}
        x = np.asarray(inputs, dtype=np.float32)
        if x.shape != (self.rows, self.cols):
            raise ModelError(f"all-gather input: the whole [rows, cols] tensor (chip q holds columns blocks[q]), "
                             f"shape {(self.rows, self.cols)}; got {x.shape}")
        return {_block(q): x[:, lo:hi] for q, (lo, hi) in enumerate(self.blocks)}

    def run(self, inputs=None, timing_only: bool = False, *, seed: int = 0, system=None,
            threads: int = 0) -> CollectiveResult:
        """Simulate the collective on the system model. `inputs`: [chips, rows, cols] partials (all-reduce) or the
        [rows, cols] tensor whose column blocks the chips hold (all-gather); None: `random_inputs(seed)`. Returns
        the cycles, links and, unless `timing_only`, every chip's [rows, cols] result."""
        feed = self._feed(self.random_inputs(seed) if inputs is None else inputs)
        res = self.program.run(feed, timing_only=timing_only, system=system, threads=threads)
        outputs = None if timing_only else [res.outputs[_output(c)] for c in range(self.chips)]
        return CollectiveResult(res.cycles, res.predicted_cycles, res.chip_cycles, res.predicted_chip_cycles,
                                res.sync_cycles, res.links, res.link_summary, outputs, timing_only, res)


def reference_allreduce(partials: np.ndarray) -> np.ndarray:
    """The sum the all-reduce computes, in its order (a balanced tree of f32 adds over the chips in order)."""
    level = [np.asarray(p, dtype=np.float32) for p in partials]
    while len(level) > 1:
        nxt = [level[k] + level[k + 1] for k in range(0, len(level) - 1, 2)]
        level = nxt + level[len(level) - len(level) % 2:]
    return level[0]


def allreduce(chips: int, rows: int, cols: int, *, chip=None, system=None, dtype: str = "f32",
              max_free_cycles: int | None = None) -> CollectiveProgram:
    """All-reduce (sum) of an f32 [rows, cols] tensor every one of `chips` chips holds (its partial sum), leaving
    the sum on every chip: a reduce-scatter then an all-gather over the node's direct links (module docstring).
    `chip`: a chip configuration (default: the default chip); `system`: a System, or a configuration (dict or JSON
    file: drift, seed, latencies; docs/system.md) merged into a `chips`-chip node's; its chips 0..chips-1 must be
    linked directly. `max_free_cycles`: as for compile_multichip."""
    return _compile("all-reduce", chips, rows, cols, chip, system, dtype, max_free_cycles)


def allgather(chips: int, rows: int, cols: int, *, chip=None, system=None, dtype: str = "f32",
              max_free_cycles: int | None = None) -> CollectiveProgram:
    """All-gather of an f32 [rows, cols] tensor cut in column blocks (`CollectiveProgram.blocks`: chip q holds
    block q), leaving the whole tensor on every chip."""
    return _compile("all-gather", chips, rows, cols, chip, system, dtype, max_free_cycles)


def _part(c: int, q: int) -> str:
    return f"x{c}.b{q}"  # chip c's partial of owner q's columns


def _block(q: int) -> str:
    return f"x.b{q}"  # all-gather: the block chip q holds


def _sum_block(q: int) -> str:
    return f"s.b{q}"  # all-reduce: owner q's summed block


def _output(c: int) -> str:
    return f"y{c}"


def _system(chips: int, cfg: Chip, system) -> System:
    if isinstance(system, System):
        return system
    config: dict[str, Any] = {"topology": "node", "chips": chips, "chip": cfg.config}
    if isinstance(system, dict):
        config.update(system)
    elif system is not None:
        config.update(System.load(system).config)
    return System.load(config)


def _tensor(name: str, rows: int, cols: int, kind: str) -> ir.Tensor:
    return ir.Tensor(name, rows, cols, kind, (rows, cols), formats={"f32"},
                     onnx_input=name if kind == "input" else None)


def _tree(n: int) -> list[ir.Step]:
    """ADDs of sources 0..n-1 as a balanced tree over pairs in order (multichip/tensor.py's reduction)."""
    chain, level = [], [("src", k) for k in range(n)]
    while len(level) > 1:
        nxt = []
        for k in range(0, len(level) - 1, 2):
            chain.append(ir.Step("ADD", [level[k], level[k + 1]]))
            nxt.append(("step", len(chain) - 1))
        level = nxt + level[len(level) - len(level) % 2:]
    return chain


def _plan(kind: str, n: int, rows: int, cols: int, blocks: list[tuple[int, int]]) -> TensorPlan:
    """Every chip's graph and the exchanges, as multichip/tensor.py's plan_tensor makes them for a split."""
    m = len(blocks)
    graphs, at, keep = [], [], []
    collectives: list[Collective] = []
    full = "s" if kind == "all-reduce" else "x"
    if kind == "all-reduce":
        rs = Collective("reduce-scatter", "x")
        for c in range(n):
            for q in range(m):
                if q != c:
                    rs.sends.append((c, q, {_part(c, q): ["f32"]}))
        collectives.append(rs)
        gathered = [_sum_block(q) for q in range(m)]
    else:
        gathered = [_block(q) for q in range(m)]
    ag = Collective("all-gather", full)
    for q in range(m):
        for c in range(n):
            if c != q:
                ag.sends.append((q, c, {gathered[q]: ["f32"]}))
    ag.joins = {c: [(full, list(gathered), ["f32"])] for c in range(n)}
    collectives.append(ag)
    for c in range(n):
        tensors = {full: _tensor(full, rows, cols, "value")}
        inputs, nodes = [], []
        if kind == "all-reduce":
            for q, (lo, hi) in enumerate(blocks):
                tensors[_sum_block(q)] = _tensor(_sum_block(q), rows, hi - lo, "value")
                for p in range(n):
                    mine = p == c
                    if mine or q == c:
                        tensors[_part(p, q)] = _tensor(_part(p, q), rows, hi - lo, "input" if mine else "value")
                    if mine:
                        inputs.append(_part(p, q))
            if c < m:
                nodes.append(ir.Node("vector", "allreduce", f"AllReduce(sum of {n}, block {c})", _sum_block(c),
                                     sources=[ir.View(_part(p, c)) for p in range(n)], steps=_tree(n),
                                     fusable=False))
        else:
            for q, (lo, hi) in enumerate(blocks):
                tensors[_block(q)] = _tensor(_block(q), rows, hi - lo, "input" if q == c else "value")
            if c < m:
                inputs.append(_block(c))
        g = ir.Graph(tensors, nodes, inputs, [full], [_output(c)],
                     {name: (rows, tensors[name].cols) for name in inputs},
                     {name: name for name in inputs})
        graphs.append(g)
        # the collectives run before the owner's add (index 0: the reduce-scatter) and after it (the gather)
        at.append({0: [0], 1: [1]} if nodes and len(collectives) == 2 else {len(nodes): list(range(len(collectives)))})
        keep.append({name for col in collectives for src, _, items in col.sends if src == c for name in items})
    return TensorPlan(graphs, collectives, at, keep, [], {}, exact=True)


class _Scheduler(TensorScheduler):
    """The tensor-parallel chip scheduler, keeping two exchanges' traffic on one link apart. A burst's SENDs hold
    the link queue only in the cycles they issue (so the other direction's RECVs fit between them), and the
    reduce-scatter's and the all-gather's sends on one link overlap in time (an owner's sum is ready before it has
    sent every peer its partials): each SEND also holds the link's send direction for one send interval (else the
    second SEND finds the link busy: LinkBusy), and the RECVs on a link keep the order the vectors arrive in (the
    receive buffer is a FIFO). Received partials are placed away from the chip's own (inputs it does not send):
    the owner's add streams them all at once, and two sources in one slice would cost a copy, whose released space
    the sum then reuses only after the last receive."""

    # The owner's add streams its T partials at once. With every partial on one side of the VXM (received
    # partials go near the links) and the sum's store on the other, the reads and the sum's write run in one
    # stream direction; with 8 chips the 8 reads fill all its 32 streams, and once there are more rows than the
    # chain's delay each read still passes the VXM when the first sums leave it: the write meets every read at
    # every start, and the base search would try SEARCH_LIMIT cycles one by one before giving up (minutes of
    # compile time for [8+, 4096] over 8 chips). `take_group` notices such a try (`_never_fits`) and fails the
    # compile at once; `_compile` then plans again with the sum's store on its partials' side (`sum_by_parts`),
    # so its write runs the other way. Programs that fit as they were are planned as before.
    sum_by_parts = False

    def take_group(self, direction, transfers_per_plane, base=None):
        res = self.res
        if self.__dict__.get("_groups_of") is not res._journal:  # the first stream group of this try
            self._groups_of, self._groups = res._journal, []
        try:
            g = super().take_group(direction, transfers_per_plane, base)
        except Clash:
            paths = [res.stream_paths(direction, t) for t in transfers_per_plane]
            if self._never_fits(direction, paths):
                raise _NeverFits(f"{self.chip.streams_per_direction} streams per direction cannot carry the "
                                 f"owner's add on chip {self.c} (its reads and its write meet at any start)")
            raise
        self._groups.append((direction, [res.stream_paths(direction, t) for t in transfers_per_plane]))
        return g

    def _never_fits(self, direction, paths) -> bool:
        """Whether the stream groups this try took in `direction` and the one it cannot place need more streams
        than there are whatever the start: every plane of each group meets every plane of every other (so no two
        share a stream), and the paths all move together with the start, so they meet at any start."""
        groups = [g for d, g in self._groups if d == direction] + [paths]
        if sum(len(g) for g in groups) <= self.chip.streams_per_direction:
            return False
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                for pa in a:
                    for pb in b:
                        if not any(x[3] & y[3] and common_terms(x[0], x[1], x[2], y[0], y[1], y[2]) is not None
                                   for x in pa for y in pb):
                            return False
        return True

    def alloc_store(self, tensor, fmt, bank=1, avoid_tile=None, reuse=False):
        if self.sum_by_parts and tensor == _sum_block(self.c):
            parts = {_part(p, self.c) for p in range(self.n)}
            sides = {self.mem_pos[sg.slice] > self.vxm_pos for (name, _), st in self.stores.items() if name in parts
                     for segs in st.tiles for sg in segs}
            if len(sides) == 1:
                keep = self.link_side.get(tensor)
                self.link_side[tensor] = "E" if sides.pop() else "W"
                try:
                    return super().alloc_store(tensor, fmt, bank, avoid_tile, reuse)
                finally:
                    self.link_side[tensor] = keep
        return super().alloc_store(tensor, fmt, bank, avoid_tile, reuse)

    def schedule_sends(self, items, link, interval, lower, rotate=0, single=False, bursts=None):
        # tile by tile, in order: an owner adds a tile as soon as its partials are in, and sends a sum as soon as it
        # is written (TensorScheduler rotates each link's bursts, spreading the reads of a tensor several links send
        # at once: kept for the all-gather's blocks, which are all in MEM from the start)
        if not any(name.startswith("x.") for name in items):
            rotate = 0
        return super().schedule_sends(items, link, interval, lower, rotate, single, bursts)

    def schedule_receives(self, plan, link, interval, lag, avoid=None, single=False, slack=0):
        if avoid is not None:
            avoid.update(self.slices_of(self.graph.inputs))
        return super().schedule_receives(plan, link, interval, lag, avoid, single, slack)

    def _link_issues(self, queue, t, text, rows, interval, tail, single):
        if text.startswith("SEND"):
            for k in range(rows):
                c = t + k * interval
                self.res.take_queue(queue + ".tx", c, c + interval - 1, c - t)
        elif text.startswith("RECV"):
            # this rule keeps a queue's RECVs in cycle order in the issue list: the latest is the last one there
            last = next((iss.cycle + (iss.n - 1) * iss.d for iss in reversed(self.res.issues)
                         if iss.queue == queue and iss.text.startswith("RECV")), -1)
            if t <= last:
                raise Clash(None)
        super()._link_issues(queue, t, text, rows, interval, tail, single)


class _NeverFits(CompileError):
    """A job of the collective fits at no start (_Scheduler.take_group)."""


def _schedule(plan: TensorPlan, n: int, cfg: Chip, sysm: System, ctx: dict, sum_by_parts: bool = False):
    """Each chip's TensorScheduler in its own thread, meeting at every collective (as tensor.compile_tensor)."""
    sync = Lockstep(n)
    log: list = []

    def make(c):
        sched = _Scheduler(cfg, plan.graphs[c], c, n, plan, ctx, sync)
        sched.sum_by_parts = sum_by_parts
        sched.transfer_log = log
        return sched

    results = sync.run(make)
    log.sort(key=lambda e: (e["collective"], e["chip"]))
    return results, log


def _compile(kind: str, n: int, rows: int, cols: int, chip, system, dtype: str,
             max_free: int | None) -> CollectiveProgram:
    start = time.perf_counter()
    if dtype not in DTYPES:
        raise CompileError(f"{kind}: dtype '{dtype}' is not supported (supported: {', '.join(DTYPES)})")
    if int(n) != n or n < 2 or n > 8:
        raise CompileError(f"{kind}: chips={n}: collectives run over 2 to 8 chips of one node (one chip needs none)")
    if rows < 1 or cols < 1:
        raise CompileError(f"{kind}: a [rows, cols] tensor with rows, cols >= 1 (got [{rows}, {cols}])")
    cfg = Chip.load(chip)
    sysm = _system(n, cfg, system)
    if sysm.chips < n:
        raise CompileError(f"{kind}: the system has {sysm.chips} chips, the collective needs {n}")
    for a in range(n):
        for b in range(a + 1, n):
            try:
                sysm.link(a, b)
            except Exception as e:  # noqa: BLE001 - the binding's error, restated
                raise CompileError(f"{kind}: chips {a} and {b} have no direct link in the system ({e})") from None
    cfg = Chip.load(json.loads(sysm.info["chip_config"]))
    interval = sysm.min_send_interval_cycles
    tiles = math.ceil(cols / cfg.lanes)
    m = min(tiles, n)
    blocks = [(q * tiles // m * cfg.lanes, min(cols, (q + 1) * tiles // m * cfg.lanes)) for q in range(m)]
    plan = _plan(kind, n, rows, cols, blocks)
    ctx = dict(transfer_timing(sysm, cfg, interval, max_free), interval=interval, system=sysm)
    try:
        results, log = _schedule(plan, n, cfg, sysm, ctx)
    except _NeverFits:
        if kind != "all-reduce":
            raise
        results, log = _schedule(plan, n, cfg, sysm, ctx, sum_by_parts=True)
    programs, barriers, last_effects = [], [], []
    for c, (sched, result) in enumerate(results):
        g = plan.graphs[c]
        prog, last_effect = stage_program(cfg, sched, result, f"{kind} chip {c} of {n}", g, dict(g.onnx_inputs),
                                          list(g.output_names))
        programs.append(prog)
        barriers.append(list(sched.barriers))
        last_effects.append(last_effect)
    binaries = [_lpusim.assemble(p.assembly) for p in programs]
    input_shapes = {name: shape for g in plan.graphs for name, shape in g.onnx_inputs.items()}
    partition = {"chips": n, "parallel": "collective", "collective": kind, "rows": rows, "cols": cols,
                 "blocks": [list(b) for b in blocks], "exchanges": log,
                 "program_cycles": [p.predicted_cycles for p in programs]}
    mp = MultiProgram(cfg, n, "collective", sysm, programs, barriers, last_effects, ctx["tol"] * 1e6, log,
                      partition, input_shapes, [_output(c) for c in range(n)], time.perf_counter() - start,
                      binaries)
    per_link: dict[tuple[int, int], int] = {}
    for col in plan.collectives:
        for src, dst, items in col.sends:
            vec = sum(rows * math.ceil(plan.graphs[src].tensors[name].cols / cfg.lanes) * 4 for name in items)
            per_link[(src, dst)] = per_link.get((src, dst), 0) + vec
    return CollectiveProgram(kind, n, rows, cols, dtype, blocks, mp, max(per_link.values(), default=0))


__all__ = ["allreduce", "allgather", "reference_allreduce", "CollectiveProgram", "CollectiveResult"]
