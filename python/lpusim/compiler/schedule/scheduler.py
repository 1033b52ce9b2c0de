"""Static scheduling: every instruction of every queue placed at its cycle, with SRAM and streams allocated.

Jobs are placed greedily in program order at the earliest cycle where all their resources are free:
* `load_weights`: one 320-row weight tile from MEM into a plane's weight buffer (LW), then IW.
* `stream_activations`: the ABCs of one (term, K tile) over a chunk of output rows.
* `vector_pipeline`: a VXM chain over MEM views and/or a plane's accumulators, results written back to MEM.
Timing comes from the chip configuration alone (section 8 of docs/isa.md); the simulator must then reproduce the
predicted cycle count exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lpusim.compiler.ir import Graph, Node, Step, View, out_geom, step_out_type, view_cols
from lpusim.compiler.schedule.storage import (BYTE_ORDER, MAX_SEGMENT_ROWS, WIDTH, MemRun, Segment, Store,
                                             StoreTable, byte_planes, segment_runs, store_image, view_runs)
from lpusim.compiler.passes import is_int8, vxm_format
from lpusim.compiler.schedule.kv_cache import CacheRegion, claim, past_tiles, region_slices
from lpusim.compiler.schedule.lookup import LookupJobs
from lpusim.compiler.schedule.readiness import RowJobs
from lpusim.compiler.schedule.resources import Clash, Issue, Reservations
from lpusim.compiler.schedule.sram import BorderedPool, SramAllocator
from lpusim.compiler.schedule.sxm import SxmJobs, kept_slices, needs_sxm_slices
from lpusim.compiler.vxm_chain import delay_table, place_delay_lines, with_read_copies
from lpusim.errors import CompileError, OutOfSram, ScheduleNotFound

# How far past a job's lower bound the scheduler searches before declaring the schedule impossible.
SEARCH_LIMIT = 200_000
# Weight tiles go to their first plane's share of the hemisphere (Scheduler.plane_slices) when the model's weights
# take at most this share of SRAM; above it, anywhere (the shares fragment SRAM a model nearly fills).
PLANE_SHARES_UP_TO = 0.5
# Matmul jobs are cut to at least this many output rows when split to keep the planes busy (row_chunk): a job
# loads its weight tiles, 16 or 8 rows a cycle, while the previous one computes.
MIN_CHUNK_ROWS = 32
SPLIT_WORK = 1024
JOB_OVERHEAD = 100
# Rows per store segment of a one-chip program's first tries, in order (Scheduler.segment_rows,
# compiler.compile_graph): a 56 x 56 image's 3,364 bordered rows in 27 segments, so four planes' row chunks read
# different slices at once. Short segments fragment SRAM more: on an out-of-SRAM the next is tried, then
# MAX_SEGMENT_ROWS with released blocks joined.
SPREAD_SEGMENT_ROWS = (128, 256)
# A VXM node's rows are cut into at most this many chunks of at least this many rows, run side by side on free
# ALUs (vector_chunks).
MAX_VXM_CHUNKS = 4
MIN_VXM_CHUNK_ROWS = 256
# Weight rows loaded per LW: 8 rows of 2 bytes use 16 of the 32 streams, so both planes of a hemisphere can load.
WEIGHT_SLOTS = 8


def weight_bytes(data: np.ndarray, dtype: str, lanes: int) -> int:
    """MEM bytes of constant weights [K, N] stored as weight tiles (all-zero tiles are not stored; a tile's rows
    are padded to whole slots)."""
    k, n = data.shape
    slots, width = weight_slots(dtype)
    total = 0
    for kt in range(math.ceil(k / lanes)):
        for nt in range(math.ceil(n / lanes)):
            if data[kt * lanes:(kt + 1) * lanes, nt * lanes:(nt + 1) * lanes].any():
                rows = min(k - kt * lanes, lanes)
                total += slots * math.ceil(rows / slots) * width * lanes
    return total


def weight_slots(dtype: str) -> tuple[int, int]:
    """(rows per LW, bytes per row element) of a weight tile: f16 8 x 2 bytes, int8 16 x 1 byte (16 streams)."""
    return (WEIGHT_SLOTS * 2, 1) if dtype == "i8" else (WEIGHT_SLOTS, 2)


@dataclass
class PlaneState:
    name: str
    lw_free: int = 0  # first cycle an LW may load the (empty) weight buffer
    last_abc: int = -1  # last ABC issue on the installed weights
    busy_until: int = 0  # first cycle the array accepts another ABC
    installed_at: int = 0
    installed: tuple | None = None  # which weight tile the array holds
    acc_free: np.ndarray | None = None  # per accumulator row: first cycle it may be overwritten


@dataclass
class Schedule:
    issues: list[Issue]
    static_init: list[tuple[int, int, np.ndarray]]  # (slice, addr, uint8 [n, lanes]) loaded before the run
    inputs: dict[str, Store]  # IR input tensor -> its f32 store
    outputs: dict[str, Store]  # IR output tensor -> its f32 store
    predicted_cycles: int
    sram_bytes: int
    pinned: frozenset = frozenset()  # KV-cache regions and their pasts, at fixed addresses (kv_cache.py)
    constants_released: bool = False  # later tensors overwrite constants: a rerun on the same SRAM needs the image
    # per graph node, the index in `issues` of its first issue (issues before node_marks[0]: none yet placed): the
    # node each instruction came from, for `lpusim run --explain` (check/explain.py)
    node_marks: tuple = ()


def stream_name(direction: str, index: int) -> str:
    return f"{direction}{index}"


def source_tile(view: View, nt: int) -> int:
    """The column tile of a source's store that output tile nt reads: its own tile, the one its view names, or
    (View.tile0) its one tile for every output tile."""
    return 0 if view.tile0 else nt if view.tile is None else view.tile


def _imm(value: float, t: str = "f32") -> str:
    """An immediate as the op's input type parses it: an integer for i32 ops, else the f32 value."""
    if t.split(".")[0] == "i32":
        return "#" + str(int(value))
    return "#" + repr(float(np.float32(value)))


