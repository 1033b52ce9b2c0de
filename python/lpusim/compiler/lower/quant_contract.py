"""int8 contractions and pools (see quant.py for the code representation and the epilogue): QLinearConv,
QLinearMatMul, QGemm, MatMulInteger, ConvInteger, the QDQ Conv/MatMul/Gemm, QLinearAveragePool/AveragePool and
QLinearGlobalAveragePool/GlobalAveragePool on codes.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.conv_pool import lower_spatial, window
from lpusim.compiler.lower.matmul import lower_matmul
from lpusim.compiler.lower.quant_codes import (int8_pieces, MAGIC, q_alias_requantized, q_const, q_kind, Q_NP_TYPES,
                                               q_only_feeds, q_quantize_steps, q_requantizer, q_round_steps,
                                               q_scalar_scale, q_zero)
from lpusim.errors import CompileError


# ----- average pool -----------------------------------------------------------------------------------
def q_pool_operands(lw, node, attrs):
    """(x, its kind, sx, zx, sy, output zero point) of a QLinear(Global)AveragePool (com.microsoft)."""
    if attrs.get("channels_last", 0):
        raise CompileError(f"{lw.where(node)}: channels_last=1 is not supported")
    x = node.input[0]
    kind = q_kind(lw, node, x)
    return (x, kind, q_scalar_scale(lw, node, 1, "input scale"), q_zero(lw, node, 2, kind, "input zero point"),
            q_scalar_scale(lw, node, 3, "output scale"),
            q_const(lw, node, 4, "output zero point", required=False))


def q_average_pool(lw, node) -> bool:
    """DequantizeLinear -> AveragePool -> QuantizeLinear, or QLinearAveragePool (com.microsoft), as onnxruntime's
    QLinearAveragePool kernel computes it: each tap dequantized (sx * (x - zx)) and added in float32 in window
    order (h, then w), divided by the count, then round(y / sy + zy) clamped. One VXM pass per tap (a MEM slice
    streams one view at a time); taps in the border read the zero point's code, which adds +0."""
    st = lw.q_state
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "QLinearAveragePool":
        x, kind, sx, zx, sy, y_zp = q_pool_operands(lw, node, attrs)
        out_name = node.output[0]
    else:
        if node.input[0] not in st["pending"]:
            return False
        qn = q_requantizer(lw, node.output[0])
        if qn is None:
            return False
        x, sx, zx = st["pending"][node.input[0]]
        sy = q_scalar_scale(lw, qn, 1, "scale")
        y_zp = q_const(lw, qn, 2, "the zero point", required=False)
        out_name = qn.output[0]
    y_kind = Q_NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
    zy_raw = int(np.asarray(y_zp).reshape(())) if y_zp is not None else 0
    if x not in lw.values or len(lw.values[x][1]) != 4 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return False
    ir, shape = lw.values[x]
    n, c, h, w = shape
    kernel = tuple(attrs["kernel_shape"])
    strides, _, pads, (ho, wo) = window(lw, node, attrs, shape, kernel)
    if strides[0] != strides[1]:
        return False
    t = lw.tensors[ir]
    if t.conv_pad not in (0.0, float(zx)) and zx:
        raise CompileError(f"{lw.where(node)}: '{x}' is read with two zero points")
    t.conv_pad = float(zx) if zx else t.conv_pad
    # the count: the kernel size (count_include_pad), else the taps inside the image, per output pixel
    if attrs.get("count_include_pad", 0):
        counts = np.full((n, ho, wo), kernel[0] * kernel[1], dtype=np.float32)
    else:
        hs = np.arange(ho) * strides[0] - pads[0]
        ws = np.arange(wo) * strides[1] - pads[1]
        ch = np.minimum(hs + kernel[0], h) - np.maximum(hs, 0)
        cw = np.minimum(ws + kernel[1], w) - np.maximum(ws, 0)
        counts = np.broadcast_to((ch[:, None] * cw[None, :]).astype(np.float32), (n, ho, wo))
    out_shape = (n, c, ho, wo)
    name = node.name or out_name
    prev = None
    taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
    for k, (i, j) in enumerate(taps):
        view = View(ir, dh=i, dw=j, stride=strides[0], dilation=1, pad_top=pads[0], pad_left=pads[1], spatial=True)
        dq = ([Step("SUB", [("src", 0), ("imm", float(zx))])] if zx else []) + \
            [Step("MUL", [("step", 0) if zx else ("src", 0), ("imm", float(sx))])]
        sources = [view] if prev is None else [view, View(prev)]
        steps = dq if prev is None else dq + [Step("ADD", [("src", 1), ("step", len(dq) - 1)])]
        if k == len(taps) - 1:
            if np.all(counts == counts.flat[0]):
                steps.append(Step("DIV", [("step", len(steps) - 1), ("imm", float(counts.flat[0]))]))
            else:
                rows = np.repeat(counts.reshape(-1, 1), c, axis=1)
                sources.append(View(lw.const_tensor(rows, "count")))
                steps.append(Step("DIV", [("step", len(steps) - 1), ("src", len(sources) - 1)]))
            steps.append(Step("DIV", [("step", len(steps) - 1), ("imm", float(sy))]))
            steps.append(Step("ADD", [("step", len(steps) - 1), ("imm", float(zy_raw))]))
            steps.append(Step("ADD", [("step", len(steps) - 1), ("imm", MAGIC)]))
            steps.append(Step("SUB", [("step", len(steps) - 1), ("imm", MAGIC)]))
            shift = 128 if y_kind == "u8" else 0
            if shift:
                steps.append(Step("SUB", [("step", len(steps) - 1), ("imm", float(shift))]))
            steps.append(Step("MAX", [("step", len(steps) - 1), ("imm", -128.0)]))
            steps.append(Step("MIN", [("step", len(steps) - 1), ("imm", 127.0)]))
        out = lw.add_tensor(lw.fresh(out_name if k == len(taps) - 1 else f"{out_name}.tap{k}"), out_shape,
                            "value")
        lw.nodes.append(Node("vector", name, f"{node.op_type}(tap {k})", out, sources=sources, steps=steps,
                             fusable=False))
        prev = out
    lw.values[out_name] = (prev, out_shape)
    st["code"][out_name] = y_kind
    if node.op_type == "AveragePool":
        q_alias_requantized(lw, node.output[0], out_name)
    return True


