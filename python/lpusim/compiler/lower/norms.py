"""Softmax, LogSoftmax, LayerNormalization.

* Over the lane axis alone (`lower_softmax`, `lower_layernorm`): lane sums and maxima on the MXM (lanes.py); a
  Softmax / LogSoftmax over rows of at most 320 lanes, when there are enough rows (`turned_pays`, measured), turned
  instead (`turned_softmax`): rows into lanes on the SXM, the exact float32 maximum by a VXM halving tree, the
  exponentials' sums by one MXM vector (`ones[1, C]` against the exponentials loaded as weights), turned back.

* Softmax / LogSoftmax over any axis (and opset < 13's flattened axes), LayerNormalization over axes [axis, ...)
  with its Mean and InvStdDev outputs. The reduced axes A split into the lane axis and row axes
  (`reduce_axes`): the lane axis by lanes.py (`lane_sum`: x @ ones on the MXM puts the row sum in every
  lane; `lane_extreme`: the rotation tree puts the row maximum in every lane), the row axes by reduce.py's
  halving trees on the VXM (float32, exact maxima). The result R has A's row axes reduced to one row and, when the
  lane axis is reduced, the same value in every lane, so it meets the input again elementwise through a row-map
  view (View.rows, `row_view`: output row r reads the row of R its non-reduced coordinates name) with no lane
  broadcast at all. A softmax over a row axis is VXM work only, in float32 (no fp16 rounding anywhere), and
  cheaper than permuting the axis onto the lanes (transpose.permute), the lane softmax and permuting back:
  cycles measured (row trees / permutes) Softmax [64, 100] axis 0: 721 / 5,403; [300, 20] axis 0: 2,028 / 4,261;
  [8, 40, 330] axis 1: 2,377 / 87,888; LogSoftmax [4, 128, 64] axis 1: 2,975 / 14,637.

* Softmax / LogSoftmax over a lane axis longer than one 320-lane tile (decode attention over a long KV cache):
  reduce.py's `wide_extreme` / `wide_sum` combine the row's lane tiles into one vector first, reduce that vector
  into every one of its lanes, and every lane tile of the row reads that vector (View.tile0): constants of C * 320,
  not C^2.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.elementwise import operand
from lpusim.compiler.lower.lanes import (check_lane_axis, fp16_residual, LANES, lane_axis, lane_extreme, lane_matmul,
                                         lane_sum, lane_sum_tile, node_of, shared_const, vector)
from lpusim.compiler.lower.reduce import reduce_row_axes, turn, wide_extreme, wide_sum
from lpusim.compiler.lower.rows import row_view
from lpusim.compiler.row_layout import geom
from lpusim.errors import CompileError


def lower_softmax(lw, node, op, a, args):
    _, x, shape = args[0]
    opset = next((o.version for o in lw.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = a.get("axis", -1 if opset >= 13 else 1)
    if opset < 13:  # the axes from `axis` on are flattened: fine when only the lane axis among them is > 1
        axis %= len(shape)
        lane = lane_axis(shape)
        if lane < axis or int(np.prod(shape[axis:])) != shape[lane]:
            raise CompileError(f"{lw.where(node)}: opset-{opset} {op} flattens axes {axis}.. of "
                               f"{tuple(shape)}; only a flattening that leaves the lane axis is supported")
        axis = lane
    check_lane_axis(lw, node, shape, axis)
    if turned_pays(lw.tensors[x].rows, shape[lane_axis(shape)]):
        y = turned_softmax(lw, node, op, x, tuple(shape), lw.magnitudes.get(node.input[0], 0.0))
        lw.values[node.output[0]] = (y, tuple(shape))
        return
    # Shift by the row maximum so exp stays in range (any shift gives the same softmax). The tree finds the
    # maximum of fp16-rounded values, within 2^-11 of the largest magnitude r: while that error could push
    # exp(x - m) past fp16 (r > 2^12), shift by that estimate and search again, the error shrinking 2^10-fold
    # per pass (onnx's light_* models have logits near 1e19: six passes).
    # r: the scale of the row maxima (the largest value, not the largest magnitude: a -1e38 attention mask
    # never wins the maximum)
    top = lw.magnitudes.get(node.input[0] + "#max")
    r = 2.0 * (abs(top) if top is not None else lw.magnitudes.get(node.input[0], 0.0))
    r = min(r, 2.0 ** 128)
    low = lw.magnitudes.get(node.input[0], 0.0)
    if np.isfinite(low) and low > 2.0 ** 64 and low > 2.0 ** 32 * r:
        # A finite additive mask far below every score (transformers' finfo(float32).min): a row masked
        # everywhere (left padding under a causal mask) holds only such values, whose fp16 copy for the maximum
        # search is -inf, and -inf - -inf is NaN. Clamped to -c (c > r/2 + 104: exp(-c - max) is 0 in f32 for
        # any row with a score) such a row is uniform, as onnxruntime's is (score + finfo.min rounds to
        # finfo.min everywhere); an infinite mask is left alone (onnxruntime's row is NaN too).
        c = max(2.0 ** 12, 2.0 * r)
        x = vector(lw, node, [x], [Step("MAX", [("src", 0), ("imm", -c)])], shape, "clamped")
        r = c
        lw.derived[x] = r
    if x in lw.derived:  # a per-head part only the maximum search reads in fp16: scale its copy by r
        lw.derived[x] = r
    sub = [Step("SUB", [("src", 0), ("acc",)])]  # x - m, m broadcast from one vector (rows past LANES lanes)
    if shape[lane_axis(shape)] <= LANES:
        m = lane_extreme(lw, node, x, shape, "MAX", magnitude=r)
        while r > 2.0 ** 12:
            x = vector(lw, node, [x, m], [Step("SUB", [("src", 0), ("src", 1)])], shape, "shifted")
            r *= 2.0 ** -10
            lw.derived[x] = r
            m = lane_extreme(lw, node, x, shape, "MAX", magnitude=r)
        shifted = lambda hint, more=(): vector(lw, node, [x, m], [Step("SUB", [("src", 0), ("src", 1)])]  # noqa
                                               + list(more), shape, hint)
    else:  # lane tiles combined first: constants O(C * 320), not O(C^2) (reduce.wide_extreme)
        while True:
            xs = x
            if r <= 2.0 ** 12:
                break
            x = wide_extreme(lw, node, xs, shape, "MAX", "max", r, sub, [xs])
            r *= 2.0 ** -10
            lw.derived[x] = r
        shifted = lambda hint, more=(): wide_extreme(lw, node, xs, shape, "MAX", hint, r,  # noqa: E731
                                                     sub + list(more), [xs])
    if op == "Softmax":
        e = shifted("exp", [Step("EXP", [("step", 0)])])
        lw.derived[e] = 1.0
        y, _ = wide_sum(lw, node, e, shape, hint=node.output[0],
                        steps=[Step("DIV", [("src", 0), ("sum",)])], sources=[e], magnitude=1.0)
    else:  # LogSoftmax: (x - m) - log(sum exp(x - m))
        d = shifted("shifted")
        e = vector(lw, node, [d], [Step("EXP", [("src", 0)])], shape, "exp")
        lw.derived[e] = 1.0
        y, _ = wide_sum(lw, node, e, shape, hint=node.output[0],
                        steps=[Step("LOG", [("sum",)]), Step("SUB", [("src", 0), ("step", 0)])],
                        sources=[d], magnitude=1.0)
    lw.values[node.output[0]] = (y, tuple(shape))


# Softmax over the lanes turned (turned_softmax) rather than by the rotation tree when 6 R >= C - 60 (R rows of C
# <= 320 lanes): the turned cost grows with C (a tree over C rows, the transposes), the rotation tree's with R
# (log2(C) + 2 MXM passes of R vectors). Cycles measured (turned / rotations), a lone Softmax: [1, 72] 1,381 /
# 1,441; [1, 80] 1,455 / 1,441, [2, 80] 1,467 / 1,479; [5, 96] 1,575 / 1,593; [12, 128] 1,860 / 1,842, [14, 128]
# 1,868 / 1,918; [12, 160] 2,194 / 2,050, [16, 160] 2,186 / 2,218; [16, 200] 2,520 / 2,223, [24, 200] 2,552 /
# 2,559; [32, 256] 3,063 / 2,902, [40, 256] 3,087 / 3,238; [40, 320] 3,693 / 3,547, [48, 320] 3,702 / 3,915;
# [1, 128] 1,842 / 1,438; [128, 128] 2,306 / 6,250; [1536, 128] 12,347 / 59,726; [1536, 8] 8,003 / 34,570.
TURN_LANES_PER_ROW = 6
TURN_FREE_LANES = 60


def turned_pays(rows: int, c: int) -> bool:
    return c <= LANES and TURN_LANES_PER_ROW * rows >= c - TURN_FREE_LANES


def turned_softmax(lw, node, op, x, shape, mag) -> str:
    """Softmax / LogSoftmax over the lane axis of x (R rows of C <= LANES lanes) with one MXM vector per 320 of
    R: the rows turned into lanes on the SXM (T: C rows of R lanes), T's maximum over its rows by a halving tree
    on the VXM (float32: the exact maximum, so one shift whatever the magnitudes), e = exp(T - max) on the VXM,
    its sums over the rows as `ones[1, C] @ e` with e loaded as weights (the fp16 exponentials summed exactly,
    as lane_sum sums them; with `precise_sums`, a float32 tree on the VXM), the division (or the logarithm), and
    the result turned back."""
    rows, c = lw.tensors[x].rows, shape[lane_axis(shape)]
    t = turn(lw, node, x, (c, rows), (1, c, 1), mag)
    m, small = reduce_axes(lw, node, t, (c, rows), [0], "MAX", mag)
    e = node_of(lw, node, [View(t), View(m)], [Step("SUB", [("src", 0), ("src", 1)]), Step("EXP", [("step", 0)])],
                (c, rows), f"{node.output[0]}.exp", 1.0)
    if lw.precise_sums:  # quantised models (lane_sum's hi and lo pieces): the sums by a float32 tree instead
        s, _ = reduce_axes(lw, node, e, (c, rows), [0], "ADD", 1.0)
    else:
        ones = shared_const(lw, ("ones", 1, c), lambda: np.ones((1, c), np.float32))
        s = lw.add_tensor(lw.fresh(f"{node.output[0]}.sum"), small, "value")
        lw.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, s, terms=[(View(ones), e)],
                             purpose="lane sums"))
        lw.derived[s] = float(c)
    if op == "Softmax":
        y = node_of(lw, node, [View(e), View(s)], [Step("DIV", [("src", 0), ("src", 1)])], (c, rows),
                    f"{node.output[0]}.turned", 1.0)
    else:  # (t - m) - log(sum)
        y = node_of(lw, node, [View(t), View(m), View(s)],
                    [Step("SUB", [("src", 0), ("src", 1)]), Step("LOG", [("src", 2)]),
                     Step("SUB", [("step", 0), ("step", 1)])], (c, rows), f"{node.output[0]}.turned",
                    2.0 * mag + 10.0)
    y = turn(lw, node, y, tuple(shape), geom(tuple(shape)), lw.derived[y])
    lw.tensors[y].shape = tuple(shape)
    return y


def lower_layernorm(lw, node, a, args):
    _, x, shape = args[0]
    axis = a.get("axis", -1)
    check_lane_axis(lw, node, shape, axis)
    if len(node.output) > 1 and any(node.output[1:]):
        raise CompileError(f"{lw.where(node)}: the Mean and InvStdDev outputs are not supported")
    c = shape[lane_axis(shape)]
    if c > LANES:  # the mean in one 320-lane tile, read by every tile of the row (lanes.lane_sum_tile)
        mean = View(lane_sum_tile(lw, node, x, shape, 1.0 / c, "mean", magnitude=lw.magnitudes.get(node.input[0])),
                    tile0=True)
    else:
        mean, _ = lane_sum(lw, node, x, shape, 1.0 / c, "mean", magnitude=lw.magnitudes.get(node.input[0]))
    d = vector(lw, node, [x, mean], [Step("SUB", [("src", 0), ("src", 1)])], shape, "centred")
    sq = vector(lw, node, [d], [Step("MUL", [("src", 0), ("src", 0)])], shape, "sq")
    lw.derived[sq] = (2.0 * lw.magnitudes.get(node.input[0], 0.0)) ** 2
    # The variance's sums stay ones[C, C] with the rest of LayerNorm as their epilogue: in one tile they would need
    # that rest as a node of its own after them, on the path between layers. Cycles measured (both sums in one tile
    # / the mean alone / neither): BERT-base 657,318 / 653,899 / 670,453; 2-layer BERT-Large 164,217 / 165,078 /
    # 171,951; 4-layer BERT-base 231,321 / 229,847 / 229,869; 2-layer 119,952 / 119,634 / 117,688.
    steps = [Step("ADD", [("sum",), ("imm", float(a.get("epsilon", 1e-5)))]), Step("RSQRT", [("step", 0)]),
             Step("MUL", [("src", 0), ("step", 1)])]
    sources = [d]
    for i, arg in ((1, args[1] if len(args) > 1 else None), (2, args[2] if len(args) > 2 else None)):
        if arg is None:
            continue
        kind, v = operand(lw, node, arg, tuple(shape))
        last = ("step", len(steps) - 1)
        if kind == "imm":
            steps.append(Step("MUL" if i == 1 else "ADD", [last, ("imm", v)]))
        else:
            sources.append(v)
            steps.append(Step("MUL" if i == 1 else "ADD", [last, ("src", len(sources) - 1)]))
    y, _ = lane_sum(lw, node, sq, shape, 1.0 / c, node.output[0], steps, sources, magnitude=lw.derived[sq])
    lw.values[node.output[0]] = (y, tuple(shape))


# ----- which nodes come here -----------------------------------------------------------------------------
def norm_axes(lw, node, op, a, shape) -> list[int]:
    """The axes a Softmax/LogSoftmax/LayerNormalization normalises over (size-1 axes included)."""
    nd = len(shape)
    if op == "LayerNormalization":
        axis = a.get("axis", -1)
        if not -nd <= axis < nd:
            raise CompileError(f"{lw.where(node)}: axis {axis} out of range for a {nd}-D input")
        return list(range(axis % nd, nd))
    opset = next((o.version for o in lw.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = a.get("axis", -1 if opset >= 13 else 1)
    if not -nd <= axis < nd:
        raise CompileError(f"{lw.where(node)}: axis {axis} out of range for a {nd}-D input")
    return [axis % nd] if opset >= 13 else list(range(axis % nd, nd))


def norm_elsewhere(lw, node, op, a, args) -> bool:
    """Whether this normalisation needs lower_norm (not only the lane axis, or LayerNormalization's extra
    outputs); `lower_softmax`/`lower_layernorm` keep the lane-axis-only forms."""
    if not args or args[0] is None or args[0][0] != "value" or not args[0][2]:
        return False
    shape = tuple(args[0][2])
    axes = [k for k in norm_axes(lw, node, op, a, shape) if shape[k] != 1]
    extra = op == "LayerNormalization" and any(node.output[1:])
    return extra or axes != [lane_axis(shape)]


# ----- reductions and their broadcast back -------------------------------------------------------------------
def reduce_axes(lw, node, x, shape, axes, combine, mag):
    """x reduced over `axes` by ADD or MAX: (tensor, its shape: reduced row axes 1, the lanes kept, every lane
    the same value when the lane axis is reduced)."""
    lane = lane_axis(shape)
    cur = x
    if lane in axes and shape[lane] > 1:
        if combine == "ADD":
            cur, _ = lane_sum(lw, node, cur, shape, hint=f"{node.output[0]}.lsum", magnitude=mag)
            mag = mag * shape[lane]
        else:
            cur = lane_extreme(lw, node, cur, shape, combine, f"{node.output[0]}.lmax", magnitude=mag)
        lw.derived[cur] = mag
    rows = [k for k in axes if k != lane and shape[k] > 1]
    if rows:
        cur = reduce_row_axes(lw, node, cur, shape, rows, combine, mag)
        lw.derived[cur] = mag * (int(np.prod([shape[k] for k in rows])) if combine == "ADD" else 1)
    return cur, tuple(1 if k in rows else d for k, d in enumerate(shape))


# ----- Softmax / LogSoftmax / LayerNormalization ---------------------------------------------------------
def lower_norm(lw, node, op, a, args) -> None:
    _, x, shape = args[0]
    shape = tuple(int(d) for d in shape)
    axes = [k for k in norm_axes(lw, node, op, a, shape) if shape[k] != 1]
    mag = lw.magnitudes.get(node.input[0], 0.0)
    if op == "LayerNormalization":
        return lower_norm_layer(lw, node, a, args, x, shape, axes, mag)
    lane = lane_axis(shape)
    if lane in axes and len(axes) > 1 and 2.0 * mag > 2.0 ** 12:
        raise CompileError(f"{lw.where(node)}: {op} over axes {axes} of {shape} including the lane axis, "
                           f"with values as large as {mag:g}: the lane maximum is found in fp16, too coarse a "
                           f"shift past 4096")
    m, small = reduce_axes(lw, node, x, shape, axes, "MAX", mag)
    sub = Step("SUB", [("src", 0), ("src", 1)])
    e = node_of(lw, node, [View(x), row_view(lw, m, small, shape)], [sub, Step("EXP", [("step", 0)])],
                shape, f"{node.output[0]}.exp", 1.0)
    s, _ = reduce_axes(lw, node, e, shape, axes, "ADD", 1.0)
    if op == "Softmax":
        y = node_of(lw, node, [View(e), row_view(lw, s, small, shape)],
                         [Step("DIV", [("src", 0), ("src", 1)])], shape, node.output[0], 1.0)
    else:  # (x - m) - log(sum)
        y = node_of(lw, node, [View(x), row_view(lw, m, small, shape), row_view(lw, s, small, shape)],
                         [sub, Step("LOG", [("src", 2)]), Step("SUB", [("step", 0), ("step", 1)])],
                    shape, node.output[0], 2.0 * mag + 10.0)
    lw.values[node.output[0]] = (y, shape)


def lower_norm_layer(lw, node, a, args, x, shape, axes, mag) -> None:
    lane = lane_axis(shape)
    n = int(np.prod([shape[k] for k in axes])) if axes else 1
    s, small = reduce_axes(lw, node, x, shape, axes, "ADD", mag)
    d = node_of(lw, node, [View(x), row_view(lw, s, small, shape)],
                     [Step("MUL", [("src", 1), ("imm", 1.0 / n)]), Step("SUB", [("src", 0), ("step", 0)])],
                shape, f"{node.output[0]}.centred", 2.0 * mag)
    sq = node_of(lw, node, [View(d)], [Step("MUL", [("src", 0), ("src", 0)])], shape, f"{node.output[0]}.sq",
                      (2.0 * mag) ** 2)
    v, _ = reduce_axes(lw, node, sq, shape, axes, "ADD", (2.0 * mag) ** 2)
    eps = float(a.get("epsilon", 1e-5))
    inv = node_of(lw, node, [View(v)], [Step("MUL", [("src", 0), ("imm", 1.0 / n)]),
                                        Step("ADD", [("step", 0), ("imm", eps)]), Step("RSQRT", [("step", 1)])],
                  small, f"{node.output[0]}.inv", 1.0 / np.sqrt(eps))
    sources = [View(d), row_view(lw, inv, small, shape)]
    steps = [Step("MUL", [("src", 0), ("src", 1)])]
    for i in (1, 2):
        arg = args[i] if len(args) > i else None
        if arg is None:
            continue
        kind, val = operand(lw, node, arg, shape)
        last = ("step", len(steps) - 1)
        if kind != "imm":
            sources.append(View(val))
            val = len(sources) - 1
        steps.append(Step("MUL" if i == 1 else "ADD", [last, ("imm", val) if kind == "imm" else ("src", val)]))
    y = node_of(lw, node, sources, steps, shape, node.output[0], 2.0 * mag)
    lw.values[node.output[0]] = (y, shape)
    out_shape = tuple(d if k < min(norm_axes(lw, node, "LayerNormalization", a, shape)) else 1
                      for k, d in enumerate(shape))
    for i, (src, hint, chain) in enumerate(
            ((s, "mean", [Step("MUL", [("src", 0), ("imm", 1.0 / n)])]), (inv, "inv", None)), start=1):
        if len(node.output) <= i or not node.output[i]:
            continue
        t = node_of(lw, node, [View(src)], chain, small, f"{node.output[i]}.full", mag) if chain else src
        if lane in axes and shape[lane] > 1:  # every lane holds the value: keep lane 0 (hi + lo, ~22 bits)
            t = lane0_precise(lw, node, t, small, node.output[i])
        lw.values[node.output[i]] = (t, out_shape)


def lane0_precise(lw, node, t, shape, hint) -> str:
    """Lane 0 of t as a column: hi and lo (fp16_residual) through E[C, 1] on the MXM, added."""
    c = shape[lane_axis(shape)]
    e0 = lambda: np.eye(c, 1, dtype=np.float32)  # noqa: E731
    hi, _ = lane_matmul(lw, node, t, shape, ("lane0", c), e0, f"{hint}.hi")
    lo = fp16_residual(lw, node, t, shape, f"{hint}.lo", lw.ir_magnitude(t))
    y, _ = lane_matmul(lw, node, lo, shape, ("lane0", c), e0, hint,
                            [Step("ADD", [("acc",), ("src", 0)])], [hi])
    return y


# ----- table entries ------------------------------------------------------------------------------------------
def lower_softmax_op(lw, node, a, args) -> None:
    """Softmax, LogSoftmax: over the lane axis (lower_softmax) or any other axes (lower_norm)."""
    op = node.op_type
    if norm_elsewhere(lw, node, op, a, args):
        return lower_norm(lw, node, op, a, args)
    return lower_softmax(lw, node, op, a, args)


def lower_layernorm_op(lw, node, a, args) -> None:
    """LayerNormalization: over the lane axis (lower_layernorm) or any other axes, Mean/InvStdDev (lower_norm)."""
    if norm_elsewhere(lw, node, "LayerNormalization", a, args):
        return lower_norm(lw, node, "LayerNormalization", a, args)
    return lower_layernorm(lw, node, a, args)
