"""Parse the assembly text format of docs/isa.md section 6 into plain dataclasses.

A program is a dict queue name -> list of `Instruction`, plus the `.init`, `.dump` and `.link` directives.
Every error raises `ReferenceAssemblyError` naming the line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from .numerics import WIDTH, parse_int, parse_number


class ReferenceAssemblyError(Exception):
    """The program text is invalid (kind InvalidInstruction / QueueOverrun at load time); names the line."""

    def __init__(self, line: int, message: str, kind: str = "InvalidInstruction"):
        self.line = line
        self.kind = kind
        self.message = message
        super().__init__(f"line {line}: {message}")


@dataclass(frozen=True)
class Stream:
    direction: str  # 'E' (eastward) or 'W' (westward)
    index: int

    def __str__(self) -> str:
        return f"{self.direction}{self.index}"


@dataclass(frozen=True)
class Reg:
    index: int

    def __str__(self) -> str:
        return f"R{self.index}"


@dataclass(frozen=True)
class Imm:
    text: str  # as written, without '#'
    bits: int  # the element's bit pattern in the operation's input type

    def __str__(self) -> str:
        return f"#{self.text}"


@dataclass(frozen=True)
class Instruction:
    op: str                       # upper-case mnemonic
    dtype: str | None = None      # the type suffix (CVT: the source type)
    dst_type: str | None = None   # CVT only: the destination type
    operands: tuple = ()
    line: int = 0

    @property
    def mnemonic(self) -> str:
        if self.op == "CVT":
            return f"CVT.{self.dtype}.{self.dst_type}"
        return f"{self.op}.{self.dtype}" if self.dtype else self.op

    @property
    def text(self) -> str:
        ops = []
        for o in self.operands:
            if o is None:
                ops.append("-")
            elif o is True:
                ops.append("+")
            elif o is False:
                continue
            elif isinstance(o, tuple):
                ops.extend(str(x) for x in o)
            else:
                ops.append(str(o))
        return self.mnemonic + (" " + ", ".join(ops) if ops else "")

    def stream_groups(self) -> list:
        """(stream, number of streams) of every stream group operand, for the load-time fit check."""
        o, op = self.operands, self.op
        if op in ("READ", "WRITE"):
            return [(o[1], 1)]
        if op in ("GATHER", "SCATTER"):
            return [(o[0], 1), (o[1], 2)]
        if op == "CVT":
            out = [(o[1], WIDTH[self.dtype])] if isinstance(o[1], Stream) else []
            return out + ([(o[0], WIDTH[self.dst_type])] if o[0] is not None else [])
        if self.dtype in ("f32", "i32") and op not in ("ACC",):  # VXM ops
            out = [(x, 4) for x in o[1:] if isinstance(x, Stream)]
            return out + ([(o[0], 4)] if o[0] is not None else [])
        if op == "LW":
            return [(o[0], o[1] * WIDTH[self.dtype])]
        if op == "ABC":
            return [(o[0], WIDTH[self.dtype])]
        if op == "ACC":
            return [(o[1], 4)]
        if op in ("SHIFT", "DISTRIBUTE"):
            return [(o[0], 1), (o[1], 1)]
        if op == "PERMUTE":
            return [(o[0], 1), (o[1], 1), (o[2], 2)]
        if op == "TRANSPOSE":
            return [(o[0], 16), (o[1], 16)]
        if op in ("SEND", "RECV"):
            return [(o[0], 1)]
        return []

    # the operand that REPEAT's stride adds to (docs/isa.md section 3)
    def address_slot(self) -> int | None:
        return {"READ": 0, "WRITE": 0, "ABC": 1, "ACC": 0}.get(self.op)

    def with_address_offset(self, k: int) -> "Instruction":
        slot = self.address_slot()
        if slot is None or k == 0:
            return self
        ops = list(self.operands)
        ops[slot] = ops[slot] + k
        return replace(self, operands=tuple(ops))


@dataclass(frozen=True)
class Init:
    slice: str      # canonical MEM slice name of byte plane 0
    addr: int
    dtype: str
    values: tuple   # element bit patterns, one per lane given (rest 0); or fill
    fill: bool
    line: int


@dataclass(frozen=True)
class Dump:
    slice: str
    addr: int
    dtype: str
    count: int
    line: int


@dataclass(frozen=True)
class Link:
    src: int
    dst: int
    latency: int
    line: int


@dataclass
class Program:
    queues: dict = field(default_factory=dict)  # queue name -> list[Instruction]
    inits: list = field(default_factory=list)
    dumps: list = field(default_factory=list)
    links: list = field(default_factory=list)


ICU_OPS = {"NOP", "REPEAT", "SYNC", "NOTIFY", "IFETCH", "CONFIG", "DESKEW", "RUNTIME_DESKEW"}
VXM_BINARY = {"ADD", "SUB", "MUL", "MAX", "MIN", "DIV", "EQ", "NE", "LT", "LE", "GT", "GE", "AND", "OR", "XOR"}
VXM_UNARY = {"RELU", "NEG", "ABS", "COPY", "EXP", "TANH", "RSQRT", "RCP", "SIGMOID", "ERF", "LOG", "SQRT", "FLOOR",
             "CEIL", "NOT", "SIN", "COS"}
VXM_F32_ONLY = {"DIV", "EXP", "TANH", "RSQRT", "RCP", "SIGMOID", "ERF", "LOG", "SQRT", "FLOOR", "CEIL", "SIN", "COS"}
VXM_I32_ONLY = {"AND", "OR", "XOR", "NOT"}
TYPES = ("i8", "u8", "f16", "i32", "f32")


def queue_unit(name: str) -> str:
    return name.split(".")[0]


_QUEUE_RES = [
    (re.compile(r"MEM\.([WE])(\d+)"), lambda m: f"MEM.{m[1]}{int(m[2])}"),
    (re.compile(r"VXM\.(\d+)"), lambda m: f"VXM.{int(m[1])}"),
    (re.compile(r"MXM\.([WE])(\d+)\.(LW|IW|ABC|ACC)"), lambda m: f"MXM.{m[1]}{int(m[2])}.{m[3]}"),
    (re.compile(r"SXM\.([WE])\.(\d+)"), lambda m: f"SXM.{m[1]}.{int(m[2])}"),
    (re.compile(r"C2C\.(\d+)"), lambda m: f"C2C.{int(m[1])}"),
]


def canonical_queue(raw: str) -> str | None:
    """The canonical spelling of a queue name, or None. Whether the chip has the queue is a load-time check."""
    u = raw.upper()
    for rx, canon in _QUEUE_RES:
        m = rx.fullmatch(u)
        if m:
            return canon(m)
    return None


def assemble(text: str) -> Program:
    """Parse program text. Only configuration-free checks happen here (docs/isa.md section 9.3): the
    configuration-dependent ones are load-time checks of the interpreter (`interp.load_checks`)."""
    prog = Program()
    current: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue

        def err(msg: str, kind: str = "InvalidInstruction"):
            raise ReferenceAssemblyError(lineno, f"{msg}: {raw.strip()!r}", kind)

        if line.startswith("."):
            words = line.split()
            d = words[0].lower()
            try:
                if d == ".queue":
                    if len(words) != 2:
                        err("expected '.queue NAME'")
                    q = canonical_queue(words[1])
                    if q is None:
                        err(f"unknown queue {words[1]}")
                    current = q
                    prog.queues.setdefault(q, [])
                elif d == ".init":
                    prog.inits.append(_parse_init(words, lineno, err))
                elif d == ".dump":
                    if len(words) != 5:
                        err("expected '.dump SLICE ADDR TYPE COUNT'")
                    sl = _mem_slice(words[1], err)
                    dt = words[3].lower()
                    if dt not in TYPES:
                        err(f"unknown type {words[3]}")
                    addr, count = parse_int(words[2]), parse_int(words[4])
                    if count < 1 or addr < 0:
                        err("bad dump address or count")
                    prog.dumps.append(Dump(sl, addr, dt, count, lineno))
                elif d == ".link":
                    if len(words) != 4:
                        err("expected '.link SRC DST LATENCY'")
                    a, b, lat = (parse_int(w) for w in words[1:])
                    if a < 0 or b < 0 or lat < 1:
                        err("bad link number or latency < 1")
                    prog.links.append(Link(a, b, lat, lineno))
                else:
                    err(f"unknown directive {words[0]}")
            except ValueError as e:
                err(str(e))
            continue

        if current is None:
            err("instruction before any .queue")
        try:
            ins = _parse_instruction(line, lineno, current, err)
        except ValueError as e:
            err(str(e))
        qlist = prog.queues[current]
        if ins.op == "REPEAT":
            prev = qlist[-1] if qlist else None
            if prev is None or prev.op in ("NOP", "REPEAT", "SYNC", "DESKEW", "RUNTIME_DESKEW"):
                err("REPEAT needs a previous instruction that is not NOP/REPEAT/SYNC/DESKEW")
        qlist.append(ins)
    return prog


def _mem_slice(word: str, err) -> str:
    m = re.fullmatch(r"MEM\.([WE])(\d+)", word.upper())
    if not m:
        err(f"unknown MEM slice {word}")
    return f"MEM.{m.group(1)}{int(m.group(2))}"


def _parse_init(words, lineno, err) -> Init:
    if len(words) < 5:
        err("expected '.init SLICE ADDR TYPE VALUES...'")
    sl = _mem_slice(words[1], err)
    addr = parse_int(words[2])
    dt = words[3].lower()
    if dt not in TYPES:
        err(f"unknown type {words[3]}")
    if addr < 0:
        err(f"bad address {addr}")
    if words[4].lower() == "fill":
        if len(words) != 6:
            err("expected one value after fill")
        return Init(sl, addr, dt, (parse_number(words[5], dt),), True, lineno)
    vals = tuple(parse_number(w, dt) for w in words[4:])
    return Init(sl, addr, dt, vals, False, lineno)


def _split_operands(rest: str) -> list[str]:
    rest = rest.strip()
    if not rest:
        return []
    return [o.strip() for o in rest.split(",")]


def _parse_instruction(line, lineno, queue, err) -> Instruction:
    parts = line.split(None, 1)
    mnem = parts[0].upper()
    ops = _split_operands(parts[1] if len(parts) > 1 else "")
    if any(o == "" for o in ops):
        err("empty operand")
    pieces = mnem.split(".")
    op = pieces[0]
    types = [p.lower() for p in pieces[1:]]
    unit = queue_unit(queue)

    def nargs(*allowed):
        if len(ops) not in allowed:
            err(f"{op} takes {' or '.join(map(str, allowed))} operands")

    def notype():
        if types:
            err(f"{op} takes no type suffix")

    def one_type(allowed):
        if len(types) != 1 or types[0] not in allowed:
            err(f"{op} needs a type suffix in {', '.join(allowed)}")
        return types[0]

    def stream(word, width=1):
        m = re.fullmatch(r"([EW])(\d+)", word.upper())
        if not m:
            err(f"expected a stream, got {word}")
        return Stream(m.group(1), int(m.group(2)))  # the group's fit is a load-time check

    def integer(word):
        return parse_int(word)

    def address(word):
        a = parse_int(word)  # addresses and rows are unsigned fields (range checked at issue)
        if a < 0:
            err(f"negative address {word}")
        return a

    def ins(*operands, dtype=None, dst_type=None):
        return Instruction(op, dtype, dst_type, tuple(operands), lineno)

    # ---- ICU (valid in every queue)
    if op in ICU_OPS:
        notype()
        if op == "NOP":
            nargs(1)
            n = integer(ops[0])
            if n < 1:
                err("NOP needs n >= 1")
            return ins(n)
        if op == "REPEAT":
            nargs(2, 3)
            n, d = integer(ops[0]), integer(ops[1])
            s = integer(ops[2]) if len(ops) == 3 else 1
            if n < 1 or d < 1:
                err("REPEAT needs n >= 1 and d >= 1")
            return ins(n, d, s)
        if op == "RUNTIME_DESKEW":
            nargs(1)
            d = integer(ops[0])
            if not 1 <= d < (1 << 32):
                err("RUNTIME_DESKEW needs 1 <= t < 2^32")
            return ins(d)
        if op == "CONFIG":
            nargs(1)
            m = integer(ops[0])
            if not 0 <= m < (1 << 32):
                err("CONFIG mask out of range")
            return ins(m)
        nargs(0)
        return ins()

    if unit == "MEM":
        notype()
        if op in ("READ", "WRITE"):
            nargs(2)
            return ins(address(ops[0]), stream(ops[1]))
        if op in ("GATHER", "SCATTER"):
            nargs(2)
            s, m = stream(ops[0]), stream(ops[1], 2)
            return ins(s, m)
    elif unit == "VXM":
        if op == "CVT":
            if len(types) != 2 or types[0] not in TYPES or types[1] not in TYPES:
                err("CVT needs two types CVT.S.D")
            src, dst = types
            nargs(2)
            d = None if ops[0] == "-" else stream(ops[0], WIDTH[dst])
            a = _vxm_source(ops[1], src, stream, err)
            return ins(d, a, dtype=src, dst_type=dst)
        if op in VXM_BINARY or op in VXM_UNARY:
            t = one_type(("f32",) if op in VXM_F32_ONLY else ("i32",) if op in VXM_I32_ONLY else ("f32", "i32"))
            nargs(3 if op in VXM_BINARY else 2)
            d = None if ops[0] == "-" else stream(ops[0], WIDTH[t])
            srcs = [_vxm_source(o, t, stream, err) for o in ops[1:]]
            return ins(d, *srcs, dtype=t)
    elif unit == "MXM":
        part = queue.split(".")[2]
        if op == "LW" and part == "LW":
            t = one_type(("i8", "u8", "f16"))
            nargs(2)
            n = integer(ops[1])
            if n < 1:
                err("LW needs n >= 1")
            s = stream(ops[0], n * WIDTH[t])
            return ins(s, n, dtype=t)
        if op == "IW" and part == "IW":
            notype()
            nargs(0)
            return ins()
        if op == "ABC" and part == "ABC":
            t = one_type(("i8", "u8", "f16"))
            nargs(2, 3)
            if len(ops) == 3 and ops[2] != "+":
                err("the third operand of ABC can only be '+'")
            return ins(stream(ops[0], WIDTH[t]), address(ops[1]), len(ops) == 3, dtype=t)
        if op == "ACC" and part == "ACC":
            t = one_type(("i32", "f32"))
            nargs(2)
            return ins(address(ops[0]), stream(ops[1], 4), dtype=t)
    elif unit == "SXM":
        notype()
        if op == "SHIFT":
            nargs(3)
            return ins(stream(ops[0]), stream(ops[1]), integer(ops[2]))
        if op == "PERMUTE":
            nargs(3)
            return ins(stream(ops[0]), stream(ops[1]), stream(ops[2], 2))
        if op == "DISTRIBUTE":
            nargs(18)
            ms = tuple(integer(o) for o in ops[2:])
            if any(not (0 <= m < 16 or m == 255) for m in ms):
                err("DISTRIBUTE map entries must be 0..15 or 255")
            return ins(stream(ops[0]), stream(ops[1]), ms)
        if op == "TRANSPOSE":
            nargs(2)
            return ins(stream(ops[0], 16), stream(ops[1], 16))
    elif unit == "C2C":
        notype()
        if op in ("SEND", "RECV"):
            nargs(1)
            return ins(stream(ops[0]))
    err(f"{mnem} is not an instruction of queue {queue}")


def _vxm_source(word: str, t: str, stream, err):
    if word.startswith("#"):
        try:
            return Imm(word[1:], parse_number(word[1:], t))
        except (ValueError, ZeroDivisionError) as e:
            err(f"bad immediate {word} for {t}: {e}")
    m = re.fullmatch(r"R(\d+)", word.upper())
    if m:
        if t not in ("f32", "i32"):
            err(f"a result register cannot be read as {t}")
        return Reg(int(m.group(1)))
    return stream(word, WIDTH[t])
