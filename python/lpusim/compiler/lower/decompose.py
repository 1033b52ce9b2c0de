"""Ops lowered as small graphs of supported ops, each sub-node through the dispatcher (as Einsum is, matmul.py):
ConvTranspose (2-D) and LSTM, which real exported models use (PP-OCR's text detector upsamples with
ConvTranspose; Silero VAD's decoder is an LSTM; docs/models.md).

ConvTranspose: the input spread out by the strides (an integer nearest Resize, then a 0/1 mask keeps the first
pixel of each block: the zero insertion of a transposed convolution), then an ordinary Conv with the kernel
flipped and its in/out channels swapped, padded by dilation * (k - 1) - pad on each side (plus output_padding at
the end); Slices crop where that padding would be negative.

LSTM: the recurrence unrolled over the (static) sequence, one MatMul per gate of x_t and of h_{t-1} with the
constant weights, Sigmoid/Tanh and the cell update on the VXM; Y stacked by a Concat.
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.errors import CompileError


class SubGraph:
    """Sub-nodes of one ONNX node (a lowering that is a small graph of supported ops: here, dynamic_quant.py), named after its first output, with host constants registered in `lw`."""

    def __init__(self, lw, node):
        self.lw, self.node, self.nodes = lw, node, []

    def const(self, value, hint: str, dtype=np.int64) -> str:
        name = self.lw.fresh(f"{self.node.output[0]}@{hint}")
        self.lw.consts[name] = np.asarray(value, dtype=dtype)
        return name

    def add(self, op: str, inputs: list, output: str | None = None, **attrs) -> str:
        out = output or self.lw.fresh(f"{self.node.output[0]}@{op.lower()}")
        self.nodes.append(onnx.helper.make_node(op, inputs, [out], name=self.node.name or self.node.output[0],
                                                **attrs))
        return out

    def lower(self) -> None:
        for sub in self.nodes:
            self.lw.lower(sub)


def _const_arg(lw, node, args, i, what):
    if i >= len(args) or args[i] is None:
        return None
    if args[i][0] != "const":
        raise CompileError(f"{lw.where(node)}: {what} must be constant")
    return np.asarray(args[i][1], dtype=np.float32)


# ----- ConvTranspose ----------------------------------------------------------------------------------------------
def lower_conv_transpose(lw, node, a, args):
    if args[0][0] != "value" or len(args[0][2]) != 4:
        raise CompileError(f"{lw.where(node)}: only ConvTranspose of a computed 2-D image (NCHW) is supported")
    n, cin, h, w = args[0][2]
    weight = _const_arg(lw, node, args, 1, "ConvTranspose weights")
    bias = _const_arg(lw, node, args, 2, "the ConvTranspose bias")
    group = int(a.get("group", 1))
    kh, kw = weight.shape[2:]
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    extra = list(a.get("output_padding", [0, 0]))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if "output_shape" in a or auto not in ("NOTSET", "VALID"):
        raise CompileError(f"{lw.where(node)}: ConvTranspose with output_shape or auto_pad={auto} is not "
                           f"supported yet (explicit pads)")
    if auto == "VALID":
        pads = [0, 0, 0, 0]
    g = SubGraph(lw, node)
    x = node.input[0]
    sh, sw = strides
    if (sh, sw) != (1, 1):  # zero insertion: x at every stride-th pixel of an [sh*H, sw*W] image
        opset = max([o.version for o in lw.model.opset_import if o.domain in ("", "ai.onnx")] or [1])
        scales = g.const([1, 1, sh, sw], "scales", np.float32)
        if opset < 10:  # the Resize sub-node takes the model's opset, and Resize is new in opset 10
            raise CompileError(f"{lw.where(node)}: a strided ConvTranspose in an opset {opset} model is not "
                               f"supported (opset 10 and later)")
        up = g.add("Resize", [x, scales], mode="nearest") if opset == 10 else g.add(
            "Resize", [x, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
            nearest_mode="floor")
        mask = np.zeros((1, 1, sh * h, sw * w), np.float32)
        mask[:, :, ::sh, ::sw] = 1.0
        x = g.add("Mul", [up, g.const(mask, "mask", np.float32)])
    cin_g, cout_g = cin // group, weight.shape[1]
    flipped = weight[:, :, ::-1, ::-1].reshape(group, cin_g, cout_g, kh, kw).transpose(0, 2, 1, 3, 4)
    flipped = np.ascontiguousarray(flipped.reshape(group * cout_g, cin_g, kh, kw))
    # the spread image has stride - 1 trailing zero rows/columns more than the zero-inserted one: padded less
    begin = [dil[0] * (kh - 1) - pads[0], dil[1] * (kw - 1) - pads[1]]
    end = [dil[0] * (kh - 1) - pads[2] + extra[0] - (sh - 1), dil[1] * (kw - 1) - pads[3] + extra[1] - (sw - 1)]
    conv_in = [x, g.const(flipped, "w", np.float32)] + ([g.const(bias, "b", np.float32)] if bias is not None else [])
    cropped = any(p < 0 for p in begin + end)
    y = g.add("Conv", conv_in, None if cropped else node.output[0], group=group, dilations=dil,
              kernel_shape=[kh, kw], pads=[max(p, 0) for p in begin + end])
    if cropped:  # the Conv over the spread image padded by the clamped pads, cut to the true output
        ho = sh * h + begin[0] + end[0] - dil[0] * (kh - 1)
        wo = sw * w + begin[1] + end[1] - dil[1] * (kw - 1)
        starts = [max(-begin[0], 0), max(-begin[1], 0)]
        g.add("Slice", [y, g.const(starts, "starts"), g.const([starts[0] + ho, starts[1] + wo], "ends"),
                        g.const([2, 3], "axes")], node.output[0])
    g.lower()


# ----- LSTM -------------------------------------------------------------------------------------------------------
def lower_lstm(lw, node, a, args):
    if args[0][0] != "value" or len(args[0][2]) != 3:
        raise CompileError(f"{lw.where(node)}: LSTM input X must be a computed [seq, batch, input] tensor")
    layout = int(a.get("layout", 0))
    if layout != 0 or "activations" in a or "clip" in a or a.get("input_forget", 0):
        raise CompileError(f"{lw.where(node)}: LSTM with layout=1, custom activations, clip or input_forget is "
                           f"not supported yet")
    if len(args) > 4 and args[4] is not None:
        raise CompileError(f"{lw.where(node)}: LSTM sequence_lens is not supported yet (every sequence full)")
    if len(args) > 7 and args[7] is not None:
        raise CompileError(f"{lw.where(node)}: LSTM peepholes (P) are not supported yet")
    t_len, batch, _ = args[0][2]
    wts, rec = _const_arg(lw, node, args, 1, "LSTM W"), _const_arg(lw, node, args, 2, "LSTM R")
    hidden = int(a.get("hidden_size", rec.shape[-1]))
    b = _const_arg(lw, node, args, 3, "LSTM B")
    b = np.zeros((wts.shape[0], 8 * hidden), np.float32) if b is None else b
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    orders = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    g = SubGraph(lw, node)
    steps = [g.add("Gather", [node.input[0], g.const(t, "t")], axis=0) for t in range(t_len)]  # x_t [batch, in]
    outs = list(node.output) + [""] * (3 - len(node.output))
    wanted = [o and (lw.feeds_other_nodes(o) or any(o == v.name for v in lw.model.graph.output)) for o in outs]
    ys, hs, cs = [], [], []
    for d, backwards in enumerate(orders):
        h0, c0 = (node.input[i] if len(node.input) > i and node.input[i] else None for i in (5, 6))
        h = g.add("Gather", [h0, g.const(d, "d")], axis=0) if h0 else None
        c = g.add("Gather", [c0, g.const(d, "d")], axis=0) if c0 else None
        gates = []  # i, o, f, c: x @ W^T and h @ R^T per gate, with Wb + Rb
        for k in range(4):
            rows = slice(k * hidden, (k + 1) * hidden)
            gates.append((g.const(wts[d, rows].T, "w", np.float32), g.const(rec[d, rows].T, "r", np.float32),
                          g.const(b[d, rows] + b[d, 4 * hidden + k * hidden:4 * hidden + (k + 1) * hidden], "b",
                                  np.float32)))
        ys_d = [None] * t_len
        for t in (reversed(range(t_len)) if backwards else range(t_len)):
            pre = []
            for wk, rk, bk in gates:
                z = g.add("Add", [g.add("MatMul", [steps[t], wk]), bk])
                pre.append(g.add("Add", [z, g.add("MatMul", [h, rk])]) if h else z)
            i_, o_, f_ = (g.add("Sigmoid", [p]) for p in pre[:3])
            cand = g.add("Tanh", [pre[3]])
            new_c = g.add("Mul", [i_, cand])
            c = g.add("Add", [g.add("Mul", [f_, c]), new_c]) if c else new_c
            h = g.add("Mul", [o_, g.add("Tanh", [c])])
            ys_d[t] = h
        ys.append(ys_d)
        hs.append(h)
        cs.append(c)
    axes0 = g.const([0], "axes")
    if wanted[0]:  # Y [seq, directions, batch, hidden]
        per_t = [g.add("Unsqueeze", [ys[0][t], axes0]) if len(ys) == 1 else
                 g.add("Unsqueeze", [g.add("Concat", [g.add("Unsqueeze", [yd[t], axes0]) for yd in ys], axis=0),
                                     axes0]) for t in range(t_len)]
        stacked = g.add("Concat", per_t, axis=0) if t_len > 1 else per_t[0]
        if len(ys) == 1:
            g.add("Unsqueeze", [stacked, g.const([1], "axes")], outs[0])
        else:
            g.add("Identity", [stacked], outs[0])
    for k, final in ((1, hs), (2, cs)):
        if wanted[k]:  # Y_h, Y_c [directions, batch, hidden]
            parts = [g.add("Unsqueeze", [v, axes0]) for v in final]
            g.add("Concat", parts, outs[k], axis=0) if len(parts) > 1 else g.add("Identity", parts, outs[k])
    g.lower()
