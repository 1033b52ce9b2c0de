"""The reference interpreter: a literal, cycle-by-cycle reading of docs/isa.md.

Streams are an explicit dict keyed by (direction, stream, position) holding 320-byte vectors; every simulated
cycle they are really shifted one position toward their edge (idle cycles are skipped by shifting several
positions at once). An emit at cycle t from position p is written into the register at p after the cycle's issue
step, so readers at p + d (east) see it at t + d and the emitter never does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .asm import Imm, Instruction, Program, Reg, ReferenceAssemblyError, Stream, assemble
from .config import TSP_V1, Floorplan, send_interval_cycles
from .numerics import (
    BITS_DTYPE,
    NP_DTYPE,
    VXM_TRANSCENDENTAL,
    WIDTH,
    convert_element,
    round_to_float_bits,
    vxm_op,
)


class ReferenceSimulationError(Exception):
    """A run-time error: kind, cycle, queue, index (in its queue) and instruction text (docs/isa.md section 5)."""

    def __init__(self, kind: str, cycle: int, queue: str, index: int, instruction: str, detail: str):
        self.kind = kind
        self.cycle = cycle
        self.queue = queue
        self.index = index
        self.instruction = instruction
        self.detail = detail
        super().__init__(f"cycle {cycle}: {queue} #{index} '{instruction}': {kind}: {detail}")


# the energy events of a run, in the Rust core's order (docs/isa.md "Energy events")
EVENTS = ("mxm_int8_vectors", "mxm_fp16_vectors", "mxm_weight_vectors", "mem_read_vectors", "mem_write_vectors",
          "stream_hops", "vxm_ops", "vxm_transcendental_ops", "sxm_ops", "c2c_vectors", "instructions")

# order of the non-emit effects within step 1 of a cycle (docs/isa.md section 3); C2C arrivals are last (chosen)
EFFECT_ORDER = {"mem_commit": 0, "mxm_acc": 1, "mxm_install": 2, "vxm_reg": 3, "c2c_arrival": 4}


@dataclass
class Who:
    """The issued instruction an effect or error belongs to."""
    queue: str
    qindex: int
    index: int
    text: str
    seq: int  # global issue sequence number (issue order)


@dataclass
class Plane:
    buffer: list = field(default_factory=list)  # rows: uint bit arrays (320,)
    buffer_type: str | None = None
    weights_type: str | None = None             # None: zero weights that accept any type (9.7)
    weights: np.ndarray | None = None           # (mxm_dim, lanes) element bits
    busy_until: int = -1                        # last cycle the plane is busy with an ABC
    rows: dict = field(default_factory=dict)    # row -> AccRow


@dataclass
class AccRow:
    kind: str            # 'int' (i8/u8 products, exact integers) or 'f16' (integer counts of 2^-48)
    values: list         # Python ints, one per lane
    special: list        # f16 rows: None / 'nan' / '+inf' / '-inf' per lane


@dataclass
class QueueState:
    name: str
    qindex: int
    unit: str
    position: int
    program: list
    pc: int = 0
    c: int | None = 0                 # next issue cycle; None when parked
    parked_at: int | None = None
    sync_index: int | None = None
    last_issue: int | None = None     # cycle the previous issuing instruction issued
    repeat: list | None = None        # [base instruction, REPEAT index, i, n, d, s, c0]
    issues: int = 0


class Interpreter:
    def __init__(self, prog: Program, config: dict, timing_only: bool = False):
        self.prog = prog
        self.cfg = config
        self.fp = Floorplan(config)
        self.timing_only = timing_only
        self.lanes = config["lanes"]
        self.superlanes = config["superlanes"]
        self.lanes_per_superlane = self.lanes // self.superlanes
        self.streams: dict = {}           # (dir, stream, position) -> np.uint8 (lanes,)
        self.t_shifted = 0                # the streams dict reflects readers' view at this cycle
        self.mem: dict = {}               # (global slice, address) -> np.uint8 (lanes,)
        self.ports: dict = {}             # (global slice, bank, cycle) -> Who
        self.regs: list = [None] * config["vxm_alus_per_lane"]  # (bits uint32 (lanes,), tag)
        self.planes = {f"{s}{i}": Plane() for s in "WE" for i in range(self.fp.planes_half)}
        self.effects: dict = {}           # cycle -> list of (order, qindex, seq, fn, who)
        self.emits: dict = {}             # cycle -> list of (qindex, seq, dir, stream, position, vector, who)
        self.links: dict = {}             # src link -> (dst link, latency)
        self.rx: dict = {}                # dst link -> list of (vector, who, arrival cycle)
        self.link_dsts: set = set()
        self.link_free: dict = {}         # src link -> first cycle it may SEND again (one flit per interval)
        self.send_interval = send_interval_cycles(config)
        self.last_activity = -1
        self.seq = 0
        self.busy = {u: 0 for u in ("mem", "vxm", "mxm", "sxm", "c2c", "icu")}
        # energy events (docs/isa.md "Energy events"); vxm_ops, sxm_ops and instructions are filled in by `run`
        self.events = {k: 0 for k in EVENTS}
        self.configs: list = []           # CONFIG issues: {"cycle", "queue", "mask"}
        for ln in prog.links:
            if ln.src in self.links:
                raise ReferenceAssemblyError(ln.line, f"link {ln.src} is connected twice")
            self.links[ln.src] = (ln.dst, ln.latency)
            self.link_dsts.add(ln.dst)
            self.rx.setdefault(ln.dst, [])
        self.queues = []
        for qi, name in enumerate(self.fp.queue_names):
            self.queues.append(QueueState(name, qi, self.fp.queue_units[qi], self.fp.queue_positions[qi],
                                          prog.queues.get(name, [])))

    # ------------------------------------------------------------------------------------------------ streams
    def shift_streams_to(self, t: int):
        """Move every in-flight value (t - t_shifted) positions toward its edge; values past the edge fall off."""
        k = t - self.t_shifted
        if k <= 0:
            return
        moved = {}
        for (d, s, p), v in self.streams.items():
            q = p + k if d == "E" else p - k
            if 0 <= q < self.fp.num_positions:
                moved[(d, s, q)] = v
                self.events["stream_hops"] += k
            else:  # it reaches the edge, then falls off
                self.events["stream_hops"] += self.to_edge(d, p)
        self.streams = moved
        self.t_shifted = t

    def to_edge(self, d: str, p: int) -> int:
        """Positions a value at p still travels before it falls off the chip."""
        return self.fp.num_positions - 1 - p if d == "E" else p

    def read_stream(self, who: Who, t: int, d: str, s: int, pos: int) -> np.ndarray:
        v = self.streams.get((d, s, pos))
        if v is None:
            self.fail("StreamEmpty", t, who, f"no value passes stream {d}{s} at position {pos}")
        return v

    def read_group(self, who: Who, t: int, S: Stream, width: int, pos: int) -> np.ndarray:
        """A stream group of `width`-byte elements as unsigned element bits (lanes,)."""
        planes = [self.read_stream(who, t, S.direction, S.index + b, pos) for b in range(width)]
        return np.ascontiguousarray(np.stack(planes, axis=1)).view(BITS_DTYPE[width]).reshape(self.lanes).copy()

    def emit_group(self, who: Who, t_emit: int, S: Stream, width: int, pos: int, elems: np.ndarray):
        """Schedule the emit of a group of `width`-byte element bits at t_emit from position pos."""
        b = np.ascontiguousarray(np.asarray(elems).astype(BITS_DTYPE[width])).view(np.uint8).reshape(self.lanes, width)
        for i in range(width):
            self.schedule_emit(who, t_emit, S.direction, S.index + i, pos, b[:, i].copy())

    def schedule_emit(self, who: Who, t_emit: int, d: str, s: int, pos: int, vec: np.ndarray):
        self.emits.setdefault(t_emit, []).append((who.qindex, who.seq, d, s, pos, vec, who))

    def schedule(self, who: Who, t_eff: int, kind: str, fn):
        self.effects.setdefault(t_eff, []).append((EFFECT_ORDER[kind], who.qindex, who.seq, fn, who))

    # ------------------------------------------------------------------------------------------------ errors
    def fail(self, kind: str, t: int, who: Who, detail: str):
        raise ReferenceSimulationError(kind, t, who.queue, who.index, who.text, detail)

    # ------------------------------------------------------------------------------------------------ memory
    def mem_check(self, who: Who, t: int, a: int):
        words = self.cfg["mem_words"]
        if not 0 <= a < words:
            self.fail("AddressOutOfRange", t, who, f"address {a} is outside 0..{words - 1}")

    def use_port(self, who: Who, t: int, g: int, bank: int):
        key = (g, bank, t)
        if key in self.ports:
            other = self.ports[key]
            self.fail("BankConflict", t, who,
                      f"bank {bank} of {self.fp.mem_name(g)} is already used at cycle {t} by {other.queue} "
                      f"#{other.index} '{other.text}'")
        self.ports[key] = who

    def bank(self, a: int) -> int:
        return 0 if a < self.cfg["mem_words"] // 2 else 1

    def mem_get(self, g: int, a: int) -> np.ndarray:
        v = self.mem.get((g, a))
        return np.zeros(self.lanes, np.uint8) if v is None else v

    # ------------------------------------------------------------------------------------------------ run
    def issue_cycle(self, q: QueueState):
        """The next cycle this queue issues at (consuming NOPs and starting REPEATs), or None."""
        while q.repeat is None and q.c is not None and q.pc < len(q.program):
            ins = q.program[q.pc]
            if ins.op == "NOP":
                q.c += ins.operands[0]
                q.pc += 1
            elif ins.op == "REPEAT":
                n, d, s = ins.operands
                q.repeat = [q.program[q.pc - 1], q.pc - 1, 1, n, d, s, q.last_issue]
            else:
                break
        if q.repeat is not None:
            base, _, i, n, d, s, c0 = q.repeat
            return c0 + i * d
        if q.c is None or q.pc >= len(q.program):
            return None
        return q.c

    def run(self):
        while True:
            cands = [c for c in (self.issue_cycle(q) for q in self.queues) if c is not None]
            cands += list(self.effects) + list(self.emits)
            if not cands:
                break
            t = min(cands)
            self.shift_streams_to(t)
            # 1. effects that are not emits
            for order, qi, seq, fn, who in sorted(self.effects.pop(t, []), key=lambda e: e[:3]):
                fn(t)
                self.last_activity = t
            # 2. issue, in queue index order
            notified = False
            for q in self.queues:
                if self.issue_cycle(q) == t:
                    notified |= self.issue(q, t)
            if notified:
                for q in self.queues:
                    if q.parked_at is not None and q.parked_at <= t:
                        q.parked_at = None
                        q.c = t + self.cfg["icu_notify_latency"]
            # 3. stream emits
            written = {}
            for qi, seq, d, s, pos, vec, who in sorted(self.emits.pop(t, []), key=lambda e: e[:2]):
                key = (d, s, pos)
                if key in written:
                    other = written[key]
                    self.fail("StreamConflict", t, who,
                              f"stream {d}{s} at position {pos} is already written at cycle {t} by {other.queue} "
                              f"#{other.index} '{other.text}'")
                written[key] = who
                self.streams[key] = vec
                self.last_activity = t
        # values still on the streams travel on to the edge after the program ends (stream_hops counts them)
        for (d, s, p) in self.streams:
            self.events["stream_hops"] += self.to_edge(d, p)
        self.streams = {}
        # the end: parked queues, unreceived vectors
        for q in self.queues:
            if q.parked_at is not None:
                ins = q.program[q.sync_index]
                raise ReferenceSimulationError("Deadlock", q.parked_at, q.name, q.sync_index, ins.text,
                                               "the queue is parked by SYNC and no queue is left to NOTIFY it")
        for dst in sorted(self.rx):
            if self.rx[dst]:
                vec, who, arrival = self.rx[dst][0]
                raise ReferenceSimulationError(
                    "LinkUnreceived", arrival, who.queue, who.index, who.text,
                    f"{len(self.rx[dst])} vector(s) sent to link {dst} were never received")

    def issue(self, q: QueueState, t: int) -> bool:
        """Issue q's next instruction at t. Returns True for a NOTIFY."""
        if q.repeat is not None:
            base, base_index, i, n, d, s, c0 = q.repeat
            ins = base.with_address_offset(i * s)   # the effective instruction of repetition i
            index, text = base_index, base.text      # errors name the repeated instruction as written (9.1)
            if i >= n:
                q.repeat = None
                q.pc += 1
                q.c = c0 + n * d + 1
            else:
                q.repeat[2] = i + 1
        else:
            ins = q.program[q.pc]
            index, text = q.pc, ins.text
            q.pc += 1
            q.c = t + 1
            q.last_issue = t
        self.seq += 1
        who = Who(q.name, q.qindex, index, text, self.seq)
        q.issues += 1
        self.last_activity = t
        # busy (not defined in docs/isa.md; the Rust core's definition): unit-cycles of use. Every issued ICU
        # instruction 1 (icu); READ/WRITE 1 and GATHER/SCATTER 2 (both banks) (mem); every VXM op 1; ABC its busy
        # cycles (1 int8, mxm_fp16_cycles_per_vector f16) while LW/IW/ACC count 0 (mxm); SXM 1; SEND/RECV 1.
        if ins.op in ("SYNC", "NOTIFY", "IFETCH", "CONFIG", "DESKEW", "RUNTIME_DESKEW"):
            self.busy["icu"] += 1
        elif ins.op in ("GATHER", "SCATTER"):
            self.busy["mem"] += 2
        elif ins.op == "ABC":
            self.busy["mxm"] += self.cfg["mxm_fp16_cycles_per_vector"] if ins.dtype == "f16" else 1
        elif q.unit != "mxm":
            self.busy[q.unit] += 1
        op = ins.op
        # energy events counted at issue (a faulting instruction stops the run, so its count never matters)
        if op in ("READ", "GATHER"):
            self.events["mem_read_vectors"] += 1
        elif op in ("WRITE", "SCATTER"):
            self.events["mem_write_vectors"] += 1
        elif op == "ABC":
            self.events["mxm_fp16_vectors" if ins.dtype == "f16" else "mxm_int8_vectors"] += 1
        elif op == "LW":
            self.events["mxm_weight_vectors"] += ins.operands[1] * WIDTH[ins.dtype]  # byte-plane vectors
        elif op in VXM_TRANSCENDENTAL:
            self.events["vxm_transcendental_ops"] += 1
        elif op == "SEND":
            self.events["c2c_vectors"] += 1
        elif op == "CONFIG":
            self.configs.append({"cycle": t, "queue": q.name, "mask": ins.operands[0]})
        if op == "SYNC":
            q.parked_at = t
            q.sync_index = index
            q.c = None
            return False
        if op == "NOTIFY":
            return True
        if op == "DESKEW":
            hac = self.cfg["hac_period"]
            q.c = (t // hac + 1) * hac  # (REPEAT after DESKEW is invalid)
            return False
        if op == "RUNTIME_DESKEW":
            # One chip has no drift: the SAC equals the HAC, so the next issue is exactly t + d (docs/system.md 3).
            q.c = t + ins.operands[0]
            return False
        if op in ("IFETCH", "CONFIG"):
            return False
        getattr(self, "op_" + q.unit)(q, ins, who, t)
        return False

    # ------------------------------------------------------------------------------------------------ MEM
    def op_mem(self, q: QueueState, ins: Instruction, who: Who, t: int):
        g = self.fp.mem_global_index(q.name)
        pos = q.position
        rl, wl = self.cfg["mem_read_latency"], self.cfg["mem_write_latency"]
        if ins.op == "READ":
            a, S = ins.operands
            self.mem_check(who, t, a)
            self.use_port(who, t, g, self.bank(a))
            vec = self.mem_get(g, a).copy()
            self.schedule_emit(who, t + rl, S.direction, S.index, pos, vec)
        elif ins.op == "WRITE":
            a, S = ins.operands
            self.mem_check(who, t, a)
            vec = self.read_stream(who, t, S.direction, S.index, pos).copy()

            def commit(tc, g=g, a=a, vec=vec, who=who):
                self.use_port(who, tc, g, self.bank(a))
                self.mem[(g, a)] = vec
            self.schedule(who, t + wl, "mem_commit", commit)
        elif ins.op == "GATHER":
            S, M = ins.operands
            amap = self.read_group(who, t, M, 2, pos).astype(np.int64)
            self.use_port(who, t, g, 0)
            self.use_port(who, t, g, 1)
            out = np.zeros(self.lanes, np.uint8)
            if not self.timing_only:
                for l in range(self.lanes):
                    a = int(amap[l])
                    if a < self.cfg["mem_words"]:  # a map entry past the slice reads 0 (9.4)
                        out[l] = self.mem_get(g, a)[l]
            self.schedule_emit(who, t + rl, S.direction, S.index, pos, out)
        elif ins.op == "SCATTER":
            S, M = ins.operands
            vec = self.read_stream(who, t, S.direction, S.index, pos).copy()
            amap = self.read_group(who, t, M, 2, pos).astype(np.int64)

            def commit(tc, g=g, vec=vec, amap=amap, who=who):
                self.use_port(who, tc, g, 0)
                self.use_port(who, tc, g, 1)
                if not self.timing_only:
                    for l in range(self.lanes):
                        a = int(amap[l])
                        if a >= self.cfg["mem_words"]:
                            continue  # a map entry past the slice writes nothing (9.4)
                        row = self.mem_get(g, a).copy()
                        row[l] = vec[l]
                        self.mem[(g, a)] = row
            self.schedule(who, t + wl, "mem_commit", commit)
        else:
            raise AssertionError(ins.op)

    # ------------------------------------------------------------------------------------------------ VXM
    def vxm_source(self, who: Who, t: int, src, width: int, pos: int) -> np.ndarray:
        if isinstance(src, Imm):
            return np.full(self.lanes, src.bits, dtype=BITS_DTYPE[width])
        if isinstance(src, Reg):
            r = self.regs[src.index]
            if r is None:
                self.fail("RegisterEmpty", t, who, f"result register R{src.index} was never written")
            return r[0].copy()
        return self.read_group(who, t, src, width, pos)

    def op_vxm(self, q: QueueState, ins: Instruction, who: Who, t: int):
        alu = int(q.name.split(".")[1])
        pos = q.position
        if ins.op == "CVT":
            src_t, dst_t = ins.dtype, ins.dst_type
            D, A = ins.operands
            a = self.vxm_source(who, t, A, WIDTH[src_t], pos)
            lat = self.cfg["vxm_alu_latency"]
            out = np.zeros(self.lanes, dtype=BITS_DTYPE[WIDTH[dst_t]])
            if not self.timing_only:
                cache = {}
                for l, bits in enumerate(a.tolist()):
                    if bits not in cache:
                        cache[bits] = convert_element(bits, src_t, dst_t)
                    out[l] = cache[bits]
            # the result register holds the result widened exactly
            if dst_t in ("f32", "f16"):
                tag = "f32"
                wide = out.astype(np.uint32) if dst_t == "f32" else np.array(
                    [convert_element(int(b), "f16", "f32") for b in out], dtype=np.uint32)
            else:
                tag = "i32"
                signed = out.view({"i8": np.int8, "u8": np.uint8, "i32": np.int32}[dst_t]).astype(np.int64)
                wide = (signed & 0xFFFFFFFF).astype(np.uint32)
            out_w = WIDTH[dst_t]
        else:
            T = ins.dtype
            D, *srcs = ins.operands
            vals = [self.vxm_source(who, t, s, 4, pos).astype(np.uint32) for s in srcs]
            if ins.op == "MUL":
                lat = self.cfg["vxm_mul_latency"]
            elif ins.op in VXM_TRANSCENDENTAL:
                lat = self.cfg["vxm_transcendental_latency"]
            else:
                lat = self.cfg["vxm_alu_latency"]
            if self.timing_only:
                wide = np.zeros(self.lanes, np.uint32)
            else:
                wide = vxm_op(ins.op, T, vals[0], vals[1] if len(vals) > 1 else None)
            tag = T
            out, out_w = wide, 4

        def reg_update(tc, alu=alu, wide=wide, tag=tag):
            self.regs[alu] = (wide, tag)
        self.schedule(who, t + lat, "vxm_reg", reg_update)
        if D is not None:
            self.emit_group(who, t + lat, D, out_w, pos, out)

    # ------------------------------------------------------------------------------------------------ MXM
    def op_mxm(self, q: QueueState, ins: Instruction, who: Who, t: int):
        _, pname, part = q.name.split(".")
        plane = self.planes[pname]
        pos = q.position
        dim = self.cfg["mxm_dim"]
        if ins.op == "LW":
            S, n = ins.operands
            T = ins.dtype
            w = WIDTH[T]
            rows = [self.read_group(who, t, Stream(S.direction, S.index + j * w), w, pos) for j in range(n)]
            if plane.buffer and plane.buffer_type != T:
                self.fail("TypeMismatch", t, who, f"the weight buffer holds {plane.buffer_type} rows, not {T}")
            if len(plane.buffer) + n > dim:
                self.fail("WeightOverflow", t, who,
                          f"{len(plane.buffer)} + {n} rows exceed the {dim} rows of the weight buffer")
            plane.buffer.extend(rows)
            plane.buffer_type = T
        elif ins.op == "IW":
            T = plane.buffer_type  # None for an empty buffer: zeros that accept any type (9.7)
            wts = np.zeros((dim, self.lanes), dtype=np.uint16)
            for k, r in enumerate(plane.buffer):
                wts[k] = r
            plane.buffer, plane.buffer_type = [], None

            def install(tc, plane=plane, T=T, wts=wts):
                plane.weights_type, plane.weights = T, wts
            self.schedule(who, t + self.cfg["mxm_install_latency"], "mxm_install", install)
        elif ins.op == "ABC":
            S, a, plus = ins.operands
            T = ins.dtype
            # operands left to right (9.5), then the plane's state
            x = self.read_group(who, t, S, WIDTH[T], pos)
            self.row_check(who, t, a)
            if plane.busy_until >= t:
                self.fail("UnitBusy", t, who, f"plane {pname} is busy until cycle {plane.busy_until}")
            if plane.weights_type is not None and plane.weights_type != T:
                self.fail("TypeMismatch", t, who, f"the installed weights are {plane.weights_type}, not {T}")
            plane.busy_until = t + (self.cfg["mxm_fp16_cycles_per_vector"] if T == "f16" else 1) - 1
            kind = "f16" if T == "f16" else "int"
            if self.timing_only:
                y = AccRow(kind, [0] * self.lanes, [None] * self.lanes)
            elif plane.weights is None:
                y = AccRow(kind, [0] * self.lanes, [None] * self.lanes)  # zero weights, and no input special
                if T == "f16":
                    y = mxm_f16(x, np.zeros((self.cfg["mxm_dim"], self.lanes), np.uint16), self.lanes)
            elif T == "f16":
                y = mxm_f16(x, plane.weights, self.lanes)
            else:
                y = mxm_int(x, plane.weights, T)

            def update(tc, plane=plane, a=a, y=y, plus=plus, who=who):
                old = plane.rows.get(a, AccRow("int", [0] * self.lanes, [None] * self.lanes))
                if plus:
                    if old.kind != y.kind:
                        self.fail("TypeMismatch", tc, who, f"row {a} holds {old.kind} sums, not {y.kind}")
                    plane.rows[a] = add_rows(old, y)
                else:
                    plane.rows[a] = y
            self.schedule(who, t + self.cfg["mxm_array_latency"] + self.superlanes - 1, "mxm_acc", update)
        elif ins.op == "ACC":
            a, S = ins.operands
            T = ins.dtype
            self.row_check(who, t, a)
            row = plane.rows.get(a)
            if row is not None and row.kind == "f16" and T == "i32":
                self.fail("TypeMismatch", t, who, f"row {a} holds fp16 sums: ACC.i32 is not defined")
            out = np.zeros(self.lanes, np.uint32)
            if row is not None and not self.timing_only:
                out = acc_row_bits(row, T)
            self.emit_group(who, t + self.cfg["mxm_acc_latency"], S, 4, pos, out)
        else:
            raise AssertionError(ins.op)

    def row_check(self, who: Who, t: int, a: int):
        rows = self.cfg["mxm_acc_rows"]
        if not 0 <= a < rows:
            self.fail("AddressOutOfRange", t, who, f"accumulator row {a} is outside 0..{rows - 1}")

    # ------------------------------------------------------------------------------------------------ SXM
    def op_sxm(self, q: QueueState, ins: Instruction, who: Who, t: int):
        pos = q.position
        n_l = self.lanes
        cross = self.cfg["sxm_latency"] + self.superlanes - 1
        if ins.op == "SHIFT":
            D, S, n = ins.operands
            v = self.read_stream(who, t, S.direction, S.index, pos)
            out = np.zeros(n_l, np.uint8)
            for l in range(n_l):
                if 0 <= l - n < n_l:
                    out[l] = v[l - n]
            self.schedule_emit(who, t + cross, D.direction, D.index, pos, out)
        elif ins.op == "PERMUTE":
            D, S, M = ins.operands
            v = self.read_stream(who, t, S.direction, S.index, pos)
            amap = self.read_group(who, t, M, 2, pos)
            out = np.zeros(n_l, np.uint8)
            for l in range(n_l):
                if amap[l] < n_l:
                    out[l] = v[amap[l]]
            self.schedule_emit(who, t + cross, D.direction, D.index, pos, out)
        elif ins.op == "DISTRIBUTE":
            D, S, ms = ins.operands
            v = self.read_stream(who, t, S.direction, S.index, pos)
            k = self.lanes_per_superlane
            out = np.zeros(n_l, np.uint8)
            for g in range(self.superlanes):
                for i, m in enumerate(ms):
                    if m != 255:
                        out[k * g + i] = v[k * g + m]
            self.schedule_emit(who, t + self.cfg["sxm_latency"], D.direction, D.index, pos, out)
        elif ins.op == "TRANSPOSE":
            D, S = ins.operands
            k = self.lanes_per_superlane
            ins_ = [self.read_stream(who, t, S.direction, S.index + i, pos) for i in range(16)]
            for j in range(16):
                out = np.zeros(n_l, np.uint8)
                for g in range(self.superlanes):
                    for i in range(16):
                        out[k * g + i] = ins_[i][k * g + j]
                self.schedule_emit(who, t + self.cfg["sxm_latency"], D.direction, D.index + j, pos, out)
        else:
            raise AssertionError(ins.op)

    # ------------------------------------------------------------------------------------------------ C2C
    def op_c2c(self, q: QueueState, ins: Instruction, who: Who, t: int):
        link = int(q.name.split(".")[1])
        pos = q.position
        (S,) = ins.operands
        if ins.op == "SEND":
            vec = self.read_stream(who, t, S.direction, S.index, pos).copy()  # operands first (9.5)
            if link not in self.links:
                self.fail("LinkUnconnected", t, who, f"link {link} is not connected")
            dst, lat = self.links[link]
            free = self.link_free.get(link, 0)
            if t < free:  # the loopback serialises one flit per interval, like a system link (docs/isa.md 4)
                self.fail("LinkBusy", t, who, f"link {link} (loopback to link {dst}) is still sending the previous "
                                              f"vector until cycle {free}; links have no back-pressure")
            self.link_free[link] = t + self.send_interval

            def arrive(tc, dst=dst, vec=vec, who=who):
                buf = self.rx[dst]
                if len(buf) >= self.cfg["c2c_rx_buffer_vectors"]:
                    self.fail("LinkOverflow", tc, who,
                              f"the receive buffer of link {dst} already holds {len(buf)} vectors")
                buf.append((vec, who, tc))
            self.schedule(who, t + lat, "c2c_arrival", arrive)
        elif ins.op == "RECV":
            buf = self.rx.get(link, [])  # a link nothing sends to just has an empty buffer (LinkEmpty)
            if not buf:
                self.fail("LinkEmpty", t, who, f"the receive buffer of link {link} is empty")
            vec, _, _ = buf.pop(0)
            self.schedule_emit(who, t + self.cfg["c2c_recv_latency"], S.direction, S.index, pos, vec)
        else:
            raise AssertionError(ins.op)


# ---------------------------------------------------------------------------------------------------- MXM math

def mxm_int(x_bits: np.ndarray, w_bits: np.ndarray, T: str) -> AccRow:
    """y[n] = sum_k x[k] * W[k][n] in exact integers (int64 holds 320 * 255 * 255 easily)."""
    dt = np.int8 if T == "i8" else np.uint8
    x = x_bits.astype(np.uint8).view(dt).astype(np.int64)
    w = w_bits.astype(np.uint8).view(dt).astype(np.int64)
    y = x @ w
    return AccRow("int", [int(v) for v in y], [None] * len(y))


def f16_counts(bits: np.ndarray):
    """f16 bit patterns -> (integer counts of 2^-24 as int64, is_nan, inf_sign (+1/-1/0), is_zero)."""
    b = bits.astype(np.int64)
    sign = np.where(b >> 15, -1, 1)
    exp = (b >> 10) & 31
    man = b & 1023
    mag = np.where(exp == 0, man, (man + 1024) << np.maximum(exp - 1, 0))
    finite = exp != 31
    counts = np.where(finite, sign * mag, 0)
    nan = (exp == 31) & (man != 0)
    inf = np.where((exp == 31) & (man == 0), sign, 0)
    zero = finite & (mag == 0)
    return counts, nan, inf, zero


def mxm_f16(x_bits: np.ndarray, w_bits: np.ndarray, lanes: int) -> AccRow:
    """Exact fp16 dot products: each product is an integer count of 2^-48; the sums are Python ints."""
    xc, xnan, xinf, xzero = f16_counts(x_bits)
    wc, wnan, winf, wzero = f16_counts(w_bits)
    # exact sums: object arrays hold Python ints, so nothing can overflow
    y = xc.astype(object) @ wc.astype(object)
    # specials, per product (k, n)
    nan_p = xnan[:, None] | wnan | ((xinf != 0)[:, None] & wzero) | (xzero[:, None] & (winf != 0))
    x_s = np.sign(xc) + xinf  # sign of x (0 for zero, finite or inf sign otherwise)
    w_s = np.sign(wc) + winf
    inf_p = ((xinf != 0)[:, None] | (winf != 0)) & ~nan_p
    sgn = x_s[:, None] * w_s
    pos_inf = (inf_p & (sgn > 0)).any(axis=0)
    neg_inf = (inf_p & (sgn < 0)).any(axis=0)
    nan = nan_p.any(axis=0) | (pos_inf & neg_inf)
    special = []
    for n in range(lanes):
        special.append("nan" if nan[n] else "+inf" if pos_inf[n] else "-inf" if neg_inf[n] else None)
    return AccRow("f16", [int(v) for v in y], special)


def add_rows(old: AccRow, y: AccRow) -> AccRow:
    vals = [a + b for a, b in zip(old.values, y.values)]
    special = []
    for s1, s2 in zip(old.special, y.special):
        s = {s1, s2} - {None}
        if not s:
            special.append(None)
        elif "nan" in s or s == {"+inf", "-inf"}:
            special.append("nan")
        else:
            special.append(s.pop())
    return AccRow(old.kind, vals, special)


def acc_row_bits(row: AccRow, T: str) -> np.ndarray:
    out = np.zeros(len(row.values), np.uint32)
    for n, (v, s) in enumerate(zip(row.values, row.special)):
        if T == "i32":
            out[n] = v & 0xFFFFFFFF  # int rows only (f16 rows are a TypeMismatch)
        elif s == "nan":
            out[n] = 0x7FC00000
        elif s == "+inf":
            out[n] = 0x7F800000
        elif s == "-inf":
            out[n] = 0xFF800000
        elif row.kind == "int":
            out[n] = round_to_float_bits(v)
        else:
            out[n] = round_to_float_bits(Fraction(v, 2**48))
    return out


# ---------------------------------------------------------------------------------------------------- load

def load_checks(prog: Program, cfg: dict, fp: Floorplan):
    """Configuration-dependent checks before cycle 0 (docs/isa.md 9.3): InvalidInstruction / QueueOverrun at cycle 0.
    Order (chosen): queues in the order first written, instructions in order; then the directives in line order."""
    def bad(queue, index, text, detail, kind="InvalidInstruction"):
        raise ReferenceSimulationError(kind, 0, queue, index, text, detail)

    nstreams = cfg["streams_per_direction"]
    for qname, instrs in prog.queues.items():
        if qname not in fp.queue_index:
            bad(qname, 0, instrs[0].text if instrs else "", f"the chip has no queue {qname}")
        depth = cfg["instruction_queue_depth"]
        if len(instrs) > depth:
            bad(qname, depth, instrs[depth].text, f"more than {depth} instructions", "QueueOverrun")
        for i, ins in enumerate(instrs):
            for S, n in ins.stream_groups():
                if S.index + n > nstreams:
                    bad(qname, i, ins.text, f"stream group {S} of {n} streams is past stream {nstreams - 1}")
            for o in ins.operands:
                if isinstance(o, Reg) and o.index >= cfg["vxm_alus_per_lane"]:
                    bad(qname, i, ins.text, f"there is no result register {o}")
            if ins.op == "SHIFT" and not -(cfg["lanes"] - 1) <= ins.operands[2] <= cfg["lanes"] - 1:
                bad(qname, i, ins.text, "SHIFT amount out of range")
            if ins.op == "LW" and not 1 <= ins.operands[1] <= cfg["mxm_dim"]:
                bad(qname, i, ins.text, "LW row count out of range")
    # directives (queue '.init' / '.dump' / '.link', index = the directive's ordinal among its kind; all .init
    # first, then .dump, then .link: the Rust core's convention, docs/isa.md does not say)
    for k, d in enumerate(prog.inits):
        i0 = int(d.slice[5:])
        text = f".init {d.slice} {d.addr} {d.dtype}"
        if i0 + WIDTH[d.dtype] > fp.mem_half or d.addr >= cfg["mem_words"] or len(d.values) > cfg["lanes"]:
            bad(".init", k, text, f"needs slices {d.slice}..+{WIDTH[d.dtype]}, an address below "
                f"{cfg['mem_words']} and at most {cfg['lanes']} values")
    for k, d in enumerate(prog.dumps):
        i0 = int(d.slice[5:])
        text = f".dump {d.slice} {d.addr} {d.dtype} {d.count}"
        if i0 + WIDTH[d.dtype] > fp.mem_half or d.addr + d.count > cfg["mem_words"]:
            bad(".dump", k, text, f"needs slices {d.slice}..+{WIDTH[d.dtype]} and addresses below {cfg['mem_words']}")
    for k, d in enumerate(prog.links):
        if d.src >= cfg["c2c_links"] or d.dst >= cfg["c2c_links"]:
            bad(".link", k, f".link {d.src} {d.dst} {d.latency}", f"links are 0..{cfg['c2c_links'] - 1}")


# ---------------------------------------------------------------------------------------------------- API

def _apply_inits(it: Interpreter, prog: Program):
    fp = it.fp
    for ini in prog.inits:
        w = WIDTH[ini.dtype]
        elems = np.zeros(it.lanes, dtype=np.uint64)
        if ini.fill:
            elems[:] = ini.values[0]
        else:
            elems[: len(ini.values)] = ini.values
        side, i0 = ini.slice[4], int(ini.slice[5:])
        for b in range(w):
            g = fp.mem_global_index(f"MEM.{side}{i0 + b}")
            it.mem[(g, ini.addr)] = ((elems >> np.uint64(8 * b)) & np.uint64(0xFF)).astype(np.uint8)


def _dump_values(it: Interpreter, d) -> np.ndarray:
    w = WIDTH[d.dtype]
    side, i0 = d.slice[4], int(d.slice[5:])
    out = np.zeros((d.count, it.lanes), dtype=NP_DTYPE[d.dtype])
    for r in range(d.count):
        planes = [it.mem_get(it.fp.mem_global_index(f"MEM.{side}{i0 + b}"), d.addr + r) for b in range(w)]
        out[r] = np.ascontiguousarray(np.stack(planes, axis=1)).view(NP_DTYPE[d.dtype]).reshape(it.lanes)
    return out


def run(program_text: str, config: dict | None = None, mem_init=(), dumps=(), timing_only: bool = False):
    """Run a program on the reference interpreter. Returns (stats, dumps) like `lpusim._lpusim.simulate`.

    mem_init: [(global slice index, first address, uint8 array (n, lanes))], applied after the .init directives.
    dumps: [(global slice index, address, n)] -> one uint8 array (n, lanes) each (None when timing_only).
    """
    config = dict(TSP_V1 if config is None else config)
    if isinstance(program_text, bytes):
        program_text = program_text.decode("utf-8")
    prog = assemble(program_text)
    load_checks(prog, config, Floorplan(config))
    it = Interpreter(prog, config, timing_only)
    _apply_inits(it, prog)
    for g, a0, arr in mem_init:
        arr = np.asarray(arr, dtype=np.uint8).reshape(-1, it.lanes)
        for r in range(arr.shape[0]):
            it.mem[(int(g), int(a0) + r)] = arr[r].copy()
    it.run()
    instructions = sum(q.issues for q in it.queues)
    events = dict(it.events, vxm_ops=it.busy["vxm"], sxm_ops=it.busy["sxm"], instructions=instructions)
    stats = {
        "cycles": it.last_activity + it.superlanes if it.last_activity >= 0 else 0,
        "instructions": instructions,
        "busy": dict(it.busy),
        "events": events,
        "configs": list(it.configs),
        "per_queue_issues": [q.issues for q in it.queues],  # in queue index order (docs/isa.md section 7)
        "timing_only": timing_only,
        "dumps": [
            {"slice": d.slice, "addr": d.addr, "dtype": d.dtype,
             "values": None if timing_only else _dump_values(it, d).tolist()}
            for d in prog.dumps
        ],
    }
    out = []
    for g, a, n in dumps:
        if timing_only:
            out.append(None)
        else:
            out.append(np.stack([it.mem_get(int(g), int(a) + r) for r in range(int(n))]) if n else
                       np.zeros((0, it.lanes), np.uint8))
    return stats, out
