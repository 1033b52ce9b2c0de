"""Quantised models on the int8 MXM path: onnxruntime's QDQ and QOperator formats.

Integer tensors are IR tensors holding *codes*: an int8 tensor holds q, a uint8 tensor holds q - 128 (exact), so
every code fits the MXM's int8 operands (`ABC.i8`) and one zero point per tensor, shifted the same way, describes
it. Codes are stored as f32 where the VXM reads them and as i8 where the MXM reads them (`passes.assign_formats`).

A contraction `y = sum_k (x_q - zx)(w_q - zw)` (QLinearConv, QLinearMatMul, QGemm, MatMulInteger, ConvInteger, and
Conv/MatMul/Gemm between DequantizeLinear inputs and one QuantizeLinear output, the QDQ form onnxruntime fuses the
same way) becomes an int8 matmul of the codes x_c with weights w_q - zw (which must fit int8), accumulated exactly,
read with `ACC.i32`, and an epilogue on the VXM:
    acc + corr               ADD.i32, corr[n] = bias[n] - zx_c * sum_k w[k, n]   (zero-point correction, exact)
    float(.)                 CVT.i32.f32 (round to nearest even, as onnxruntime's int32 -> float)
    * M                      MUL.f32, M = (sx * sw[n]) / sy in float32, onnxruntime's order
    clamp, round, + zy       MAX/MIN to [-128 - zy_c, 127 - zy_c], ADD/SUB 1.5*2^23 (round half to even), ADD zy_c
which is MLAS's requantisation step for step. Convolution borders hold the zero point's code (`Tensor.conv_pad`),
so the correction holds at padded taps too, as onnxruntime pads with the zero point.

QuantizeLinear of a float tensor is DIV by the scale, the same clamp, round and add; DequantizeLinear is
`(code - zp_c) * scale` (SUB then MUL; the subtraction is exact). A DequantizeLinear of a computed tensor is lowered
lazily: Reshape/Flatten/Squeeze/Unsqueeze/Identity/MaxPool commute with it and run on the codes, a QuantizeLinear
with the same scale and zero point gives the codes back, and only a float consumer makes it compute floats.
DequantizeLinear of a constant folds (and is remembered, so a QDQ contraction finds the integer weights).

This module: the entry (`lower_quant`, run first for every node), graph inputs and outputs of codes,
QuantizeLinear/DequantizeLinear, the ops on codes, QLinearAdd and the QDQ Add; contractions and pools:
quant_contract.py; shared code/scale helpers and the float32-exact arithmetic: quant_codes.py.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.dynamic_quant import lower_dynamic_quantize, lower_matmul_integer_dynamic
from lpusim.compiler.lower.elementwise import operand
from lpusim.compiler.lower.quant_codes import (fma_steps, MAGIC, q_alias_requantized, q_const, q_kind, q_materialize,
                                               Q_NP_TYPES, q_quantize_steps, q_requantizer, q_round_steps,
                                               q_scalar_scale, Q_TYPES, q_users, q_vector, q_zero,
                                               qlinear_add_constants, RAW)
from lpusim.compiler.lower.quant_contract import q_average_pool, q_global_average, q_operator, q_qdq_contraction
from lpusim.compiler.lower.shape_ops import reshape_target
from lpusim.errors import CompileError


QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger",
             "ConvInteger", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearAveragePool", "DynamicQuantizeLinear")

CODE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "MaxPool", "GlobalMaxPool", "Split"}


# ----- entry ----------------------------------------------------------------------------------------
def lower_quant(lw, node) -> bool:
    """Lower `node` if it is a quantisation op or a quantised pattern; else make its inputs plain floats."""
    st = lw.q_state
    if node is st["bypass"]:
        return False
    if "code_inputs" not in st:
        st["code_inputs"] = q_code_inputs(lw)
    op = node.op_type
    handled = False
    if op == "DequantizeLinear":
        handled = q_dequantize(lw, node)
    elif op == "QuantizeLinear":
        handled = q_quantize(lw, node)
    elif op == "DynamicQuantizeLinear":
        lower_dynamic_quantize(lw, node)
        handled = True
    elif op == "MatMulInteger" and lower_matmul_integer_dynamic(lw, node):
        handled = True
    elif op in ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger"):
        handled = q_operator(lw, node)
    elif op in ("Conv", "MatMul", "Gemm"):
        handled = q_qdq_contraction(lw, node)
    elif op == "GlobalAveragePool" and node.input[0] in st["pending"]:
        handled = q_global_average(lw, node)
    elif op == "QLinearGlobalAveragePool":
        handled = q_global_average(lw, node)
    elif op == "QLinearAdd":
        handled = q_linear_add(lw, node)
    elif op == "Add" and len(node.input) == 2 and all(i in st["pending"] for i in node.input):
        handled = q_qdq_add(lw, node)
    elif op in ("AveragePool", "QLinearAveragePool"):
        handled = q_average_pool(lw, node)
    elif op in CODE_OPS and node.input and (node.input[0] in st["pending"] or node.input[0] in st["code"]) \
            and q_is_view(lw, node):
        handled = q_code_op(lw, node)
    elif op == "Cast" and node.input[0] in lw.values:
        handled = q_cast(lw, node)
    if handled:
        outputs = {o.name for o in lw.model.graph.output}
        for o in node.output:
            if o in outputs and o in st["code"]:
                q_code_output(lw, node, o)
        return True
    for name in node.input:  # a float consumer of a lazily dequantized tensor: compute the floats now
        if name in st["pending"] and name not in lw.values and name not in lw.flat:
            q_materialize(lw, name)
    return False


def lower_plain(lw, node) -> None:
    """The dispatcher's own lowering of `node`, skipping `lower_quant`."""
    lw.q_state["bypass"] = node
    try:
        lw.lower(node)
    finally:
        lw.q_state["bypass"] = None


