"""int8 helpers shared by quant.py, quant_contract.py and attention.py: the constants and zero points of a
quantisation op (`q_const`, `q_scalar_scale`, `q_zero`, `q_kind`), the rounding steps (MAGIC), lazily dequantized
values made floats (`q_materialize`), requantizer look-ups (`q_users`, `q_requantizer`, `q_alias_requantized`), the
int8 pieces of uint8 weights and onnxruntime's float32 arithmetic for QLinearAdd (`fma_steps`).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from lpusim.compiler.ir import Node, Step, View
from lpusim.errors import CompileError


MAGIC = 12582912.0  # 1.5 * 2^23: x + MAGIC - MAGIC rounds an f32 |x| < 2^22 to an integer, half to even


Q_TYPES = {onnx.TensorProto.UINT8: "u8", onnx.TensorProto.INT8: "i8", onnx.TensorProto.INT32: "i32"}

Q_NP_TYPES = {np.dtype(np.uint8): "u8", np.dtype(np.int8): "i8", np.dtype(np.int32): "i32"}


def int8_pieces(w: np.ndarray) -> list[np.ndarray]:
    """Integer weights as a sum of int8 arrays (one when w fits int8): the MXM takes int8 weights, and x @ (a + b)
    = x @ a + x @ b accumulates exactly, so uint8 weights with a zero point (w - zw up to +-255) cost extra passes."""
    pieces, rest = [], np.asarray(w, dtype=np.int64)
    if rest.size == 0 or (rest.min() >= -128 and rest.max() <= 127):
        return [rest]
    while not pieces or rest.any():
        piece = np.clip(rest, -128, 127)
        pieces.append(piece)
        rest = rest - piece
    return pieces


def _code(zp, kind: str):
    """A zero point (or any integer) as the code the IR holds: uint8 values move down by 128."""
    return np.asarray(zp, dtype=np.int64) - (128 if kind == "u8" else 0)


# ----- QLinearAdd as onnxruntime's AVX2 kernel computes it -------------------------------------------------------
RAW = {"u8": 128, "i8": 0}  # a code plus this is the 8-bit value onnxruntime stores


def _f32(x) -> np.float32:
    return np.float32(x)


def _fma32(a, b, c) -> np.float32:
    """fmaf(a, b, c) for float32 a, c and an integer b below 2^8: the product is exact in float64."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def qlinear_add_constants(sa, za_raw, sb, zb_raw, sc, zc_raw) -> tuple:
    """(rAC, rBC, fixed) of MlasQLinearAddKernelAvx2Helper: rAC = sa / sc, rBC = sb / sc and
    fixed = zc - (rAC * za + rBC * zb) in float32, the compiler contracting rAC * za + (rBC * zb) into one fma
    (measured: without the contraction one of 100,352 outputs of a ResNet-18 residual Add is one step off)."""
    rac, rbc = _f32(_f32(sa) / _f32(sc)), _f32(_f32(sb) / _f32(sc))
    fixed = _f32(_f32(zc_raw) - _fma32(rac, za_raw, _f32(rbc * _f32(zb_raw))))
    return rac, rbc, fixed


def _unit(bound: float) -> float:
    """A power of two u with bound < 2^22 u: float32 holds every multiple of u up to 4 * bound exactly."""
    return float(2.0 ** (np.floor(np.log2(max(bound, 2.0 ** -100))) - 21))


def _on_grid(x: float, u: float) -> tuple:
    """x = hi + lo with hi a multiple of u (exact in float32 when |x| < 2^22 u) and lo = x - hi, both float32."""
    hi = _f32(np.round(np.float64(x) / u) * u)
    return hi, _f32(np.float64(x) - np.float64(hi))


