"""onnxruntime's dynamic quantisation: DynamicQuantizeLinear (uint8) and MatMulInteger of its codes with a computed
zero point (`onnxruntime.quantization.quantize_dynamic`'s MatMul: DynamicQuantizeLinear -> MatMulInteger -> Cast
-> Mul by the two scales).

DynamicQuantizeLinear is lowered as a small graph of supported ops (decompose.py's way), as onnxruntime computes it
(GetQuantizationParameter, then MlasQuantizeLinear):
    mn = min(0, min x), mx = max(0, max x)            ReduceMin/ReduceMax over the whole tensor (reduce.py), exact
    scale = (mx - mn) / 255, or 1 when mx == mn       float32 division, as onnxruntime (not * 1/255)
    zp = round_half_even(clamp(0 - mn / scale, 0, 255))
    q = clamp(round_half_even(x / scale) + zp, 0, 255)
onnxruntime clamps x / scale to [-zp, 255 - zp] before rounding; with zp an integer that is the same as clamping
after. q is kept as a uint8 tensor's codes (q - 128, quant.py), so the int8 MXM path reads it.

MatMulInteger whose input zero point is computed (DynamicQuantizeLinear's): the contraction runs with zero point
code 0 (q - 128 times w - zw, exact on the int8 MXM, quant_contract.q_contraction), and its epilogue subtracts
zp_code * colsum(w - zw) in int32: the zero point code is moved to every lane (exactly: elementwise.operand),
converted to i32, multiplied by the column sums (MUL.i32) and subtracted from the accumulator (SUB.i32), so the
int32 result is onnxruntime's exactly.
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.compiler.ir import Step, View
from lpusim.compiler.lower.decompose import SubGraph
from lpusim.compiler.lower.elementwise import operand
from lpusim.compiler.lower.quant_codes import MAGIC, q_const, q_kind
from lpusim.compiler.lower.quant_contract import q_contraction
from lpusim.errors import CompileError


def lower_dynamic_quantize(lw, node) -> None:
    """DynamicQuantizeLinear: outputs y (uint8 codes), y_scale (float scalar), y_zero_point (uint8 scalar)."""
    x = node.input[0]
    if x not in lw.values:
        raise CompileError(f"{lw.where(node)}: DynamicQuantizeLinear of a constant or unknown tensor '{x}'")
    g = SubGraph(lw, node)
    add = g.add

    def const(value, hint):
        return g.const(value, hint, np.float32)

    zero, one = const(0.0, "zero"), const(1.0, "one")
    magic = const(MAGIC, "magic")

    def round_even(v):  # |v| <= 255 here: adding and removing 1.5 * 2^23 rounds half to even in float32
        return add("Sub", [add("Add", [v, magic]), magic])

    mn = add("Min", [add("ReduceMin", [x], keepdims=0), zero])
    mx = add("Max", [add("ReduceMax", [x], keepdims=0), zero])
    width = add("Sub", [mx, mn])
    scale = add("Where", [add("Equal", [width, zero]), one, add("Div", [width, const(255.0, "qrange")])],
                node.output[1] if len(node.output) > 1 and node.output[1] else None)
    zp = round_even(add("Clip", [add("Neg", [add("Div", [mn, scale])]), zero, const(255.0, "qmax")]))
    zp_code = add("Sub", [zp, const(128.0, "shift")])
    add("Clip", [add("Add", [round_even(add("Div", [x, scale])), zp_code]), const(-128.0, "lo"),
        const(127.0, "hi")], node.output[0])
    if len(node.output) > 2 and node.output[2]:
        add("Cast", [zp], node.output[2], to=onnx.TensorProto.UINT8)
    g.lower()
    lw.q_state["code"][node.output[0]] = "u8"
    lw.q_state.setdefault("dynamic_zero", {})[node.output[0]] = zp_code  # MatMulInteger reads it


def lower_matmul_integer_dynamic(lw, node) -> bool:
    """MatMulInteger whose input zero point is computed; False when it is a constant (quant_contract's case)."""
    if len(node.input) < 3 or not node.input[2] or node.input[2] in lw.consts:
        return False
    x = node.input[0]
    zp_code = lw.q_state.get("dynamic_zero", {}).get(x)
    if zp_code is None or q_dynamic_zero_source(lw, node.input[2]) != x:
        raise CompileError(f"{lw.where(node)}: a computed input zero point is supported only from the "
                           f"DynamicQuantizeLinear of the same input")
    if q_kind(lw, node, x) != "u8":
        raise CompileError(f"{lw.where(node)}: a computed zero point of an int8 input is not supported")
    w = q_const(lw, node, 1, "the weights")
    if w.dtype not in (np.int8, np.uint8) or w.ndim != 2:
        raise CompileError(f"{lw.where(node)}: weights of type {w.dtype} and rank {w.ndim} are not supported "
                           f"(int8/uint8, rank 2)")
    zw = q_const(lw, node, 3, "the weight zero point", required=False)
    zw = np.zeros(1, np.int64) if zw is None else np.asarray(zw, dtype=np.int64)
    n_out = w.shape[1]
    w_eff = w.astype(np.int64) - (zw.reshape(1, n_out) if zw.size > 1 else zw.reshape(()))
    colsum = w_eff.sum(axis=0)
    if np.abs(colsum).max(initial=0) * 128 >= 2 ** 31:
        raise CompileError(f"{lw.where(node)}: a zero-point correction leaves int32")
    # the zero point code on every lane of one row (exact: the quantised model's broadcasts, elementwise.operand)
    zp_ir, zp_shape = lw.values[zp_code]
    kind, zrow = operand(lw, node, ("value", zp_ir, zp_shape), (1, n_out), exact=True)
    if kind != "src":
        raise CompileError(f"{lw.where(node)}: internal: the zero point did not broadcast")
    q_contraction(lw, node, "gemm", x, 0, w, zw, None, None, ("i32",), node.output[0], {}, 1)
    mm = lw.nodes[-1]
    out_ir = lw.values[node.output[0]][0]
    if mm.kind != "matmul" or mm.output != out_ir:
        raise CompileError(f"{lw.where(node)}: internal: the int8 contraction did not lower to one matmul")
    csum = lw.const_tensor(colsum.reshape(1, n_out).astype(np.float32), "qcolsum")
    lw.tensors[csum].dtype = "i32"
    lw.tensors[csum].data = colsum.reshape(1, n_out).astype(np.int32)
    mm.sources = [View(zrow), View(csum)]
    mm.steps = [Step("CVT", [("src", 0)], "f32.i32"), Step("MUL", [("step", 0), ("src", 1)], "i32"),
                Step("SUB", [("acc",), ("step", 1)], "i32")]
    return True


def q_dynamic_zero_source(lw, zp_name: str) -> str | None:
    """The input of the DynamicQuantizeLinear whose zero point output is `zp_name`'s first output (its codes)."""
    for n in lw.model.graph.node:
        if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 2 and n.output[2] == zp_name:
            return n.output[0]
    return None
