"""Embedding lookups by MEM GATHER (lower/lookup.py): out[i] = table[ids[i]], rows copied byte for byte.

Table layout (`place_lookup_tables`, first of a program's stores after a KV cache): per column tile, the f32 table
in *groups* of `mem_words` (8192) rows: group k holds rows 8192k .. 8192k + 8191 at addresses 0.. of 4 (the
width) consecutive fresh slices, byte plane b in the slice b steps further from the VXM; the groups of a tile
alternate between the hemispheres. Row `id` is at address id - 8192k of group k, and as a u16 map entry
id - 8192k lies past the slice for every id of another group (below 0 it wraps to 65536 - 8192k + id, at least
8192 while the table has at most 57344 rows; a larger one clamps it to -1 .. 65535 on the VXM), so a GATHER of
group k reads 0 for them: ORing the groups' results gives the row. The id column holds -1 for ids out of range
(lower/lookup.py), which every group reads as 0. A table whose f32 groups do not find fresh slices enough is
stored in f16 (2 slices a group; the values the one-hot matmul would give), its rows converted to f32 exactly.

One job per column tile and pass, the rows of ids one cycle apart (a pass takes at most two groups per
hemisphere: an SXM has four queues and a group takes two PERMUTEs a row):
1. VXM: `SUB.i32 D, ids, #8192k` per group: the map entry of each row in lane 0 (the ids are a column), sent
   outward to the SXM of the group's hemisphere;
2. SXM: `PERMUTE` of its two low byte planes by the all-zero map (a constant in the slices kept for SXM tables):
   lane 0 in every lane, exact (bytes move), sent back inward;
3. MEM: as that map passes each slice of the group, `GATHER` (both bank ports) puts byte plane b of the row on
   stream g + b, inward. Map and data travel the same way at the same speed, so a group's planes reach the VXM
   together wherever its slices are: sxm latency + read latency + the SXM's distance after the PERMUTE;
4. VXM: the groups' rows ORed (i32: the bits unchanged) in a tree, a COPY carrying an odd one to the next level,
   an earlier pass's partial result joining at the root; written to the output's stores (an f16 copy through the
   output's scale and CVT, as Scheduler.timed_chain makes it).
A lookup of n ids costs each tile about n + 130 cycles (tsp_v1); the one-hot matmul it replaces streamed n rows
through every 320-row block of the table at 4 cycles a row.
"""
from __future__ import annotations

import math

import numpy as np

from lpusim.compiler.ir import View
from lpusim.compiler.schedule.resources import Clash, Issue
from lpusim.compiler.schedule.storage import Segment, Store, segment_runs, view_runs
from lpusim.errors import CompileError, OutOfSram

U16 = 65536  # GATHER map entries are u16


def _imm(value, t: str) -> str:
    return "#" + (str(int(value)) if t.startswith("i32") else repr(float(np.float32(value))))