class Scheduler(SxmJobs, LookupJobs, RowJobs):
    def __init__(self, chip, graph: Graph, progress=None, join_released: bool = False,
                 cache: list[CacheRegion] | None = None, segment_rows: int = MAX_SEGMENT_ROWS):
        self.chip = chip
        self.graph = graph
        self.cache = list(cache or [])  # KV-cache regions kept at fixed addresses across programs (kv_cache.py)
        self.cache_sinks: dict[str, tuple[Store, Store | None]] = {}  # present IR tensor -> (region, past store)
        self.pinned: set[str] = set()  # tensors whose space is never released (the regions and their pasts)
        self.keep_off: dict[str, frozenset] = {}  # tensor -> slices it may not take (a region its reader writes)
        # A program run again on the same SRAM (ChipMemory: a generation's decode steps) must find its constants
        # where the constant image put them: with a KV cache they are never released; otherwise their space goes
        # to later tensors after their last reader (and a rerun needs the image written again)
        self.keep_constants = bool(self.cache)
        self.plane_shares = False  # set by run() from the model's weight bytes (PLANE_SHARES_UP_TO)
        self.constants_released = False
        self.res = Reservations(chip)
        self.sram = SramAllocator(chip)
        # rows per segment: short ones (SPREAD_SEGMENT_ROWS) spread a tensor's rows over many slices, so jobs on
        # different rows (a matmul's row chunks on four planes, a VXM node's chunks) read at once; long ones
        # fragment SRAM less (compiler.compile_graph tries short ones first)
        self.segment_rows = segment_rows
        if join_released:  # the retry after an out-of-SRAM: released blocks joined whenever none fits
            self.sram.join_at = 0.0  # (SramAllocator.coalesce), a store's segments stacked (SramAllocator.stacked)
            self.sram.stack_segments = True
        self.bordered = BorderedPool()  # released bordered stores kept for a later store of the same layout
        self.weight_left: dict[str, int] = {}  # weights no job has placed yet: their bytes (SRAM reuse policy)
        self.stores: dict[tuple[str, str], Store] = StoreTable()
        self.weight_tiles: dict[tuple, tuple[list[Segment], int]] = {}
        self.static_init: list = []
        self.planes = {p: PlaneState(p) for p in chip.plane_names}
        self.lanes = chip.lanes
        self.vxm_pos = chip.vxm_position
        self.progress = progress
        self.hemi_turn = 0
        # (store, last bank access) of the job being placed, for accesses not made by mem_runs (which records its
        # own per segment when the attempt commits: record_use)
        self.accesses: list[tuple[Store, int]] = []
        # per MEM slice: stream position and queue name (looked up for every run of every try)
        self.mem_pos = [chip.mem_position(s) for s in range(chip.mem_slices)]
        self.mem_queue = [chip.mem_name(s) for s in range(chip.mem_slices)]
        self.alu_queues = [f"VXM.{a}" for a in range(chip.vxm_alus)]
        self.const_copies: dict[tuple[str, str], list[Store]] = {}  # broadcast_copies
        self.sink_of: Node | None = None  # the node whose output alloc_store places (run)
        self._bounds: dict = {}  # read_bound's answers until the next recorded write
        self.keep_bordered_sources_apart()

    def keep_bordered_sources_apart(self) -> None:
        """Bordered tensors one VXM node streams together (a max pool's phases, pool_phases.py) get disjoint
        bands of every hemisphere's slices (`keep_off`): two sources of one job may not share a slice, and
        `relocate` cannot move a bordered tensor. Of len + 1 bands, the last is left to the node's other sources
        and its sink."""
        half = self.chip.mem_slices // 2
        for node in self.graph.nodes:
            if node.kind != "vector":
                continue
            bordered = sorted({v.tensor for v in node.sources if self.graph.tensors[v.tensor].pad})
            if len(bordered) < 2:
                continue
            band = half // (len(bordered) + 1)
            if band < max(WIDTH.values()):  # too many to fit an f32 store each: left to the placement as before
                continue
            for i, name in enumerate(bordered):
                mine = {h * half + x for h in (0, 1) for x in range(i * band, (i + 1) * band)}
                self.keep_off[name] = self.keep_off.get(name, frozenset()) | \
                    frozenset(set(range(self.chip.mem_slices)) - mine)

    # ----- helpers --------------------------------------------------------------------------------------
    def ntiles(self, cols: int) -> int:
        return max(1, math.ceil(cols / self.lanes))

    def place(self, lower: int, build, what: str):
        """Run `build(t)` at the first t >= lower where it fits; each failed try is rolled back."""
        t = max(0, lower)
        first_fit = None  # the search limit counts from the first cycle the reservations allow, not from `lower`
        while True:
            self.res.begin()
            self.accesses = []
            try:
                result = build(t)
            except Clash as clash:
                self.res.rollback()
                t = max(t + 1, clash.retry_at or 0)
                first_fit = t if first_fit is None else first_fit
                if t - first_fit > SEARCH_LIMIT:
                    raise ScheduleNotFound(f"could not schedule {what} within {SEARCH_LIMIT} cycles of its "
                                           f"earliest start (resources stay taken)") from None
                continue
            self.res.commit()
            for store, last in self.accesses:  # accesses not made by mem_runs (GATHERs): of the whole store
                store.last_access = max(store.last_access, last)
                store.loose_access = max(store.loose_access, last)
            return result

    def mem_runs(self, op: str, runs: list[MemRun], plane_b: int, first: int, d: int, dest_pos: int,
                 stream: str, base: int, store: Store | None = None) -> int:
        """READ (toward dest_pos) or WRITE (from dest_pos) bursts on byte plane b of each run; row i of the
        view meets `dest_pos` at `first + i*d`. Returns the last effect cycle. `store`: the store the runs are of,
        whose segments (or, for a run not known by segment, the whole store) record when they were last used."""
        last = 0
        used = []
        res = self.res
        reading = op == "READ"
        latency = self.chip.mem_read_latency if reading else self.chip.mem_write_latency
        for run in runs:
            s = run.slice + plane_b
            queue = self.mem_queue[s]
            meet = first + run.out_start * d
            if reading:
                issue = meet - latency - abs(dest_pos - self.mem_pos[s])
                port = issue
                effect = issue + latency
            else:
                issue = meet + abs(dest_pos - self.mem_pos[s])
                port = issue + latency
                effect = port
                if port <= run.not_before:  # reused space still in use by its previous owner
                    raise Clash(base + run.not_before + 1 - port)
            end = issue + (run.count - 1) * d
            res.take_queue(queue, issue, end, issue - base)
            res.take_ports(s, run.addr, port, run.count, d, run.stride)
            effect += (run.count - 1) * d
            res.issues.append(Issue(queue, issue, f"{op} {run.addr}, {stream}", run.count, d, run.stride, effect))
            if effect > last:
                last = effect
            if store is not None:
                used.append((run.seg, effect))
        if used:
            res.on_commit.append(lambda: self.record_use(store, used))
        return last

    def check_mem_runs(self, op: str, runs: list[MemRun], plane_b: int, first: int, d: int, dest_pos: int,
                       base: int) -> None:
        """Raise the Clash `mem_runs` would meet in a MEM queue or reused space already taken, before the costlier
        stream search. Any clash of a job with what is already reserved fails its try whichever check finds it
        first, and every retry hint is a lower bound of the next start that fits, so the start `place` settles
        on, and everything built there, stay the same."""
        reading = op == "READ"
        latency = self.chip.mem_read_latency if reading else self.chip.mem_write_latency
        check_queue = self.res.check_queue
        for run in runs:
            s = run.slice + plane_b
            meet = first + run.out_start * d
            if reading:
                issue = meet - latency - abs(dest_pos - self.mem_pos[s])
            else:
                issue = meet + abs(dest_pos - self.mem_pos[s])
                port = issue + latency
                if port <= run.not_before:
                    raise Clash(base + run.not_before + 1 - port)
            check_queue(self.mem_queue[s], issue, issue + (run.count - 1) * d, issue - base)

    def transfers(self, runs: list[MemRun], plane_b: int, first: int, d: int, dest_pos: int, reading: bool):
        """Per run, the stream transfers of its rows: (emit position, first emit cycle, cycles apart, count, read
        position)."""
        out = []
        for run in runs:
            pos = self.mem_pos[run.slice + plane_b]
            meet = first + run.out_start * d
            if reading:
                out.append((pos, meet - abs(dest_pos - pos), d, run.count, dest_pos))
            else:
                out.append((dest_pos, meet, d, run.count, pos))
        return out

    def take_group(self, direction, transfers_per_plane, base: int | None = None) -> int:
        """Consecutive free streams, stream g+b carrying transfers_per_plane[b]; returns g. `base`: the job's
        start cycle, which the transfers' cycles move with (given, a clash carries a retry hint)."""
        limit = self.chip.streams_per_direction
        width = len(transfers_per_plane)
        res = self.res
        paths = [res.stream_paths(direction, t) for t in transfers_per_plane]
        starts = range(0, limit - width + 1)
        busy = -1  # a stream the last group tried could not take (most likely blocks the next groups too: first)
        for start in starts:
            if start <= busy and not res.stream_free(direction, busy, paths[busy - start]):
                continue
            for b in range(width):
                if start + b != busy and not res.stream_free(direction, start + b, paths[b]):
                    busy = start + b
                    break
            else:
                for b in range(width):
                    res.take_stream(direction, start + b, paths[b])
                return start
        if base is None or res.streams_taken or not starts:
            raise Clash(None)
        # Every group meets a vector already placed. While no stream is taken by this try, the streams hold
        # committed vectors only, which stay where they are if the job starts later: a group stays blocked for as
        # long as one of its streams does, so no start fits before the soonest any group could be free.
        soonest = None
        for start in starts:
            blocked = -1
            for b in range(width):
                blocked = max(blocked, res.stream_conflict_span(direction, start + b, paths[b]))
                if soonest is not None and blocked >= soonest:
                    break
            if soonest is None or blocked < soonest:
                soonest = blocked
            if soonest <= 0:
                raise Clash(None)
        raise Clash(base + soonest + 1)

    def _direction(self, runs: list[MemRun], width: int, pos: int, reading: bool) -> str:
        sides = {self.mem_pos[r.slice + b] > pos for r in runs for b in range(width)}
        if len(sides) != 1:
            raise CompileError("internal: the slices of one view lie on both sides of its reader")
        east_of_reader = sides.pop()
        if reading:
            return "W" if east_of_reader else "E"
        return "E" if east_of_reader else "W"

    def read_view(self, store: Store, tile: int, runs: list[MemRun], dest_pos: int, first: int, d: int,
                  base: int, planes: list[int] | None = None) -> str:
        """Stream the rows of `runs` so row i arrives at dest_pos at first + i*d; returns the stream group.
        `planes`: only these byte planes (default all), on consecutive streams."""
        planes = list(range(store.width)) if planes is None else planes
        if store.rows_ready(tile) is None:  # the whole tile's readiness: checked here, as it is cheap
            lat = self.chip.mem_read_latency
            ready = store.ready[tile]
            for run in runs:
                for b in planes:
                    issue = first + run.out_start * d - lat - abs(dest_pos - self.mem_pos[run.slice + b])
                    if issue < ready:  # not written yet: try again once it is
                        raise Clash(base + ready - issue)
        else:
            earliest = self.read_bound(store, tile, runs, dest_pos, d, planes, first)
            if first < earliest:  # a row not written yet: try again once it is
                raise Clash(base + earliest - first)
        for b in planes:
            self.check_mem_runs("READ", runs, b, first, d, dest_pos, base)
        direction = self._direction(runs, store.width, dest_pos, True)
        g = self.take_group(direction, [self.transfers(runs, b, first, d, dest_pos, True) for b in planes])
        for i, b in enumerate(planes):
            self.mem_runs("READ", runs, b, first, d, dest_pos, stream_name(direction, g + i), base, store)
        return stream_name(direction, g)

    def write_view(self, store: Store, runs: list[MemRun], src_pos: int, first: int, base: int,
                   planes: list[int] | None = None, d: int = 1):
        planes = list(range(store.width)) if planes is None else planes
        for b in planes:
            self.check_mem_runs("WRITE", runs, b, first, d, src_pos, base)
        direction = self._direction(runs, store.width, src_pos, False)
        g = self.take_group(direction, [self.transfers(runs, b, first, d, src_pos, False) for b in planes])
        last = 0
        for i, b in enumerate(planes):
            last = max(last, self.mem_runs("WRITE", runs, b, first, d, src_pos, stream_name(direction, g + i),
                                           base, store))
        if any(len(segs) > 1 for segs in store.tiles) or any(run.row < 0 for run in runs):
            self.res.on_commit.append(lambda: self.record_writes(store, runs, src_pos, first, d, planes))
        return stream_name(direction, g), last

    # ----- SRAM placement -------------------------------------------------------------------------------
    def next_hemisphere(self) -> str:
        self.hemi_turn ^= 1
        return "WE"[self.hemi_turn]

    def alloc_segments(self, width: int, rows: int, hemisphere: str, bank: int, avoid: set,
                       reuse: bool, pack: bool = False, avoid_rows=None) -> list[Segment]:
        """Storage rows split into segments of at most `segment_rows`, all in one hemisphere; `pack`: a segment
        the fast policy cannot place goes wherever free addresses are (SramAllocator.pack), in pieces if need be;
        `avoid_rows(lo, hi)`: more slices to avoid for storage rows lo..hi-1. On failure the segments already
        taken are released (the caller tries the other hemisphere)."""
        segs, lo = [], 0
        base_avoid = avoid
        try:
            while lo < rows:
                n = min(rows - lo, self.segment_rows)
                if avoid_rows is not None:
                    avoid = base_avoid | avoid_rows(lo, lo + n)
                try:
                    near = segs[-1].slice if segs and self.sram.stack_segments else None
                    if reuse:
                        s, a, not_before = self.sram.alloc_reusable(width, n, hemisphere, bank, avoid, near)
                    else:
                        (s, a), not_before = self.sram.alloc(width, n, hemisphere, bank, avoid=avoid,
                                                             same_hemisphere=True, near=near), -1
                except OutOfSram:
                    if not pack:
                        raise
                    s, a, n, not_before = self.sram.pack(width, n, hemisphere, bank, avoid, reuse)
                segs.append(Segment(lo, lo + n, s, a, not_before))
                lo += n
        except OutOfSram:
            for sg in segs:
                self.sram.release(sg.slice, width, sg.addr, sg.hi - sg.lo, sg.not_before)
            raise
        return segs

    def release(self, store: Store) -> None:
        """The store's last reader is scheduled: its space may be rewritten after its last access."""
        if store.tensor in self.pinned:  # a KV-cache region: the next program reads it
            return
        if self.graph.tensors[store.tensor].kind == "const":
            if self.keep_constants:
                return
            self.constants_released = True
        store.released = True
        # kept whole for a later store of its layout only when room is short: the new owner's writes wait for this
        # store's last access (always reusing them cost light ResNet-50 6% more cycles)
        # each segment's space waits only for its own rows' last access: a later node's first rows may take the
        # space of a tensor's first rows while the last are still read
        if store.pad and self.sram.short_of_room() and \
                self.bordered.keep(self.border_key(store), [[(sg, store.free_after(sg)) for sg in segs]
                                                            for segs in store.tiles], store.last_access):
            return
        for segs in store.tiles:
            for sg in segs:
                self.sram.release(sg.slice, store.width, sg.addr, sg.hi - sg.lo, store.free_after(sg))

    def slices_of(self, tensors, tile: int | None = None, fmt: str | None = None) -> set[int]:
        """Slices holding (column tile `tile` of) the live stores (of format `fmt`) of `tensors`."""
        used = set()
        for name in tensors:
            for f in self.stores.formats.get(name, ()):
                store = self.stores[(name, f)]
                if store.released or (fmt is not None and f != fmt):
                    continue
                for nt, segs in enumerate(store.tiles):
                    if tile is None or nt == tile or len(store.tiles) == 1:
                        for sg in segs:
                            used.update(range(sg.slice, sg.slice + store.width))
        return used

    def alloc_store(self, tensor: str, fmt: str, bank: int = 1, avoid_tile=None, reuse: bool = False) -> Store:
        """Place a tensor; `avoid_tile(nt)` gives the slices the same job streams while it reads or writes column
        tile nt. Only stores that start empty (no static contents) may `reuse` released space. The output of the
        node being placed (`sink_of`), when no place avoids all of `avoid_tile(nt)`, goes segment by segment apart
        from the slices the jobs writing those rows read (with 128-row segments, a node's sources can cover every
        slice; each job reads only some: read_with_rows)."""
        t = self.graph.tensors[tensor]
        node = self.sink_of
        avoid_rows = None if node is None or node.output != tensor else \
            (lambda nt, lo, hi: self.read_with_rows(node, fmt, nt, lo, hi))
        store = Store.for_tensor(t, fmt)
        if store.pad and reuse:  # a border is never written: it must start as zeros (or its pad value)
            key = self.border_key(store)
            self.bordered.placed(key)
            if self.reuse_bordered(store, key, avoid_tile):
                return store
        reuse = reuse and not store.pad
        for nt in range(self.ntiles(t.cols)):
            avoid = avoid_tile(nt) if avoid_tile else set()
            if tensor in self.keep_off:
                avoid = set(avoid) | self.keep_off[tensor]
            hemi = self.next_hemisphere()
            other = "E" if hemi == "W" else "W"
            # that hemisphere is full: the whole tile in the other one; both: packed into the free addresses of
            # either (SramAllocator.pack)
            tries = [(hemi, False, False), (other, False, False), (hemi, True, False), (other, True, False)]
            if avoid_rows is not None:
                tries += [(h, p, True) for h, p, _ in tries]
            for i, (h, pack, by_rows) in enumerate(tries):
                try:
                    if not by_rows:
                        segs = self.alloc_segments(store.width, store.storage_rows, h, bank, avoid, reuse, pack)
                    else:  # apart from the other formats placed and keep_off; per segment, from what its jobs read
                        rest = self.slices_of({tensor}, nt) | self.keep_off.get(tensor, frozenset())
                        segs = self.alloc_segments(store.width, store.storage_rows, h, bank, rest, reuse, pack,
                                                   lambda lo, hi, nt=nt: avoid_rows(nt, lo, hi))
                    break
                except OutOfSram:
                    if i == len(tries) - 1:
                        raise
            store.tiles.append(segs)
            store.ready.append(0)
        self.stores[(tensor, fmt)] = store
        if store.pad and t.pad_value != 0.0:  # the border must read as pad_value (e.g. -inf for max pools)
            # in every column tile: channels past the first 320 lanes too
            fill = np.full((store.storage_rows, 1), t.pad_value, dtype=np.float32)
            self.init_store(store, np.broadcast_to(fill, (store.storage_rows, len(store.tiles) * self.lanes)))
        return store

    def border_key(self, store: Store) -> tuple:
        t = self.graph.tensors[store.tensor]
        return BorderedPool.key(store, self.ntiles(t.cols), t.pad_value)

    def expect_bordered(self) -> None:
        """Count the bordered stores the nodes will place, by layout (BorderedPool.pending)."""
        for node in self.graph.nodes:
            t = self.graph.tensors[node.output]
            for fmt in t.formats:
                store = Store.for_tensor(t, fmt)
                if store.pad:
                    self.bordered.expect(self.border_key(store))

    def reuse_bordered(self, store: Store, key: tuple, avoid_tile) -> bool:
        """Place `store` in the space of a released store of the same layout (its border still clean)."""
        reserved = self.sram.reserved

        def blocked(nt, s):
            avoid = avoid_tile(nt) if avoid_tile else set()
            return any(x in avoid or x in reserved for x in range(s, s + store.width))
        got = self.bordered.take(key, blocked)
        if got is None:
            return False
        tiles, _ = got
        for segs in tiles:  # every write of the new owner commits after the old one's last access of those rows
            store.tiles.append([Segment(sg.lo, sg.hi, sg.slice, sg.addr, free) for sg, free in segs])
            store.ready.append(0)
        self.stores[(store.tensor, store.fmt)] = store
        return True

    def init_store(self, store: Store, matrix: np.ndarray) -> None:
        """Static SRAM contents of `store` from a [storage_rows, cols] array."""
        self.static_init.extend(store_image(store, matrix, self.lanes))

    # ----- MXM jobs -------------------------------------------------------------------------------------
    def plane_slices(self, plane: str) -> set[int]:
        """The slices of the other planes' share of this plane's hemisphere: a weight tile first loaded by `plane`
        goes to its own share, so the planes of one hemisphere load at the same time instead of queueing on shared
        slices (the 1024-4096-1024 MLP: 2,102 -> 1,584 cycles on one chip; light ResNet-18 693,670 -> 586,351)."""
        n = self.chip.planes_per_hemisphere
        half = self.chip.mem_slices // 2
        base = 0 if self.chip.plane_hemisphere(plane) == "W" else half
        share = half // n
        mine = int(plane[1:])
        return {base + s for s in range(half) if min(s // share, n - 1) != mine}

    def weight_tile(self, wname: str, kt: int, nt: int, hemisphere: str, plane: str | None = None):
        """W[kt, nt] (f16, or i8) as row slots of 2 slices (1 for i8; row r in slot r % slots); None if all zero.
        Placed, on first use, in `plane`'s share of the hemisphere's slices when it has room (`plane_slices`)."""
        key = (wname, kt, nt)
        if key not in self.weight_tiles:
            self.sram.weights_to_come -= self.weight_left.pop(wname, 0)
            w = self.graph.tensors[wname].data
            wtype = "i8" if self.graph.tensors[wname].dtype == "i8" else "f16"
            nslots, width = weight_slots(wtype)
            block = w[kt * self.lanes:(kt + 1) * self.lanes, nt * self.lanes:(nt + 1) * self.lanes]
            nonzero_rows = block.any(axis=1)
            if not nonzero_rows.any():
                self.weight_tiles[key] = None
                return None
            k_valid = int(np.max(np.nonzero(nonzero_rows)[0])) + 1  # trailing zero rows need no load
            issues = math.ceil(k_valid / nslots)
            padded = np.zeros((issues * nslots, block.shape[1]), dtype=np.float32)
            padded[:k_valid] = block[:k_valid]
            padded = padded.astype(BYTE_ORDER[wtype])  # converted once for all slots (byte_planes keeps it)
            used: set[int] = set()
            slots = []
            others = self.plane_slices(plane) if plane is not None and self.plane_shares else set()
            for j in range(nslots):
                # weight slots may share the slices kept for SXM tables: no job reads both at once
                try:
                    s, a = self.sram.alloc(width, issues, hemisphere, 0, avoid=used | others, use_reserved=True,
                                           same_hemisphere=True)
                except CompileError:  # the plane's share is full: anywhere in the hemisphere (or the other)
                    s, a = self.sram.alloc(width, issues, hemisphere, 0, avoid=used, use_reserved=True)
                used.update(range(s, s + width))
                for b, planeb in enumerate(byte_planes(padded[j::nslots], wtype, self.lanes)):
                    self.static_init.append((s + b, a, planeb))
                slots.append(Segment(0, issues, s, a))
            self.weight_tiles[key] = (slots, issues)
        return self.weight_tiles[key]

    def load_weights(self, plane: str, key: tuple, slots: list[Segment], issues: int) -> None:
        st = self.planes[plane]
        if st.installed == key:
            return  # the array already holds this tile
        pos = self.chip.plane_position(plane)
        direction = "W" if self.chip.plane_hemisphere(plane) == "W" else "E"
        runs = [[MemRun(0, sg.slice, sg.addr, issues, 1)] for sg in slots]
        wtype = "i8" if self.graph.tensors[key[0]].dtype == "i8" else "f16"
        width = weight_slots(wtype)[1]

        def build(t):
            self.res.take_queue(f"MXM.{plane}.LW", t, t + issues - 1, 0)
            for r in runs:
                for b in range(width):
                    self.check_mem_runs("READ", r, b, t, 1, pos, t)
            per_stream = [self.transfers(r, b, t, 1, pos, True) for r in runs for b in range(width)]
            base = self.take_group(direction, per_stream, t)
            for j, r in enumerate(runs):
                for b in range(width):
                    self.mem_runs("READ", r, b, t, 1, pos, stream_name(direction, base + width * j + b), t)
            self.res.add_issue(Issue(f"MXM.{plane}.LW", t, f"LW.{wtype} {stream_name(direction, base)}, {len(slots)}",
                                     issues, 1, 0, t + issues - 1))
            return t

        t_lw = self.place(st.lw_free, build, f"the weight load of plane {plane}")
        self.install_weights(plane, key, t_lw + issues)

    def install_weights(self, plane: str, key: tuple, full: int) -> None:
        """IW once the buffer is full (cycle `full`) and the previous weights have met their last activation."""
        st = self.planes[plane]

        def build_iw(t):
            self.res.take_queue(f"MXM.{plane}.IW", t, t, 0)
            self.res.add_issue(Issue(f"MXM.{plane}.IW", t, "IW", last_effect=t + self.chip.mxm_install_latency))
            return t

        # install once the buffer is full and the previous weights have met their last activation
        t_iw = self.place(max(full, st.last_abc + 1), build_iw, f"the weight install of plane {plane}")
        st.installed_at = t_iw + self.chip.mxm_install_latency
        st.lw_free = t_iw + self.chip.mxm_install_latency + 1
        st.installed = key

    def stream_activations(self, plane: str, store: Store, kt: int, view: View, geom, rows: int, r0: int,
                           r1: int, acc_base: int, accumulate: bool, acc_free: int) -> int:
        st = self.planes[plane]
        pos = self.chip.plane_position(plane)
        cpv = self.chip.cycles_per_vector(store.fmt)  # the activations' store: f16, or i8 (one vector a cycle)
        runs = segment_runs(store, kt, view_runs(view, store, geom, rows, r0, r1))
        # first overwrite of the accumulator block only after its previous reader is done
        lower = max(st.installed_at, st.busy_until, acc_free - self.chip.mxm_latency + 1,
                    self.read_bound(store, kt, runs, pos, cpv, list(range(store.width))))
        plus = ", +" if accumulate else ""
        count = r1 - r0

        def build(t):
            self.res.take_queue(f"MXM.{plane}.ABC", t, t + (count - 1) * cpv, 0)
            stream = self.read_view(store, kt, runs, pos, t, cpv, t)
            for run in runs:  # one ABC burst per run (the accumulator rows follow the output rows)
                start = t + run.out_start * cpv
                text = f"ABC.{store.fmt} {stream}, {acc_base + run.out_start}{plus}"
                self.res.add_issue(Issue(f"MXM.{plane}.ABC", start, text, run.count, cpv, 1,
                                         start + (run.count - 1) * cpv + self.chip.mxm_latency))
            return t

        t = self.place(lower, build, f"the activations of plane {plane}")
        st.last_abc = t + (count - 1) * cpv
        st.busy_until = st.last_abc + cpv
        return t

    # ----- VXM pipelines --------------------------------------------------------------------------------
    def timed_chain(self, node: Node, sinks: set[str]):
        """Steps with relative issue times and delays so every register is read in the cycle it is written.

        A source used more than once is first copied into a register, so each MEM view or accumulator is streamed
        exactly once per row. Returns (steps, times, dest step per sink format, latency function)."""
        acc_t = "i32" if is_int8(self.graph, node) else "f32"  # ACC.i32 of an int8 matmul
        steps = [Step(s.op, list(s.args), s.t) for s in node.steps] or [Step("COPY", [("acc",)], acc_t)]
        steps = with_read_copies(steps, lambda a: acc_t if a[0] == "acc" else
                                 vxm_format(self.graph.tensors[node.sources[a[1]].tensor]))
        last = len(steps) - 1
        out = self.graph.tensors[node.output]
        ot = step_out_type(steps[last])  # f32, or i32 (integer chains, lower/quant.py)
        if ot == "f32" and (out.f16_exp or out.f16_saturate) and "f16" in sinks:
            dest = {"f32": last} if "f32" in sinks else {}
            if out.f16_exp:  # the f16 copy holds value * 2^-exp (passes.scale_fp16)
                steps.append(Step("MUL", [("step", len(steps) - 1), ("imm", float(2.0 ** -out.f16_exp))]))
            if out.f16_saturate:
                steps.append(Step("MAX", [("step", len(steps) - 1), ("imm", -65504.0)]))
                steps.append(Step("MIN", [("step", len(steps) - 1), ("imm", 65504.0)]))
            steps.append(Step("CVT", [("step", len(steps) - 1)], "f32.f16"))
            dest["f16"] = len(steps) - 1
        elif len(sinks) == 1 and ot not in sinks and steps[last].op == "COPY":
            (fmt,) = sinks
            steps[last] = Step("CVT", steps[last].args, f"{steps[last].t}.{fmt}")
            dest = {fmt: last}
        else:
            dest = {ot: last} if ot in sinks else {}
            for fmt in sorted(sinks - {ot}):  # f16 (or i8) copies for the MXM, an f32 copy of an i32 value
                steps.append(Step("CVT", [("step", last)], f"{ot}.{fmt}"))
                dest[fmt] = len(steps) - 1

        lat = self.chip.vxm_latency  # CVT included: the ALU latency
        reachable = self.__dict__.get("_delays")  # the same for every chain of this chip
        if reachable is None:
            reachable = self._delays = delay_table(lat)
        out, times, index_map = place_delay_lines(steps, lat, reachable)
        dest = {fmt: index_map[j] for fmt, j in dest.items()}
        if len(out) > self.chip.vxm_alus:
            raise CompileError(f"{node.onnx_op} node '{node.name}': the fused chain needs {len(out)} VXM ALUs, "
                               f"the chip has {self.chip.vxm_alus}")
        return out, times, dest, lat

    def vector_chunks(self, node: Node, sinks: dict[str, Store], rows: int) -> list[tuple[int, int]]:
        """Row ranges of a VXM node placed as jobs of their own. A chain streams one row a cycle with one ALU per
        step; a short chain leaves ALUs free, so its rows are cut into chunks that run at the same time on other
        ALUs, reading other slices (the segments of the chunk's rows): at most as many as the ALUs hold, of at
        least MIN_VXM_CHUNK_ROWS rows."""
        steps = len(self.timed_chain(node, set(sinks))[0])
        n = max(1, min(MAX_VXM_CHUNKS, self.chip.vxm_alus // max(1, steps), rows // MIN_VXM_CHUNK_ROWS))
        size = math.ceil(rows / n)
        return [(r0, min(rows, r0 + size)) for r0 in range(0, rows, size)]

    def vector_pipeline(self, node: Node, nt: int, r0: int, r1: int, sinks: dict[str, Store],
                        plane: str | None, acc_base: int, acc_ready: int) -> int:
        steps, times, dest, lat = self.timed_chain(node, set(sinks))
        g = self.graph
        vpos = self.vxm_pos
        out_t = g.tensors[node.output]
        geom = out_geom(out_t)
        rows = r1 - r0
        src = []
        for view in node.sources:
            store = self.stores[(view.tensor, vxm_format(g.tensors[view.tensor]))]
            tile = source_tile(view, nt)
            runs = segment_runs(store, tile, view_runs(view, store, geom, out_t.rows, r0, r1))
            src.append((store, runs, tile, [(store, runs)]))
        sink_runs = {fmt: segment_runs(st, nt, view_runs(View(node.output), st, geom, out_t.rows, r0, r1))
                     for fmt, st in sinks.items()}
        for i, view in enumerate(node.sources):  # copies the job may read instead (broadcast_copies)
            store, runs, tile, alts = src[i]
            copies = self.broadcast_copies(view, store, out_t.rows)
            if not copies:
                continue
            # slices the job's other reads and its writes use: a copy there would meet them in the same cycles
            busy = {r.slice + b for j, (st, rs, _, _) in enumerate(src) if j != i for r in rs
                    for b in range(st.width)}
            busy |= {r.slice + b for fmt, rs in sink_runs.items() for r in rs for b in range(sinks[fmt].width)}
            for copy in copies:
                if not any(x in busy for sg in copy.tiles[tile] for x in range(sg.slice, sg.slice + copy.width)):
                    alts.append((copy, segment_runs(copy, tile, view_runs(view, copy, geom, out_t.rows, r0, r1))))
        lower = 0
        for j, s in enumerate(steps):
            for a in s.args:
                if a[0] == "src":
                    store, runs, tile, _ = src[a[1]]
                    lower = max(lower, self.read_bound(store, tile, runs, vpos, 1, list(range(store.width)))
                                - times[j])
                elif a[0] == "acc":
                    dist = abs(vpos - self.chip.plane_position(plane))
                    lower = max(lower, acc_ready + self.chip.mxm_acc_latency + dist - times[j])
        commits: list[tuple[Store, int]] = []

        def build(base):
            commits.clear()
            operands_of: dict[int, list[str]] = {}
            alus: dict[int, int] = {}
            for j, s in enumerate(steps):
                t = base + times[j]
                span = (t, t + rows - 1 + lat(s.op))  # the register must hold each row until its reader took it
                busy = [self.res.queue_busy_until(q, *span) for q in self.alu_queues]
                alu = next((a for a, b in enumerate(busy) if b is None), None)
                if alu is None:  # every ALU is taken: the earliest base at which one of them frees up
                    raise Clash(min(busy) + 1 - times[j])
                self.res.take_queue(f"VXM.{alu}", span[0], span[1], times[j])
                alus[j] = alu
                operands = []
                for a in s.args:
                    if a[0] == "imm":
                        operands.append(_imm(a[1], s.t))
                    elif a[0] == "step":
                        operands.append(f"R{alus[a[1]]}")
                    elif a[0] == "src":
                        store, runs, tile, alts = src[a[1]]
                        store, runs = self.free_copy(alts, t, vpos, base)
                        operands.append(self.read_view(store, tile, runs, vpos, t, 1, base))
                    else:  # the accumulator of `plane`
                        operands.append(self.read_accumulators(plane, acc_base, rows, t, base,
                                                               "i32" if is_int8(g, node) else "f32"))
                operands_of[j] = operands
            for j, s in enumerate(steps):
                t = base + times[j]
                dst = "-"
                for fmt, k in dest.items():
                    if k == j:
                        dst, last_commit = self.write_view(sinks[fmt], sink_runs[fmt], vpos, t + lat(s.op), base)
                        commits.append((sinks[fmt], last_commit))
                mnemonic = f"{s.op}.{s.t}"
                self.res.add_issue(Issue(f"VXM.{alus[j]}", t, f"{mnemonic} {dst}, {', '.join(operands_of[j])}",
                                         rows, 1, 0, t + rows - 1 + lat(s.op)))
            return base

        base = self.place(lower, build, f"the VXM chain of {node.onnx_op} node '{node.name}'")
        for store, last_commit in commits:  # readable once the last row is committed
            store.ready[nt] = max(store.ready[nt], last_commit + 1)
        return base

    def read_accumulators(self, plane: str, acc_base: int, rows: int, arrive: int, base: int,
                          acc_t: str = "f32") -> str:
        ppos = self.chip.plane_position(plane)
        direction = "E" if self.vxm_pos > ppos else "W"
        issue = arrive - self.chip.mxm_acc_latency - abs(self.vxm_pos - ppos)
        queue = f"MXM.{plane}.ACC"
        self.res.take_queue(queue, issue, issue + rows - 1, issue - base)
        emit = issue + self.chip.mxm_acc_latency
        g = self.take_group(direction, [[(ppos, emit, 1, rows, self.vxm_pos)]] * 4, base)
        self.res.add_issue(Issue(queue, issue, f"ACC.{acc_t} {acc_base}, {stream_name(direction, g)}", rows, 1, 1,
                                 emit + rows - 1))
        self.acc_issued = issue + rows - 1
        return stream_name(direction, g)

    # ----- whole graph ----------------------------------------------------------------------------------
    def run(self) -> Schedule:
        g = self.graph
        if needs_sxm_slices(g.nodes):
            self.reserve_sxm_slices()
        input_stores = self.place_cache_regions()  # first: every program of a generation has them there
        self.place_lookup_tables()  # whole fresh slices (lookup.py)
        for name in g.inputs:  # where the host writes
            if name not in input_stores:
                input_stores[name] = self.alloc_store(name, "f32")
        self.expect_bordered()
        self.weight_left = {w: weight_bytes(g.tensors[w].data, g.tensors[w].dtype, self.lanes) for w in
                            {w for node in g.nodes for _, w in node.terms if g.tensors[w].kind == "const"}}
        self.sram.weights_to_come = sum(self.weight_left.values())
        # per-plane weight shares (plane_slices) only while the weights leave room: with BERT-base's weights at 93%
        # of SRAM they fragmented it (a 2-slice x 40-row store found no room at 209.6 of 230.7 MB placed). Lookup
        # tables (whole slices, lookup.py) count as weights: HF BERT-base's f32 word embeddings took most of one
        # plane's share, and its chip 0 ran 467,011 cycles without shares against 472,418 with them
        self.plane_shares = \
            self.sram.weights_to_come + self.lookup_bytes <= PLANE_SHARES_UP_TO * self.chip.sram_bytes
        last_use = {}
        for i, node in enumerate(g.nodes):
            for v, w in node.terms:
                last_use[v.tensor] = i
                if g.tensors[w].kind == "value":
                    last_use[w] = i
            for v in node.sources:
                last_use[v.tensor] = i
        marks = []
        for i, node in enumerate(g.nodes):
            marks.append(len(self.res.issues))
            if self.progress:
                self.progress(i, len(g.nodes), node)
            out = g.tensors[node.output]
            reads = {v.tensor for v in node.sources} | {v.tensor for v, _ in node.terms} | {
                w for _, w in node.terms if g.tensors[w].kind == "value"}
            streamed = node.sources  # what the VXM job streams together, tile by tile
            for v in node.sources:  # constants are placed where this node's other views are not
                t = g.tensors[v.tensor]
                if t.kind == "const" and (v.tensor, vxm_format(t)) not in self.stores:
                    others = [u for u in streamed if u.tensor != v.tensor]
                    store = self.alloc_store(v.tensor, vxm_format(t), bank=0,
                                             avoid_tile=lambda nt, o=others: self.view_slices(o, nt))
                    self.init_store(store, t.data)
            for v, _ in node.terms:  # a constant streamed into the MXM (ones[1, C] @ a computed tensor, norms.py)
                t = g.tensors[v.tensor]
                if t.kind == "const" and (v.tensor, "f16") not in self.stores:
                    self.init_store(self.alloc_store(v.tensor, "f16", bank=0), t.data)
            for _ in range(len(node.sources)):  # two views one VXM job streams may not share a slice: move one
                clash = self._shared_slices(node)
                if not clash:
                    break
                self.relocate(node, clash)
            else:
                clash = self._shared_slices(node)
            if clash:
                raise CompileError(f"{node.onnx_op} node '{node.name}': sources {clash} share MEM slices "
                                   f"(placement conflict; not resolved yet)")
            # the node starts once its sources are written: reused space free by then costs it no wait. None when
            # none is written by this program (inputs, constants, a KV cache's past: ready 0): its start is not
            # known, and 0 would pass over blocks only because the program starts late (a pipeline's later stages)
            self.sram.soon = max((max(self.stores[(n, f)].ready, default=0) for n in reads
                                  for f in self.stores.formats.get(n, ())), default=0) or None
            sinks = {}
            for fmt in sorted(out.formats):  # the sinks are written at the same time: apart from each other too
                if fmt == "f32" and node.output in self.cache_sinks:
                    sinks[fmt] = self.cache_sink(node.output)
                    self.keep_sources_off(node, sinks[fmt])
                    continue
                self.sink_of = node  # alloc_store's last resort: apart from what this node's jobs read per row
                try:
                    sinks[fmt] = self.alloc_store(
                        node.output, fmt, reuse=True,
                        avoid_tile=lambda nt: self.view_slices(streamed + [View(node.output)], nt))
                finally:
                    self.sink_of = None
            if node.kind == "matmul":
                self.schedule_matmul(node, sinks)
            elif node.kind == "transpose":
                self.schedule_transpose(node, sinks)
            elif node.kind == "lookup":
                self.schedule_lookup(node, sinks)
            else:
                chunks = self.vector_chunks(node, sinks, out.rows)
                for nt in range(self.ntiles(out.cols)):
                    for r0, r1 in chunks:
                        self.vector_pipeline(node, nt, r0, r1, sinks, None, 0, 0)
            for name in sorted(reads):  # free what no later node reads (in one order: set order varies by run)
                if last_use.get(name) == i and name not in g.outputs:
                    for fmt in ("f32", "f16", "i8", "i32"):
                        if (name, fmt) in self.stores:
                            self.release(self.stores[(name, fmt)])
        issues = self.res.issues
        last = max((iss.last_effect for iss in issues), default=-1)
        predicted = 0 if not issues else last + 1 + self.chip.superlanes - 1
        return Schedule(issues, self.static_init, input_stores,
                        {n: self.stores[(n, "f32")] for n in g.outputs}, predicted, self.sram.bytes_used,
                        frozenset(self.pinned), self.constants_released, tuple(marks))

    def place_cache_regions(self) -> dict[str, Store]:
        """Place (or claim, at an earlier program's addresses) each KV-cache region, and read the matching past
        from inside it (kv_cache.py): the past inputs' stores."""
        g, stores = self.graph, {}
        out_ir = dict(zip(g.output_names, g.outputs))
        in_ir = {g.tensors[n].onnx_input: n for n in g.inputs}
        for region in self.cache:
            present = out_ir.get(region.present)
            t = g.tensors.get(present)
            if t is None or not t.flat_rows or len(t.shape) != 4:
                raise CompileError(f"KV cache: output '{region.present}' is not the model's [batch, kv_heads, "
                                   f"length, head_dim] attention heads")
            store = Store.for_tensor(t, "f32")
            if region.tiles is None:
                hemi, kept = self.next_hemisphere(), kept_slices(self.chip)
                try:
                    segs = self.alloc_segments(store.width, store.storage_rows, hemi, 1, kept, False)
                except CompileError:
                    segs = self.alloc_segments(store.width, store.storage_rows, "E" if hemi == "W" else "W", 1,
                                               kept, False)
                store.tiles = [segs]
            else:
                claim(self.sram, region.tiles, store.width, f"KV cache '{region.present}'")
                store.tiles = [[Segment(sg.lo, sg.hi, sg.slice, sg.addr) for sg in segs] for segs in region.tiles]
            store.ready = [0] * len(store.tiles)
            past_store = None
            nb, nh, total, d = t.shape
            past_rows = g.onnx_inputs[region.past][2] if region.past in g.onnx_inputs else 0
            if past_rows:
                past = in_ir.get(region.past)
                pt = g.tensors.get(past)
                if pt is None or pt.geom is not None or pt.rows != nb * nh * past_rows or pt.cols != d:
                    raise CompileError(f"KV cache: input '{region.past}' is not read as rows of its heads "
                                       f"[{nb * nh * past_rows}, {d}]")
                past_store = Store.for_tensor(pt, "f32")
                past_store.tiles = past_tiles(store, nb * nh, past_rows, total - past_rows)
                past_store.ready = [0] * len(past_store.tiles)
                self.stores[(past, "f32")] = stores[past] = past_store
                self.pinned.add(past)
            self.cache_sinks[present] = (store, past_store)
            self.pinned.add(present)
            reg = region_slices(store)
            for node in g.nodes:  # the values the present's writer streams stay off the region's slices (a
                if node.output == present:  # constant, often shared by every layer's writer, is copied instead)
                    for v in node.sources:
                        if g.tensors[v.tensor].kind != "const":
                            self.keep_off[v.tensor] = self.keep_off.get(v.tensor, frozenset()) | reg
        return stores

    def cache_sink(self, name: str) -> Store:
        """A KV-cache region as the sink of the node that writes the present: every write after the past's last
        read (the two are the same rows, shifted)."""
        store, past = self.cache_sinks[name]
        if past is not None:
            for segs in store.tiles:
                for sg in segs:
                    sg.not_before = max(sg.not_before, past.last_access)
        self.stores[(name, "f32")] = store
        return store

    def relocate(self, node: Node, clash: tuple, keep_off: frozenset = frozenset()) -> None:
        """Copy one of two clashing sources (a tensor without a border) to slices apart from the node's other
        sources (and from `keep_off`); later readers use the copy. When neither is such a value, a constant of
        the two gets a second copy in its constant image instead."""
        name = next((n for n in clash if (n, "f32") in self.stores and not self.stores[(n, "f32")].pad), None)
        if name is None or self.graph.tensors[name].kind == "const":
            # a constant gets its second copy in the image: no copy to run (a copy of a value that is ready from
            # cycle 0 would be searched for from cycle 0, past the placement window in a long program)
            const = next((n for n in clash if self.graph.tensors[n].kind == "const"), None)
            if const is not None:
                self.copy_constant(node, const, keep_off)
            return
        old = self.stores[(name, "f32")]
        others = list(node.sources) + [View(name)]  # (the copy reads every tile of the old place)
        # a one-tile tensor read for every column tile (View.tile0) meets every tile of the others
        every = self.ntiles(self.graph.tensors[name].cols) == 1 < self.ntiles(self.graph.tensors[node.output].cols)
        out_tiles = range(self.ntiles(self.graph.tensors[node.output].cols))
        new = self.alloc_store(name, "f32", reuse=True, avoid_tile=lambda nt: keep_off | (
            set().union(*(self.view_slices(others, t) for t in out_tiles)) if every else self.view_slices(others, nt)))
        self.stores[(name, "f32")] = old  # the copy reads the old place
        copy = Node("vector", node.name, f"{node.onnx_op}(move {name})", name, sources=[View(name)],
                    steps=[Step("COPY", [("src", 0)])])
        for nt in range(self.ntiles(self.graph.tensors[name].cols)):
            self.vector_pipeline(copy, nt, 0, self.graph.tensors[name].rows, {"f32": new}, None, 0, 0)
        self.stores[(name, "f32")] = new
        if name not in self.graph.outputs:
            self.release(old)

    def copy_constant(self, node: Node, name: str, keep_off: frozenset = frozenset()) -> None:
        """A second copy of a constant, apart from the node's other sources (and `keep_off`): later readers use
        it; the first stays in the image."""
        t = self.graph.tensors[name]
        others = [v for v in node.sources if v.tensor != name]
        store = self.alloc_store(name, vxm_format(t), bank=0,
                                 avoid_tile=lambda nt: self.view_slices(others, nt) | keep_off)
        self.init_store(store, t.data)

    def keep_sources_off(self, node: Node, region: Store) -> None:
        """A node writing a KV-cache region reads no source from the region's slices (`keep_off` placed them
        apart; a source placed before that is known is moved or, a constant, copied)."""
        reg = region_slices(region)
        for name in sorted({v.tensor for v in node.sources}):
            if not self.slices_of({name}) & reg:
                continue
            if self.graph.tensors[name].kind == "const":
                self.copy_constant(node, name, reg)
            else:
                self.relocate(node, (name,), reg)
            if self.slices_of({name}) & reg:
                raise CompileError(f"{node.onnx_op} node '{node.name}': source '{name}' shares MEM slices with "
                                   f"the KV-cache region it writes (placement conflict; not resolved yet)")

    def _shared_slices(self, node: Node):
        views = sorted({v.tensor: v for v in node.sources}.values(), key=lambda v: v.tensor)
        tiles = self.ntiles(self.graph.tensors[node.output].cols)
        for i, a in enumerate(views):
            for b in views[i + 1:]:
                if any(self.view_slices([a], nt, True) & self.view_slices([b], nt, True) for nt in range(tiles)):
                    return (a.tensor, b.tensor)
        return None

    def view_slices(self, views, nt: int, as_streamed: bool = False) -> set[int]:
        """Slices holding what the views read while output tile nt is computed (each view's own column tile, if
        it names one); `as_streamed`: only the store the VXM streams (its vxm_format), else every format's."""
        used: set[int] = set()
        for v in views:
            fmt = vxm_format(self.graph.tensors[v.tensor]) if as_streamed else None
            used |= self.slices_of({v.tensor}, source_tile(v, nt), fmt)
        return used

    def term_order(self, node: Node, nt: int) -> list[tuple]:
        """(view, weights, k tile, the view's store tile, the weights' column tile) adding to output tile nt, in
        streaming order: term by term, each over its k tiles (a term with `out_tiles` adds to its tile alone; a
        view of one column tile streams that tile). In fp32 graphs a run of terms with the same weights (x's
        pieces, fp32_split.py) goes k tile by k tile, each tile's weights loaded once for the whole run (the
        accumulator's sum is exact in any order)."""
        g = self.graph
        out_cols = g.tensors[node.output].cols
        tiles = node.out_tiles or (None,) * len(node.terms)
        terms = [(v, w) for (v, w), t in zip(node.terms, tiles) if t is None or t == nt]

        def k_tiles(v):
            return self.ntiles(view_cols(g.tensors[v.tensor], v))

        def entry(v, w, kt):
            w_nt = nt if g.tensors[w].cols >= out_cols or self.ntiles(g.tensors[w].cols) > 1 else 0
            return (v, w, kt, v.tile if v.tile is not None else kt, w_nt)
        if g.precision != "fp32":
            return [entry(v, w, kt) for v, w in terms for kt in range(k_tiles(v))]
        runs: list[list] = []
        for v, w in terms:
            if runs and runs[-1][0][1] == w:
                runs[-1].append((v, w))
            else:
                runs.append([(v, w)])
        return [entry(v, w, kt) for run in runs for kt in range(k_tiles(run[0][0])) for v, w in run]

    def row_chunk(self, rows: int, n_tiles: int, cpv: int, load: int, tiles_per_job: int) -> int:
        """Output rows per (N tile, row chunk) job of a matmul. Each job runs on one plane, so the rows are cut to
        keep all planes busy: the number of chunks, from the fewest of at most half the accumulator rows (two
        blocks: one fills while one drains), whose rounds of jobs over the planes take least time. A job streams
        `chunk` rows (`cpv` cycles each) per weight tile, and every job loads each of its weight tiles (`load` LW
        cycles) from the same slices: n chunks read each tile n times, one after another. A node with less work
        than SPLIT_WORK cycles per plane keeps the fewest chunks: small nodes share the planes with their
        neighbours (BERT's head selections), and more jobs would only add weight loads and epilogues."""
        if rows <= 1:
            return 1
        planes = self.chip.mxm_planes
        fewest = math.ceil(rows / (self.chip.mxm_acc_rows // 2))
        if n_tiles * rows * cpv * tiles_per_job < planes * SPLIT_WORK:
            return math.ceil(rows / fewest)
        best = None
        for n in range(fewest, fewest + planes):
            chunk = math.ceil(rows / n)
            if n > fewest and chunk < MIN_CHUNK_ROWS:
                break
            cost = math.ceil(n * n_tiles / planes) * (tiles_per_job * max(chunk * cpv, n * load) + JOB_OVERHEAD)
            if best is None or cost < best[0]:
                best = (cost, chunk)
        return best[1]

    def matmul_chunk(self, node: Node) -> int:
        """Output rows per job of a matmul node (row_chunk)."""
        g = self.graph
        out = g.tensors[node.output]
        x_fmt = "i8" if is_int8(g, node) else "f16"
        slots = weight_slots("i8" if x_fmt == "i8" else "f16")[0]
        return self.row_chunk(out.rows, self.ntiles(out.cols), self.chip.cycles_per_vector(x_fmt),
                              math.ceil(min(g.tensors[node.x].cols, self.lanes) / slots),
                              max(len(self.term_order(node, nt)) for nt in range(self.ntiles(out.cols))))

    def schedule_matmul(self, node: Node, sinks: dict[str, Store]) -> None:
        g = self.graph
        out = g.tensors[node.output]
        geom = out_geom(out)
        x_fmt = "i8" if is_int8(g, node) else "f16"
        x_store = self.stores[(node.x, x_fmt)]
        acc_rows = self.chip.mxm_acc_rows
        chunk = self.matmul_chunk(node)
        blocks = acc_rows // chunk
        for nt in range(self.ntiles(out.cols)):
            for r0 in range(0, out.rows, chunk):
                r1 = min(out.rows, r0 + chunk)
                plane = min(self.planes.values(), key=lambda p: (max(p.lw_free, p.busy_until), p.name)).name
                st = self.planes[plane]
                if st.acc_free is None:
                    st.acc_free = np.zeros(acc_rows, dtype=np.int64)
                # the block free soonest (the first of equals): argmin of the block maxima
                acc_base = chunk * int(np.argmin(st.acc_free[:blocks * chunk].reshape(blocks, chunk).max(axis=1)))
                acc_free = int(st.acc_free[acc_base:acc_base + chunk].max())
                first, t_abc = True, None
                for view, wname, kt, x_tile, w_nt in self.term_order(node, nt):
                    if g.tensors[wname].kind == "value":  # computed weights (attention)
                        self.load_weights_from_store(plane, wname, kt, w_nt)
                    else:
                        tile = self.weight_tile(wname, kt, w_nt, self.chip.plane_hemisphere(plane), plane)
                        if tile is None:
                            continue  # an all-zero weight tile (grouped convolutions) adds nothing
                        self.load_weights(plane, (wname, kt, w_nt), *tile)
                    # (precision="fp32": a term may read one of x's residual pieces, fp32_split.py)
                    t_abc = self.stream_activations(plane, self.stores[(view.tensor, x_fmt)], x_tile, view, geom,
                                                    out.rows, r0, r1, acc_base,
                                                    not first, acc_free)
                    first = False
                if t_abc is None:  # all weights of this output tile are zero: the epilogue reads 0.0 for acc
                    zero = [Step(s.op, [("imm", 0.0) if a == ("acc",) else a for a in s.args], s.t)
                            for s in (node.steps or [Step("COPY", [("acc",)])])]
                    self.vector_pipeline(Node("vector", node.name, node.onnx_op, node.output, node.sources, zero),
                                         nt, r0, r1, sinks, None, 0, 0)
                    continue
                cpv = self.chip.cycles_per_vector(x_store.fmt)
                acc_ready = t_abc + self.chip.mxm_latency + (r1 - r0 - 1) * (cpv - 1)
                self.vector_pipeline(node, nt, r0, r1, sinks, plane, acc_base, acc_ready)
                st.acc_free[acc_base:acc_base + chunk] = self.acc_issued + 1  # its last row has been read