def fma_steps(x: tuple, r: np.float32, c, x_range: float, c_range: float, first: int = 0) -> list:
    """Steps computing fmaf(x, r, c) for an integer x (|x| <= x_range < 2^8), a constant r and c a constant
    (float) or a step reference (|c| <= c_range). On a grid of unit u (`_unit` of the largest |x r + c|):
    r = r_hi + r_lo and c = c_hi + c_lo with r_hi, c_hi multiples of u, so x * r_hi + c_hi is exact; the small
    rest x * r_lo + c_lo is added last. The result is fmaf's correctly rounded value unless the rest's own
    rounding (below 2^-16 u) moves it across a rounding boundary: rare, and then one float32 unit. Measured
    (tests/ops/test_int8.py::test_qlinear_add_emulation_on_every_code_pair): over all 65,536 code pairs of 300 random
    scale sets, the inner fma was always exact, the outer one a unit off in 39 of 19.7M cases, the code never.
    The steps are numbered from `first` (x and c may refer to earlier ones)."""
    u = _unit(abs(float(r)) * x_range + c_range)
    r_hi, r_lo = _on_grid(r, u)
    steps: list = []

    def op(name, *args):
        steps.append(Step(name, list(args)))
        return ("step", first + len(steps) - 1)
    exact = op("MUL", x, ("imm", float(r_hi)))
    if isinstance(c, tuple):  # c rounded to the grid at run time: (c + 1.5 * 2^23 u) - 1.5 * 2^23 u is exact
        big = float(1.5 * 2.0 ** 23 * u)
        c_hi = op("SUB", op("ADD", c, ("imm", big)), ("imm", big))
        c_lo = op("SUB", c, c_hi)
    else:
        hi, lo = _on_grid(c, u)
        c_hi, c_lo = ("imm", float(hi)), ("imm", float(lo))
    exact = op("ADD", exact, c_hi)
    rest = op("ADD", op("MUL", x, ("imm", float(r_lo))), c_lo)
    op("ADD", exact, rest)
    return steps


# ----- helpers --------------------------------------------------------------------------------------
def q_const(lw, node, i, what: str, required: bool = True):
    if i >= len(node.input) or not node.input[i]:
        if required:
            raise CompileError(f"{lw.where(node)}: {what} is missing")
        return None
    if node.input[i] not in lw.consts:
        raise CompileError(f"{lw.where(node)}: {what} must be a constant")
    return np.asarray(lw.consts[node.input[i]])


def q_scalar_scale(lw, node, i, what: str) -> np.float32:
    s = q_const(lw, node, i, what)
    if s.size != 1:
        raise CompileError(f"{lw.where(node)}: a per-axis {what} of a computed tensor is not supported "
                           f"(per-tensor only; per-channel scales are supported for constant weights)")
    return np.float32(s.reshape(()))


def q_kind(lw, node, name: str) -> str:
    kind = lw.q_state["code"].get(name)
    if kind is None:
        raise CompileError(f"{lw.where(node)}: input '{name}' is not an int8/uint8 tensor lpusim produced "
                           f"(QuantizeLinear, a QLinear op, or a view or max pool of one)")
    return kind


def q_zero(lw, node, i, kind: str, what: str) -> int:
    """A scalar zero point input as a code of `kind` (absent: 0)."""
    zp = q_const(lw, node, i, what, required=False)
    if zp is None:
        return int(_code(0, kind))
    if zp.size != 1:
        raise CompileError(f"{lw.where(node)}: a per-axis {what} of a computed tensor is not supported")
    if Q_NP_TYPES.get(zp.dtype, kind) != kind:
        raise CompileError(f"{lw.where(node)}: {what} is {zp.dtype}, its tensor is {kind}")
    return int(_code(zp.reshape(()), kind))


def q_vector(lw, node, src: str, shape: tuple, steps: list, hint: str) -> str:
    out = lw.add_tensor(lw.fresh(hint), shape, "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=[View(src)],
                         steps=steps))
    return out