class LookupJobs:
    """Mixed into `Scheduler` (scheduler.py)."""

    # ----- the tables -------------------------------------------------------------------------------------
    def place_lookup_tables(self) -> None:
        """Every lookup's table, in groups of whole fresh slices (module docstring); the ids stay off them."""
        self.lookup_groups: dict[str, list[list[tuple[int, str, int]]]] = {}
        self.lookup_bytes = 0  # SRAM the tables take (Scheduler.run counts them with the weights)
        for node in self.graph.nodes:
            if node.kind != "lookup":
                continue
            name = node.sources[1].tensor
            if name not in self.lookup_groups:
                self.place_lookup_table(name)
            ids = node.sources[0].tensor
            self.keep_off[ids] = self.keep_off.get(ids, frozenset()) | frozenset(self.slices_of({name}))

    def place_lookup_table(self, name: str) -> None:
        """The table in f32; if its groups do not find fresh slices enough, in f16 (the values the one-hot matmul
        gives: GPT-2's 50,257 x 768 table takes 84 slices in f32, more than a chip keeps free, 42 in f16). The
        store is filed under its VXM format, f32, whichever it holds."""
        t = self.graph.tensors[name]
        sram = self.sram
        saved = ([list(x) for x in sram.next], sram.bytes_used, self.lookup_bytes)
        for fmt, width in (("f32", 4), ("f16", 2)):
            try:
                store, groups = self.lookup_groups_of(name, fmt, width)
                break
            except OutOfSram:
                sram.next, sram.bytes_used, self.lookup_bytes = [list(x) for x in saved[0]], saved[1], saved[2]
                if fmt == "f16":
                    raise
        if store.fmt == "f16" and float(np.max(np.abs(t.data), initial=0.0)) > 65504.0:
            raise CompileError(f"the lookup table '{name}' fits SRAM only in f16, and it holds values beyond "
                               f"fp16's range")
        self.stores[(name, "f32")] = store
        self.init_store(store, t.data)
        self.lookup_groups[name] = groups

    def lookup_groups_of(self, name: str, fmt: str, width: int):
        """(store, per tile [(k, hemisphere, first slice)]) of the table in `fmt`, its slices taken."""
        t = self.graph.tensors[name]
        words, split = self.chip.mem_words, self.chip.mem_words // 2
        store = Store(name, fmt, width, t.rows, None, 0, t.rows)
        groups = []
        for nt in range(self.ntiles(t.cols)):
            segs, tile = [], []
            for k in range(math.ceil(t.rows / words)):
                lo, hi = k * words, min(t.rows, (k + 1) * words)
                hemi = "WE"[(k + nt) % 2]
                first = self.fresh_slices(width, hi - lo, hemi, name)
                segs.append(Segment(lo, lo + min(hi - lo, split), first, 0))
                if hi - lo > split:
                    segs.append(Segment(lo + split, hi, first, split))
                tile.append((k, self.hemisphere_of_slice(first), first))
            store.tiles.append(segs)
            store.ready.append(0)
            groups.append(tile)
        return store, groups

    def hemisphere_of_slice(self, s: int) -> str:
        return "W" if s < self.chip.mem_slices // 2 else "E"

    def fresh_slices(self, width: int, count: int, hemisphere: str, name: str) -> int:
        """`width` consecutive slices of one hemisphere (this one first) whose addresses 0..count-1 nobody has
        taken (nor kept for the SXM), taken now: the first slice. The innermost such group first (HF BERT-base:
        1,016,563 cycles against 1,020,579 from the outermost, without plane shares)."""
        sram, half, split = self.sram, self.chip.mem_slices // 2, self.chip.mem_words // 2

        def fresh(s):
            return s not in sram.reserved and sram.next[s][0] == 0 and (count <= split or sram.next[s][1] == split)
        for hemi in (hemisphere, "E" if hemisphere == "W" else "W"):
            base = 0 if hemi == "W" else half
            for first in range(base, base + half - width + 1):
                if all(fresh(s) for s in range(first, first + width)):
                    for s in range(first, first + width):
                        sram.next[s][0] = min(count, split)
                        if count > split:
                            sram.next[s][1] = count
                    sram.bytes_used += width * count * self.lanes
                    self.lookup_bytes += width * count * self.lanes
                    return first
        raise OutOfSram(f"out of SRAM: the lookup table '{name}' needs {width} fresh slices for {count} rows from "
                        f"address 0 and none are left ({sram.bytes_used} of {self.chip.sram_bytes} bytes placed)")

    # ----- the job ----------------------------------------------------------------------------------------
    def schedule_lookup(self, node, sinks: dict[str, Store]) -> None:
        ids_name, table_name = node.sources[0].tensor, node.sources[1].tensor
        table = self.stores[(table_name, "f32")]
        ids = self.stores[(ids_name, "i32")]
        out = self.graph.tensors[node.output]
        n = out.rows
        for fmt in sinks:
            if fmt not in ("f32", "f16"):
                raise CompileError(f"{node.onnx_op} node '{node.name}': a table lookup is stored in f32 or f16, "
                                   f"not {fmt}")
        ids_runs = segment_runs(ids, 0, view_runs(View(ids_name), ids, None, n, 0, n))
        clamp = table.rows > U16 - self.chip.mem_words
        taken = set(self.slices_of({ids_name, table_name})) | {  # what a partial result stays off
            s for st in sinks.values() for segs in st.tiles for sg in segs
            for s in range(sg.slice, sg.slice + st.width)}
        for nt, groups in enumerate(self.lookup_groups[table_name]):
            passes = self.lookup_passes(groups, clamp, out, sinks, table.fmt)
            partial = None  # the previous pass's result, read by the next
            for p, batch in enumerate(passes):
                final = p == len(passes) - 1
                if final:
                    outs = {fmt: (st, nt, segment_runs(st, nt, view_runs(View(node.output), st, None, n, 0, n)))
                            for fmt, st in sinks.items()}
                else:
                    nxt = self.lookup_partial(n, taken)
                    outs = {"f32": (nxt, 0, segment_runs(nxt, 0, [(0, 0, n, 1)]))}
                self.lookup_pass(node, table, batch, ids, ids_runs, partial, outs, clamp)
                if partial is not None:
                    self.release_partial(partial, taken)
                partial = None if final else nxt

    def lookup_passes(self, groups, clamp: bool, out, sinks, table_fmt: str) -> list[list]:
        """The tile's groups in passes: at most two groups per hemisphere (two PERMUTEs each on four SXM queues)
        and a chain that fits the VXM's ALUs."""
        per_hemi = self.chip.config["sxm_per_hemisphere_queues"] // 2
        passes, batch = [], []
        for group in groups:
            grown = batch + [group]
            if batch and (sum(1 for g in grown if g[1] == group[1]) > per_hemi or
                          len(self.lookup_chain(grown, bool(passes), clamp, out, set(sinks), 0, table_fmt)[0]) >
                          self.chip.vxm_alus):
                passes.append(batch)
                grown = [group]
            batch = grown
        passes.append(batch)
        return passes

    def lookup_chain(self, batch, partial: bool, clamp: bool, out, formats: set, arrive: int, table_fmt: str):
        """The VXM program of one pass: [op, type, args, time] (args ("ids",) the id column, ("leaf", i) group
        i's gathered row, ("part",) the partial result, ("step", j), ("imm", v)); the step per group whose result
        goes to the SXM; the step per sink format. `arrive`: when the gathered rows reach the VXM. Rows of an f16
        table are first converted to f32 (exact; a row read as 0 stays 0)."""
        lat = self.chip.vxm_latency
        prog, to_sxm = [], {}
        for i, (k, _, _) in enumerate(batch):
            prog.append(["SUB", "i32", [("ids",), ("imm", k * self.chip.mem_words)], 0])
            if clamp:  # every map entry of another group past the slice
                prog.append(["MAX", "i32", [("step", len(prog) - 1), ("imm", -1)], lat("MAX")])
                prog.append(["MIN", "i32", [("step", len(prog) - 1), ("imm", U16 - 1)], lat("MAX") + lat("MIN")])
            to_sxm[i] = len(prog) - 1
        level, t = [("leaf", i) for i in range(len(batch))], arrive
        if table_fmt == "f16":
            for i in range(len(batch)):
                prog.append(["CVT", "f16.f32", [("leaf", i)], t])
                level[i] = ("step", len(prog) - 1)
            t += lat("CVT")
        while len(level) > 1 or (level[0][0] == "leaf" and not partial):
            nxt = []
            for j in range(0, len(level) - 1, 2):
                prog.append(["OR", "i32", [level[j], level[j + 1]], t])
                nxt.append(("step", len(prog) - 1))
            if len(level) % 2:  # the odd one (or a lone leaf) to the next level's time
                prog.append(["COPY", "i32", [level[-1]], t])
                nxt.append(("step", len(prog) - 1))
            t += lat("OR")
            level = nxt
        if partial:
            prog.append(["OR", "i32", [level[0], ("part",)], t])
            t += lat("OR")
        root = len(prog) - 1
        dest = {"f32": root} if "f32" in formats else {}
        if "f16" in formats:  # the f16 copy: the output's scale, saturation, CVT (Scheduler.timed_chain)
            prev = root
            tail = ([["MUL", "f32", [("imm", 2.0 ** -out.f16_exp)]]] if out.f16_exp else []) + \
                ([["MAX", "f32", [("imm", -65504.0)]], ["MIN", "f32", [("imm", 65504.0)]]] if out.f16_saturate
                 else []) + [["CVT", "f32.f16", []]]
            for op, ty, more in tail:
                prog.append([op, ty, [("step", prev)] + more, t])
                t += lat(op)
                prev = len(prog) - 1
            dest["f16"] = prev
        return prog, to_sxm, dest

    def lookup_partial(self, n: int, taken: set) -> Store:
        """An f32 column tile for a pass's partial result, off every slice the lookup streams."""
        st = Store("lookup partial", "f32", 4, n, None, 0, n)
        hemi = self.next_hemisphere()
        try:
            segs = self.alloc_segments(4, n, hemi, 1, taken, True)
        except OutOfSram:
            segs = self.alloc_segments(4, n, "E" if hemi == "W" else "W", 1, taken, True)
        st.tiles.append(segs)
        st.ready.append(0)
        taken.update(s for sg in segs for s in range(sg.slice, sg.slice + 4))
        return st

    def release_partial(self, st: Store, taken: set) -> None:
        for sg in st.tiles[0]:
            self.sram.release(sg.slice, st.width, sg.addr, sg.hi - sg.lo, st.last_access)
            taken.difference_update(range(sg.slice, sg.slice + st.width))

    def lookup_pass(self, node, table: Store, batch, ids: Store, ids_runs, partial: Store | None, outs: dict,
                    clamp: bool) -> None:
        """One pass (module docstring, steps 1-4) over every row of ids: `batch` the groups [(k, hemisphere,
        first slice)], `outs` format -> (store, tile, runs) written."""
        chip, res = self.chip, self.res
        n, vpos, lat = ids.rows, self.vxm_pos, chip.vxm_latency
        sxm_lat = chip.sxm_latency + chip.superlanes - 1
        rl, split = chip.mem_read_latency, chip.mem_words // 2
        dist = {h: abs(self.sxm_position(h) - vpos) for _, h, _ in batch}
        if len(set(dist.values())) != 1:
            raise CompileError("internal: the lookup's groups need both SXMs at one distance from the VXM")
        d = dist[batch[0][1]]
        prog, to_sxm, _ = self.lookup_chain(batch, partial is not None, clamp, self.graph.tensors[node.output],
                                            set(outs), 0, table.fmt)
        emit = {i: prog[j][3] + lat(prog[j][0]) for i, j in to_sxm.items()}
        if len(set(emit.values())) != 1:
            raise CompileError("internal: the lookup's maps leave the VXM at different cycles")
        arrive = emit[0] + d + sxm_lat + rl + d
        prog, to_sxm, dest = self.lookup_chain(batch, partial is not None, clamp, self.graph.tensors[node.output],
                                               set(outs), arrive, table.fmt)
        part_runs = segment_runs(partial, 0, [(0, 0, n, 1)]) if partial is not None else None
        commits = []

        def build(base):
            commits.clear()
            alus = {}
            for j, (op, _, _, tj) in enumerate(prog):  # an ALU per step, holding each row until it is read
                t = base + tj
                span = (t, t + n - 1 + lat(op))
                busy = [res.queue_busy_until(q, *span) for q in self.alu_queues]
                alu = next((a for a, b in enumerate(busy) if b is None), None)
                if alu is None:
                    raise Clash(min(busy) + 1 - tj)
                res.take_queue(f"VXM.{alu}", span[0], span[1], tj)
                alus[j] = alu
            streams = {("ids",): self.read_view(ids, 0, ids_runs, vpos, base, 1, base)}
            dst = {}
            zero = {}
            for i, (_, h, first) in enumerate(batch):
                sx = self.sxm_position(h)
                out_dir = "W" if sx < vpos else "E"
                in_dir = "E" if out_dir == "W" else "W"
                e = base + emit[i]
                x = e + d  # the map entry reaches the SXM: PERMUTE
                g = self.take_group(out_dir, [[(vpos, e, 1, n, sx)]] * 4, base)
                dst[to_sxm[i]] = f"{out_dir}{g}"
                if h not in zero:  # one read of the zero map serves every PERMUTE of the hemisphere
                    zmap = self.map_store(("zero",), lambda: [np.zeros(self.lanes)], h, 0)
                    zero[h] = self.read_view(zmap, 0, segment_runs(zmap, 0, [(0, 0, n, 0)]), sx, x, 1, base)
                m = self.take_group(in_dir, [[(sx, x + sxm_lat, 1, n, self.mem_pos[first])]] * 2, base)
                for b in range(2):
                    q = self.take_sxm_queue(h, x, n)
                    res.add_issue(Issue(q, x, f"PERMUTE {in_dir}{m + b}, {out_dir}{g + b}, {zero[h]}", n, 1, 0,
                                        x + n - 1 + sxm_lat))
                slices = range(first, first + table.width)
                at = {s: x + sxm_lat + abs(self.mem_pos[s] - sx) for s in slices}
                for s in slices:
                    res.take_queue(self.mem_queue[s], at[s], at[s] + n - 1, at[s] - base)
                    res.take_ports(s, 0, at[s], n, 1, 0)
                    res.take_ports(s, split, at[s], n, 1, 0)
                gd = self.take_group(in_dir, [[(self.mem_pos[s], at[s] + rl, 1, n, vpos)] for s in slices], base)
                for b, s in enumerate(slices):
                    res.add_issue(Issue(self.mem_queue[s], at[s], f"GATHER {in_dir}{gd + b}, {in_dir}{m}", n, 1,
                                        0, at[s] + rl + n - 1))
                self.accesses.append((table, max(at.values()) + n - 1))
                streams[("leaf", i)] = f"{in_dir}{gd}"
            for j, (op, ty, args, tj) in enumerate(prog):
                t = base + tj
                operands = []
                for a in args:
                    if a[0] == "imm":
                        operands.append(_imm(a[1], ty))
                    elif a[0] == "step":
                        operands.append(f"R{alus[a[1]]}")
                    elif a[0] == "part":
                        operands.append(self.read_view(partial, 0, part_runs, vpos, t, 1, base))
                    else:
                        operands.append(streams[a])
                target = dst.get(j, "-")
                for fmt, k in dest.items():
                    if k == j:
                        st, tile, runs = outs[fmt]
                        target, last = self.write_view(st, runs, vpos, t + lat(op), base)
                        commits.append((st, tile, last))
                res.add_issue(Issue(f"VXM.{alus[j]}", t, f"{op}.{ty} {target}, {', '.join(operands)}", n, 1, 0,
                                    t + n - 1 + lat(op)))
            return base

        lower = max(ids.ready[0], partial.ready[0] if partial is not None else 0)
        self.place(lower, build, f"the table lookup of {node.onnx_op} node '{node.name}'")
        for st, tile, last in commits:  # readable once the last row is committed
            st.ready[tile] = max(st.ready[tile], last + 1)
