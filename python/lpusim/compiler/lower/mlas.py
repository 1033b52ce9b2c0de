"""onnxruntime's float Tanh kernel followed operation for operation on the VXM (quantised models).

In a quantised model a Tanh (GPT-2's gelu_new) sits between a DequantizeLinear and a QuantizeLinear, and onnxruntime
runs it in float32 with MLAS's kernel, not a correctly rounded tanh. On x86-64 with FMA3 (MlasTanhKernelFma3, the
constants of MLAS's tanh.cpp, which are Eigen's) it clamps x to [-9, 9] and returns p / q,

    p = x * P(x^2),  P = ((((a13 x^2 + a11) x^2 + a9) x^2 + a7) x^2 + a5) x^2 + a3) x^2 + a1
    q = Q(x^2),      Q = ((b6 x^2 + b4) x^2 + b2) x^2 + b0,

each Horner step one fused multiply-add (one rounding). The VXM's TANH is correctly rounded (docs/isa.md), so the two
differ on 49% of all float32 inputs (measured on every one: by one unit on 36%, two on 10%, more on 2%, up to 104
where the result is subnormal). That moves a code where a value lies within those units of a code boundary, and
the quantiser puts one there: calibrated on a saturated tanh, its scale [-m, m] (m = MLAS's tanh(9) = 0.99999976)
puts -m on the boundary between codes 0 and 1, which the correctly rounded -0.9999999 and -1 fall below. In
GPT-2's export quantised for batch 2, 2 of the 256 inputs layer 1's Tanh can see (-8.24 and -8.06) came out one
code off.

The VXM has no fused multiply-add, so each one is emulated with float32 operations: a * b = prod + e exactly
(Dekker's product: a and b split by Veltkamp's 4097 into halves of 12 bits, whose products are exact), prod + c =
s + t exactly (Knuth's TwoSum; Fast2Sum, 3 operations, where |c| >= |prod| for every x in [-9, 9]: the first four
steps of P and the first of Q), and fma(a, b, c) = s + (t + e). That sum rounds twice where prod + c is exactly
halfway between two floats (t = half a unit of s) and e, absorbed by t, would have broken the tie. Run on every
float32 input (C, -ffp-contract=off, against fmaf), the result equals MLAS's on all but ten (+-0x1.1272fp-10,
+-0x1.3233fcp-7, +-0x1.544928p-3, +-0x1.989276p+0, +-0x1.4fd5d6p+1: one unit off).

The work (about 180 operations) is far longer than one VXM chain, so it is written as SSA operations (`Program`)
and cut into vector nodes at the stored values: each node computes one stored value from the input and earlier
stored values, recomputing what else it needs (`emit`). Per Horner step, three nodes read only the previous step's
value (the low half of its split, Dekker's first partial sums with the high half recomputed, TwoSum's error) and one
node adds them up, so a step costs two nodes of latency; the two chains' nodes are emitted in turn. 33 nodes: a
DequantizeLinear-Mul-Tanh-QuantizeLinear of one 128-lane row takes 677 cycles instead of 64; GPT-2's decode step at
batch 2, whose layer 1 needs it, 19,321 instead of 18,440.

So the kernel runs only where the TANH could give another code (`vxm_tanh_gives_codes`): a Tanh whose input can only
take the 256 values of a DequantizeLinear's codes (through scalar Mul/Div/Add/Sub: GPT-2's gelu_new) and whose
output only QuantizeLinears read keeps the TANH when, for every one of those inputs, TANH's and MLAS's results
(computed on the host) and their float32 neighbours all quantise to one code. Every other Tanh of a quantised model
runs the kernel. `Program.evaluate` runs the same operations in numpy (tests/ops/test_int8.py compares it and the
chip with onnxruntime).
"""
from __future__ import annotations

import math
from itertools import zip_longest

import numpy as np

from lpusim.compiler.ir import Step, View
from lpusim.compiler.lower.lanes import node_of
from lpusim.compiler.lower.quant_codes import q_requantizer
from lpusim.compiler.passes import fits_vxm

