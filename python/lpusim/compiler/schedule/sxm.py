"""Scheduler jobs that move data between rows and lanes, and matmuls whose weights are computed.

A transpose T = X^T of a block (X: S rows of C lanes, both at most 320, byte plane by byte plane) runs the
classic skew / gather / unskew on the SXM and MEM (docs/isa.md section 4):
1. skew: row r of X goes through the SXM as `PERMUTE` by the map `(l + r) mod 320` (row r rotated by -r lanes) into
   a scratch slice Y at address y + r, so X[r][j] sits in Y at lane (j - r) mod 320;
2. gather: `GATHER` with map G_j[l] = y + ((j - l) mod 320) (beyond row S: an address past the slice, which reads
   0) collects, in lane l, Y's lane l of row j - l: that is X[j - l][j], column j of X reflected;
3. unskew: `PERMUTE` by `(j - m) mod 320` puts X[m][j] in lane m, and the vector, row j of T, is written to T's
   store (its lanes past S are 0).
Each step is a burst of one instruction per cycle (REPEAT), so a transpose of an S x C block costs about S + C
cycles per byte plane plus the belt's travel. The maps are constant tables in MEM: one table of the 320
rotations and one of the 320 reflections per hemisphere serve every transpose; the gather maps are stored once
per block shape; the scratch slice (320 addresses) is shared, its next writer waiting for its last reader.
A larger or batched transpose (B matrices of M x N, lower/transpose.py) is a sequence of such blocks: block (i, j)
of matrix b, its rows i*320.. of column tile j (in the order the source's row view gives), becomes rows
b*N + j*320.. of column tile i. Small matrices are packed k to a block (k*M, k*N <= 320): row (b, n) of the block
gathers only matrix b's rows of Y and reflects by (n - b*M). The byte planes of a single column tile alternate
between the two hemispheres' SXMs, so one plane's gather overlaps the next one's skew.

A matmul whose weights are a computed tensor (attention's K^T and V) loads them with `LW` one row per cycle from
their store (a constant weight tile is laid out so 8 rows load per cycle; a computed one is not).
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import View, view_cols
from lpusim.compiler.schedule.storage import Segment, Store, segment_runs, view_runs
from lpusim.compiler.schedule.resources import Clash, Issue
from lpusim.errors import CompileError


SXM_KEPT = 5  # slices per hemisphere next to its SXM kept for the transposes (SxmJobs.reserve_sxm_slices)


def needs_sxm_slices(nodes) -> bool:
    """Whether a program's nodes use the slices kept for SXM tables: transposes, and table lookups (their
    all-zero PERMUTE map, schedule/lookup.py)."""
    return any(node.kind in ("transpose", "lookup") for node in nodes)


def kept_slices(chip) -> set[int]:
    """The slices a program with transposes keeps for its SXM tables and scratch, both hemispheres."""
    half = chip.mem_slices // 2
    return set(range(half - SXM_KEPT, half)) | set(range(2 * half - SXM_KEPT, 2 * half))


def transpose_blocks(B: int, M: int, N: int, lanes: int):
    """The blocks a transpose of B matrices of M x N runs as: (b, kb, i, j, S, C), matrices b..b+kb-1 packed
    together (kb * S and kb * C at most `lanes`), rows i*lanes.. (S of them) and column tile j (C lanes) of each."""
    k = max(1, min(B, lanes // M, lanes // N)) if max(M, N) <= lanes else 1
    for b in range(0, B, k):
        kb = min(k, B - b)
        for i in range(-(-M // lanes)):
            for j in range(-(-N // lanes)):
                yield b, kb, i, j, min(lanes, M - i * lanes), min(lanes, N - j * lanes)


def gather_shapes(graph, lanes: int) -> set[tuple[int, int, int]]:
    """The block shapes (kb, S, C) of every transpose in `graph`: one gather table of kb * C rows each."""
    shapes = set()
    for node in graph.nodes:
        if node.kind == "transpose":
            view = node.sources[0]
            x, out = graph.tensors[view.tensor], graph.tensors[node.output]
            x_rows = len(view.rows) if view.rows is not None else x.rows
            shapes.update((kb, S, C) for _, kb, _, _, S, C in transpose_blocks(x_rows // out.cols, out.cols,
                                                                                 view_cols(x, view), lanes))
    return shapes


class SxmJobs:
    """Mixed into `Scheduler` (schedule.py)."""

    def sxm_position(self, hemisphere: str) -> int:
        n = self.chip.planes_per_hemisphere
        return n if hemisphere == "W" else self.chip.num_positions - n - 1

    def hemisphere_of(self, store: Store, tile: int = 0) -> str:
        return "W" if self.chip.mem_position(store.tiles[tile][0].slice) < self.vxm_pos else "E"

    def reserve_sxm_slices(self) -> None:
        """Keep, per hemisphere, the 5 slices next to its SXM for the transposes: a slice pair for the rotation
        maps, one for the gather maps, one slice of scratch. No other tensor's traffic lives there, so a job never
        waits on a queue another tensor holds (and two reads of one slice in one cycle cannot happen). Weight
        slots may share them (no job reads both at once), so the space the tables will take is kept at the top
        of their banks now, before any weight is placed (`keep_table_space`)."""
        half = self.chip.mem_slices // 2
        self.sxm_slices = {"W": (half - 5, half - 3, half - 1), "E": (2 * half - 5, 2 * half - 3, 2 * half - 1)}
        self.sram.reserved.update(kept_slices(self.chip))
        self.keep_table_space()

    def keep_table_space(self) -> None:
        """Keep room in the kept slices' banks, per hemisphere, for the SXM tables this graph's transposes will
        take: the rotation and reflection tables and every gather table (one per block shape), bank 0 first as
        `map_store` places them, and the scratch slice (bank 1). Weight slots placed before the first transpose
        filled both banks of PaddleOCR rec's (fp32) rotation slices otherwise. Only the amount is kept, so a table
        lands where it did before (after the weights placed until then) whenever it had room."""
        lanes = self.lanes
        gathers = [kb * c for kb, _, c in sorted(gather_shapes(self.graph, lanes))]
        for rot, gat, scratch in self.sxm_slices.values():
            for first, width, sizes, banks in ((rot, 2, [lanes, lanes], (0, 1)), (gat, 2, gathers, (0, 1)),
                                               (scratch, 1, [lanes], (1,))):
                tables = list(sizes)
                for bank in banks:  # first fit, table by table
                    room = min(self.sram.top[s][bank] - self.sram.next[s][bank] for s in range(first, first + width))
                    planned = 0
                    for t in list(tables):
                        if planned + t <= room:
                            planned += t
                            tables.remove(t)
                    if planned:
                        self.sram.keep(first, width, planned, bank)

    def map_store(self, key: tuple, make, hemisphere: str, pair: int) -> Store:
        """A constant table of u16 maps (one row of `lanes` entries per map), stored once per key, in the kept
        slice pair `pair` (0: the rotation and reflection tables, 1: gathers), in bank 0 or else bank 1."""
        cache = self.__dict__.setdefault("_map_stores", {})
        if (key, hemisphere) not in cache:
            rows = np.asarray(make(), dtype=np.uint16)
            store = Store(f"map{key}", "u16", 2, len(rows), None, 0, len(rows))
            first = self.sxm_slices[hemisphere][pair]
            try:
                addr = self.sram.alloc_at(first, 2, len(rows), 0, kept=True)
            except CompileError:
                try:
                    addr = self.sram.alloc_at(first, 2, len(rows), 1, kept=True)
                except CompileError:
                    # every table of this hemisphere counts (rotation and gather maps alike): counting only
                    # the gathers named "0 shapes" when rotation tables were what filled the slices
                    stored = [st for (_, h), st in cache.items() if h == hemisphere]
                    raise CompileError(
                        f"the SXM map tables of hemisphere {hemisphere} fill the MEM slices kept for them: "
                        f"{len(stored)} tables of {sum(st.rows for st in stored):,} rows stored, a new one of "
                        f"{len(rows):,} rows fits neither bank of slice {first} (transposes and lane rotations "
                        f"of that many shapes are not supported yet)") from None
            store.tiles.append([Segment(0, len(rows), first, addr)])
            store.ready.append(0)
            for sg in store.tiles[0]:
                block = rows[sg.lo:sg.hi]
                self.static_init.append((sg.slice, sg.addr, (block & 0xFF).astype(np.uint8)))
                self.static_init.append((sg.slice + 1, sg.addr, (block >> 8).astype(np.uint8)))
            cache[(key, hemisphere)] = store
        return cache[(key, hemisphere)]

    def scratch_slice(self, hemisphere: str) -> Store:
        """The hemisphere's kept slice for skewed rows: 320 addresses (bank 1) every transpose block uses (its next
        writer waits for its last reader)."""
        cache = self.__dict__.setdefault("_scratch", {})
        if hemisphere not in cache:
            rows = self.lanes
            store = Store(f"skew{hemisphere}", "u8", 1, rows, None, 0, rows)
            first = self.sxm_slices[hemisphere][2]
            store.tiles.append([Segment(0, rows, first, self.sram.alloc_at(first, 1, rows, 1, kept=True))])
            store.ready.append(0)
            cache[hemisphere] = store
        return cache[hemisphere]

    def take_sxm_queue(self, hemisphere: str, start: int, count: int) -> str:
        for q in range(self.chip.config["sxm_per_hemisphere_queues"]):
            name = f"SXM.{hemisphere}.{q}"
            try:
                self.res.take_queue(name, start, start + count - 1, 0)
                return name
            except Clash:
                continue
        raise Clash(None)

    def schedule_transpose(self, node, sinks: dict) -> None:
        """B matrices of M x N (the source: B*M rows of N lanes, read through its view, which may reorder the
        rows) -> B matrices of N x M. Matrices past 320 rows or lanes are cut into blocks of at most 320 x 320:
        block (i, j) of matrix b (its rows i*320.., column tile j) becomes rows j*320.. of column tile i. Small
        ones are packed k to a block (k*M and k*N at most 320): their rows are consecutive in X and in T."""
        view = node.sources[0]
        x = self.graph.tensors[view.tensor]
        out = self.graph.tensors[node.output]
        lanes = self.lanes
        x_rows = len(view.rows) if view.rows is not None else x.rows
        M, N = out.cols, view_cols(x, view)  # a view of one column tile: that tile's lanes
        turn = 0
        for fmt, ts in sinks.items():
            xs = self.stores[(x.name, fmt)]
            for b, kb, i, j, S, C in transpose_blocks(x_rows // M, M, N, lanes):
                x0, t0 = b * M + i * lanes, b * N + j * lanes
                xt = j if view.tile is None else view.tile  # the store's column tile
                xruns = segment_runs(xs, xt, view_runs(view, xs, None, x_rows, x0, x0 + kb * S))
                truns = segment_runs(ts, i, view_runs(_plain(ts.tensor), ts, None, out.rows, t0, t0 + kb * C))
                # one column tile: its byte planes alternate between the two SXMs (each with its own scratch
                # slice), so one plane's skew overlaps the other's gather
                hemis = [self.hemisphere_of(xs, xt)] if len(xs.tiles) > 1 else \
                    ["WE"[(turn + p) % 2] for p in range(xs.width)]
                turn += xs.width
                done = 0
                for p in range(xs.width):
                    done = max(done, self.transpose_plane(node, xs, xt, xruns, ts, truns, (kb, S, C), p,
                                                          hemis[p % len(hemis)]))
                ts.ready[i] = max(ts.ready[i], done + 1)

    def transpose_plane(self, node, xs: Store, xt: int, xruns, ts: Store, truns, block: tuple, p: int,
                        hemi: str) -> int:
        """Byte plane p of one block of k matrices of M x N (`block` = (k, M, N); the rows `xruns` of column tile
        xt of X, k*M of them, to the rows `truns` of T, k*N): skew, gather, unskew on the SXM of `hemi`. Row
        (b, n) of the block's result gathers lane l from Y's row r = (l - n) mod 320 when r is one of matrix b's
        rows, and is rotated back by b*M + n. Returns the last commit."""
        k, M, N = block
        S, C = k * M, k * N
        lanes = self.lanes
        sxm = self.sxm_position(hemi)
        lat = self.chip.sxm_latency + self.chip.superlanes - 1
        rl = self.chip.mem_read_latency
        lanes_idx = np.arange(lanes)
        # one table of rotations (row r: out[l] = in[(l + r) mod 320]) and one of reflections (row c: out[m] =
        # in[(c - m) mod 320]) serve every transpose
        rot = self.map_store(("rot",), lambda: [(lanes_idx + r) % lanes for r in range(lanes)], hemi, 0)
        refl = self.map_store(("refl",), lambda: [(c - lanes_idx) % lanes for c in range(lanes)], hemi, 0)
        y = self.scratch_slice(hemi)
        ys, ya = y.tiles[0][0].slice, y.tiles[0][0].addr
        far = self.chip.mem_words  # a GATHER address past the slice reads 0

        def gather_rows():
            rows = []
            for b in range(k):
                for n in range(N):
                    r = (n - lanes_idx) % lanes
                    rows.append(np.where((r >= b * M) & (r < (b + 1) * M), ya + r, far))
            return rows
        gmap = self.map_store(("gather", k, M, N), gather_rows, hemi, 1)
        unskew = []  # row (b, n) reflects by c = (n - b*M) mod 320: N rising rows of the table per matrix
        for b in range(k):
            c0 = (-b * M) % lanes
            first = min(N, lanes - c0)
            unskew.append((b * N, c0, first, 1))
            if first < N:
                unskew.append((b * N + first, 0, N - first, 1))
        unskew_runs = segment_runs(refl, 0, unskew)
        ypos = self.chip.mem_position(ys)
        y.tiles[0][0].not_before = y.last_access  # overwrite Y only after the last GATHER read it
        yruns = segment_runs(y, 0, [(0, 0, S, 1)])

        def skew_rows(t):
            src = self.read_view(xs, xt, xruns, sxm, t, 1, t, planes=[p])
            m = self.read_view(rot, 0, segment_runs(rot, 0, [(0, 0, S, 1)]), sxm, t, 1, t)
            q = self.take_sxm_queue(hemi, t, S)
            dst, last = self.write_view(y, yruns, sxm, t + lat, t)
            self.res.add_issue(Issue(q, t, f"PERMUTE {dst}, {src}, {m}", S, 1, 0, t + S - 1 + lat))
            return last
        # no earlier start fits: Y's first write must commit after its last GATHER (a bound that spares `place`
        # stepping through every earlier READ run of X's slices, one clash at a time)
        after_y = y.last_access + 1 - lat - abs(ypos - sxm) - self.chip.mem_write_latency
        last = self.place(max(xs.ready[xt], after_y), skew_rows, f"the skew of transpose '{node.name}'")
        y.ready[0] = last + 1

        def gather_unskew(t):
            if t < y.ready[0]:
                raise Clash(y.ready[0])
            gm = self.read_view(gmap, 0, segment_runs(gmap, 0, [(0, 0, C, 1)]), ypos, t, 1, t)
            queue = self.chip.mem_name(ys)
            self.res.take_queue(queue, t, t + C - 1, 0)
            self.res.take_ports(ys, 0, t, C, 1, 0)
            self.res.take_ports(ys, self.chip.mem_words // 2, t, C, 1, 0)
            direction = "W" if sxm < ypos else "E"
            arrive = t + rl + abs(ypos - sxm)
            gs = self.take_group(direction, [[(ypos, t + rl, 1, C, sxm)]])
            gname = f"{direction}{gs}"
            self.res.add_issue(Issue(queue, t, f"GATHER {gname}, {gm}", C, 1, 0, t + rl + C - 1))
            self.accesses.append((y, t + C - 1))
            um = self.read_view(refl, 0, unskew_runs, sxm, arrive, 1, t)
            q = self.take_sxm_queue(hemi, arrive, C)
            dst, last = self.write_view(ts, truns, sxm, arrive + lat, t, planes=[p])
            self.res.add_issue(Issue(q, arrive, f"PERMUTE {dst}, {gname}, {um}", C, 1, 0,
                                     arrive + C - 1 + lat))
            return last
        return self.place(y.ready[0], gather_unskew, f"the gather of transpose '{node.name}'")

    def load_weights_from_store(self, plane: str, wname: str, kt: int, nt: int) -> None:
        """LW one row per cycle from a computed f16 tensor's store (rows kt*320.. of column tile nt), then IW."""
        st = self.planes[plane]
        key = (wname, kt, nt)
        if st.installed == key:
            return
        store = self.stores[(wname, "f16")]
        k0, k1 = kt * self.lanes, min(store.rows, (kt + 1) * self.lanes)
        runs = segment_runs(store, nt, view_runs(_plain(wname), store, None, store.rows, k0, k1))
        pos = self.chip.plane_position(plane)
        n = k1 - k0

        def build(t):
            self.res.take_queue(f"MXM.{plane}.LW", t, t + n - 1, 0)
            group = self.read_view(store, nt, runs, pos, t, 1, t)
            self.res.add_issue(Issue(f"MXM.{plane}.LW", t, f"LW.f16 {group}, 1", n, 1, 0, t + n - 1))
            return t

        t_lw = self.place(max(st.lw_free, store.ready[nt]), build, f"the weight load of plane {plane}")
        self.install_weights(plane, key, t_lw + n)


def _plain(name: str):
    return View(name)

