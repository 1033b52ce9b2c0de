"""Convolution and pooling over 1, 2 or 3 spatial axes, with any stride, dilation and padding per axis.

The 2-D image path (conv_pool.lower_spatial) reads its taps through spatial views: one stride and dilation for
both axes, a border of the same width on every side. This module serves what that path cannot:

* 1-D ([N, C, L]: Conv1d, MaxPool1d, AveragePool1d) and 3-D ([N, C, D, H, W]) tensors. In the chip's layout a
  3-D or 5-D tensor has its last axis on the lanes, so the input is first transposed to channels-last
  ([N, L, C] / [N, D, H, W, C]: one row per position, channels on the lanes) by `permute` (transpose.py,
  batched SXM transposes). The channels-last result stays so (`self.nd_lanes`) when every reader can take it:
  the next 1-D/3-D Conv or pool, or an elementwise op (`lower_spatial_nd_unary`: Relu, Gelu, Clip, ...); for any
  other reader or a graph output it is transposed back to the ONNX layout. A Conv1d -> Gelu -> Conv1d stack (a
  wav2vec2 feature extractor) thus transposes once in and once out.
* 2-D images with different strides or dilations along H and W, and 2-D max pools of more than 16 taps (the
  image is already channels-on-lanes).

Every tap is a row-map view (View.rows: MEM address arithmetic, runs of rows with one address step): output
position o reads input position o * stride + k * dilation - pad_begin of a padded copy P of the input. When the
window reaches outside the input (pads, ceil_mode), P is made by one VXM pass: P = X[map] * M[mask] (zeros) or
X[map] + M[mask] (-inf for max pools), M a 2-row constant read through a row map. Then
* Conv: one MXM matmul term per tap, dense [Cin, Cout] weights (groups/depthwise block-diagonal), bias in the
  matmul's epilogue;
* MaxPool: VXM MAX over the taps (passes.split_tap_chains: one pass per tap);
* AveragePool: MXM identity weights sum the taps, the epilogue multiplies by 1/count (a row map into the few
  distinct counts when windows count differently: count_include_pad=0 with pads, ceil_mode).
Not here yet: int8 convolutions (quant.py lowers QDQ/QLinear Conv through the 2-D path only), and inputs
with few channels and long lengths cost 320 lanes per position (a [1, 1, 220000] max pool does not fit the SRAM).
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.transpose import permute
from lpusim.errors import CompileError


def _auto_pads(auto: str, sizes, kernel, strides, dil) -> list[int]:
    begin, end = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dil):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        b, e = (small, big) if auto == "SAME_UPPER" else (big, small)
        begin.append(b)
        end.append(e)
    return begin + end


# Elementwise ops of one tensor (and constant parameters) that may run on a channels-last tensor.
ELEMENTWISE = {"Relu", "Gelu", "LeakyRelu", "Sigmoid", "Tanh", "Erf", "Softplus", "HardSigmoid", "HardSwish",
               "Neg", "Abs", "Exp", "Clip"}


def spatial_nd_wanted(lw, node, op, a, args) -> bool:
    """Whether this Conv/Pool goes here rather than to the 2-D image path."""
    if args[0] is None or args[0][0] != "value":
        return False
    rank = len(args[0][2])
    if rank in (3, 5):
        return True
    if rank != 4 or op.startswith("Global"):
        return False
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    many_taps = op == "MaxPool" and int(np.prod(a.get("kernel_shape", [1]))) > 16  # the 2-D path's limit
    return len(strides) == 2 and strides[0] != strides[1] or len(dil) == 2 and dil[0] != dil[1] or many_taps


def window_nd(lw, node, a, sizes, kernel):
    """(strides, dilations, pads_begin, pads_end, outputs) per spatial axis."""
    k = len(sizes)
    strides = [int(v) for v in a.get("strides", [1] * k)]
    dil = [int(v) for v in a.get("dilations", [1] * k)]
    pads = [int(v) for v in a.get("pads", [0] * 2 * k)]
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _auto_pads(auto, sizes, kernel, strides, dil)
    elif auto == "VALID":
        pads = [0] * 2 * k
    if len(strides) != k or len(dil) != k or len(pads) != 2 * k:
        raise CompileError(f"{lw.where(node)}: strides/dilations/pads do not match the {k} spatial axes")
    ceil = a.get("ceil_mode", 0)
    outs = []
    for i, (size, kk) in enumerate(zip(sizes, kernel)):
        span = size + pads[i] + pads[i + k] - (kk - 1) * dil[i] - 1
        o = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (o - 1) * strides[i] >= size + pads[i]:
            o -= 1  # the last window must start inside the input or its leading padding
        outs.append(o)
    if min(outs) < 1:
        raise CompileError(f"{lw.where(node)}: the window does not fit the {tuple(sizes)} input")
    return strides, dil, pads[:k], pads[k:], outs


def lower_spatial_nd(lw, node, op, a, args):
    _, xname, shape = args[0]
    shape = tuple(int(d) for d in shape)
    n, c, sizes = shape[0], shape[1], list(shape[2:])
    k = len(sizes)
    if op.startswith("Global"):
        kernel, a = list(sizes), {}
    elif op == "Conv":
        if args[1][0] != "const":
            raise CompileError(f"{lw.where(node)}: convolution weights must be constant")
        kernel = list(np.asarray(args[1][1]).shape[2:])
    else:
        kernel = [int(v) for v in a["kernel_shape"]]
    if len(kernel) != k:
        raise CompileError(f"{lw.where(node)}: a {len(kernel)}-D kernel on a {k}-D input")
    if op in ("MaxPool",) and len(node.output) > 1 and node.output[1]:
        raise CompileError(f"{lw.where(node)}: the Indices output of MaxPool is not supported")
    if op == "MaxPool" and a.get("storage_order", 0):
        raise CompileError(f"{lw.where(node)}: MaxPool storage_order=1 only changes Indices (not supported)")
    strides, dil, pb, pe, outs = window_nd(lw, node, a, sizes, kernel)
    mag = lw.tensor_magnitude(node, xname)
    # X: channels on the lanes, rows (n, spatial...)
    cache = lw.nd_lanes
    if k == 2:
        x = xname
    elif node.input[0] in cache:
        x = cache[node.input[0]][0]
    else:
        cl = (n,) + tuple(sizes) + (c,)
        x = permute(lw, node, xname, shape, [0] + list(range(2, k + 2)) + [1], cl, lw.fresh("cl"), mag)
    # P: X padded so that every tap reads inside it
    need = [(o - 1) * s + (kk - 1) * d + 1 for o, s, kk, d in zip(outs, strides, kernel, dil)]
    padded = [max(pb[i] + sizes[i] + pe[i], need[i]) for i in range(k)]
    maxpool = op in ("MaxPool", "GlobalMaxPool")
    if padded != sizes or any(pb):
        x = _padded_copy(lw, node, x, n, c, sizes, pb, padded, maxpool, mag)
    pstride = [int(np.prod(padded[i + 1:], dtype=np.int64)) for i in range(k)]
    ptotal = int(np.prod(padded, dtype=np.int64))
    # output position digits (n, o_1..o_k) -> the padded row its window starts at
    base = np.arange(n, dtype=np.int64) * ptotal
    for i in range(k):
        base = (base[:, None] + np.arange(outs[i], dtype=np.int64)[None, :] * strides[i] * pstride[i]).reshape(-1)
    taps = [tuple(t) for t in np.ndindex(*kernel)]

    def tap_view(t):
        off = sum(t[i] * dil[i] * pstride[i] for i in range(k))
        return View(x, rows=tuple((base + off).tolist()))
    cout = int(np.asarray(args[1][1]).shape[0]) if op == "Conv" else c
    onnx_shape = (n, cout) + tuple(outs)
    out_shape = onnx_shape if k == 2 else (n,) + tuple(outs) + (cout,)
    out = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
    lw.derived[out] = lw.magnitudes.get(node.output[0], 0.0)
    label = node.name or node.output[0]
    if op == "Conv":
        weight = np.asarray(args[1][1], dtype=np.float32)
        cin_g = weight.shape[1]
        group = int(a.get("group", 1))
        if cin_g * group != c or cout % group:
            raise CompileError(f"{lw.where(node)}: weights {weight.shape} do not fit {c} channels in "
                               f"{group} groups")
        cout_g = cout // group
        terms = []
        for t in taps:
            dense = np.zeros((c, cout), dtype=np.float32)
            for g in range(group):
                dense[g * cin_g:(g + 1) * cin_g, g * cout_g:(g + 1) * cout_g] = \
                    weight[(slice(g * cout_g, (g + 1) * cout_g), slice(None)) + t].T
            if np.any(dense):
                terms.append((tap_view(t), lw.const_tensor(dense, "w")))
        if not terms:  # all-zero weights: one zero term keeps the shape
            terms.append((tap_view(taps[0]), lw.const_tensor(np.zeros((c, cout), np.float32), "w")))
        sources, steps = [], []
        if len(args) > 2 and args[2] is not None:
            if args[2][0] != "const":
                raise CompileError(f"{lw.where(node)}: a computed convolution bias is not supported")
            bias = np.asarray(args[2][1], dtype=np.float32).reshape(1, cout)
            sources, steps = [View(lw.const_tensor(bias, "bias"))], [Step("ADD", [("acc",), ("src", 0)])]
        lw.nodes.append(Node("matmul", label, op, out, terms=terms, sources=sources, steps=steps))
    elif maxpool:
        views = [tap_view(t) for t in taps]
        _max_chain(lw, node, op, views, out, out_shape)
    else:
        eye = lw.const_tensor(np.eye(c, dtype=np.float32), "eye")
        terms = [(tap_view(t), eye) for t in taps]
        counts = np.ones(1, dtype=np.int64)
        count_pad = a.get("count_include_pad", 0)
        for i in range(k):  # taps inside the image (or the padded image) per output position, axis by axis
            lo, hi = (-pb[i], sizes[i] + pe[i]) if count_pad else (0, sizes[i])
            pos = np.arange(outs[i])[:, None] * strides[i] + np.arange(kernel[i])[None, :] * dil[i] - pb[i]
            along = ((pos >= lo) & (pos < hi)).sum(axis=1)
            counts = (counts[:, None] * along[None, :]).reshape(-1)
        counts = np.tile(counts, n)
        if np.all(counts == len(taps)):
            sources, steps = [], [Step("MUL", [("acc",), ("imm", 1.0 / len(taps))])]
        else:
            distinct, which = np.unique(counts, return_inverse=True)
            inv = np.repeat((1.0 / np.maximum(distinct, 1)).reshape(-1, 1), c, axis=1).astype(np.float32)
            sources = [View(lw.const_tensor(inv, "count"), rows=tuple(which.tolist()))]
            steps = [Step("MUL", [("acc",), ("src", 0)])]
        lw.nodes.append(Node("matmul", label, op, out, terms=terms, sources=sources, steps=steps))
    if k == 2:
        lw.values[node.output[0]] = (out, onnx_shape)
        return
    nd_finish(lw, node, node.output[0], out, out_shape, onnx_shape)


def nd_finish(lw, node, name, cl, cl_shape, onnx_shape):
    """Record `name`'s channels-last tensor for the next readers; transposed back to the ONNX layout unless
    every reader takes channels-last (then lw.values holds the channels-last tensor, which only
    those readers see: they take it from lw.nd_lanes)."""
    lw.nd_lanes[name] = (cl, tuple(cl_shape))
    if channels_last_readers_only(lw, name, len(onnx_shape)):
        lw.values[name] = (cl, tuple(onnx_shape))
        return
    k = len(onnx_shape) - 2
    y = permute(lw, node, cl, tuple(cl_shape), [0, k + 1] + list(range(1, k + 1)), tuple(onnx_shape), name,
                lw.magnitudes.get(name, 0.0))
    lw.values[name] = (y, tuple(onnx_shape))


def channels_last_readers_only(lw, name, rank) -> bool:
    if any(o.name == name for o in lw.model.graph.output):
        return False
    users = [u for u in lw.model.graph.node if name in u.input]
    if not users:
        return False
    for u in users:
        if u.domain not in ("", "ai.onnx") or list(u.input).count(name) != 1 or u.input[0] != name:
            return False
        if not (u.op_type in ("Conv", "MaxPool", "AveragePool") or u.op_type in ELEMENTWISE):
            return False
    return rank in (3, 5)


def _padded_copy(lw, node, x, n, c, sizes, pb, padded, maxpool, mag):
    """Rows (n, padded position...) of x's channels: x inside, 0 (or -inf for a max pool) outside."""
    k = len(sizes)
    xstride = [int(np.prod(sizes[i + 1:], dtype=np.int64)) for i in range(k)]
    xtotal = int(np.prod(sizes, dtype=np.int64))
    linear = np.arange(n, dtype=np.int64) * xtotal
    inside = np.ones(n, dtype=bool)
    for i in range(k):
        q = np.arange(padded[i], dtype=np.int64) - pb[i]
        linear = (linear[:, None] + q[None, :] * xstride[i]).reshape(-1)
        inside = (inside[:, None] & ((q >= 0) & (q < sizes[i]))[None, :]).reshape(-1)
    rows = np.mod(linear, n * xtotal)  # border rows read any row (continuing the run), then masked
    if maxpool:
        mask = np.zeros((2, c), dtype=np.float32)
        mask[1] = -np.inf
        op = "ADD"
    else:
        mask = np.zeros((2, c), dtype=np.float32)
        mask[0] = 1.0
        op = "MUL"
    m = lw.const_tensor(mask, "padmask")
    shape = (n * int(np.prod(padded, dtype=np.int64)), c)
    p = lw.add_tensor(lw.fresh("padded"), shape, "value")
    lw.derived[p] = mag
    which = np.where(inside, 0, 1)
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, p,
                         sources=[View(x, rows=tuple(rows.tolist())), View(m, rows=tuple(which.tolist()))],
                         steps=[Step(op, [("src", 0), ("src", 1)])]))
    return p


def _max_chain(lw, node, op, views, out, out_shape):
    """out = max over the tap views: one VXM chain (passes.split_tap_chains makes it one pass per tap)."""
    steps = [Step("COPY", [("src", 0)])] if len(views) == 1 else [Step("MAX", [("src", 0), ("src", 1)])]
    for j in range(2, len(views)):
        steps.append(Step("MAX", [("step", len(steps) - 1), ("src", j)]))
    lw.nodes.append(Node("vector", node.name or node.output[0], op, out, sources=views, steps=steps))