F32 = np.float32

# MLAS's MlasTanhConstants (onnxruntime/core/mlas/lib/tanh.cpp)
TANH_RANGE = F32(9.0)
TANH_P = [F32(v) for v in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                           4.89352455891786e-03)]  # alpha_13, alpha_11, ..., alpha_1
TANH_Q = [F32(v) for v in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                           4.89352518554385e-03)]  # beta_6, beta_4, beta_2, beta_0
# Fast2Sum holds (|c| >= |prod| for all |x| <= 9) in the first four steps of P and the first of Q
P_FAST = (True, True, True, True, False, False)
Q_FAST = (True, False, False)

SPLIT = 4097.0  # Veltkamp: 2^12 + 1 splits a float32 into two halves of at most 12 significant bits

NP_OPS = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "DIV": np.divide, "MAX": np.maximum,
          "MIN": np.minimum}


class Program:
    """Elementwise float32 work on one input as SSA operations. An argument is ("in",) (the input), a float (an
    immediate) or ("op", i) (operation i's result); `store` marks the results that become tensors."""

    def __init__(self):
        self.ops: list[tuple[str, list]] = []
        self.stored: list[tuple[int, str]] = []  # (operation, hint), in the order the nodes are emitted

    def op(self, name: str, *args) -> tuple:
        self.ops.append((name, [("imm", float(a)) if isinstance(a, (float, np.floating)) else a for a in args]))
        return ("op", len(self.ops) - 1)

    def store(self, ref: tuple, hint: str) -> tuple:
        self.stored.append((ref[1], hint))
        return ref

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """The operations in numpy float32 (what the nodes compute): the last operation's result."""
        x = np.asarray(x, dtype=F32)
        vals: list = []
        with np.errstate(all="ignore"):
            for name, args in self.ops:
                vals.append(NP_OPS[name](*[x if a[0] == "in" else F32(a[1]) if a[0] == "imm" else vals[a[1]]
                                           for a in args]).astype(F32))
        return vals[-1]

    def node_steps(self) -> list[tuple[str, list[str | int], list[Step]]]:
        """Per stored value (in order): its hint, its node's sources (None for the input, else the index of a
        stored operation) and steps."""
        stored = {i for i, _ in self.stored}
        out = []
        for target, hint in self.stored:
            cone, stack = set(), [target]
            while stack:
                i = stack.pop()
                if i not in cone and (i == target or i not in stored):
                    cone.add(i)
                    stack.extend(a[1] for a in self.ops[i][1] if a[0] == "op")
            sources, steps, at = [], [], {}

            def arg(a):
                if a[0] == "imm":
                    return a
                if a[0] == "op" and a[1] in cone:
                    return ("step", at[a[1]])
                key = None if a[0] == "in" else a[1]
                if key not in sources:
                    sources.append(key)
                return ("src", sources.index(key))
            for i in sorted(cone):
                name, args = self.ops[i]
                steps.append(Step(name, [arg(a) for a in args]))
                at[i] = len(steps) - 1
            out.append((hint, sources, steps))
        return out


def _hi(prog: Program, a: tuple) -> tuple:
    """Veltkamp's high half of a (12 bits); a - hi is exact and holds the rest (12 bits)."""
    g = prog.op("MUL", a, SPLIT)
    return prog.op("ADD", g, prog.op("SUB", a, g))


def _split_const(c: np.float32) -> tuple:
    g = F32(c * F32(SPLIT))
    hi = F32(g + F32(c - g))
    return hi, F32(c - hi)