def q_round_steps(first: int, lo: float, hi: float, zp: int) -> list:
    """Steps after step `first - 1`: clamp to [lo, hi], round half to even, add the zero point code."""
    steps = [Step("MAX", [("step", first - 1), ("imm", lo)]), Step("MIN", [("step", first), ("imm", hi)]),
             Step("ADD", [("step", first + 1), ("imm", MAGIC)]), Step("SUB", [("step", first + 2), ("imm", MAGIC)])]
    if zp:
        steps.append(Step("ADD", [("step", first + 3), ("imm", float(zp))]))
    return steps


def q_materialize(lw, name: str) -> None:
    """Compute the floats of a lazy DequantizeLinear: (code - zp) * scale."""
    q, scale, zp = lw.q_state["pending"][name]
    steps = ([Step("SUB", [("src", 0), ("imm", float(zp))])] if zp else []) + \
        [Step("MUL", [("step", 0) if zp else ("src", 0), ("imm", float(scale))])]
    fake = helper.make_node("DequantizeLinear", [q], [name], name=name)
    if q in lw.flat:
        img, shape = lw.flat[q]
        lw.flat[name] = (q_vector(lw, fake, img, shape, steps, name), shape)
    else:
        ir, shape = lw.values[q]
        lw.values[name] = (q_vector(lw, fake, ir, shape, steps, name), shape)
        # the codes behind these floats: attention heads split from them move the exact codes (attention.py)
        lw.q_state.setdefault("dequantized", {})[lw.values[name][0]] = (ir, float(scale), zp)


def q_quantize_steps(lw, scale, zp: int) -> list:
    """QuantizeLinear of src0 to codes: x / scale, clamped, rounded half to even, plus the zero point code."""
    return [Step("DIV", [("src", 0), ("imm", float(scale))])] + \
        q_round_steps(1, float(-128 - zp), float(127 - zp), zp)


def q_users(lw, name: str) -> list:
    users = lw.q_state.setdefault("users", {})
    if not users:
        for n in lw.model.graph.node:
            for i in n.input:
                users.setdefault(i, []).append(n)
    return users.get(name, [])


def q_requantizer(lw, name: str):
    """The QuantizeLinear reading float `name`, when only QuantizeLinears read it and all with one scale and zero
    point (else None). The quantiser's DedicatedQDQPair gives a tensor with two consumers two identical
    QuantizeLinears (MobileNetV2's linear bottleneck feeds the next block and the residual Add); onnxruntime
    still fuses the producer into one integer kernel, so the producer is fused here too and the other
    QuantizeLinears' outputs alias its codes (`q_alias_requantized`)."""
    users = q_users(lw, name)
    if not users or name in {o.name for o in lw.model.graph.output} or \
            any(u.op_type != "QuantizeLinear" for u in users):
        return None

    def params(u):
        zp = q_const(lw, u, 2, "the zero point", required=False)
        return (np.asarray(q_const(lw, u, 1, "the scale")).tobytes(),
                None if zp is None else (zp.dtype.str, zp.tobytes()),
                tuple(sorted((a.name, str(helper.get_attribute_value(a))) for a in u.attribute)))
    first = params(users[0])
    return users[0] if all(params(u) == first for u in users[1:]) else None


def q_alias_requantized(lw, name: str, out_name: str) -> None:
    """The other QuantizeLinears of `name` (see `q_requantizer`) give the codes `out_name` holds."""
    for u in q_users(lw, name):
        o = u.output[0]
        if o != out_name:
            lw.values[o] = lw.values[out_name]
            lw.q_state["code"][o] = lw.q_state["code"][out_name]


def q_only_feeds(lw, q: str, node) -> bool:
    """`q` is read by `node` alone (directly, or through DequantizeLinears only `node` reads)."""
    outputs = {o.name for o in lw.model.graph.output}
    if q in outputs:
        return False
    for u in q_users(lw, q):
        if u is node:
            continue
        if u.op_type != "DequantizeLinear" or u.output[0] in outputs or \
                any(c is not node for c in q_users(lw, u.output[0])):
            return False
    return True