# ----- int8/uint8 graph inputs and outputs --------------------------------------------------------------
def q_code_inputs(lw) -> list[str]:
    """int8/uint8 graph inputs read only by quantisation ops (a QDQ model cut between layers, or one that takes
    codes): the host sends each value q exactly as float32 (runtime.host_layout.host_input) and one VXM pass makes the
    IR's codes of it (q - 128 for uint8, q itself for int8)."""
    made = []
    for inp in lw.model.graph.input:
        kind = Q_TYPES.get(inp.type.tensor_type.elem_type)
        users = q_users(lw, inp.name)
        if kind not in ("u8", "i8") or inp.name not in lw.input_shapes or \
                not users or any(u.op_type not in QUANT_OPS for u in users):
            continue
        ir, shape = lw.values[inp.name]
        step = Step("SUB", [("src", 0), ("imm", 128.0)]) if kind == "u8" else Step("COPY", [("src", 0)])
        out = lw.add_tensor(lw.fresh(f"{inp.name}@codes"), shape, "value")
        lw.nodes.append(Node("vector", inp.name, "Input", out, sources=[View(ir)], steps=[step]))
        lw.values[inp.name] = (out, shape)
        lw.q_state["code"][inp.name] = kind
        made.append(inp.name)
    return made


def q_code_output(lw, node, name: str) -> None:
    """An int8/uint8 graph output: its codes back to the values q as float32 (+128 for uint8) on the VXM;
    `program.decode_output` returns them as the ONNX type. The codes themselves stay for other readers."""
    if name not in lw.values:
        raise CompileError(f"{lw.where(node)}: an int8/uint8 graph output of attention heads is not "
                           f"supported (its parts are never placed side by side)")
    ir, shape = lw.values[name]
    kind = lw.q_state["code"][name]
    step = Step("ADD", [("src", 0), ("imm", 128.0)]) if kind == "u8" else Step("COPY", [("src", 0)])
    out = lw.add_tensor(lw.fresh(name), shape, "value")
    lw.nodes.append(Node("vector", node.name or name, node.op_type, out, sources=[View(ir)], steps=[step]))
    lw.q_state.setdefault("outputs", {})[name] = (out, shape)


