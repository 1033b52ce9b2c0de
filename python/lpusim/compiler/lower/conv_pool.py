"""Conv, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool on 2-D NCHW images, BatchNormalization, LRN.

A convolution is one matmul node with a term per kernel tap (a spatial view of the input, dense [Cin, Cout]
weights; grouped and depthwise convolutions block diagonal); off a graph input with few channels the host lays
the input out as patches (im2col) and one term replaces the taps. Max pools are a VXM chain of MAX over the taps;
average pools sum the taps on the MXM (identity weights) and the VXM divides (by a constant per row when windows
overhang the image). Global pools of rank >= 3 are reductions (reduce.py); 1-D, 3-D and per-axis strides go to
spatial_nd.py. BatchNormalization is a MUL and an ADD; LRN's window sum across channels is a lane matmul.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.elementwise import emit_binary
from lpusim.compiler.lower.lanes import lane_matmul, vector
from lpusim.compiler.lower.reduce import lower_global_pool
from lpusim.compiler.lower.spatial_nd import lower_spatial_nd, spatial_nd_wanted
from lpusim.errors import CompileError


# ----- convolution and pooling ----------------------------------------------------------------------
def window(lw, node, a, shape, kernel):
    """(strides, dilations, pads top/left/bottom/right, output H, W) for a Conv/Pool node."""
    n, c, h, w = shape
    kh, kw = kernel
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i, (size, k) in enumerate(((h, kh), (w, kw))):
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (k - 1) * dil[i] + 1 - size)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    ceil = a.get("ceil_mode", 0)
    outs = []
    for i, (size, k) in enumerate(((h, kh), (w, kw))):
        span = size + pads[i] + pads[i + 2] - (k - 1) * dil[i] - 1
        o = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (o - 1) * strides[i] >= size + pads[i]:
            o -= 1  # the last window must start inside the input or its top/left padding
        outs.append(o)
    if min(outs) < 1:
        raise CompileError(f"{lw.where(node)}: the window does not fit the {h}x{w} input")
    return strides, dil, pads, outs


def lower_spatial(lw, node, op, a, args):
    kind, xname, shape = args[0]
    if len(shape) != 4:
        raise CompileError(f"{lw.where(node)}: only 2-D images (NCHW) are supported, got shape {tuple(shape)}")
    n, c, h, w = shape
    if op.startswith("Global"):
        kernel, a = (h, w), {}
    elif op == "Conv":
        if args[1][0] != "const":
            raise CompileError(f"{lw.where(node)}: convolution weights must be constant")
        kernel = tuple(np.asarray(args[1][1]).shape[2:])
    else:
        kernel = tuple(a["kernel_shape"])
    if len(kernel) != 2:
        raise CompileError(f"{lw.where(node)}: only 2-D kernels are supported")
    strides, dil, pads, (ho, wo) = window(lw, node, a, shape, kernel)
    taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]

    def view(i, j):
        return View(xname, dh=i, dw=j, stride=strides[0], dilation=dil[0], pad_top=pads[0], pad_left=pads[1],
                    spatial=True)
    if strides[0] != strides[1] or dil[0] != dil[1]:
        raise CompileError(f"{lw.where(node)}: different strides or dilations along H and W are not "
                           f"supported yet")
    if op == "Conv":
        weight = np.asarray(args[1][1], dtype=np.float32)
        cout, cin_g = weight.shape[:2]
        group = a.get("group", 1)
        out_shape = (n, cout, ho, wo)
        out = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
        terms = []
        src = lw.tensors[xname]
        if src.kind == "input" and group == 1 and c * len(taps) <= 320 and len(taps) > 1 and src.pad == 0:
            # A convolution straight off a graph input with few channels (the stem of a CNN): the host
            # lays the input out as patches (as it lays out any input), one matmul replaces the taps.
            patches = lw.add_tensor(lw.fresh(xname + ".im2col"), (n, c * len(taps), ho, wo), "input",
                                    onnx_input=src.onnx_input)
            lw.tensors[patches].im2col = (tuple(kernel), tuple(strides), tuple(pads), tuple(dil), src.shape)
            lw.inputs.append(patches)
            terms.append((View(patches), lw.const_tensor(weight.reshape(cout, -1).T.copy(), "w")))
            taps = []
        cout_g = cout // group
        for i, j in taps:
            # dense [Cin, Cout] per tap; grouped and depthwise convolutions are block diagonal (exact zeros)
            dense = np.zeros((c, cout), dtype=np.float32)
            for g in range(group):
                dense[g * cin_g:(g + 1) * cin_g, g * cout_g:(g + 1) * cout_g] = \
                    weight[g * cout_g:(g + 1) * cout_g, :, i, j].T
            terms.append((view(i, j), lw.const_tensor(dense, "w")))
        lw.nodes.append(Node("matmul", node.name or node.output[0], op, out, terms=terms))
        lw.values[node.output[0]] = (out, out_shape)
        if len(args) > 2 and args[2] is not None:
            bias = np.asarray(args[2][1], dtype=np.float32).reshape(1, cout, 1, 1)
            emit_binary(lw, node, "ADD", ("value", out, out_shape), ("const", bias), node.output[0])
        return
    out_shape = (n, c, ho, wo)
    out = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
    if op in ("MaxPool", "GlobalMaxPool"):
        if len(taps) > 16:
            raise CompileError(f"{lw.where(node)}: a max pool over {len(taps)} taps exceeds the VXM's 16 "
                               f"ALUs (not supported yet)")
        if len(node.output) > 1 and node.output[1]:
            raise CompileError(f"{lw.where(node)}: the Indices output of MaxPool is not supported")
        sources = [view(i, j) for i, j in taps]
        steps = [Step("COPY", [("src", 0)])] if len(taps) == 1 else [Step("MAX", [("src", 0), ("src", 1)])]
        for k in range(2, len(taps)):
            steps.append(Step("MAX", [("step", len(steps) - 1), ("src", k)]))
        lw.nodes.append(Node("vector", node.name or node.output[0], op, out, sources=sources, steps=steps))
    else:  # average: identity weights on the MXM sum the taps exactly, the VXM divides
        count_pad = a.get("count_include_pad", 0)
        eye = lw.const_tensor(np.eye(c, dtype=np.float32), "eye")
        terms = [(view(i, j), eye) for i, j in taps]
        sources, steps = [], [Step("MUL", [("acc",), ("imm", 1.0 / len(taps))])]
        # The divisor counts the taps inside the image (count_include_pad=0) or inside the padded image;
        # windows that overhang it (ceil_mode) count less. Unequal counts: a constant per row.
        lo_h, hi_h = (-pads[0], h + pads[2]) if count_pad else (0, h)
        lo_w, hi_w = (-pads[1], w + pads[3]) if count_pad else (0, w)
        counts = np.zeros((n, ho, wo), dtype=np.float32)
        for i, j in taps:
            hh = np.arange(ho) * strides[0] + i * dil[0] - pads[0]
            ww = np.arange(wo) * strides[1] + j * dil[1] - pads[1]
            counts += ((hh >= lo_h) & (hh < hi_h))[:, None] & ((ww >= lo_w) & (ww < hi_w))[None, :]
        if np.any(counts != len(taps)):
            inv = np.repeat((1.0 / counts).reshape(-1, 1), c, axis=1).astype(np.float32)
            sources = [View(lw.const_tensor(inv, "count"))]
            steps = [Step("MUL", [("acc",), ("src", 0)])]
        lw.nodes.append(Node("matmul", node.name or node.output[0], op, out, terms=terms,
                             sources=sources, steps=steps))
    lw.values[node.output[0]] = (out, out_shape)


def lower_batchnorm(lw, node, a, args):
    if any(x is None or x[0] != "const" for x in args[1:5]):
        raise CompileError(f"{lw.where(node)}: BatchNormalization needs constant scale, bias, mean, var")
    if a.get("training_mode", 0):
        raise CompileError(f"{lw.where(node)}: training_mode BatchNormalization is not supported")
    scale, bias, mean, var = (np.asarray(x[1], dtype=np.float32) for x in args[1:5])
    eps = np.float32(a.get("epsilon", 1e-5))
    mul = scale / np.sqrt(var + eps)
    add = bias - mean * mul
    _, name, shape = args[0]
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    tmp = lw.fresh(node.output[0])
    emit_binary(lw, node, "MUL", args[0], ("const", mul.reshape(bshape)), tmp)
    emit_binary(lw, node, "ADD", ("value",) + lw.values[tmp], ("const", add.reshape(bshape)), node.output[0])


def lower_lrn(lw, node, a, args):
    _, x, shape = args[0]
    if len(shape) != 4:
        raise CompileError(f"{lw.where(node)}: LRN needs an NCHW image")
    size, alpha = int(a["size"]), float(a.get("alpha", 1e-4))
    beta, bias = float(a.get("beta", 0.75)), float(a.get("bias", 1.0))
    c = shape[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    band = lambda: np.array([[1.0 if n - lo <= k <= n + hi else 0.0 for n in range(c)]  # noqa: E731
                             for k in range(c)], dtype=np.float32)
    sq = vector(lw, node, [x], [Step("MUL", [("src", 0), ("src", 0)])], shape, "sq")
    lw.derived[sq] = (2.0 * lw.magnitudes.get(node.input[0], 0.0)) ** 2
    # y = x * exp(-beta * log(bias + alpha/size * window sum of x^2))
    steps = [Step("MUL", [("acc",), ("imm", alpha / size)]), Step("ADD", [("step", 0), ("imm", bias)]),
             Step("LOG", [("step", 1)]), Step("MUL", [("step", 2), ("imm", -beta)]), Step("EXP", [("step", 3)]),
             Step("MUL", [("src", 0), ("step", 4)])]
    y, _ = lane_matmul(lw, node, sq, shape, ("lrn", c, size), band, node.output[0], steps, [x])
    lw.values[node.output[0]] = (y, tuple(shape))


# ----- table entry ---------------------------------------------------------------------------------------------
def lower_conv_pool(lw, node, a, args) -> None:
    """Conv, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool."""
    op = node.op_type
    if op in ("GlobalAveragePool", "GlobalMaxPool") and args[0][0] == "value" and len(args[0][2]) >= 3:
        return lower_global_pool(lw, node, op, args)  # reduce.py
    if spatial_nd_wanted(lw, node, op, a, args):  # 1-D, 3-D, per-axis strides (spatial_nd.py)
        return lower_spatial_nd(lw, node, op, a, args)
    return lower_spatial(lw, node, op, a, args)