def _fma(prog: Program, a: tuple, b: tuple | np.float32, bh, bl, c: np.float32, fast: bool, hint: str,
         halves: tuple | None = None) -> tuple:
    """fmaf(a, b, c) for a computed a (its stored `halves`, or split here) and b computed with stored halves bh,
    bl or a constant: Dekker's e = ((ah bh - prod) + ah bl + al bh) + al bl with prod = fl(a b), then TwoSum
    (Fast2Sum when `fast`). Nodes: al, the first two terms of e (ah recomputed), TwoSum's error t (not for
    Fast2Sum), each reading a and the stored x^2 values only; then the sum s + (t + e)."""
    if halves is None:
        ah = _hi(prog, a)
        al = prog.store(prog.op("SUB", a, ah), f"{hint}.lo")
    else:
        ah, al = halves
    prod = prog.op("MUL", a, b)
    e = prog.store(prog.op("ADD", prog.op("SUB", prog.op("MUL", ah, bh), prod), prog.op("MUL", ah, bl)),
                   f"{hint}.e")
    e = prog.op("ADD", prog.op("ADD", e, prog.op("MUL", al, bh)), prog.op("MUL", al, bl))
    if fast:
        s = prog.op("ADD", c, prod)
        t = prog.op("SUB", prod, prog.op("SUB", s, c))
    else:
        s = prog.op("ADD", prod, c)
        bv = prog.op("SUB", s, prod)
        t = prog.store(prog.op("ADD", prog.op("SUB", prod, prog.op("SUB", s, bv)), prog.op("SUB", c, bv)),
                       f"{hint}.t")
    return prog.store(prog.op("ADD", s, prog.op("ADD", t, e)), hint)


def _square(prog: Program) -> tuple:
    """(x clamped to [-9, 9], its square), as operations of their own: each node that starts from x repeats them
    rather than wait for a stored x^2."""
    x = prog.op("MIN", prog.op("MAX", ("in",), -TANH_RANGE), TANH_RANGE)
    return x, prog.op("MUL", x, x)


def tanh_program() -> Program:
    """MLAS's float32 tanh (MlasTanhKernelFma3) as float32 operations without a fused multiply-add."""
    prog = Program()
    x, x2 = _square(prog)
    x2 = prog.store(x2, "x2")
    xh = prog.store(_hi(prog, _square(prog)[1]), "x2.hi")  # x^2's halves, each from x in one node
    other = _square(prog)[1]
    xl = prog.store(prog.op("SUB", other, _hi(prog, other)), "x2.lo")
    # the first step of P and of Q multiplies x^2 by a constant: x^2 is the split operand (its stored halves), the
    # constant's halves are immediates
    p = _fma(prog, x2, TANH_P[0], *_split_const(TANH_P[0]), TANH_P[1], P_FAST[0], "p1", (xh, xl))
    for i, (c, fast) in enumerate(zip(TANH_P[2:], P_FAST[1:])):
        p = _fma(prog, p, x2, xh, xl, c, fast, f"p{i + 2}")
    q = _fma(prog, x2, TANH_Q[0], *_split_const(TANH_Q[0]), TANH_Q[1], Q_FAST[0], "q1", (xh, xl))
    for i, (c, fast) in enumerate(zip(TANH_Q[2:], Q_FAST[1:])):
        q = _fma(prog, q, x2, xh, xl, c, fast, f"q{i + 2}")
    prog.store(prog.op("DIV", prog.op("MUL", p, x), q), "tanh")
    # the nodes of the two chains' steps in turn (p1, q1, p2, q2, ...), so that the chains overlap in time
    head, last = prog.stored[:3], prog.stored[-1:]
    steps = [[[s for s in prog.stored if s[1].split(".")[0] == f"{k}{n}"] for n in range(1, len(TANH_P))]
             for k in "pq"]
    prog.stored = head + [s for pair in zip_longest(*steps, fillvalue=[]) for step in pair for s in step] + last
    return prog