# ----- global average pool ------------------------------------------------------------------------------
def q_global_average(lw, node) -> bool:
    """DequantizeLinear -> GlobalAveragePool -> QuantizeLinear, or QLinearGlobalAveragePool: onnxruntime sums
    the codes in int32 (minus zx * H*W) and requantises with sx / (sy * H*W); here identity int8 weights sum the
    taps on the MXM exactly and the same epilogue requantises."""
    st = lw.q_state
    if node.op_type == "QLinearGlobalAveragePool":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, kind, sx, zx, sy, y_zp = q_pool_operands(lw, node, attrs)
        y_kind = Q_NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
        zy = q_zero(lw, node, 4, y_kind, "output zero point")
        out_name = node.output[0]
    else:
        qn = q_requantizer(lw, node.output[0])
        if qn is None:
            return False
        x, sx, zx = st["pending"][node.input[0]]
        y_zp = q_const(lw, qn, 2, "the zero point", required=False)
        y_kind = Q_NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
        sy = q_scalar_scale(lw, qn, 1, "scale")
        zy = q_zero(lw, qn, 2, y_kind, "zero point")
        out_name = qn.output[0]
    if x not in lw.values or len(lw.values[x][1]) != 4:
        return False
    ir, shape = lw.values[x]
    taps = int(shape[2] * shape[3])
    tmp = lw.fresh(out_name + "#acc")
    fake = helper.make_node("GlobalAveragePool", [x], [tmp], name=node.name or out_name)
    lower_spatial(lw, fake, "GlobalAveragePool", {}, [("value", ir, shape)])
    mm = lw.nodes[-1]
    out_ir, out_shape = lw.values.pop(tmp)
    if mm.kind != "matmul" or mm.output != out_ir or len(mm.terms) != taps:
        raise CompileError(f"{lw.where(node)}: internal: the int8 average did not lower to one matmul")
    corr = np.full(int(shape[1]), -np.int64(zx) * taps, dtype=np.int64)
    mult = np.float32(sx / np.float32(sy * np.float32(taps)))
    q_epilogue(lw, node, mm, out_ir, out_shape, corr, mult, ("q", zy, y_kind), out_name)
    if node.op_type == "GlobalAveragePool":
        q_alias_requantized(lw, node.output[0], out_name)
    return True


