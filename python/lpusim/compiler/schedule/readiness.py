"""Rows as the unit of readiness and reuse: when each row of a store becomes readable and when each segment's
space is last used (a job starts on the rows its sources have written; released space waits per segment), copies
of one-row constants that row chunks read at once, and the slices a node's own jobs read per row range (for
placing its output when no slice group avoids all its sources). A mixin of Scheduler (scheduler.py)."""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, View, out_geom
from lpusim.compiler.passes import vxm_format
from lpusim.compiler.schedule.resources import Clash
from lpusim.compiler.schedule.storage import MemRun, Store, segment_runs, view_runs
from lpusim.errors import OutOfSram

# Copies of a one-row constant that VXM jobs read for every row (a bias, a scale), the first included: row chunks
# running at once read different ones (Scheduler.broadcast_copies). As many as the planes' epilogues at once.
BROADCAST_COPIES = 4


class RowJobs:
    """Scheduler methods for row readiness, per-segment reuse, constant copies and per-row sink placement."""

    @staticmethod
    def record_use(store: Store, used: list) -> None:
        """The store's last bank access so far, and per segment (Store.loose_access for a run not known by
        segment) its own."""
        for seg, effect in used:
            store.last_access = max(store.last_access, effect)
            if seg is None:
                store.loose_access = max(store.loose_access, effect)
            elif effect > seg.last_access:
                seg.last_access = effect

    def record_writes(self, store: Store, runs: list[MemRun], src_pos: int, first: int, d: int,
                      planes: list[int]) -> None:
        """The rows a placed WRITE makes readable, and from when (Store.record_write): row i of a run commits
        `mem_write_latency` after it meets its slice (the farthest of its byte planes)."""
        self._bounds = {}
        lat = self.chip.mem_write_latency
        for run in runs:
            tile = self.tile_of(store, run)
            if tile is not None and len(store.tiles[tile]) == 1:
                continue  # a tile of one segment (BERT's 128-row tensors): `ready`, the whole tile's, is as good
            if tile is None:  # a run not known by row (c2c's single-row runs): whole tiles from now on
                for nt in range(len(store.tiles)):
                    store.record_write(nt, None, None)
                continue
            far = max(abs(src_pos - self.mem_pos[run.slice + b]) for b in planes)
            i = np.arange(run.count, dtype=np.int64)
            store.record_write(tile, run.row + i * run.stride, first + (run.out_start + i) * d + far + lat + 1)

    @staticmethod
    def tile_of(store: Store, run: MemRun) -> int | None:
        """The column tile whose segment holds the run's first row."""
        for nt, segs in enumerate(store.tiles):
            for sg in segs:
                if sg.slice == run.slice and sg.lo <= run.row < sg.hi and run.addr == sg.addr + run.row - sg.lo:
                    return nt
        return None

    def read_bound(self, store: Store, tile: int, runs: list[MemRun], dest_pos: int, d: int,
                   planes: list[int], first: int | None = None) -> int:
        """The earliest `first` (the cycle row 0 of the view arrives at dest_pos) at which every READ of `runs`
        issues once its row is written: per row where the store's writes are known row by row (a job on the first
        rows of a tensor starts while its writer still writes the last), else once the whole tile is. Given
        `first`, a bound at or below it may be returned instead (the whole tile's, when it is already met)."""
        lat = self.chip.mem_read_latency
        per_row = store.rows_ready(tile)
        key = (id(store), tile, id(runs), dest_pos, d, tuple(planes))
        hit = self._bounds.get(key)
        ready = store.ready[tile]
        # an answer stands while the runs are the same list (kept in the entry: its id is not reused), no write
        # was recorded since (record_writes empties the table) and the tile's `ready` is unchanged
        if hit is None or hit[0] is not runs or hit[1] is not per_row or hit[5] != ready:
            mem_pos = self.mem_pos
            far = [max(abs(dest_pos - mem_pos[run.slice + b]) for b in planes) for run in runs]
            whole = max((ready - run.out_start * d + lat + f for run, f in zip(runs, far)), default=0)
            hit = self._bounds[key] = [runs, per_row, max(whole, 0), None, far, ready]
        if hit[3] is not None:
            return hit[3]
        if per_row is None or (first is not None and first >= hit[2]) or any(run.row < 0 for run in runs):
            return hit[2]
        # every row of every run at once: row i of a run is read (out_start + i)*d after row 0 of the view
        counts = np.array([run.count for run in runs], dtype=np.int64)
        starts = np.cumsum(counts) - counts
        i = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
        rows = np.repeat(np.array([run.row for run in runs], dtype=np.int64), counts) + \
            i * np.repeat(np.array([run.stride for run in runs], dtype=np.int64), counts)
        out = np.repeat(np.array([run.out_start for run in runs], dtype=np.int64), counts) + i
        need = np.maximum.reduceat(per_row[rows] - out * d, starts)
        hit[3] = max(int(np.max(need + np.array(hit[4], dtype=np.int64))) + lat, 0)
        return hit[3]

    def read_with_rows(self, node: Node, fmt: str, nt: int, lo: int, hi: int) -> set[int]:
        """The slices a node's VXM jobs (its row chunks, or a matmul's epilogues) read from its sources while
        writing storage rows lo..hi-1 of its `fmt` output: a segment placed apart from them meets no read of its
        own job."""
        g = self.graph
        out = g.tensors[node.output]
        geom = out_geom(out)
        sink = Store.for_tensor(out, fmt)
        if sink.pad:
            logical = np.nonzero((sink.interior_rows() >= lo) & (sink.interior_rows() < hi))[0]
            if not len(logical):
                return set()
            l0, l1 = int(logical[0]), int(logical[-1]) + 1
        else:
            l0, l1 = lo, min(hi, out.rows)
        if node.kind == "matmul":
            chunk = self.matmul_chunk(node)
            chunks = [(r0, min(out.rows, r0 + chunk)) for r0 in range(0, out.rows, chunk)]
        elif node.kind == "vector":
            chunks = self.vector_chunks(node, {f: None for f in out.formats}, out.rows)
        else:  # transposes, lookups: their sources whole
            return self.slices_of({v.tensor for v in node.sources}, nt)
        used: set[int] = set()
        for r0, r1 in chunks:
            if r1 <= l0 or r0 >= l1:
                continue
            for view in node.sources:
                store = self.stores.get((view.tensor, vxm_format(g.tensors[view.tensor])))
                if store is None or store.released:
                    continue
                tile = 0 if view.tile0 else nt if view.tile is None else view.tile  # scheduler.source_tile
                try:
                    runs = segment_runs(store, tile, view_runs(view, store, geom, out.rows, r0, r1))
                except (AssertionError, IndexError):  # rows this view cannot map chunk by chunk: all of it
                    used |= self.slices_of({view.tensor}, nt)
                    continue
                for run in runs:
                    used.update(range(run.slice, run.slice + store.width))
        return used

    def broadcast_copies(self, view: View, store: Store, out_rows: int) -> list[Store]:
        """Copies of a one-row constant a VXM job reads for every row (a bias, a scale): row chunks of one node
        (and of its neighbours) run at once on other ALUs, and each reads the row every cycle from one slice queue,
        so with one copy they would run one after another (light ResNet-50's stem: 28 epilogues of 448 rows in
        series). Made on first use (BROADCAST_COPIES in all, each apart from the others); the job offers those
        apart from its other reads and writes to free_copy, which picks one whose queues are free."""
        t = self.graph.tensors[view.tensor]
        if t.kind != "const" or store.rows != 1 or view.rows is not None or view.spatial:
            return []
        # only for outputs longer than a segment, whose row chunks run at once: a shorter one's jobs (BERT's
        # 128-row tensors) are one per column tile, and a constant's column tiles lie in different slices already
        if out_rows <= self.segment_rows:
            return []
        key = (view.tensor, store.fmt)
        copies = self.const_copies.get(key)
        if copies is None:
            copies = self.const_copies[key] = []
            taken = {x for segs in store.tiles for sg in segs for x in range(sg.slice, sg.slice + store.width)}
            # the next store's slice group stays where it would be without the copies (they are tiny; moving it
            # put a node of ResNet-50's 128-row try where its sources left no slice free)
            cursor = dict(self.sram.cursor)
            for _ in range(BROADCAST_COPIES - 1):
                copy = Store.for_tensor(t, store.fmt)
                try:
                    for _nt in range(len(store.tiles)):
                        copy.tiles.append(self.alloc_segments(copy.width, copy.storage_rows, self.next_hemisphere(),
                                                              0, taken, False))
                        copy.ready.append(0)
                except OutOfSram:
                    break
                taken |= {x for segs in copy.tiles for sg in segs for x in range(sg.slice, sg.slice + copy.width)}
                self.init_store(copy, t.data)
                copies.append(copy)
            self.sram.cursor = cursor
        return copies

    def free_copy(self, alts: list, first: int, dest_pos: int, base: int) -> tuple[Store, list[MemRun]]:
        """The first of (store, runs) alternatives whose READ queues are free for the job (the last one tried
        otherwise, which raises the Clash)."""
        if len(alts) == 1:
            return alts[0]
        for store, runs in alts:
            try:
                for b in range(store.width):
                    self.check_mem_runs("READ", runs, b, first, 1, dest_pos, base)
            except Clash:
                continue
            return store, runs
        return alts[0]