def emit(lw, node, prog: Program, x: str, shape: tuple, magnitude: float = 1.0) -> str:
    """The program as vector nodes on IR tensor x, one per stored value; returns the last one's tensor. Every node
    but the last is read by the VXM only (f32, no format tail), so it may take all the VXM's ALUs."""
    tensors: dict = {None: x}
    plan = prog.node_steps()
    for k, (hint, sources, steps) in enumerate(plan):
        last = k == len(plan) - 1
        if not fits_vxm(steps, **({} if last else {"tail": 0})):  # tests/ops/test_int8.py compiles it
            raise AssertionError(f"mlas.emit: the node for '{hint}' does not fit one VXM chain")
        out = node_of(lw, node, [View(tensors[s]) for s in sources], steps, shape, f"{node.output[0]}.{hint}",
                      magnitude if last else 81.0)
        tensors[prog.stored[k][0]] = out
    return out


# ----- when the VXM's TANH already gives onnxruntime's codes ---------------------------------------------------------
def code_values(lw, name: str, depth: int = 4) -> np.ndarray | None:
    """Every value the float tensor `name` can take when it is a DequantizeLinear of 8-bit codes (scalar scale and
    zero point) followed by up to `depth` Add/Sub/Mul/Div with a scalar constant (GPT-2's gelu_new:
    Mul(DequantizeLinear(codes), 0.7978846)), computed in float32 as onnxruntime and the chip compute them; else
    None."""
    producer = {o: n for n in lw.model.graph.node for o in n.output}
    chain = []
    node = producer.get(name)
    while node is not None and node.op_type in ("Add", "Sub", "Mul", "Div") and len(chain) < depth:
        scalar = [i for i, x in enumerate(node.input) if x in lw.consts and np.asarray(lw.consts[x]).size == 1]
        if len(node.input) != 2 or len(scalar) != 1:
            return None
        k = scalar[0]
        chain.append((node.op_type, F32(np.asarray(lw.consts[node.input[k]]).reshape(())), k))
        node = producer.get(node.input[1 - k])
    if node is None or node.op_type != "DequantizeLinear" or any(
            x not in lw.consts or np.asarray(lw.consts[x]).size != 1 for x in node.input[1:]):
        return None
    zp = np.asarray(lw.consts[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.uint8(0)
    if zp.dtype not in (np.uint8, np.int8):
        return None
    codes = np.arange(256) - (128 if zp.dtype == np.int8 else 0)
    v = (codes - int(zp)).astype(F32) * F32(np.asarray(lw.consts[node.input[1]]).reshape(()))
    ops = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
    with np.errstate(all="ignore"):
        for op, c, k in reversed(chain):
            v = (ops[op](v, c) if k == 1 else ops[op](c, v)).astype(F32)
    return v


def vxm_tanh_gives_codes(lw, node) -> bool:
    """Whether the VXM's TANH gives onnxruntime's codes without MLAS's kernel: the Tanh's output is read only by
    QuantizeLinears of one scale and zero point, its input can only take the values of 8-bit codes (`code_values`),
    and for each of them the TANH result (float32 of the host libm's binary64 tanh, as the VXM computes it,
    docs/isa.md) and MLAS's, each with its float32 neighbours, quantise to one code. GPT-2's gelu_new at int8 passes
    this unless a calibrated code boundary lies within a few units of a saturated tanh."""
    q = q_requantizer(lw, node.output[0])
    a = code_values(lw, node.input[0])
    if q is None or a is None or any(x not in lw.consts for x in q.input[1:]) or len(q.input) < 3:
        return False
    scale, zp = (np.asarray(lw.consts[x]) for x in q.input[1:3])
    if scale.size != 1 or zp.size != 1 or zp.dtype not in (np.uint8, np.int8):
        return False
    lo, hi = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
    mlas = tanh_program().evaluate(a)
    with np.errstate(all="ignore"):
        vxm = np.array([math.tanh(float(v)) for v in a]).astype(F32)
        near = [np.nextafter(v, F32(-np.inf)) for v in (mlas, vxm)] + [mlas, vxm] + \
            [np.nextafter(v, F32(np.inf)) for v in (mlas, vxm)]
        codes = [np.clip(np.round(v / F32(scale.reshape(()))) + int(zp.reshape(())), lo, hi) for v in near]
    return bool(np.isfinite(a).all() and all(np.array_equal(c, codes[0]) for c in codes[1:]))