# ----- contractions -----------------------------------------------------------------------------------
def q_qdq_contraction(lw, node) -> bool:
    """DequantizeLinear -> Conv/MatMul/Gemm -> QuantizeLinear (the QDQ form) as one int8 contraction."""
    st = lw.q_state
    op, out = node.op_type, node.output[0]
    if node.input[0] not in st["pending"] or len(node.input) < 2 or node.input[1] not in st["consts"]:
        return False
    qn = q_requantizer(lw, out)
    if qn is None:
        return False  # a float result: onnxruntime computes it in float too
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or
                         attrs.get("beta", 1.0) != 1.0):
        return False
    x, sx, zx = st["pending"][node.input[0]]
    wq, sw, zw, axis = st["consts"][node.input[1]]
    if wq.dtype not in (np.int8, np.uint8):
        return False
    out_axis = 0 if op == "Conv" or (op == "Gemm" and attrs.get("transB", 0)) else wq.ndim - 1
    if sw.size > 1 and axis != out_axis:
        return False
    bias = None
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in st["consts"]:
            return False
        bq, sb, zb, _ = st["consts"][node.input[2]]
        if bq.dtype != np.int32 or np.any(zb != 0):
            return False
        bias = bq
    y_zp = q_const(lw, qn, 2, "the zero point", required=False)
    y_kind = Q_NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
    sy = q_scalar_scale(lw, qn, 1, "scale")
    zy = q_zero(lw, qn, 2, y_kind, "zero point")
    mult = (sx * sw.astype(np.float32)).astype(np.float32) / sy
    q_contraction(lw, node, "conv" if op == "Conv" else "gemm", x, zx, wq, zw, bias, mult,
                       ("q", zy, y_kind), qn.output[0], attrs, out_axis)
    q_alias_requantized(lw, out, qn.output[0])
    return True


def q_operator(lw, node) -> bool:
    """QLinearConv, QLinearMatMul, QGemm (com.microsoft), MatMulInteger, ConvInteger."""
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = node.input[0]
    kind = q_kind(lw, node, x)
    if op in ("MatMulInteger", "ConvInteger"):
        w = q_const(lw, node, 1, "the weights")
        zx = q_zero(lw, node, 2, kind, "the input zero point")
        zw = q_const(lw, node, 3, "the weight zero point", required=False)
        zw = np.zeros(1, np.int64) if zw is None else zw
        mode, mult = ("i32",), None
    else:
        sx = q_scalar_scale(lw, node, 1, "input scale")
        zx = q_zero(lw, node, 2, kind, "input zero point")
        w = q_const(lw, node, 3, "the weights")
        sw = np.asarray(q_const(lw, node, 4, "the weight scale"), dtype=np.float32)
        zw = q_const(lw, node, 5, "the weight zero point", required=False)
        zw = np.zeros(1, np.int64) if zw is None else zw
        yi = {"QLinearConv": 6, "QLinearMatMul": 6, "QGemm": 7}[op]
        alpha = np.float32(attrs.get("alpha", 1.0))
        if op == "QGemm" and (len(node.input) <= yi or not node.input[yi]):
            mode = ("f32",)
            mult = (alpha * sx * sw).astype(np.float32)
        else:
            sy = q_scalar_scale(lw, node, yi, "output scale")
            y_zp = q_const(lw, node, yi + 1, "output zero point", required=False)
            y_kind = Q_NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
            mode = ("q", q_zero(lw, node, yi + 1, y_kind, "output zero point"), y_kind)
            mult = (alpha * sx * sw).astype(np.float32) / sy
    if w.dtype not in (np.int8, np.uint8):
        raise CompileError(f"{lw.where(node)}: weights of type {w.dtype} are not supported (int8/uint8)")
    bias = None
    if op == "QLinearConv" and len(node.input) > 8 and node.input[8]:
        bias = q_const(lw, node, 8, "the bias")
    if op == "QGemm":
        if attrs.get("transA", 0):
            raise CompileError(f"{lw.where(node)}: QGemm with transA=1 is not supported")
        if len(node.input) > 6 and node.input[6]:
            bias = q_const(lw, node, 6, "the bias C")
            if bias.ndim == 2 and bias.shape[0] != 1:
                raise CompileError(f"{lw.where(node)}: a QGemm bias C of shape {bias.shape} is not supported")
    conv = op in ("QLinearConv", "ConvInteger")
    out_axis = 0 if conv or (op == "QGemm" and attrs.get("transB", 0)) else w.ndim - 1
    q_contraction(lw, node, "conv" if conv else "gemm", x, zx, w, zw, bias, mult, mode, node.output[0],
                  attrs, out_axis)
    return True


