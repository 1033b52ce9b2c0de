"""Random assembly programs for the differential test (tests/reference/test_differential.py).

`generate(seed, size)` returns program text. Most programs are valid and move real data: every transfer is planned
with exact timing from the configuration latencies and the floorplan (a READ on a slice at position p issued at t
emits at t + mem_read_latency and is read at position q at t + mem_read_latency + |q - p|), stream register cells
and bank ports are reserved so nothing collides, and `.init`/`.dump` make the values visible. About a fifth of the
programs are then broken in one deliberate way so that error reporting is compared as well.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from lpusim.reference.config import TSP_V1, Floorplan, send_interval_cycles

WIDTH = {"i8": 1, "u8": 1, "f16": 2, "i32": 4, "f32": 4}


@dataclass
class Action:
    queue: str
    cycle: int
    text: str
    rep: tuple | None = None       # (n, d, s) of a following REPEAT
    resume: int | None = None      # SYNC: the cycle the queue resumes; DESKEW: the next issue cycle

    @property
    def end(self) -> int:
        if self.resume is not None:
            return self.resume - 1
        if self.rep:
            return self.cycle + self.rep[0] * self.rep[1]
        return self.cycle


@dataclass
class Plan:
    actions: list = field(default_factory=list)
    cells: list = field(default_factory=list)    # reserved stream cells (dir, stream, position, cycle)
    trails: list = field(default_factory=list)   # every cell an emitted value passes until it falls off
    ports: list = field(default_factory=list)    # (slice global index, bank, cycle)
    inits: list = field(default_factory=list)
    dumps: list = field(default_factory=list)
    empty_cells: list = field(default_factory=list)  # cells that must hold nothing (StreamEmpty faults)
    after: list = field(default_factory=list)    # callbacks run when the plan is committed


class Builder:
    def __init__(self, rng: random.Random, cfg: dict):
        self.rng = rng
        self.cfg = cfg
        self.fp = Floorplan(cfg)
        self.free: dict = {}
        self.lines: dict = {}
        self.cur: dict = {}
        self.cells: set = set()
        self.trails: set = set()
        self.ports: set = set()
        self.inits: list = []
        self.dumps: list = []
        self.links: dict = {}
        self.addr = [rng.randrange(0, 200), cfg["mem_words"] // 2 + rng.randrange(0, 200)]
        self.reg_ready: dict = {}
        self.sync_lock = 0
        self.notify_times: list = []
        self.plane_free: dict = {}
        self.link_free: dict = {}
        self.send_free: dict = {}         # src link -> first cycle it may SEND again
        self.rl = cfg["mem_read_latency"]
        self.wl = cfg["mem_write_latency"]
        self.nstreams = cfg["streams_per_direction"]
        self.half = self.fp.mem_half
        self.vxm = self.fp.vxm_pos
        self.last_cycle = 0

    # ---------------------------------------------------------------- floorplan helpers
    def mem(self, side: str, i: int) -> tuple:
        """(queue name, position, global index) of MEM slice side+i."""
        name = f"MEM.{side}{i}"
        return name, self.fp.queue_positions[self.fp.queue_index[name]], self.fp.mem_global_index(name)

    def alloc(self, n: int = 1, bank: int | None = None) -> int:
        if bank is None:
            bank = self.rng.randrange(2)
        a = self.addr[bank]
        self.addr[bank] += n
        return a

    def bank(self, a: int) -> int:
        return 0 if a < self.cfg["mem_words"] // 2 else 1

    def path(self, d: str, s: int, src: int, t_emit: int, dst: int) -> list:
        """Cells a value emitted at (src, t_emit) on stream d+s occupies until read at dst."""
        step = 1 if d == "E" else -1
        assert (dst - src) * step > 0, (d, src, dst)
        return [(d, s, src + k * step, t_emit + k) for k in range(abs(dst - src) + 1)]

    def trail(self, d: str, s: int, src: int, t_emit: int) -> list:
        step = 1 if d == "E" else -1
        out, p, t = [], src, t_emit
        while 0 <= p < self.fp.num_positions:
            out.append((d, s, p, t))
            p += step
            t += 1
        return out

    def emit(self, plan: Plan, d: str, s: int, src: int, t_emit: int, dst: int | None):
        if dst is not None:
            plan.cells += self.path(d, s, src, t_emit, dst)
        else:
            plan.cells.append((d, s, src, t_emit))
        plan.trails += self.trail(d, s, src, t_emit)

    # ---------------------------------------------------------------- placement
    def fits(self, plan: Plan) -> bool:
        byq: dict = {}
        for a in plan.actions:
            if a.cycle < 0 or a.cycle < self.free.get(a.queue, 0):
                return False
            byq.setdefault(a.queue, []).append(a)
        for acts in byq.values():
            acts.sort(key=lambda a: a.cycle)
            for x, y in zip(acts, acts[1:]):
                if y.cycle <= x.end:
                    return False
        cells = set(plan.cells)
        if len(cells) != len(plan.cells) or cells & self.cells:
            return False
        if set(plan.trails) & self.cells:
            return False  # our values would run over a reserved segment of another value
        if cells & self.trails:
            return False  # ... or another value would run over ours
        ports = set(plan.ports)
        if len(ports) != len(plan.ports) or ports & self.ports:
            return False
        if set(plan.empty_cells) & (self.trails | set(plan.trails)):
            return False
        return True

    def place(self, build, lo: int = 0, tries: int = 300) -> bool:
        for t0 in range(lo, lo + tries):
            plan = build(t0)
            if plan is not None and self.fits(plan):
                self.commit(plan)
                return True
        return False

    def commit(self, plan: Plan):
        for a in sorted(plan.actions, key=lambda a: a.cycle):
            q = a.queue
            cur = self.cur.get(q, 0)
            lines = self.lines.setdefault(q, [])
            if a.cycle > cur:
                lines.append(f"NOP {a.cycle - cur}")
            lines.append(a.text)
            if a.rep:
                n, d, s = a.rep
                lines.append(f"REPEAT {n}, {d}" + ("" if s == 1 else f", {s}"))
            self.cur[q] = a.end + 1
            self.free[q] = a.end + 1
            self.last_cycle = max(self.last_cycle, a.end)
        self.cells |= set(plan.cells)
        self.trails |= set(plan.trails)
        self.ports |= set(plan.ports)
        self.inits += plan.inits
        self.dumps += plan.dumps
        for f in plan.after:
            f()

    def text(self) -> str:
        out = []
        for name in self.fp.queue_names:
            if name in self.lines:
                out.append(f".queue {name}")
                out += ["    " + ln for ln in self.lines[name]]
        for ln in self.links.values():
            out.append(ln)
        out += self.inits
        out += self.dumps
        return "\n".join(out) + "\n"

    # ---------------------------------------------------------------- values
    def values(self, dtype: str, n: int, special: float = 0.05) -> list:
        rng = self.rng
        out = []
        for _ in range(n):
            r = rng.random()
            if dtype == "i8":
                out.append(str(rng.choice([rng.randrange(-128, 128), -128, 127, 0, -1])))
            elif dtype == "u8":
                out.append(str(rng.choice([rng.randrange(0, 256), 0, 255])))
            elif dtype == "i32":
                if r < 0.1:
                    out.append(str(rng.choice([-(2**31), 2**31 - 1, 0, -1, 2**24 + 1, -(2**24) - 3])))
                elif r < 0.5:
                    out.append(str(rng.randrange(-(2**31), 2**31)))
                else:
                    out.append(str(rng.randrange(-1000, 1000)))
            else:
                npt = np.float32 if dtype == "f32" else np.float16
                if r < special:
                    out.append(rng.choice(["inf", "-inf", "nan", "-0.0", "0.0"]))
                elif r < 2 * special:
                    tiny = float(np.finfo(npt).smallest_subnormal) * rng.randrange(1, 100)
                    out.append(repr(float(npt(tiny))))
                else:
                    scale = rng.choice([1.0, 1.0, 8.0, 0.01, 1000.0] if dtype == "f32" else [1.0, 4.0, 0.1])
                    out.append(repr(float(npt(rng.gauss(0.0, 1.0) * scale))))
        return out

    def init(self, plan: Plan, name: str, addr: int, dtype: str, special: float = 0.05, n: int | None = None):
        if self.rng.random() < 0.15:
            plan.inits.append(f".init {name} {addr} {dtype} fill {self.values(dtype, 1, special)[0]}")
        else:
            n = n if n is not None else self.rng.choice([1, 5, 16, 40, 320])
            plan.inits.append(f".init {name} {addr} {dtype} " + " ".join(self.values(dtype, n, special)))

    # ---------------------------------------------------------------- building blocks
    def load_group(self, plan: Plan, t_arrive: int, dst: int, side: str, i0: int, w: int, d: str, s: int,
                   addr: int, rep: tuple | None = None):
        """READs on slices side+i0 .. side+(i0+w-1) so the w-stream group d+s arrives at dst at t_arrive
        (repeated: at t_arrive + k*rd for k <= n, addresses addr + k*rs)."""
        for b in range(w):
            name, p, g = self.mem(side, i0 + b)
            t = t_arrive - self.rl - abs(dst - p)
            plan.actions.append(Action(name, t, f"READ {addr}, {d}{s + b}", rep))
            n, rd, rs = rep if rep else (0, 1, 1)
            for k in range(n + 1):
                plan.ports.append((g, self.bank(addr + k * rs), t + k * rd))
                self.emit(plan, d, s + b, p, t + k * rd + self.rl, dst)

    def store_group(self, plan: Plan, t_emit: int, src: int, side: str, j0: int, w: int, d: str, s: int,
                    addr: int, rep: tuple | None = None, emit: bool = True):
        """WRITEs on slices side+j0.. taking the group emitted at (src, t_emit) (repeated like load_group)."""
        for b in range(w):
            name, p, g = self.mem(side, j0 + b)
            t = t_emit + abs(p - src)
            plan.actions.append(Action(name, t, f"WRITE {addr}, {d}{s + b}", rep))
            n, rd, rs = rep if rep else (0, 1, 1)
            for k in range(n + 1):
                plan.ports.append((g, self.bank(addr + k * rs), t + k * rd + self.wl))
                if emit:
                    self.emit(plan, d, s + b, src, t_emit + k * rd, p)

    def toward(self, side: str, to_center: bool) -> str:
        """Stream direction from a slice of `side` toward the VXM (to_center) or toward the edge."""
        if side == "W":
            return "E" if to_center else "W"
        return "W" if to_center else "E"

    def pick_slices(self, w: int, avoid: set = frozenset()) -> int:
        for _ in range(100):
            i0 = self.rng.randrange(0, self.half - w + 1)
            if not set(range(i0, i0 + w)) & avoid:
                return i0
        return 0

    def pick_stream(self, w: int) -> int:
        return self.rng.randrange(0, self.nstreams - w + 1)


# ==================================================================================================== patterns

VXM_BIN = ["ADD", "SUB", "MUL", "MAX", "MIN"]
VXM_UN = ["RELU", "NEG", "ABS", "COPY"]
VXM_F32 = ["DIV", "EXP", "TANH", "RSQRT", "RCP", "SIGMOID", "ERF", "LOG", "SQRT", "SIN", "COS"]  # transcendental latency
VXM_F32_ALU = ["FLOOR", "CEIL"]
VXM_CMP = ["EQ", "NE", "LT", "LE", "GT", "GE"]  # f32 or i32, binary
VXM_I32 = ["AND", "OR", "XOR", "NOT"]          # i32 only; NOT is unary
VXM_BINARY_OPS = set(VXM_BIN + VXM_CMP + ["DIV", "AND", "OR", "XOR"])
TYPES = ["i8", "u8", "f16", "i32", "f32"]


def vxm_latency(cfg: dict, op: str) -> int:
    if op == "MUL":
        return cfg["vxm_mul_latency"]
    if op in VXM_F32:
        return cfg["vxm_transcendental_latency"]
    return cfg["vxm_alu_latency"]


def p_copy(B: Builder) -> bool:
    rng = B.rng
    sa, sb = rng.choice("WE"), rng.choice("WE")
    i, j = rng.randrange(B.half), rng.randrange(B.half)
    src, dst = B.mem(sa, i), B.mem(sb, j)
    if src[1] == dst[1]:
        return False
    d = "E" if dst[1] > src[1] else "W"
    s = B.pick_stream(1)
    n = rng.choice([0, 0, 1, 3])
    rd = rng.choice([1, 1, 2, 3])
    rs = rng.choice([1, 1, -1, 0, 2])
    a = B.alloc(8) + 3
    bw = B.alloc(8) + 3
    dist = abs(dst[1] - src[1])
    dtype = rng.choice(["u8", "i8"])
    rep = (n, rd, rs) if n else None

    def build(t0):
        plan = Plan()
        for k in range(n + 1):
            B.init(plan, src[0], a + k * rs, dtype)
        plan.actions.append(Action(src[0], t0, f"READ {a}, {d}{s}", rep))
        plan.actions.append(Action(dst[0], t0 + B.rl + dist, f"WRITE {bw}, {d}{s}", rep))
        for k in range(n + 1):
            plan.ports.append((src[2], B.bank(a + k * rs), t0 + k * rd))
            plan.ports.append((dst[2], B.bank(bw + k * rs), t0 + B.rl + dist + k * rd + B.wl))
            B.emit(plan, d, s, src[1], t0 + k * rd + B.rl, dst[1])
        lo = min(bw + k * rs for k in range(n + 1))
        plan.dumps.append(f".dump {dst[0]} {lo} {dtype} {abs(n * rs) + 1}")
        return plan
    return B.place(build, rng.randrange(0, 30))


def _vxm_sources(B: Builder, in_types: list) -> tuple:
    """Choose the source operands once: ('reg', j) / ('imm', text) / ('stream', side, i0, s, w, addr). Also
    returns the .init lines of the stream sources."""
    rng = B.rng
    pre = Plan()
    specs = []
    used_streams: set = set()
    side = rng.choice("WE")
    for dtype in in_types:
        r = rng.random()
        w = WIDTH[dtype]
        if dtype in ("f32", "i32") and r < 0.25 and B.reg_ready:
            specs.append(("reg", rng.choice(sorted(B.reg_ready))))
        elif r < 0.4:
            specs.append(("imm", B.values(dtype, 1, special=0.1)[0]))
        else:
            for _ in range(50):
                st = B.pick_stream(w)
                if not set(range(st, st + w)) & used_streams:
                    break
            used_streams |= set(range(st, st + w))
            i0 = B.pick_slices(w)
            a = B.alloc()
            B.init(pre, B.mem(side, i0)[0], a, dtype, special=0.08)
            specs.append(("stream", side, i0, st, w, a))
    return specs, pre.inits


def p_vxm(B: Builder, op: str | None = None, dtype: str | None = None) -> bool:
    rng = B.rng
    if op is None:
        op = rng.choice(VXM_BIN + VXM_UN + VXM_F32 + VXM_F32_ALU + VXM_CMP + VXM_I32 + ["CVT"] * 4)
    if op == "CVT":
        st, dt = rng.choice(TYPES), rng.choice(TYPES)
        mnem, lat = f"CVT.{st}.{dt}", B.cfg["vxm_alu_latency"]
        in_types, out_t = [st], dt
    else:
        t = dtype or ("f32" if op in VXM_F32 + VXM_F32_ALU else "i32" if op in VXM_I32
                      else rng.choice(["f32", "i32"]))
        mnem, lat = f"{op}.{t}", vxm_latency(B.cfg, op)
        in_types = [t, t] if op in VXM_BINARY_OPS else [t]
        out_t = t
    alu = rng.randrange(B.cfg["vxm_alus_per_lane"])
    q = f"VXM.{alu}"
    to_reg_only = rng.random() < 0.25
    out_side = rng.choice("WE")
    ow = WIDTH[out_t]
    od = B.toward(out_side, False)
    os_ = B.pick_stream(ow)
    j0 = B.pick_slices(ow)
    oa = B.alloc()
    specs, inits = _vxm_sources(B, in_types)
    if op in VXM_CMP and specs[0][0] in ("reg", "imm") and rng.random() < 0.3:
        specs[1] = specs[0]  # equal operands, so EQ/LE/GE are true somewhere

    def build(t0):
        plan = Plan(inits=list(inits))
        srcs = []
        for sp in specs:
            if sp[0] == "reg":
                if B.reg_ready[sp[1]] > t0:
                    return None
                srcs.append(f"R{sp[1]}")
            elif sp[0] == "imm":
                srcs.append("#" + sp[1])
            else:
                _, side, i0, st, w, a = sp
                d = B.toward(side, True)
                B.load_group(plan, t0, B.vxm, side, i0, w, d, st, a)
                srcs.append(f"{d}{st}")
        dst = "-" if to_reg_only else f"{od}{os_}"
        plan.actions.append(Action(q, t0, f"{mnem} {dst}, " + ", ".join(srcs)))
        if not to_reg_only:
            B.store_group(plan, t0 + lat, B.vxm, out_side, j0, ow, od, os_, oa)
            plan.dumps.append(f".dump {B.mem(out_side, j0)[0]} {oa} {out_t} 1")
        plan.after.append(lambda: B.reg_ready.__setitem__(alu, min(B.reg_ready.get(alu, 1 << 60), t0 + lat)))
        return plan
    return B.place(build, rng.randrange(0, 40))


def p_mxm(B: Builder, fault: str | None = None, T: str | None = None) -> bool:
    rng = B.rng
    cfg = B.cfg
    side = rng.choice("WE")
    pl = rng.randrange(B.fp.planes_half)
    pname = f"{side}{pl}"
    ppos = B.fp.plane_position(side, pl)
    T = T or rng.choice(["i8", "u8", "f16"])
    w = WIDTH[T]
    n = rng.choice([1, 2, 3]) if w == 2 else rng.choice([1, 2, 4, 6])
    m = rng.choice([1, 1, 2, 3])  # LW repetitions (n groups each)
    wd = B.toward(side, False)    # weights and activations flow from MEM to the plane (outward)
    od = B.toward(side, True)     # results flow back
    ws = B.pick_stream(n * w)
    wi0 = B.pick_slices(n * w)
    xs = B.pick_stream(w)
    xi0 = B.pick_slices(w)
    busy = cfg["mxm_fp16_cycles_per_vector"] if T == "f16" else 1
    nabc = rng.choice([1, 2, 3])
    rows = [rng.randrange(cfg["mxm_acc_rows"])]
    for _ in range(nabc - 1):
        rows.append(rows[-1] if rng.random() < 0.5 else rng.randrange(cfg["mxm_acc_rows"]))
    accs = []  # (row, type) emitted after the last ABC on that row
    for r in dict.fromkeys(rows):
        accs.append((r, "f32" if T == "f16" else rng.choice(["i32", "f32"])))
    if fault == "type_acc" and T == "f16":
        accs[0] = (accs[0][0], "i32")
    gaps = [busy + rng.choice([0, 0, 1, 5]) for _ in range(nabc)]
    if fault == "busy" and T == "f16" and nabc >= 2:
        gaps[1] = rng.randrange(1, busy)
    wa = B.alloc(m)
    xa = B.alloc(nabc)
    outs = [(B.pick_stream(4), B.pick_slices(4), B.alloc()) for _ in accs]
    inits = Plan()
    for k in range(m):
        for g in range(n):
            B.init(inits, B.mem(side, wi0 + g * w)[0], wa + k, T, special=0.02)
    for k in range(nabc):
        B.init(inits, B.mem(side, xi0)[0], xa + k, T, special=0.02)
    lat = cfg["mxm_array_latency"] + cfg["superlanes"] - 1
    iw_gap = rng.choice([0, 1])
    plus = []
    seen = set()
    for r in rows:
        plus.append(r in seen and rng.random() < 0.8)
        seen.add(r)
    if fault == "type_plus" and T == "f16":
        plus[0] = True  # rows start as integer zero: f16 '+' onto a fresh row is a TypeMismatch

    def build(t0):
        if t0 < B.plane_free.get(pname, 0):
            return None
        plan = Plan()
        plan.inits = list(inits.inits)
        q = f"MXM.{pname}"
        rep = (m - 1, 1, 1) if m > 1 else None
        plan.actions.append(Action(q + ".LW", t0, f"LW.{T} {wd}{ws}, {n}", rep))
        for g in range(n):
            B.load_group(plan, t0, ppos, side, wi0 + g * w, w, wd, ws + g * w, wa, rep)
        t_iw = t0 + m + iw_gap
        plan.actions.append(Action(q + ".IW", t_iw, "IW"))
        t = t_iw + cfg["mxm_install_latency"]
        last = {}
        for k, r in enumerate(rows):
            t += gaps[k] if k else 0
            plan.actions.append(Action(q + ".ABC", t, f"ABC.{T} {wd}{xs}, {r}" + (", +" if plus[k] else "")))
            B.load_group(plan, t, ppos, side, xi0, w, wd, xs, xa + k)
            last[r] = t
        t_acc = max(last.values()) + lat
        for (r, at), (os_, j0, oa) in zip(accs, outs):
            t_acc = max(t_acc, last[r] + lat)
            plan.actions.append(Action(q + ".ACC", t_acc, f"ACC.{at} {r}, {od}{os_}"))
            B.store_group(plan, t_acc + cfg["mxm_acc_latency"], ppos, side, j0, 4, od, os_, oa)
            plan.dumps.append(f".dump {B.mem(side, j0)[0]} {oa} {at} 1")
            t_acc += 1
        end = t_acc

        def done():
            B.plane_free[pname] = end + 1
        plan.after.append(done)
        return plan
    return B.place(build, rng.randrange(0, 40))


def p_sxm(B: Builder) -> bool:
    rng = B.rng
    cfg = B.cfg
    side = rng.choice("WE")
    k = rng.randrange(cfg["sxm_per_hemisphere_queues"])
    q = f"SXM.{side}.{k}"
    spos = B.fp.sxm_w_pos if side == "W" else B.fp.sxm_e_pos
    ind, outd = B.toward(side, False), B.toward(side, True)
    op = rng.choice(["SHIFT", "PERMUTE", "DISTRIBUTE", "TRANSPOSE"])
    cross = cfg["sxm_latency"] + cfg["superlanes"] - 1
    nin = 16 if op == "TRANSPOSE" else 1
    s_in = B.pick_stream(nin + (2 if op == "PERMUTE" else 0))
    s_out = B.pick_stream(nin)
    i0 = B.pick_slices(nin)
    mi0 = B.pick_slices(2, set(range(i0, i0 + nin)))
    j0 = B.pick_slices(nin)
    a, ma, oa = B.alloc(), B.alloc(), B.alloc()
    pre = Plan()
    B.init(pre, B.mem(side, i0)[0], a, rng.choice(["u8", "i8"]))
    if nin == 16:
        for b in range(1, 16):
            B.init(pre, B.mem(side, i0 + b)[0], a, "u8")
    if op == "SHIFT":
        sh = rng.choice([0, 1, -1, 16, -16, 319, -319, rng.randrange(-319, 320)])
        text, lat = f"SHIFT {outd}{s_out}, {ind}{s_in}, {sh}", cross
    elif op == "PERMUTE":
        amap = [rng.randrange(0, 330) if rng.random() < 0.9 else rng.randrange(320, 65536) for _ in range(320)]
        pre.inits.append(f".init {B.mem(side, mi0)[0]} {ma} u8 " + " ".join(str(x & 255) for x in amap))
        pre.inits.append(f".init {B.mem(side, mi0 + 1)[0]} {ma} u8 " + " ".join(str(x >> 8) for x in amap))
        text, lat = f"PERMUTE {outd}{s_out}, {ind}{s_in}, {ind}{s_in + 1}", cross
    elif op == "DISTRIBUTE":
        ms = [rng.randrange(16) if rng.random() < 0.85 else 255 for _ in range(16)]
        text, lat = f"DISTRIBUTE {outd}{s_out}, {ind}{s_in}, " + ", ".join(map(str, ms)), cfg["sxm_latency"]
    else:
        text, lat = f"TRANSPOSE {outd}{s_out}, {ind}{s_in}", cfg["sxm_latency"]

    def build(t0):
        plan = Plan(inits=list(pre.inits))
        plan.actions.append(Action(q, t0, text))
        B.load_group(plan, t0, spos, side, i0, nin, ind, s_in, a)
        if op == "PERMUTE":
            B.load_group(plan, t0, spos, side, mi0, 2, ind, s_in + 1, ma)
        B.store_group(plan, t0 + lat, spos, side, j0, nin, outd, s_out, oa)
        for b in range(nin):
            plan.dumps.append(f".dump {B.mem(side, j0 + b)[0]} {oa} u8 1")
        return plan
    return B.place(build, rng.randrange(0, 40))


def p_gather_scatter(B: Builder) -> bool:
    rng = B.rng
    side = rng.choice("WE")
    x = rng.randrange(B.half)
    X = B.mem(side, x)
    # the map group (and SCATTER's data) come from slices nearer the VXM or nearer the edge
    others = [i for i in range(B.half - 1) if i != x and i + 1 != x]
    mi = rng.choice(others)
    to_center = mi > x  # slices with a larger index are further from the VXM
    md = B.toward(side, to_center)
    ms = B.pick_stream(3)
    region = B.alloc(6)
    ma = B.alloc()
    gather = rng.random() < 0.5
    far = rng.random() < 0.1
    amap = [region + rng.randrange(6) if not (far and rng.random() < 0.1) else rng.randrange(8192, 65536)
            for _ in range(320)]
    pre = Plan()
    pre.inits.append(f".init {B.mem(side, mi)[0]} {ma} u8 " + " ".join(str(v & 255) for v in amap))
    pre.inits.append(f".init {B.mem(side, mi + 1)[0]} {ma} u8 " + " ".join(str(v >> 8) for v in amap))
    for k in range(6):
        B.init(pre, X[0], region + k, "u8")
    oside = rng.choice("WE")
    y = rng.randrange(B.half)
    Y = B.mem(oside, y)
    if Y[1] == X[1]:
        return False
    od = "E" if Y[1] > X[1] else "W"
    os_ = B.pick_stream(1)
    oa = B.alloc()
    da = B.alloc()
    di = rng.choice([i for i in range(B.half) if i not in (x, mi, mi + 1) and (i > x) == to_center] or [None])
    if di is None:
        return False
    if not gather:
        B.init(pre, B.mem(side, di)[0], da, "u8")

    def build(t0):
        plan = Plan(inits=list(pre.inits))
        B.load_group(plan, t0, X[1], side, mi, 2, md, ms + 1, ma)
        if gather:
            plan.actions.append(Action(X[0], t0, f"GATHER {od}{os_}, {md}{ms + 1}"))
            plan.ports += [(X[2], 0, t0), (X[2], 1, t0)]
            B.emit(plan, od, os_, X[1], t0 + B.rl, Y[1])
            plan.actions.append(Action(Y[0], t0 + B.rl + abs(Y[1] - X[1]), f"WRITE {oa}, {od}{os_}"))
            plan.ports.append((Y[2], B.bank(oa), t0 + B.rl + abs(Y[1] - X[1]) + B.wl))
            plan.dumps.append(f".dump {Y[0]} {oa} u8 1")
        else:
            B.load_group(plan, t0, X[1], side, di, 1, md, ms, da)
            plan.actions.append(Action(X[0], t0, f"SCATTER {md}{ms}, {md}{ms + 1}"))
            plan.ports += [(X[2], 0, t0 + B.wl), (X[2], 1, t0 + B.wl)]
            plan.dumps.append(f".dump {X[0]} {region} u8 6")
        return plan
    return B.place(build, rng.randrange(0, 40))


def p_c2c(B: Builder) -> bool:
    rng = B.rng
    cfg = B.cfg
    nl = cfg["c2c_links"]
    if not B.links:
        return False
    src = rng.choice(sorted(B.links))
    dst, L = B.link_plan[src]
    sside = "W" if src < nl // 2 else "E"
    dside = "W" if dst < nl // 2 else "E"
    spos = B.fp.sxm_w_pos if sside == "W" else B.fp.sxm_e_pos
    dpos = B.fp.sxm_w_pos if dside == "W" else B.fp.sxm_e_pos
    ind, outd = B.toward(sside, False), B.toward(dside, True)
    n = rng.choice([0, 0, 1, 2])
    gap = send_interval_cycles(cfg)  # a link sends one flit per interval (LinkBusy otherwise)
    rep = (n, gap, 1) if n else None
    i = rng.randrange(B.half)
    j = rng.randrange(B.half)
    s_in, s_out = B.pick_stream(1), B.pick_stream(1)
    a, oa = B.alloc(n + 1), B.alloc(n + 1)
    pre = Plan()
    for k in range(n + 1):
        B.init(pre, B.mem(sside, i)[0], a + k, "u8")
    wait = rng.choice([0, 0, 1, 3])

    def build(t0):
        if t0 < B.link_free.get(dst, 0) or t0 < B.send_free.get(src, 0):
            return None
        plan = Plan(inits=list(pre.inits))
        plan.actions.append(Action(f"C2C.{src}", t0, f"SEND {ind}{s_in}", rep))
        B.load_group(plan, t0, spos, sside, i, 1, ind, s_in, a, rep)
        tr = t0 + L + wait
        plan.actions.append(Action(f"C2C.{dst}", tr, f"RECV {outd}{s_out}", rep))
        B.store_group(plan, tr + cfg["c2c_recv_latency"], dpos, dside, j, 1, outd, s_out, oa, rep)
        plan.dumps.append(f".dump {B.mem(dside, j)[0]} {oa} u8 {n + 1}")
        plan.after.append(lambda: B.link_free.__setitem__(dst, tr + n * gap + 1))
        plan.after.append(lambda: B.send_free.__setitem__(src, t0 + (n + 1) * gap))
        return plan
    return B.place(build, rng.randrange(0, 40))


def p_sync(B: Builder) -> bool:
    rng = B.rng
    qs = B.fp.queue_names
    x, y = rng.sample(qs, 2)
    delay = rng.choice([0, 1, 2, 5])
    lat = B.cfg["icu_notify_latency"]

    def build(t0):
        if t0 < B.sync_lock:
            return None
        tn = t0 + delay
        plan = Plan()
        plan.actions.append(Action(x, t0, "SYNC", resume=tn + lat))
        plan.actions.append(Action(y, tn, "NOTIFY"))

        def done():
            B.sync_lock = tn + 1
            B.notify_times.append(tn)
        plan.after.append(done)
        return plan
    return B.place(build, max(B.sync_lock, rng.randrange(0, 40)))


def p_misc(B: Builder) -> bool:
    rng = B.rng
    q = rng.choice(B.fp.queue_names)
    r = rng.random()
    if r < 0.1:
        hac = B.cfg["hac_period"]
        return B.place(lambda t0: Plan(actions=[Action(q, t0, "DESKEW", resume=(t0 // hac + 1) * hac)]),
                       B.free.get(q, 0))
    text = "IFETCH" if r < 0.5 else f"CONFIG {rng.randrange(1 << B.cfg['superlanes'])}"
    rep = (rng.randrange(1, 4), rng.randrange(1, 3), 1) if rng.random() < 0.3 else None
    return B.place(lambda t0: Plan(actions=[Action(q, t0, text, rep)]), rng.randrange(0, 40))


# ==================================================================================================== faults

def f_addr(B: Builder) -> bool:
    rng = B.rng
    if rng.random() < 0.5:
        name, p, g = B.mem(rng.choice("WE"), rng.randrange(B.half))
        words = B.cfg["mem_words"]
        if rng.random() < 0.5:
            return B.place(lambda t0: Plan(actions=[Action(name, t0, f"READ {words + rng.randrange(100)}, E0")]),
                           rng.randrange(0, 60))
        a = words - rng.randrange(1, 3)
        d = rng.choice("EW")
        s = B.pick_stream(1)

        def build(t0):
            plan = Plan(actions=[Action(name, t0, f"READ {a}, {d}{s}", (3, 1, 1))])
            for k in range(words - a):
                plan.ports.append((g, B.bank(a + k), t0 + k))
                B.emit(plan, d, s, p, t0 + k + B.rl, None)
            return plan
        return B.place(build, rng.randrange(0, 60))
    pname = rng.choice([f"{sd}{i}" for sd in "WE" for i in range(B.fp.planes_half)])
    row = B.cfg["mxm_acc_rows"] + rng.randrange(50)
    return B.place(lambda t0: Plan(actions=[Action(f"MXM.{pname}.ACC", t0, f"ACC.i32 {row}, E0")]),
                   rng.randrange(0, 60))


def f_bank(B: Builder) -> bool:
    rng = B.rng
    side = rng.choice("WE")
    x, y = rng.sample(range(B.half), 2)
    X, Y = B.mem(side, x), B.mem(side, y)
    d = "E" if X[1] > Y[1] else "W"
    s = B.pick_stream(1)
    bank = rng.randrange(2)
    a1, a2 = B.alloc(1, bank), B.alloc(1, bank)

    def build(t0):
        plan = Plan()
        tw = t0 + B.rl + abs(X[1] - Y[1])
        plan.actions.append(Action(Y[0], t0, f"READ {a1}, {d}{s}"))
        plan.ports.append((Y[2], bank, t0))
        B.emit(plan, d, s, Y[1], t0 + B.rl, X[1])
        plan.actions.append(Action(X[0], tw, f"WRITE {a1}, {d}{s}"))
        plan.actions.append(Action(X[0], tw + B.wl, f"READ {a2}, {d}{s}"))  # same bank as the commit
        plan.ports.append((X[2], bank, tw + B.wl))
        return plan
    return B.place(build, rng.randrange(0, 60))


def f_stream_conflict(B: Builder) -> bool:
    rng = B.rng
    a, b = rng.sample(range(B.cfg["vxm_alus_per_lane"]), 2)
    d = rng.choice("EW")
    s = B.pick_stream(4)
    lat = B.cfg["vxm_alu_latency"]

    def build(t0):
        plan = Plan(actions=[Action(f"VXM.{a}", t0, f"COPY.i32 {d}{s}, #1"),
                             Action(f"VXM.{b}", t0, f"COPY.i32 {d}{s}, #2")])
        for k in range(4):
            plan.cells.append((d, s + k, B.vxm, t0 + lat))
        return plan
    return B.place(build, rng.randrange(0, 60))


def f_stream_empty(B: Builder) -> bool:
    rng = B.rng
    name, p, g = B.mem(rng.choice("WE"), rng.randrange(B.half))
    d, s = rng.choice("EW"), B.pick_stream(1)
    a = B.alloc()

    def build(t0):
        return Plan(actions=[Action(name, t0, f"WRITE {a}, {d}{s}")], empty_cells=[(d, s, p, t0)])
    return B.place(build, rng.randrange(0, 60))


def f_reg_empty(B: Builder) -> bool:
    rng = B.rng
    free = [j for j in range(B.cfg["vxm_alus_per_lane"]) if j not in B.reg_ready]
    if not free:
        return False
    j = rng.choice(free)
    k = rng.randrange(B.cfg["vxm_alus_per_lane"])
    return B.place(lambda t0: Plan(actions=[Action(f"VXM.{k}", t0, f"ADD.i32 -, R{j}, #1")]), rng.randrange(0, 60))


def f_weight_overflow(B: Builder) -> bool:
    rng = B.rng
    side = rng.choice("WE")
    pl = rng.randrange(B.fp.planes_half)
    pname = f"{side}{pl}"
    ppos = B.fp.plane_position(side, pl)
    d = B.toward(side, False)
    a = B.alloc(11)

    def build(t0):
        if t0 < B.plane_free.get(pname, 0):
            return None
        plan = Plan(actions=[Action(f"MXM.{pname}.LW", t0, f"LW.i8 {d}0, 32", (10, 1, 1))])
        B.load_group(plan, t0, ppos, side, 0, 32, d, 0, a, (10, 1, 1))
        return plan
    return B.place(build, rng.randrange(0, 60))


def f_deadlock(B: Builder) -> bool:
    q = B.rng.choice(B.fp.queue_names)
    return B.place(lambda t0: Plan(actions=[Action(q, t0, "SYNC", resume=1 << 40)]),
                   max(B.sync_lock, B.rng.randrange(0, 60)))


def _new_link(B: Builder):
    nl = B.cfg["c2c_links"]
    srcs = [i for i in range(nl) if i not in B.links]
    dsts = [i for i in range(nl) if i not in {v[0] for v in B.link_plan.values()}]
    if not srcs or not dsts:
        return None
    a, b = B.rng.choice(srcs), B.rng.choice(dsts)
    L = B.rng.randrange(2, 30)
    B.links[a] = f".link {a} {b} {L}"
    B.link_plan[a] = (b, L)
    return a, b, L


def _send(B: Builder, link: int, rep=None):
    nl = B.cfg["c2c_links"]
    side = "W" if link < nl // 2 else "E"
    pos = B.fp.sxm_w_pos if side == "W" else B.fp.sxm_e_pos
    d = B.toward(side, False)
    s = B.pick_stream(1)
    i = B.rng.randrange(B.half)
    a = B.alloc(12)

    def build(t0):
        plan = Plan(actions=[Action(f"C2C.{link}", t0, f"SEND {d}{s}", rep)])
        B.load_group(plan, t0, pos, side, i, 1, d, s, a, rep)
        return plan
    return B.place(build, B.rng.randrange(0, 60))


def f_link(B: Builder) -> bool:
    rng = B.rng
    kind = rng.choice(["empty", "unconnected", "overflow", "unreceived", "busy"])
    nl = B.cfg["c2c_links"]
    if kind == "unconnected":
        free = [i for i in range(nl) if i not in B.links]
        return bool(free) and _send(B, rng.choice(free))
    new = _new_link(B)
    if new is None:
        return False
    a, b, L = new
    if kind == "empty":
        s = B.pick_stream(1)
        return B.place(lambda t0: Plan(actions=[Action(f"C2C.{b}", t0, f"RECV E{s}")]), rng.randrange(0, 60))
    if kind == "overflow":
        return _send(B, a, (B.cfg["c2c_rx_buffer_vectors"], send_interval_cycles(B.cfg), 1))
    if kind == "busy":  # a second SEND before the first flit has left the link
        return _send(B, a, (1, rng.randrange(1, send_interval_cycles(B.cfg)), 1))
    return _send(B, a)


TEXT_FAULTS = [
    ("VXM.3", ["NOP 2", "REPEAT 1, 1"]),            # REPEAT after NOP: assembly error
    ("VXM.5", ["READ 1, E0"]),                      # wrong unit: assembly error
    ("MEM.W2", ["FROB 1, E0"]),                     # unknown mnemonic
    ("VXM.1", ["ADD.f32 E30, #1.0, #2.0"]),         # stream group past stream 31: load-time InvalidInstruction
    ("SXM.W.1", ["SHIFT E0, E1, 400"]),             # SHIFT amount: load-time
    ("VXM.99", ["IFETCH"]),                         # a queue the chip does not have: load-time
    ("VXM.2", ["ADD.i32 -, R17, #1"]),              # no register R17: load-time
    ("MXM.W0.LW", ["LW.i8 W0, 400"]),               # LW n > mxm_dim: load-time (and the group does not fit)
    ("MEM.E1", ["DESKEW", "REPEAT 1, 1"]),          # REPEAT after DESKEW
]


def f_text(B: Builder) -> bool:
    q, lines = B.rng.choice(TEXT_FAULTS)
    B.lines.setdefault(q, []).extend(lines)
    return True


FAULTS = [f_addr, f_bank, f_stream_conflict, f_stream_empty, f_reg_empty, f_weight_overflow, f_deadlock, f_link,
          f_text,
          lambda B: p_mxm(B, fault="busy", T="f16"),
          lambda B: p_mxm(B, fault="type_acc", T="f16"),
          lambda B: p_mxm(B, fault="type_plus", T="f16")]

PATTERNS = [(p_copy, 2.0), (p_vxm, 4.0), (p_mxm, 1.5), (p_sxm, 1.5), (p_gather_scatter, 1.0), (p_c2c, 1.2),
            (p_sync, 0.7), (p_misc, 0.6)]


def generate(seed: int, size: str = "small", config: dict | None = None, fault_rate: float = 0.2) -> str:
    """A random program (assembly text). `size`: 'small' (3-8 dataflow patterns) or 'large' (15-30)."""
    cfg = TSP_V1 if config is None else config
    rng = random.Random(seed)
    B = Builder(rng, cfg)
    B.link_plan = {}
    if rng.random() < 0.5:
        for _ in range(rng.choice([1, 1, 2])):
            _new_link(B)
    lo, hi = {"small": (3, 8), "large": (15, 30)}[size]
    fns, weights = zip(*PATTERNS)
    for _ in range(rng.randint(lo, hi)):
        rng.choices(fns, weights)[0](B)
    if rng.random() < fault_rate:
        for _ in range(10):
            if rng.choice(FAULTS)(B):
                break
    return f"; random program seed={seed} size={size}\n" + B.text()