# ----- QuantizeLinear / DequantizeLinear --------------------------------------------------------------
def q_dequantize(lw, node) -> bool:
    st = lw.q_state
    x, out = node.input[0], node.output[0]
    if x in lw.consts:
        q = np.asarray(lw.consts[x])
        s = np.asarray(q_const(lw, node, 1, "the scale"), dtype=np.float32)
        zp = q_const(lw, node, 2, "the zero point", required=False)
        zp = np.zeros_like(s, dtype=np.int64) if zp is None else np.asarray(zp, dtype=np.int64)
        axis = {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("axis", 1)
        if q.dtype.kind not in "iu":
            return False
        axis = axis % max(q.ndim, 1)
        shape = [1] * q.ndim
        if s.size > 1:
            shape[axis] = s.size
        sb = s.reshape(shape) if s.size > 1 else s.reshape(())
        zb = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
        if zp.any():
            lw.consts[out] = ((q.astype(np.int64) - zb).astype(np.float32) * sb).astype(np.float32)
        else:  # the same floats without the int64 copies (an integer converts to float32 alike from any type)
            lw.consts[out] = q.astype(np.float32) * sb
        st["consts"][out] = (q, s, zp, axis)
        return True
    kind = q_kind(lw, node, x)
    scale = q_scalar_scale(lw, node, 1, "scale")
    zp = q_zero(lw, node, 2, kind, "zero point")
    if x in lw.heads:  # attention heads (attention.py): the floats of every part now
        parts, transposed, shape4 = lw.heads[x]
        steps = ([Step("SUB", [("src", 0), ("imm", float(zp))])] if zp else []) + \
            [Step("MUL", [("step", 0) if zp else ("src", 0), ("imm", float(scale))])]
        lw.heads[out] = ([q_vector(lw, node, p, lw.tensors[p].shape, steps, f"{out}@h{h}")
                          for h, p in enumerate(parts)], transposed, shape4)
        return True
    st["pending"][out] = (x, scale, zp)
    if out in {o.name for o in lw.model.graph.output}:
        q_materialize(lw, out)
    return True


def q_quantize(lw, node) -> bool:
    st = lw.q_state
    x, out = node.input[0], node.output[0]
    if out in lw.values:  # already produced by the contraction it follows (q_qdq_contraction)
        return True
    zp_arr = q_const(lw, node, 2, "the zero point", required=False)
    kind = Q_NP_TYPES.get(zp_arr.dtype) if zp_arr is not None else "u8"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if zp_arr is None and attrs.get("output_dtype"):
        kind = Q_TYPES.get(attrs["output_dtype"])
    if kind not in ("u8", "i8"):
        raise CompileError(f"{lw.where(node)}: QuantizeLinear to {zp_arr.dtype if zp_arr is not None else '?'}"
                           f" is not supported (int8 and uint8)")
    scale = q_scalar_scale(lw, node, 1, "scale")
    zp = q_zero(lw, node, 2, kind, "zero point")
    if x in st["pending"] and st["pending"][x][1:] == (scale, zp) and \
            st["code"].get(st["pending"][x][0]) == kind:
        src = st["pending"][x][0]  # Q(DQ(q)) with the same parameters is q
        if src in lw.flat:
            lw.flat[out] = lw.flat[src]
        else:
            lw.values[out] = lw.values[src]
        st["code"][out] = kind
        return True
    if x in st["pending"] and x not in lw.values and x not in lw.flat:
        q_materialize(lw, x)
    if x in lw.heads:  # attention heads (attention.py): every part quantised
        parts, transposed, shape4 = lw.heads[x]
        steps = q_quantize_steps(lw, scale, zp)
        lw.heads[out] = ([q_vector(lw, node, p, lw.tensors[p].shape, steps, f"{out}@h{h}")
                          for h, p in enumerate(parts)], transposed, shape4)
        st["code"][out] = kind
        return True
    arg = lw.get(node, 0)
    if arg[0] != "value":
        return False  # a constant: folded by the dispatcher
    _, ir, shape = arg
    lw.values[out] = (q_vector(lw, node, ir, shape, q_quantize_steps(lw, scale, zp), out), shape)
    st["code"][out] = kind
    if lw.tensors[ir].kind == "input":  # a stem convolution may read host patches instead (q_contraction)
        st.setdefault("of_input", {})[out] = (ir, scale, zp)
    return True


# ----- views and max pools of codes -----------------------------------------------------------------
def q_code_op(lw, node) -> bool:
    st = lw.q_state
    src = node.input[0]
    if src in st["pending"]:  # run the op on the codes; the result is dequantized lazily with the same params
        q, scale, zp = st["pending"][src]
        outs = [o + "#q" if o else "" for o in node.output]
        renamed = helper.make_node(node.op_type, [q] + list(node.input[1:]), outs, name=node.name or outs[0],
                                   domain=node.domain)
        renamed.attribute.extend(node.attribute)
        lower_plain(lw, renamed)
        graph_outputs = {o.name for o in lw.model.graph.output}
        for o, ro in zip(node.output, outs):
            if o:
                st["pending"][o] = (ro, scale, zp)
                st["code"][ro] = st["code"][q]
                if o in graph_outputs:
                    q_materialize(lw, o)
        return True
    lower_plain(lw, node)
    for o in node.output:
        if o:
            st["code"][o] = st["code"][src]
    return True


def q_is_view(lw, node) -> bool:
    """A reshape-like op that keeps rows and lanes (or flattens an image for a Gemm), or a max pool: it runs on
    the codes. Other reshapes (attention heads) see the dequantized floats."""
    if node.op_type not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return True
    st = lw.q_state
    q = st["pending"][node.input[0]][0] if node.input[0] in st["pending"] else node.input[0]
    if q not in lw.values:
        return False
    ir, shape = lw.values[q]
    t = lw.tensors[ir]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    args = [None] + [lw.get(node, i) for i in range(1, len(node.input))]
    try:
        new = reshape_target(lw, node, attrs, args, shape)
    except (CompileError, ValueError):
        return False
    rows, cols = (int(np.prod(new[:-1], dtype=np.int64)), int(new[-1])) if len(new) not in (0, 4) else \
        ((int(new[0] * new[2] * new[3]), int(new[1])) if len(new) == 4 else (1, 1))
    return (rows, cols) == (t.rows, t.cols) or (t.geom is not None and len(new) == 2 and new[0] == t.geom[0])


def q_cast(lw, node) -> bool:
    """Cast to float of an integer accumulation (i32) or of codes."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ir, shape = lw.values[node.input[0]]
    kind = lw.q_state["code"].get(node.input[0])
    if attrs.get("to") != onnx.TensorProto.FLOAT or (lw.tensors[ir].dtype != "i32" and kind is None):
        return False
    if lw.tensors[ir].dtype == "i32":
        steps = [Step("CVT", [("src", 0)], "i32.f32")]
    else:
        steps = [Step("ADD", [("src", 0), ("imm", 128.0)])] if kind == "u8" else [Step("COPY", [("src", 0)])]
    lw.values[node.output[0]] = (q_vector(lw, node, ir, shape, steps, node.output[0]), shape)
    return True


# ----- QLinearAdd -------------------------------------------------------------------------------------
def q_qdq_add(lw, node) -> bool:
    """DequantizeLinear(a), DequantizeLinear(b) -> Add -> QuantizeLinear: onnxruntime fuses it into QLinearAdd,
    computed here as its kernel does (`q_add_steps`)."""
    st = lw.q_state
    qn = q_requantizer(lw, node.output[0])
    if qn is None:
        return False  # a float result (e.g. read by a float op first): onnxruntime adds in float too
    (qa, sa, za), (qb, sb, zb) = st["pending"][node.input[0]], st["pending"][node.input[1]]
    if qa not in lw.values or qb not in lw.values or \
            tuple(lw.values[qa][1]) != tuple(lw.values[qb][1]):
        return False
    y_zp = q_const(lw, qn, 2, "the zero point", required=False)
    y_kind = Q_NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
    sc = q_scalar_scale(lw, qn, 1, "scale")
    zc = q_zero(lw, qn, 2, y_kind, "zero point")
    q_add(lw, node, qn.output[0], (qa, st["code"][qa], sa, za), (qb, st["code"][qb], sb, zb),
               (y_kind, sc, zc))
    q_alias_requantized(lw, node.output[0], qn.output[0])
    return True


def q_add(lw, node, out_name: str, a: tuple, b: tuple, c: tuple) -> None:
    """C = QLinearAdd(A, B) of two computed code tensors of one shape, as onnxruntime's AVX2 kernel computes it
    on the raw 8-bit values: round_half_even(fmaf(A, rAC, fmaf(B, rBC, fixed))), saturated (`fma_steps`
    emulates fmaf). a, b = (name, kind, scale, zero point code), c = (kind, scale, zero point code). Three
    VXM passes: the inner fma, the outer one, the rounding."""
    (xa, ka, sa, za), (xb, kb, sb, zb), (kc, sc, zc) = a, b, c
    ir_a, shape = lw.values[xa]
    ir_b, _ = lw.values[xb]
    rac, rbc, fixed = qlinear_add_constants(sa, za + RAW[ka], sb, zb + RAW[kb], sc, zc + RAW[kc])
    name = node.name or out_name

    def raw(kind):  # the 8-bit value of src0 and its largest magnitude
        return ([Step("ADD", [("src", 0), ("imm", float(RAW[kind]))])] if RAW[kind] else []), \
            float(255 if kind == "u8" else 128)

    def stage(src: list, steps: list, hint: str) -> str:
        out = lw.add_tensor(lw.fresh(hint), shape, "value")
        lw.nodes.append(Node("vector", name, node.op_type, out, sources=[View(t) for t in src], steps=steps))
        return out
    pre, range_b = raw(kb)
    x = ("step", len(pre) - 1) if pre else ("src", 0)
    inner_steps = pre + fma_steps(x, rbc, float(fixed), range_b, abs(float(fixed)), len(pre))
    inner = stage([ir_b], inner_steps, out_name + ".inner")
    inner_range = abs(float(rbc)) * range_b + abs(float(fixed))
    pre, range_a = raw(ka)
    x = ("step", len(pre) - 1) if pre else ("src", 0)
    outer_steps = pre + fma_steps(x, rac, ("src", 1), range_a, inner_range, len(pre))
    outer = stage([ir_a, inner], outer_steps, out_name + ".outer")
    lo, hi = (0.0, 255.0) if kc == "u8" else (-128.0, 127.0)
    steps = [Step("MAX", [("src", 0), ("imm", lo)]), Step("MIN", [("step", 0), ("imm", hi)]),
             Step("ADD", [("step", 1), ("imm", MAGIC)]), Step("SUB", [("step", 2), ("imm", MAGIC)])]
    if RAW[kc]:
        steps.append(Step("SUB", [("step", 3), ("imm", float(RAW[kc]))]))
    lw.values[out_name] = (stage([outer], steps, out_name), shape)
    lw.q_state["code"][out_name] = kc


def q_linear_add(lw, node) -> bool:
    """QLinearAdd (com.microsoft). Two computed inputs of one shape: as onnxruntime's AVX2 kernel (`q_add`). A
    constant B (a quantised bias) is dequantised on the host and the sum computed as MLAS's scalar kernel does:
    (sa (a - za) + sb (b - zb)) / sc, clamped, rounded half to even, + zc, in float32."""
    a = node.input[0]
    kind = q_kind(lw, node, a)
    sa = q_scalar_scale(lw, node, 1, "A scale")
    za = q_zero(lw, node, 2, kind, "A zero point")
    sb = q_scalar_scale(lw, node, 4, "B scale")
    sc = q_scalar_scale(lw, node, 6, "C scale")
    c_zp = q_const(lw, node, 7, "C zero point", required=False)
    c_kind = Q_NP_TYPES.get(c_zp.dtype, "u8") if c_zp is not None else "u8"
    zc = q_zero(lw, node, 7, c_kind, "C zero point")
    ir, shape = lw.values[a]
    b = node.input[3]
    if b not in lw.consts and b in lw.values and tuple(lw.values[b][1]) == tuple(shape):
        kb = q_kind(lw, node, b)
        q_add(lw, node, node.output[0], (a, kind, sa, za), (b, kb, sb, q_zero(lw, node, 5, kb, "B zero point")),
                   (c_kind, sc, zc))
        return True
    steps = ([Step("SUB", [("src", 0), ("imm", float(za))])] if za else []) + \
        [Step("MUL", [("step", 0) if za else ("src", 0), ("imm", float(sa))])]
    value_a = len(steps) - 1
    sources = [View(ir)]
    if node.input[3] in lw.consts:
        bq = np.asarray(lw.consts[node.input[3]])
        zb = q_const(lw, node, 5, "B zero point", required=False)
        zb = np.int64(0) if zb is None else np.asarray(zb, dtype=np.int64)
        vb = (np.float32(sb) * (bq.astype(np.int64) - zb).astype(np.float32)).astype(np.float32)
        if vb.size == 1:
            steps.append(Step("ADD", [("step", value_a), ("imm", float(vb.reshape(())))]))
        else:
            arg = operand(lw, node, ("const", vb), tuple(shape))
            sources.append(View(arg[1]))
            steps.append(Step("ADD", [("step", value_a), ("src", 1)]))
    else:
        b = node.input[3]
        zb = q_zero(lw, node, 5, q_kind(lw, node, b), "B zero point")
        b_ir, b_shape = lw.values[b]
        if tuple(b_shape) != tuple(shape):
            raise CompileError(f"{lw.where(node)}: QLinearAdd of shapes {tuple(shape)} and {tuple(b_shape)} "
                               f"is not supported (equal shapes, or a constant B)")
        sources.append(View(b_ir))
        if zb:
            steps.append(Step("SUB", [("src", 1), ("imm", float(zb))]))
        steps.append(Step("MUL", [("step", len(steps) - 1) if zb else ("src", 1), ("imm", float(sb))]))
        steps.append(Step("ADD", [("step", value_a), ("step", len(steps) - 1)]))
    steps.append(Step("DIV", [("step", len(steps) - 1), ("imm", float(sc))]))
    steps += q_round_steps(len(steps), float(-128 - zc), float(127 - zc), zc)
    out = lw.add_tensor(lw.fresh(node.output[0]), shape, "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=sources,
                         steps=steps))
    lw.values[node.output[0]] = (out, shape)
    lw.q_state["code"][node.output[0]] = c_kind
    return True