def q_contraction(lw, node, form: str, x: str, zx: int, w: np.ndarray, zw, bias, mult, mode: tuple,
                  out_name: str, attrs: dict, out_axis: int) -> None:
    """x's codes (zero point code zx) contracted with integer weights w - zw on the int8 MXM, then the
    epilogue of `mode`: ("q", zy_code, kind) requantised codes, ("f32",) floats acc * mult, ("i32",) acc."""
    where = lw.where(node)
    n_out = w.shape[out_axis]
    shape = [1] * w.ndim
    shape[out_axis] = n_out
    zw = np.asarray(zw, dtype=np.int64)
    if w.dtype == np.int8 and not zw.any():  # symmetric int8 weights (the quantiser's): the codes themselves
        w_eff = w
        pieces = [w]
    else:
        w_eff = w.astype(np.int64) - (zw.reshape(shape) if zw.size > 1 else zw.reshape(()))
        pieces = int8_pieces(w_eff)  # asymmetric uint8 weights: w - zw in [-255, 255] as 2-3 int8 passes
    colsum = w_eff.sum(axis=tuple(a for a in range(w.ndim) if a != out_axis), dtype=np.int64)
    corr = -np.int64(zx) * colsum
    if bias is not None:
        corr = corr + np.broadcast_to(np.asarray(bias, dtype=np.int64).reshape(-1), (n_out,))
    if np.abs(corr).max(initial=0) >= 2 ** 31:
        raise CompileError(f"{where}: a bias or zero-point correction of {np.abs(corr).max()} leaves int32")
    mm, out_ir, out_shape = q_int8_matmul(lw, node, form, x, zx, pieces[0].astype(np.float32), out_name, attrs)
    first = list(mm.terms)
    for piece in pieces[1:]:  # the same activation views again with the remaining weights, one accumulator:
        n0, inputs0 = len(lw.nodes), list(lw.inputs)  # lower the piece alike, keep only its weights
        extra, _, _ = q_int8_matmul(lw, node, form, x, zx, piece.astype(np.float32), out_name, attrs)
        if len(extra.terms) != len(first):
            raise CompileError(f"{where}: internal: the weight pieces lowered to different term counts")
        del lw.nodes[n0:]
        lw.inputs[:] = inputs0
        mm.terms.extend((view, w) for (view, _), (_, w) in zip(first, extra.terms))
    q_epilogue(lw, node, mm, out_ir, out_shape, corr, mult, mode, out_name)


def q_int8_matmul(lw, node, form: str, x: str, zx: int, wf: np.ndarray, out_name: str, attrs: dict):
    """One matmul node of x's codes with integer weights `wf` (held as float32): (node, IR output, shape)."""
    where = lw.where(node)
    tmp = lw.fresh(out_name + "#acc")
    if form == "conv":
        ir, xshape = lw.values[x]
        t = lw.tensors[ir]
        if t.conv_pad not in (0.0, float(zx)) and zx:
            raise CompileError(f"{where}: '{x}' is read with two zero points")
        t.conv_pad = float(zx) if zx else t.conv_pad
        keep = {k: v for k, v in attrs.items() if k in ("strides", "pads", "dilations", "group", "auto_pad",
                                                        "kernel_shape")}
        fake = helper.make_node("Conv", [x, "w"], [tmp], name=node.name or out_name, **keep)
        if not q_stem(lw, node, fake, x, keep, wf):
            lower_spatial(lw, fake, "Conv", keep, [("value", ir, xshape), ("const", wf)])
    else:
        keep = {"transB": attrs.get("transB", 0)}
        fake = helper.make_node("Gemm", [x, "w"], [tmp], name=node.name or out_name, **keep)
        xarg = ("value",) + (lw.flat[x] if x in lw.flat else lw.values[x])
        if wf.ndim != 2:
            raise CompileError(f"{where}: weights of rank {wf.ndim} are not supported (rank 2)")
        lower_matmul(lw, fake, "Gemm", keep, [xarg, ("const", wf)])
    mm = lw.nodes[-1]
    out_ir, out_shape = lw.values.pop(tmp)
    if mm.kind != "matmul" or mm.output != out_ir:
        raise CompileError(f"{where}: internal: the int8 contraction did not lower to one matmul")
    return mm, out_ir, out_shape


