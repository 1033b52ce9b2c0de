"""Static scheduling: every instruction of every queue placed at its cycle, with SRAM and streams allocated.

Jobs are placed greedily in program order at the earliest cycle where all their resources are free:
* `load_weights`: one 320-row weight tile from MEM into a plane's weight buffer (LW), then IW.
* `stream_activations`: the ABCs of one K tile: activation rows from MEM through the installed weights.
* `vector_pipeline`: a VXM chain over MEM tiles and/or a plane's accumulators, results written back to MEM.
Timing comes from the chip configuration alone (section 8 of docs/isa.md); the simulator must then reproduce the
predicted cycle count exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lpusim.compiler.ir import Graph, Node, Step
from lpusim.compiler.resources import Clash, Issue, Reservations, SramAllocator
from lpusim.errors import CompileError

WIDTH = {"f32": 4, "f16": 2, "i8": 1, "u8": 1, "i32": 4}
# How far past a job's lower bound the scheduler searches before declaring the schedule impossible.
SEARCH_LIMIT = 200_000


@dataclass
class Loc:
    """Where one column tile of a tensor lives: byte plane b of row m is at slice `slice + b`, address `addr + m`."""

    slice: int
    addr: int
    width: int
    rows: int
    ready: int = 0  # first cycle a READ of this tile sees the data


@dataclass
class PlaneState:
    name: str
    lw_free: int = 0  # first cycle an LW may load the (empty) weight buffer
    last_abc: int = -1  # last ABC issue on the installed weights
    busy_until: int = 0  # first cycle the array accepts another ABC
    installed_at: int = 0
    acc_free: list = field(default_factory=list)  # per accumulator block: first cycle it may be overwritten


@dataclass
class Schedule:
    issues: list[Issue]
    static_init: list[tuple[int, int, np.ndarray]]  # (slice, addr, uint8 [n, lanes]) loaded before the run
    inputs: dict[str, list[Loc]]  # IR input tensor -> its f32 column tiles
    outputs: dict[str, list[Loc]]  # IR output tensor -> its f32 column tiles
    predicted_cycles: int
    sram_bytes: int


def byte_planes(values: np.ndarray, dtype: str, lanes: int) -> list[np.ndarray]:
    """A [rows, <=lanes] array as `width` uint8 [rows, lanes] byte planes (little endian), zero padded."""
    np_type = {"f32": "<f4", "f16": "<f2", "i32": "<i4", "i8": "i1", "u8": "u1"}[dtype]
    rows = values.shape[0]
    padded = np.zeros((rows, lanes), dtype=np_type)
    padded[:, :values.shape[1]] = values.astype(np_type)
    raw = padded.view(np.uint8).reshape(rows, lanes, WIDTH[dtype])
    return [np.ascontiguousarray(raw[:, :, b]) for b in range(WIDTH[dtype])]


def stream_name(direction: str, index: int) -> str:
    return f"{direction}{index}"


def _imm(value: float) -> str:
    return "#" + repr(float(np.float32(value)))


class Scheduler:
    def __init__(self, chip, graph: Graph, progress=None):
        self.chip = chip
        self.graph = graph
        self.res = Reservations(chip)
        self.sram = SramAllocator(chip)
        self.locs: dict[tuple[str, str], list[Loc]] = {}
        self.static_init: list = []
        self.planes = {p: PlaneState(p) for p in chip.plane_names}
        self.lanes = chip.lanes
        self.vxm_pos = chip.vxm_position
        self.progress = progress
        self.hemi_turn = 0

    # ----- helpers --------------------------------------------------------------------------------------
    def ntiles(self, cols: int) -> int:
        return max(1, math.ceil(cols / self.lanes))

    def place(self, lower: int, build, what: str):
        """Run `build(t)` at the first t >= lower where it fits; each failed try is rolled back."""
        t = max(0, lower)
        while True:
            self.res.begin()
            try:
                result = build(t)
            except Clash as clash:
                self.res.rollback()
                t = max(t + 1, clash.retry_at or 0)
                if t - lower > SEARCH_LIMIT:
                    raise CompileError(f"could not schedule {what} within {SEARCH_LIMIT} cycles of its "
                                       f"earliest start (resources stay taken)") from None
                continue
            self.res.commit()
            return result

    def mem_burst(self, op: str, loc: Loc, plane_b: int, addr: int, issue_cycle: int, n: int, d: int,
                  stride: int, stream: str, base_cycle: int):
        """A READ or WRITE burst on one slice: queue, bank ports, the instruction."""
        s = loc.slice + plane_b
        queue = self.chip.mem_name(s)
        end = issue_cycle + (n - 1) * d
        self.res.take_queue(queue, issue_cycle, end, issue_cycle - base_cycle)
        lat = self.chip.mem_read_latency if op == "READ" else self.chip.mem_write_latency
        port_cycle = issue_cycle if op == "READ" else issue_cycle + lat
        self.res.take_ports(s, addr, port_cycle, n, d, stride)
        self.res.add_issue(Issue(queue, issue_cycle, f"{op} {addr}, {stream}", n, d, stride, end + lat))

    def read_to(self, loc: Loc, row_addr: int, dest_pos: int, arrive: int, n: int, d: int, stride: int,
                base: int, direction: str | None = None) -> str:
        """READ bursts of all byte planes of `loc` so that row i arrives at `dest_pos` at `arrive + i*d`.

        Returns the stream group name (first stream) the vectors travel on."""
        transfers_per_plane = []
        for b in range(loc.width):
            pos = self.chip.mem_position(loc.slice + b)
            if pos == dest_pos:
                raise CompileError("internal: a MEM slice cannot stream to its own position")
            issue = arrive - self.chip.mem_read_latency - abs(dest_pos - pos)
            if issue < loc.ready:  # the tile is not written yet: try again once it is
                raise Clash(base + (loc.ready - issue))
            emit = issue + self.chip.mem_read_latency
            transfers_per_plane.append([(pos, emit + i * d, dest_pos) for i in range(n)])
        positions = [self.chip.mem_position(loc.slice + b) for b in range(loc.width)]
        dirs = {"E" if dest_pos > p else "W" for p in positions}
        if len(dirs) != 1:
            raise CompileError("internal: byte planes of one tile on both sides of the reader")
        direction = dirs.pop()
        base_stream = self._take_group(direction, transfers_per_plane)
        for b in range(loc.width):
            pos = positions[b]
            issue = arrive - self.chip.mem_read_latency - abs(dest_pos - pos)
            self.mem_burst("READ", loc, b, row_addr, issue, n, d, stride, stream_name(direction, base_stream + b), base)
        return stream_name(direction, base_stream)

    def _take_group(self, direction, transfers_per_plane) -> int:
        """Consecutive streams, stream b carrying transfers_per_plane[b]."""
        limit = self.chip.streams_per_direction
        width = len(transfers_per_plane)
        for start in range(0, limit - width + 1):
            if all(self.res.stream_free(direction, start + b, transfers_per_plane[b]) for b in range(width)):
                for b in range(width):
                    self.res.take_stream(direction, start + b, transfers_per_plane[b])
                return start
        raise Clash(None)

    # ----- SRAM placement -------------------------------------------------------------------------------
    def hemisphere_for_values(self) -> str:
        self.hemi_turn ^= 1
        return "WE"[self.hemi_turn]

    def alloc_tiles(self, tensor: str, fmt: str, hemisphere: str | None = None, bank: int = 1) -> list[Loc]:
        t = self.graph.tensors[tensor]
        locs = []
        for _ in range(self.ntiles(t.cols)):
            s, a = self.sram.alloc(WIDTH[fmt], t.rows, hemisphere or self.hemisphere_for_values(), bank)
            locs.append(Loc(s, a, WIDTH[fmt], t.rows))
        self.locs[(tensor, fmt)] = locs
        return locs

    def place_constant(self, tensor: str, fmt: str = "f32") -> list[Loc]:
        t = self.graph.tensors[tensor]
        locs = self.alloc_tiles(tensor, fmt, bank=0)
        for nt, loc in enumerate(locs):
            cols = t.data[:, nt * self.lanes:(nt + 1) * self.lanes]
            for b, plane in enumerate(byte_planes(cols, fmt, self.lanes)):
                self.static_init.append((loc.slice + b, loc.addr, plane))
        return locs

    # ----- MXM jobs -------------------------------------------------------------------------------------
    def weight_tile(self, plane: str, w: np.ndarray, kt: int, nt: int, slots: int):
        """Store W[kt, nt] (f16) as `slots` row slots of 2 slices; row r of the tile is in slot r % slots."""
        block = w[kt * self.lanes:(kt + 1) * self.lanes, nt * self.lanes:(nt + 1) * self.lanes]
        k_valid = block.shape[0]
        issues = math.ceil(k_valid / slots)
        padded = np.zeros((issues * slots, block.shape[1]), dtype=np.float32)
        padded[:k_valid] = block
        hemi = self.chip.plane_hemisphere(plane)
        used: set[int] = set()
        locs = []
        for j in range(slots):
            s, a = self.sram.alloc(2, issues, hemi, 0, avoid=used)
            used.update((s, s + 1))
            loc = Loc(s, a, 2, issues)
            for b, planeb in enumerate(byte_planes(padded[j::slots], "f16", self.lanes)):
                self.static_init.append((s + b, a, planeb))
            locs.append(loc)
        return locs, issues

    def load_weights(self, plane: str, slot_locs: list[Loc], issues: int, lower: int) -> int:
        st = self.planes[plane]
        pos = self.chip.plane_position(plane)
        slots = len(slot_locs)
        direction = "W" if self.chip.plane_hemisphere(plane) == "W" else "E"

        def build(t):
            self.res.take_queue(f"MXM.{plane}.LW", t, t + issues - 1, 0)
            # one block of 2*slots consecutive streams; slot j byte b on stream base + 2j + b
            per_stream = []
            for j, loc in enumerate(slot_locs):
                for b in range(2):
                    p = self.chip.mem_position(loc.slice + b)
                    emit = t - abs(pos - p)
                    per_stream.append([(p, emit + i, pos) for i in range(issues)])
            for j, loc in enumerate(slot_locs):
                for b in range(2):
                    p = self.chip.mem_position(loc.slice + b)
                    if (p > pos) != (direction == "W"):
                        raise CompileError("internal: weight slice on the wrong side of its plane")
            base = self._take_group(direction, per_stream)
            for j, loc in enumerate(slot_locs):
                for b in range(2):
                    p = self.chip.mem_position(loc.slice + b)
                    issue = t - self.chip.mem_read_latency - abs(pos - p)
                    self.mem_burst("READ", loc, b, loc.addr, issue, issues, 1, 1,
                                   stream_name(direction, base + 2 * j + b), t)
            self.res.add_issue(Issue(f"MXM.{plane}.LW", t, f"LW.f16 {stream_name(direction, base)}, {slots}",
                                     issues, 1, 0, t + issues - 1))
            return t

        t_lw = self.place(max(lower, st.lw_free), build, f"the weight load of plane {plane}")
        # IW once the buffer is full and the previous weights have met their last activation
        iw_lower = max(t_lw + issues, st.last_abc + 1)

        def build_iw(t):
            self.res.take_queue(f"MXM.{plane}.IW", t, t, 0)
            self.res.add_issue(Issue(f"MXM.{plane}.IW", t, "IW", last_effect=t + self.chip.mxm_install_latency))
            return t

        t_iw = self.place(iw_lower, build_iw, f"the weight install of plane {plane}")
        st.installed_at = t_iw + self.chip.mxm_install_latency
        st.lw_free = t_iw + self.chip.mxm_install_latency + 1
        return t_iw

    def stream_activations(self, plane: str, x: Loc, acc_row: int, accumulate: bool) -> int:
        st = self.planes[plane]
        pos = self.chip.plane_position(plane)
        cpv = self.chip.cycles_per_vector("f16")
        m = x.rows
        lower = max(st.installed_at, st.busy_until)

        def build(t):
            self.res.take_queue(f"MXM.{plane}.ABC", t, t + (m - 1) * cpv, 0)
            stream = self.read_to(x, x.addr, pos, t, m, cpv, 1, t)
            plus = ", +" if accumulate else ""
            self.res.add_issue(Issue(f"MXM.{plane}.ABC", t, f"ABC.f16 {stream}, {acc_row}{plus}", m, cpv, 1,
                                     t + (m - 1) * cpv + self.chip.mxm_latency))
            return t

        lower = max(lower, x.ready + self.chip.mem_read_latency + 1)
        t = self.place(lower, build, f"the activations of plane {plane}")
        st.last_abc = t + (m - 1) * cpv
        st.busy_until = st.last_abc + cpv
        return t

    # ----- VXM pipelines --------------------------------------------------------------------------------
    def timed_chain(self, node: Node, sinks: set[str]):
        """Steps with relative issue times and delays so every register is read in the cycle it is written.

        Returns (steps, rel_times, dest_step_for_format). A source used more than once is first copied into a
        register, so each MEM tile or accumulator is streamed exactly once per row."""
        steps = [Step(s.op, list(s.args)) for s in node.steps] or [Step("COPY", [("acc",)])]
        refs: dict[tuple, int] = {}
        for s in steps:
            for a in s.args:
                if a[0] in ("src", "acc"):
                    refs[a] = refs.get(a, 0) + 1
        multi = [a for a, n in refs.items() if n > 1]
        if multi:
            pre = [Step("COPY", [a]) for a in multi]
            shift = len(pre)
            remapped = []
            for s in steps:
                args = []
                for a in s.args:
                    if a in multi:
                        args.append(("step", multi.index(a)))
                    elif a[0] == "step":
                        args.append(("step", a[1] + shift))
                    else:
                        args.append(a)
                remapped.append(Step(s.op, args))
            steps = pre + remapped
        last = len(steps) - 1
        if sinks == {"f16"} and steps[last].op == "COPY":
            steps[last] = Step("CVT", steps[last].args)
            dest = {"f16": last}
        else:
            dest = {"f32": last} if "f32" in sinks else {}
            if "f16" in sinks:
                steps.append(Step("CVT", [("step", last)]))
                dest["f16"] = len(steps) - 1
        lat = lambda op: self.chip.vxm_alu_latency if op == "CVT" else self.chip.vxm_latency(op)
        reachable = self._delay_table(lat)
        times: list[int] = []
        out: list[Step] = []
        index_map = {}
        for j, s in enumerate(steps):
            regs = [index_map[a[1]] for a in s.args if a[0] == "step"]
            t = max([times[k] + lat(out[k].op) for k in regs], default=0)
            while any((t - times[k] - lat(out[k].op)) not in reachable for k in regs):
                t += 1
            args = []
            for a in s.args:
                if a[0] != "step":
                    args.append(a)
                    continue
                k = index_map[a[1]]
                gap = t - times[k] - lat(out[k].op)
                for op in reachable[gap]:  # delay line: COPY / MUL by 1 steps
                    out.append(Step(op, [("step", k)] + ([("imm", 1.0)] if op == "MUL" else [])))
                    times.append(times[k] + lat(out[k].op))
                    k = len(out) - 1
                args.append(("step", k))
            index_map[j] = len(out)
            out.append(Step(s.op, args))
            times.append(t)
        dest = {fmt: index_map[j] for fmt, j in dest.items()}
        if len(out) > self.chip.vxm_alus:
            raise CompileError(f"{node.onnx_op} node '{node.name}': the fused chain needs {len(out)} VXM ALUs, "
                               f"the chip has {self.chip.vxm_alus}")
        return out, times, dest, lat

    def _delay_table(self, lat) -> dict[int, list[str]]:
        """Gaps a delay line can bridge exactly, with the ops that make them (0: none needed)."""
        table = {0: []}
        parts = [("COPY", lat("COPY")), ("MUL", lat("MUL"))]
        for gap in range(1, 64):
            for op, c in parts:
                if gap - c in table and (gap not in table or len(table[gap - c]) + 1 < len(table[gap])):
                    table[gap] = table[gap - c] + [op]
        return table

    def vector_pipeline(self, node: Node, nt: int, rows: int, sinks: dict[str, Loc], plane: str | None,
                        acc_row: int, acc_ready: int) -> int:
        steps, times, dest, lat = self.timed_chain(node, set(sinks))
        vpos = self.vxm_pos
        src_locs = [self.locs[(s, "f32")][nt] for s in node.sources]
        lower = 0
        for j, s in enumerate(steps):
            for a in s.args:
                if a[0] == "src":
                    loc = src_locs[a[1]]
                    far = max(abs(vpos - self.chip.mem_position(loc.slice + b)) for b in range(loc.width))
                    lower = max(lower, loc.ready + self.chip.mem_read_latency + far - times[j])
                elif a[0] == "acc":
                    dist = abs(vpos - self.chip.plane_position(plane))
                    lower = max(lower, acc_ready + self.chip.mxm_acc_latency + dist - times[j])

        commits: list[tuple[Loc, int]] = []

        def build(base):
            commits.clear()
            texts: dict[int, str] = {}
            alus: dict[int, int] = {}
            for j, s in enumerate(steps):
                t = base + times[j]
                for alu in range(self.chip.vxm_alus):
                    if self.res.queue_free_from(f"VXM.{alu}", t, t + rows - 1 + lat(s.op)):
                        break
                else:
                    raise Clash(None)
                self.res.take_queue(f"VXM.{alu}", t, t + rows - 1 + lat(s.op), times[j])
                alus[j] = alu
                operands = []
                for a in s.args:
                    if a[0] == "imm":
                        operands.append(_imm(a[1]))
                    elif a[0] == "step":
                        operands.append(f"R{alus[a[1]]}")
                    elif a[0] == "src":
                        loc = src_locs[a[1]]
                        stride = 1 if loc.rows == rows else 0
                        operands.append(self.read_to(loc, loc.addr, vpos, t, rows, 1, stride, base))
                    else:  # the accumulator of `plane`
                        ppos = self.chip.plane_position(plane)
                        direction = "E" if vpos > ppos else "W"
                        issue = t - self.chip.mxm_acc_latency - abs(vpos - ppos)
                        self.res.take_queue(f"MXM.{plane}.ACC", issue, issue + rows - 1, issue - base)
                        emit = issue + self.chip.mxm_acc_latency
                        g = self._take_group(direction, [[(ppos, emit + i, vpos) for i in range(rows)]] * 4)
                        self.res.add_issue(Issue(f"MXM.{plane}.ACC", issue,
                                                 f"ACC.f32 {acc_row}, {stream_name(direction, g)}", rows, 1, 1,
                                                 emit + rows - 1))
                        operands.append(stream_name(direction, g))
                texts[j] = operands
            for j, s in enumerate(steps):
                t = base + times[j]
                dst = "-"
                for fmt, k in dest.items():
                    if k == j:
                        dst, last_commit = self.write_from_vxm(sinks[fmt], t + lat(s.op), rows, base)
                        commits.append((sinks[fmt], last_commit))
                mnemonic = "CVT.f32.f16" if s.op == "CVT" else f"{s.op}.f32"
                self.res.add_issue(Issue(f"VXM.{alus[j]}", t, f"{mnemonic} {dst}, {', '.join(texts[j])}",
                                         rows, 1, 0, t + rows - 1 + lat(s.op)))
            return base

        base = self.place(lower, build, f"the VXM chain of {node.onnx_op} node '{node.name}'")
        for loc, last_commit in commits:  # readable once the last row is committed
            loc.ready = max(loc.ready, last_commit + 1)
        return base

    def write_from_vxm(self, loc: Loc, emit: int, rows: int, base: int) -> str:
        vpos = self.vxm_pos
        positions = [self.chip.mem_position(loc.slice + b) for b in range(loc.width)]
        direction = "E" if positions[0] > vpos else "W"
        per_plane = [[(vpos, emit + i, p) for i in range(rows)] for p in positions]
        g = self._take_group(direction, per_plane)
        last_commit = 0
        for b, p in enumerate(positions):
            issue = emit + abs(p - vpos)
            self.mem_burst("WRITE", loc, b, loc.addr, issue, rows, 1, 1, stream_name(direction, g + b), base)
            last_commit = max(last_commit, issue + rows - 1 + self.chip.mem_write_latency)
        return stream_name(direction, g), last_commit

    # ----- whole graph ----------------------------------------------------------------------------------
    def run(self) -> Schedule:
        g = self.graph
        for name in g.inputs:
            self.alloc_tiles(name, "f32")
        for name, t in g.tensors.items():
            if t.kind == "const" and "f32" in t.formats:
                self.place_constant(name)
        for i, node in enumerate(g.nodes):
            if self.progress:
                self.progress(i, len(g.nodes), node)
            out = g.tensors[node.output]
            sinks = {fmt: self.alloc_tiles(node.output, fmt) for fmt in sorted(out.formats)}
            if node.kind == "matmul":
                self.schedule_matmul(node, sinks)
            else:
                for nt in range(self.ntiles(out.cols)):
                    self.vector_pipeline(node, nt, out.rows, {f: l[nt] for f, l in sinks.items()}, None, 0, 0)
        issues = self.res.issues
        last = max((iss.last_effect for iss in issues), default=-1)
        predicted = 0 if not issues else last + 1 + self.chip.superlanes - 1
        return Schedule(issues, self.static_init, {n: self.locs[(n, "f32")] for n in g.inputs},
                        {n: self.locs[(n, "f32")] for n in g.outputs}, predicted,
                        self.sram.bytes_used)

    def schedule_matmul(self, node: Node, sinks: dict[str, list[Loc]]) -> None:
        g = self.graph
        x_tiles = self.locs[(node.x, "f16")]
        w = g.tensors[node.w].data
        out = g.tensors[node.output]
        rows = out.rows
        kt_count, nt_count = self.ntiles(w.shape[0]), self.ntiles(w.shape[1])
        slots = 8  # 8 rows of 2 bytes a cycle: 16 of the 32 streams, so two planes of a hemisphere load at once
        acc_block_rows = rows
        blocks = self.chip.mxm_acc_rows // acc_block_rows
        if blocks < 1:
            raise CompileError(f"{node.onnx_op} node '{node.name}': {rows} rows exceed the "
                               f"{self.chip.mxm_acc_rows} accumulator rows of a plane (batching larger than "
                               f"that is not supported yet)")
        for nt in range(nt_count):
            plane = min(self.planes.values(), key=lambda p: (p.lw_free, p.name)).name
            st = self.planes[plane]
            if not st.acc_free:
                st.acc_free = [0] * blocks
            block = min(range(blocks), key=lambda b: st.acc_free[b])
            acc_row = block * acc_block_rows
            for kt in range(kt_count):
                slot_locs, issues = self.weight_tile(plane, w, kt, nt, slots)
                self.load_weights(plane, slot_locs, issues, 0)
                if kt == 0:
                    # the first ABC overwrites the block: only after its previous reader is done
                    st.installed_at = max(st.installed_at, st.acc_free[block] - self.chip.mxm_latency + 1)
                t_abc = self.stream_activations(plane, x_tiles[kt], acc_row, accumulate=kt > 0)
            cpv = self.chip.cycles_per_vector("f16")
            acc_ready = t_abc + self.chip.mxm_latency + (rows - 1) * (cpv - 1)
            self.vector_pipeline(node, nt, rows, {f: l[nt] for f, l in sinks.items()}, plane, acc_row, acc_ready)
            last_acc = max(i.cycle + i.n - 1 for i in self.res.issues if i.queue == f"MXM.{plane}.ACC")
            st.acc_free[block] = last_acc + 1