def q_stem(lw, node, fake, x: str, attrs: dict, wf: np.ndarray) -> bool:
    """A convolution of QuantizeLinear(graph input): the host lays the float input out as patches (as the fp16
    path does for a stem convolution) and the chip quantises the patches, so one matmul of K = C*kh*kw replaces
    kh*kw taps of K = C. Padding is exact: a zero-padded patch quantises to the zero point, which is what
    onnxruntime pads the codes with. False when the input is not such a stem."""
    src = lw.q_state.get("of_input", {}).get(x)
    if src is None:
        return False
    ir, scale, zp = src
    n0, inputs0 = len(lw.nodes), list(lw.inputs)
    t = lw.tensors[ir]
    lower_spatial(lw, fake, "Conv", attrs, [("value", ir, t.shape), ("const", wf)])
    mm = lw.nodes[-1]
    patches = lw.tensors[mm.terms[0][0].tensor] if mm.kind == "matmul" and len(mm.terms) == 1 else None
    if patches is None or patches.im2col is None:  # not the stem path: undo it
        del lw.nodes[n0:]
        lw.inputs[:] = inputs0
        lw.values.pop(fake.output[0], None)
        return False
    qp = lw.add_tensor(lw.fresh(patches.name + ".q"), patches.shape, "value")
    lw.nodes.insert(len(lw.nodes) - 1, Node("vector", node.name or node.output[0], "QuantizeLinear(patches)",
                                            qp, sources=[View(patches.name)],
                                            steps=q_quantize_steps(lw, scale, zp)))
    mm.terms = [(View(qp), mm.terms[0][1])]
    if q_only_feeds(lw, x, node):  # the quantised image itself is now unused
        q_ir = lw.values[x][0]
        lw.nodes = [n for n in lw.nodes if n.output != q_ir]
    return True


def q_epilogue(lw, node, mm, out_ir: str, out_shape: tuple, corr, mult, mode: tuple, out_name: str) -> None:
    """Make `mm` an int8 matmul (its weights int8) with the zero-point correction and `mode`'s epilogue."""
    n_out = lw.tensors[out_ir].cols
    mm.onnx_op = node.op_type
    for _, wname in mm.terms:
        lw.tensors[wname].dtype = "i8"
    steps, sources = [], []
    cur = ("acc",)
    if corr.any():
        c = lw.const_tensor(corr.reshape(1, n_out).astype(np.float32), "qcorr")
        lw.tensors[c].dtype = "i32"
        lw.tensors[c].data = corr.reshape(1, n_out).astype(np.int32)  # exact (float32 is not above 2^24)
        sources.append(View(c))
        steps.append(Step("ADD", [("acc",), ("src", 0)], "i32"))
        cur = ("step", 0)
    if mode[0] == "i32":
        if not steps:
            steps = [Step("COPY", [("acc",)], "i32")]
        lw.tensors[out_ir].dtype = "i32"
    else:
        steps.append(Step("CVT", [cur], "i32.f32"))
        m = np.asarray(mult, dtype=np.float32).reshape(-1)
        if m.size > 1:
            mrow = lw.const_tensor(np.broadcast_to(m, (n_out,)).reshape(1, n_out).copy(), "qscale")
            sources.append(View(mrow))
            steps.append(Step("MUL", [("step", len(steps) - 1), ("src", len(sources) - 1)]))
        else:
            steps.append(Step("MUL", [("step", len(steps) - 1), ("imm", float(m[0]))]))
        if mode[0] == "q":
            zy = mode[1]
            steps += q_round_steps(len(steps), float(-128 - zy), float(127 - zy), zy)
            lw.q_state["code"][out_name] = mode[2]
    mm.steps, mm.sources = steps, sources
    lw.values[out_name] = (out_ir, out_shape)
