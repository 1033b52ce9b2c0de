"""Reductions over any set of axes: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceSumSquare,
ReduceL1, ReduceL2, ReduceLogSumExp.

A tensor's rows are the vectors of every axis but the lane axis (the last axis, or the channels of an image), so a
reduction splits into
* row axes: a halving tree on the VXM in float32. The rows along the reduced axes are seen as an image
  (outer, n, inner) (`Tensor.geom`; the rows along an image's W axis as (N, H, W) itself) and each node combines
  (ADD, MAX, MIN or MUL) two equally long runs of rows taken from two different tensors through strided row views
  (a MEM slice streams one view of a tensor at a time, so the first node copies the second half of the input
  aside). Each combination writes its result as two tensors (the first and the second half) so the next level
  again reads two different tensors: about 1.5 n row passes for n rows, 2 log2(n) + 1 nodes. Values stay float32
  (sums round once per level, maxima and minima are exact). Reduced row axes that are not neighbours in the row
  order are reduced one run at a time, innermost first.
* the lane axis, after the row axes (fewer rows left): sums on the MXM (`x @ ones[C, 1]`, lanes.py); max, min
  and product by turning the R rows of C lanes around on the SXM (a transpose node, schedule/sxm.py) and reducing
  the C rows of R lanes by a tree as above, then turning the R results back into a column: exact, and cheaper than
  lanes.py's rotation tree on the MXM, which max/min still use for more than 320 lanes of few rows
  (`TURN_MIN_ROWS`) except in quantised models (the tree moves fp16 values). GlobalAveragePool / GlobalMaxPool are ReduceMean / ReduceMax over the spatial axes.
* ReduceSumSquare / L1 / L2 / LogSumExp: an elementwise step before (x*x, |x|, exp x) and after (sqrt, log) the
  sum; ReduceMean multiplies by 1/count at the end (the VXM chain after the last combination).
* keepdims=0 results keep their rows and lanes when the output's layout puts the same values on the same rows and
  lanes. Results over the lanes that belong on lanes themselves ([4, 16] over axis 1 -> [4], read by another node
  as one row of 4 lanes; [3, 12, 16] over axis 2 -> 3 rows of 12 lanes) come out of the turned-around tree in that
  layout (batched transposes, for a sum too). Any other layout (an image's rows and channels reordered) is one
  permutation of the values' axes on the SXM (transpose.permute). A graph output alone is read back by the
  host in any layout.
* Not supported (CompileError): computed axes, zero-size inputs, ReduceLogSumExp of values past |x| = 80 (no shift
  by the maximum).

ArgMax/ArgMin:
* ArgMax/ArgMin over the lane axis: the row maximum by the rotation tree of lanes.py (on the fp16 values the
  MXM moves), `EQ` of each lane's fp16 value with it on the VXM gives the candidates, each candidate lane holds its
  index (a constant row), the others `C`; a MIN tree finds the first (`select_last_index`: a MAX tree, the last);
  lane 0 is kept through a [C, 1] selection. Ties after fp16 rounding resolve to the first (last) index, so the
  result is onnxruntime's whenever the row's largest value differs from the others by more than fp16's rounding.
* ArgMax/ArgMin along a row axis: a halving tree on the VXM in float32 (exact, ties included): each stage compares
  the first and the last ceil(n/2) rows along the axis (strided row views) and keeps the better (value, index).
  That tree is not `halving_tree`: it compares overlapping halves (a row may meet itself, harmless for a maximum,
  wrong for a sum) and carries (value, index) pairs, three nodes per stage.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.lanes import (check_lane_axis, FP16_EXACT, fp16_residual, keep_lane0, lane_axis,
                                         lane_extreme, lane_extreme_and_copy, lane_matmul, lane_sum, lane_sum_tile,
                                         LANES, rotation_tree, vector, with_lanes)
from lpusim.compiler.lower.transpose import permute
from lpusim.compiler.row_layout import as_matrix, to_rows
from lpusim.errors import CompileError


# op -> (combining VXM op, elementwise chain before the reduction, chain after it); ("in",) is the value itself.
KINDS = {
    "ReduceSum": ("ADD", [], []),
    "ReduceMean": ("ADD", [], []),  # and * 1/count
    "ReduceMax": ("MAX", [], []),
    "ReduceMin": ("MIN", [], []),
    "ReduceProd": ("MUL", [], []),
    "ReduceSumSquare": ("ADD", [("MUL", [("in",), ("in",)])], []),
    "ReduceL1": ("ADD", [("ABS", [("in",)])], []),
    "ReduceL2": ("ADD", [("MUL", [("in",), ("in",)])], [("SQRT", [("in",)])]),
    "ReduceLogSumExp": ("ADD", [("EXP", [("in",)])], [("LOG", [("in",)])]),
}

# Max/min over the lanes by turning them into rows (exact) rather than lanes.py's rotation tree (fp16 values)
# when C <= 320 or at least this many rows. Cycles measured (turned / rotations): [6, 70] 769 / 1582, [1, 300]
# 1445 / 1721, [300, 20] 3079 / 9780, [300, 700] 6295 / 39720, [16, 700] 3487 / 3718; but [4, 700] 3431 / 2401,
# [1, 2000] 8266 / 3127.
TURN_MIN_ROWS = 16

LOG_SUM_EXP_MAX = 80.0  # exp(80) ~ 5.5e34: a sum of many such terms still fits float32; exp(-80) is not 0

# ONNX ops whose lowering reads or sets an input's row geometry (Tensor.geom): a tensor they read is not given one
# here (it is copied into a tensor of the tree's geometry instead)
_GEOM_READERS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "ArgMax", "ArgMin", "Gather",
                 "GatherElements", "Transpose", "Concat", "Pad", "Resize", "Expand", "Tile"}


def _chain(chain: list) -> list[Step]:
    return [Step(op, [("src", 0) if a == ("in",) else a for a in args]) for op, args in chain]


def lower_reduction(lw, node, op, a, args) -> None:
    if args[0] is None or args[0][0] != "value":
        raise CompileError(f"{lw.where(node)}: {op} of this input kind is not supported")
    _, x, shape = args[0]
    shape = tuple(shape)
    nd = len(shape)
    if 0 in shape:
        raise CompileError(f"{lw.where(node)}: the input {node.input[0]} has the zero-size shape {shape}: a "
                           f"reduction of no values is a constant, and zero-size tensors are not supported")
    axes = a.get("axes")
    if axes is None and len(args) > 1 and args[1] is not None:
        if args[1][0] != "const":
            raise CompileError(f"{lw.where(node)}: {op} with computed axes (input '{node.input[1]}') is not "
                               f"supported: the reduced axes must be known when compiling")
        axes = [int(v) for v in np.asarray(args[1][1]).ravel()]
    combine, pre, post = KINDS[op]
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            axes = []
        else:
            axes = list(range(nd))
    if any(not -nd <= v < max(nd, 1) for v in axes):
        raise CompileError(f"{lw.where(node)}: axes {list(axes)} out of range for shape {shape}")
    axes = sorted({int(v) % nd for v in axes}) if nd else []
    keep = a.get("keepdims", 1)
    out_shape = tuple(1 if i in axes else d for i, d in enumerate(shape)) if keep else \
        tuple(d for i, d in enumerate(shape) if i not in axes)
    lane = lane_axis(shape) if nd else None
    count = int(np.prod([shape[i] for i in axes], dtype=np.int64)) if axes else 1
    if op == "ReduceMean":
        post = [("MUL", [("in",), ("imm", float(1.0 / count))])] if count > 1 else []
    mag = lw.magnitudes.get(node.input[0], 0.0)
    if op == "ReduceLogSumExp" and mag > LOG_SUM_EXP_MAX:
        raise CompileError(f"{lw.where(node)}: ReduceLogSumExp of values as large as {mag:g} in magnitude: "
                           f"lpusim computes log(sum(exp(x))) without shifting by the maximum, and exp leaves "
                           f"float32's range past |x| = {LOG_SUM_EXP_MAX:g}")
    cur, cur_shape = x, shape  # cur_shape: the shape with the axes reduced so far set to 1
    if pre:
        cur = vector(lw, node, [cur], _chain(pre), shape, f"{node.output[0]}.pre")
        mag = {"MUL": mag * mag, "ABS": mag, "EXP": float(np.exp(min(mag, 88.0)))}[pre[0][0]]
        lw.derived[cur] = mag
    row_axes = [i for i in axes if i != lane and shape[i] != 1]
    if row_axes:
        cur = reduce_row_axes(lw, node, cur, shape, row_axes, combine, mag)
        cur_shape = tuple(1 if i in row_axes else d for i, d in enumerate(shape))
        n_rows = int(np.prod([shape[i] for i in row_axes], dtype=np.int64))
        mag = mag * n_rows if combine == "ADD" else float(np.exp(min(n_rows * np.log(mag), 88.0))) \
            if combine == "MUL" and mag > 1 else mag
        lw.derived[cur] = mag
    if lane is not None and lane in axes and shape[lane] != 1:
        lanes_done = tuple(1 if i == lane else d for i, d in enumerate(cur_shape))
        rows, c = lw.tensors[cur].rows, shape[lane]
        batch = turned(lanes_done, out_shape) if not keep and lw.feeds_other_nodes(node.output[0]) \
            else None
        # a quantised model's max/min is exact (its rotation tree moves fp16 values: DynamicQuantizeLinear's
        # scale from a max over 512 lanes was 1.6e-5 off)
        exact = c <= 320 or rows >= TURN_MIN_ROWS or lw.precise_sums
        if batch is not None or combine == "MUL" or (combine != "ADD" and exact):
            # the lanes turned into rows on the SXM (B matrices of M rows of C lanes -> B of C rows of M lanes),
            # then reduced on the VXM like any rows: exact float32, no rotation tree on the MXM (which has no
            # product at all). B rows of M results, which is what a turned result wants (keepdims=0: [4, 16]
            # over axis 1 -> [4], read as one row of 4 lanes); else turned back into a column
            b = batch or 1
            m = rows // b
            cur = turn(lw, node, cur, (b * c, m), (b, c, 1), mag)
            cur = halving_tree(lw, node, cur, (b, c, 1), 1, combine, mag)
            if batch is not None:
                cur_shape = (b, m)
            else:
                if rows > 1:
                    cur = turn(lw, node, cur, lanes_done, None, mag)
                cur_shape = lanes_done
        else:
            cur, cur_shape = reduce_lane_axis(lw, node, cur, cur_shape, combine, post, mag)
            post = []
    want = wanted_geom(out_shape)
    t = lw.tensors[cur]
    if cur != x and want is None and t.geom == (t.rows, 1, 1):
        t.geom = None  # what a tensor without a geometry reads as anyway (ir.out_geom)
    if post or (cur != x and t.geom != want):
        # the chain after the reduction (fused into the last combination by fuse_chains when the geometries
        # agree), or a copy into the output's own row geometry: identity views read the same rows whatever it is
        cur = vector(lw, node, [cur], _chain(post) if post else [Step("COPY", [("src", 0)])], cur_shape,
                     node.output[0])
        lw.tensors[cur].geom = want
    finish_layout(lw, node, cur, cur_shape, out_shape)
    result = lw.values[node.output[0]][0]
    if node.output[0] in lw.magnitudes and result != x:
        lw.derived.pop(result, None)  # the calibrated magnitude of the output scales its fp16 copies


def lower_global_pool(lw, node, op, args) -> None:
    """GlobalAveragePool / GlobalMaxPool of an [N, C, spatial...] tensor: the mean / maximum over the spatial
    axes, by the trees above (an image's H and W rows: float32, exact maxima; faster than a tap per pixel on the
    MXM or the VXM, and not limited to 16 taps)."""
    nd = len(args[0][2])
    lower_reduction(lw, node, "ReduceMean" if op == "GlobalAveragePool" else "ReduceMax",
                         {"axes": list(range(2, nd)), "keepdims": 1}, args[:1])


# ----- layout of the result ---------------------------------------------------------------------------------
def wanted_geom(shape: tuple):
    return (int(shape[0]), int(shape[2]), int(shape[3])) if len(shape) == 4 else None


def turn(lw, node, x, shape, geom, mag) -> str:
    """A transpose node (rows <-> lanes on the SXM, schedule/sxm.py): `x` as a tensor of `shape`."""
    y = lw.add_tensor(lw.fresh(f"{node.output[0]}.turned"), shape, "value")
    lw.nodes.append(Node("transpose", node.name or node.output[0], node.op_type, y, sources=[View(x)],
                         fusable=False))
    if geom is not None:
        lw.tensors[y].geom = geom
    lw.derived[y] = mag
    return y


def turned(keep_shape, out_shape):
    """B when values laid out as `keep_shape` form a column whose `out_shape` puts them on B rows of M > 1
    lanes in the same order (keepdims=0 over the lanes), else None."""
    ids = np.arange(int(np.prod(keep_shape, dtype=np.int64)), dtype=np.int64).reshape(keep_shape)
    have, want = to_rows(ids, keep_shape), to_rows(ids.reshape(out_shape), out_shape)
    if have.shape[1] == 1 and want.shape[1] > 1 and np.array_equal(have.ravel(), want.ravel()):
        return want.shape[0]
    return None


def finish_layout(lw, node, y, keep_shape, out_shape) -> None:
    """Name `y` (laid out as `keep_shape`) as the output of ONNX shape `out_shape`: the same rows and lanes; a
    graph output only, whose values the host reads in any layout; else (keepdims=0) the values moved into the
    output's layout."""
    out = node.output[0]
    t = lw.tensors[y]
    ids = np.arange(int(np.prod(keep_shape, dtype=np.int64)), dtype=np.int64).reshape(keep_shape)
    have = to_rows(ids, keep_shape)
    want = to_rows(ids.reshape(out_shape), out_shape)
    if have.shape == want.shape and np.array_equal(have, want):
        if y != lw.values.get(node.input[0], (None,))[0]:
            t.shape = tuple(out_shape)
        lw.values[out] = (y, tuple(out_shape))
        return
    if not lw.feeds_other_nodes(out) and np.array_equal(have.ravel(), want.ravel()):
        # a graph output only: the host reads the values back in this order whatever the rows and lanes
        if y == lw.values.get(node.input[0], (None,))[0] or t.kind == "input":  # not a tensor of its own
            y = vector(lw, node, [y], [Step("COPY", [("src", 0)])], keep_shape, out)
            t = lw.tensors[y]
        t.shape = tuple(out_shape)
        lw.values[out] = (y, tuple(out_shape))
        return
    # the values move between rows and lanes (an image's (1, C, H, W) over H -> (1, C, W): W rows of C lanes read
    # as C rows of W lanes): a permutation of the values' axes on the SXM (transpose.py)
    lw.values[out] = (relayout(lw, node, y, keep_shape, out_shape), tuple(out_shape))


def relayout(lw, node, y, keep_shape, out_shape) -> str:
    """`y` (laid out as `keep_shape`) moved into the layout of `out_shape` (the same values, size-1 axes
    dropped): both layouts read as plain tensors of the values' axes (rows outer to inner, then the lane axis;
    an image's lanes are its channels; "U" a lane axis of size 1), one `permute` from the one to the other."""
    kept = [k for k, d in enumerate(keep_shape) if d != 1]  # the values' axes; out_shape's non-1 axes in order
    out_to_keep = {k: kept[sum(1 for d in out_shape[:k] if d != 1)] for k, d in enumerate(out_shape) if d != 1}

    def tokens(shape, to_keep):
        nd = len(shape)
        order = [0, 2, 3, 1] if nd == 4 else list(range(nd))
        rows = [to_keep[k] for k in order[:-1] if shape[k] != 1]
        return rows + ([to_keep[order[-1]]] if nd and shape[order[-1]] != 1 else ["U"])
    src = tokens(tuple(keep_shape), {k: k for k in range(len(keep_shape))})
    dst = tokens(tuple(out_shape), out_to_keep)
    if "U" in src and "U" not in dst:
        dst = ["U"] + dst
    if "U" in dst and "U" not in src:
        src = ["U"] + src
    if len(src) == 4:  # a leading size-1 axis keeps 4-D shapes plain (not images)
        src, dst = ["P"] + src, ["P"] + dst
    size = lambda t: 1 if t in ("U", "P") else int(keep_shape[t])  # noqa: E731
    p_shape, q_shape = tuple(size(t) for t in src), tuple(size(t) for t in dst)
    z = permute(lw, node, y, p_shape, [src.index(t) for t in dst], q_shape, node.output[0],
                lw.magnitudes.get(node.output[0], 0.0))
    if z == y:  # no row moved: a tensor of its own for the new shape
        z = vector(lw, node, [y], [Step("COPY", [("src", 0)])], q_shape, node.output[0])
    lw.tensors[z].shape = tuple(out_shape)
    lw.tensors[z].geom = wanted_geom(out_shape)
    return z


# ----- the lane axis on the MXM (lanes.py) ----------------------------------------------------------------
def reduce_lane_axis(lw, node, x, shape, combine, post, mag) -> tuple:
    """The lane axis of `x` (laid out as `shape`) reduced, `post` as the epilogue: (tensor, its shape)."""
    c = shape[lane_axis(shape)]
    if combine == "ADD" and lw.precise_sums:  # quantised models (RMSNorm's ReduceMean): hi's sums, then lo's
        ones = lambda: np.ones((c, 1), np.float32)  # noqa: E731
        hi, _ = lane_matmul(lw, node, x, shape, ("ones1", c), ones, f"{node.output[0]}.hi")
        lo = fp16_residual(lw, node, x, shape, f"{node.output[0]}.lo")
        steps = [Step("ADD", [("acc",), ("src", 0)])]
        steps += [Step(s.op, [("step", 0) if a == ("src", 0) else ("step", a[1] + 1) if a[0] == "step" else a
                              for a in s.args]) for s in _chain(post)]
        return lane_matmul(lw, node, lo, shape, ("ones1", c), ones, node.output[0], steps, [hi])
    if combine == "ADD":
        ones = lambda: np.ones((c, 1), np.float32)  # noqa: E731
        return lane_matmul(lw, node, x, shape, ("ones1", c), ones, node.output[0],
                                [Step(s.op, [("acc",) if a == ("src", 0) else a for a in s.args])
                                 for s in _chain(post)])
    m = lane_extreme(lw, node, x, shape, combine, magnitude=mag)
    return keep_lane0(lw, node, m, shape, node.output[0])


# ----- rows longer than one lane tile: tiles combined first, then one 320-lane vector ----------------------
def tile_select(c: int, j: int) -> np.ndarray:
    """[c, LANES]: lane tile j of a c-lane row onto lanes 0..LANES-1 (a partial last tile repeats its lanes, so
    every output lane holds one of the row's values)."""
    lo = j * LANES
    n = min(LANES, c - lo)
    w = np.zeros((c, LANES), np.float32)
    w[lo + np.arange(LANES) % n, np.arange(LANES)] = 1.0
    return w


def tile_broadcast(lw, node, m, shape, hint, steps=(), sources=()) -> str:
    """m ([.., LANES], every lane the row's value) read by every lane tile of `shape` (View.tile0), then `steps`
    (("acc",): that value; else COPY) on the VXM: no data moves, the value exactly as m holds it."""
    at = ("src", len(sources))
    chain = [Step(st.op, [at if a in (("acc",), ("sum",)) else a for a in st.args], st.t) for st in steps] or \
        [Step("COPY", [at])]
    return vector(lw, node, list(sources) + [View(m, tile0=True)], chain, shape, hint)


def wide_extreme(lw, node, x, shape, op, hint="max", magnitude=None, steps=(), sources=()) -> str:
    """`lane_extreme` for rows of more than LANES lanes with constants of O(c * LANES), not O(c^2): the row's lane
    tiles moved onto one vector (`tile_select` on the MXM, fp16 values as the rotation tree compares them) and
    combined by `op` in the matmul epilogues, the rotation tree over those LANES lanes (every lane the extreme), read
    by every lane tile of `shape` (`tile_broadcast`) with `steps` (acc: the extreme) on the VXM."""
    c = shape[lane_axis(shape)]
    if c <= LANES:
        m = lane_extreme(lw, node, x, shape, op, hint, magnitude)
        if not steps:
            return m
        return vector(lw, node, [m] + list(sources), [Step(s.op, [("src", 0) if a == ("acc",) else
                                                                  ("src", a[1] + 1) if a[0] == "src" else a
                                                                  for a in s.args], s.t) for s in steps],
                      shape, hint)
    if magnitude is None:
        magnitude = lw.magnitudes.get(node.input[0], 0.0)
    short = with_lanes(shape, LANES)
    lw.tensors[x].f16_saturate = True  # an inf in a moved tile would make the whole row NaN
    m = None
    for j in range(-(-c // LANES)):
        more = ([Step(op, [("acc",), ("src", 0)])], [m]) if m is not None else ((), ())
        m, _ = lane_matmul(lw, node, x, shape, ("lanetile", c, j), lambda j=j: tile_select(c, j),
                           f"{hint}.t{j}", *more)
        lw.derived[m] = magnitude
        lw.tensors[m].f16_saturate = True
    m = rotation_tree(lw, node, m, short, LANES, op, hint, magnitude)
    y = tile_broadcast(lw, node, m, shape, hint, steps, sources)
    if not steps:
        lw.derived[y] = magnitude
    return y


def wide_sum(lw, node, x, shape, scale=1.0, hint="sum", steps=(), sources=(), magnitude=None) -> tuple:
    """`lane_sum` for rows of more than LANES lanes with constants of O(c * LANES): `x @ ones[c, LANES]` (the
    same fp16 products accumulated in the same order as lane_sum's `ones[c, c]`, so the same float32 sum:
    lanes.lane_sum_tile), read by every lane tile of `shape` (`tile_broadcast`) with `steps` (whose ("sum",) is
    that sum) on the VXM."""
    c = shape[lane_axis(shape)]
    if c <= LANES:
        return lane_sum(lw, node, x, shape, scale, hint, steps, sources, magnitude)
    if magnitude is None:
        magnitude = lw.ir_magnitude(x)
    s = lane_sum_tile(lw, node, x, shape, scale, f"{hint}.lanes", magnitude)
    y = tile_broadcast(lw, node, s, shape, hint, steps, sources)
    if not steps:
        lw.derived[y] = lw.derived[s]
    return y, tuple(shape)


# ----- row axes: halving trees on the VXM -------------------------------------------------------------------
def reduce_row_axes(lw, node, x, shape, row_axes, combine, mag) -> str:
    """`x` (ONNX `shape`) with the row axes `row_axes` reduced by `combine`, rows in the same order."""
    nd = len(shape)
    if nd == 4:  # rows (n, h, w)
        dims, pos_of = [shape[0], shape[2], shape[3]], {0: 0, 2: 1, 3: 2}
    else:
        dims, pos_of = list(shape[:-1]), {i: i for i in range(nd - 1)}
    reduced = {pos_of[i] for i in row_axes}
    groups, run = [], []  # runs of reduced row positions, neighbours once size-1 positions are skipped
    for p, d in enumerate(dims):
        if p in reduced:
            run.append(p)
        elif d != 1 and run:
            groups.append(run)
            run = []
    if run:
        groups.append(run)
    cur = x
    for group in reversed(groups):  # innermost first
        cur = reduce_run(lw, node, cur, dims, group, combine, mag)
        for p in group:
            dims[p] = 1
    return cur


def reduce_run(lw, node, x, dims, group, combine, mag) -> str:
    """Reduce the neighbouring row positions `group` of `x` (row dims `dims`): one tree when `x` has or may be
    given the geometry (outer, n, inner); else the innermost position first, then the rest; else a tree over
    a copy of `x` in that geometry."""
    lo, hi = group[0], group[-1] + 1
    outer = int(np.prod(dims[:lo], dtype=np.int64))
    n = int(np.prod(dims[lo:hi], dtype=np.int64))
    inner = int(np.prod(dims[hi:], dtype=np.int64))
    real = [p for p in group if dims[p] != 1]
    fit = tree_geometry(lw, x, outer, n, inner)
    if fit is None:
        y = free_regeom(lw, node, x, (outer, n, inner))
        if y is not None:
            x, fit = y, ((outer, n, inner), 1)
    if fit is None and len(real) > 1:
        y = reduce_run(lw, node, x, dims, [real[-1]], combine, mag)
        rest = [d if p != real[-1] else 1 for p, d in enumerate(dims)]
        return reduce_run(lw, node, y, rest, real[:-1], combine, mag)
    if fit is None:
        y = lw.add_tensor(lw.fresh(f"{node.output[0]}.rows"), (outer * n * inner, lw.tensors[x].cols),
                          "value")
        lw.tensors[y].geom = (outer, n, inner)
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=[View(x)],
                             steps=[Step("COPY", [("src", 0)])]))
        lw.derived[y] = mag
        x, fit = y, ((outer, n, inner), 1)
    return halving_tree(lw, node, x, fit[0], fit[1], combine, mag)


def tree_geometry(lw, x, outer, n, inner):
    """(geometry, axis) a tree can read `x` in as it is stored: rows (outer, n, inner) along H, or an image's
    (N, H, W) along W when the reduced rows are the W axis; None when `x` has neither."""
    g = lw.tensors[x].geom
    if g == (outer, n, inner):
        return g, 1
    if g is not None and inner == 1 and g[2] == n and g[0] * g[1] == outer:
        return g, 2
    return None


def free_regeom(lw, node, x, geom):
    """`x` seen with the row geometry `geom` at no cost, or None: a graph input as another view of the host's
    array (the host lays inputs out); a computed tensor without a geometry whose producer reads no taps and
    whose ONNX readers do not look at geometries."""
    t = lw.tensors[x]
    if t.kind == "input" and t.im2col is None:
        same = next((n for n in lw.inputs if lw.tensors[n].onnx_input == t.onnx_input and lw.tensors[n].geom
                     == geom and lw.tensors[n].shape == t.shape and lw.tensors[n].im2col is None), None)
        if same is not None:
            return same
        y = lw.add_tensor(lw.fresh(f"{x}.rows"), t.shape, "input", onnx_input=t.onnx_input)
        lw.tensors[y].geom = geom
        lw.inputs.append(y)
        return y
    if t.kind != "value" or t.geom is not None:
        return None
    producer = next((n for n in reversed(lw.nodes) if n.output == x), None)
    if producer is None or producer.kind == "transpose" or any(
            v.spatial for v in list(producer.sources) + [v for v, _ in producer.terms]):
        return None
    names = {k for k, v in lw.values.items() if v and v[0] == x}
    if any(n.op_type in _GEOM_READERS and names & set(n.input) for n in lw.model.graph.node):
        return None
    t.geom = geom
    return x


def halving_tree(lw, node, x, geom, axis, combine, mag) -> str:
    """The geom[axis] rows along H (axis 1) or W (axis 2) of the geometry `geom` combined by `combine` into
    one: blocks (tensor, first row, count) of distinct tensors; the two longest are combined row by row, the
    longer one's extra rows staying a block; a combination of q > 1 rows is written as two tensors (its first
    ceil(q/2) rows and the rest) so that the next level reads two tensors again."""
    n = geom[axis]
    cols = lw.tensors[x].cols
    where = node.name or node.output[0]

    def view(t, start):
        return View(t, dh=start, spatial=True) if axis == 1 else View(t, dw=start, spatial=True)

    def new(k, hint, sources, steps):
        g = tuple(k if i == axis else d for i, d in enumerate(geom))
        y = lw.add_tensor(lw.fresh(f"{node.output[0]}.{hint}"), (g[0] * g[1] * g[2], cols), "value")
        lw.tensors[y].geom = g
        lw.derived[y] = mag
        lw.nodes.append(Node("vector", where, node.op_type, y, sources=sources, steps=steps))
        return y
    if n == 1:
        return x
    h = n // 2  # the last h rows copied aside: a node streams one view of a tensor at a time
    blocks = [(x, 0, n - h), (new(h, "half", [view(x, n - h)], [Step("COPY", [("src", 0)])]), 0, h)]
    while len(blocks) > 1:
        blocks.sort(key=lambda b: -b[2])
        (p, ps, pc), (q, qs, qc) = blocks[0], blocks[1]
        rest = blocks[2:]
        if pc > qc:
            rest.append((p, ps + qc, pc - qc))
        split = [(0, (qc + 1) // 2), ((qc + 1) // 2, qc)] if qc > 1 else [(0, 1)]
        for lo, hi in split:
            y = new(hi - lo, "tree", [view(p, ps + lo), view(q, qs + lo)],
                    [Step(combine, [("src", 0), ("src", 1)])])
            rest.append((y, 0, hi - lo))
        blocks = rest
    return blocks[0][0]


# ----- ArgMax / ArgMin ----------------------------------------------------------------------------------
def lower_argmax(lw, node, op, a, args) -> None:
    _, x, shape = args[0]
    shape = tuple(shape)
    axis = a.get("axis", 0)
    if len(shape) not in (0, 4) and -len(shape) <= axis < len(shape) - 1 and axis % len(shape) != len(shape) - 1:
        return lower_argmax_rows(lw, node, op, a, x, shape, axis % len(shape))
    check_lane_axis(lw, node, shape, axis)
    keep, last = a.get("keepdims", 1), a.get("select_last_index", 0)
    lane = lane_axis(shape)
    c = shape[lane]
    if c > FP16_EXACT:
        raise CompileError(f"{lw.where(node)}: {op} over {c} lanes: the indices pass the MXM as fp16, exact "
                           f"only below {FP16_EXACT} (not supported yet)")
    out_shape = tuple(1 if i == lane else d for i, d in enumerate(shape)) if keep else \
        tuple(d for i, d in enumerate(shape) if i != lane)
    if not keep and lw.feeds_other_nodes(node.output[0]):
        raise CompileError(f"{lw.where(node)}: keepdims=0 feeding another node moves the result from rows to "
                           f"lanes, which needs the SXM (not supported yet)")
    extreme = "MAX" if op == "ArgMax" else "MIN"
    mag = lw.magnitudes.get(node.input[0], 0.0)
    # every lane's fp16 value (what the rotations compare), m0, and the row's extreme in every lane, m
    m, m0 = lane_extreme_and_copy(lw, node, x, shape, extreme, "arg", mag)
    # candidates: a lane equal to the extreme holds its index (last: index + 1), the others c (last: 0)
    j = np.arange(c, dtype=np.float32)
    iota = lw.const_tensor((j + 1.0 if last else j - c)[None, :], "iota")
    steps = [Step("EQ", [("src", 0), ("src", 1)]), Step("MUL", [("step", 0), ("src", 2)])]
    if not last:
        steps.append(Step("ADD", [("step", 1), ("imm", float(c))]))
    cand = vector(lw, node, [m0, m, iota], steps, shape, "argcand")
    pick = lane_extreme(lw, node, cand, shape, "MAX" if last else "MIN", hint="argpick", magnitude=float(c))
    y, _ = lane_matmul(lw, node, pick, shape, ("lane0", c), lambda: np.eye(c, 1, dtype=np.float32),
                       node.output[0], [Step("ADD", [("acc",), ("imm", -1.0)])] if last else [])
    lw.derived[y] = float(c)
    lw.tensors[y].shape = out_shape
    lw.values[node.output[0]] = (y, out_shape)
    lw.integral.add(node.output[0])


def lower_argmax_rows(lw, node, op, a, x, shape, axis) -> None:
    """ArgMax/ArgMin along a row axis: a halving tree on the VXM in float32 (exact). The n rows along the axis
    are seen as an image (outer, n, inner); each stage compares the first ceil(n/2) rows with the last
    ceil(n/2) (overlapping when n is odd: a row compared with itself) and keeps the better (value, index)
    pair: the larger (smaller) value, on a tie the smaller (larger, select_last_index) index."""
    keep, last = a.get("keepdims", 1), a.get("select_last_index", 0)
    n = shape[axis]
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:-1], dtype=np.int64))
    c = shape[-1]
    out_shape = tuple(1 if i == axis else d for i, d in enumerate(shape)) if keep else \
        tuple(d for i, d in enumerate(shape) if i != axis)
    t = lw.tensors[x]
    geom = (outer, n, inner)
    if t.geom is None and t.kind != "input":
        t.geom = geom
    if t.geom != geom:  # an input's rows are laid out by the host: copy them into a tensor of this geometry
        y = lw.add_tensor(lw.fresh("argrows"), (outer * n * inner, c), "value")
        lw.tensors[y].geom = geom
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=[View(x)],
                             steps=[Step("COPY", [("src", 0)])], fusable=False))
        x = y
    pos = np.broadcast_to(np.arange(n, dtype=np.float32)[None, :, None, None], (outer, n, inner, c))
    val, idx = x, lw.const_tensor(pos.reshape(outer * n * inner, c).copy(), "argpos")
    lw.tensors[idx].geom = geom
    better = "GT" if op == "ArgMax" else "LT"
    tie = "GE" if last else "LE"
    while n > 1:
        h = (n + 1) // 2
        out_geom = (outer, h, inner)

        def half(tensor, start):
            return View(tensor, dh=start, spatial=True)

        def new(hint):
            y = lw.add_tensor(lw.fresh(hint), (outer * h * inner, c), "value")
            lw.tensors[y].geom = out_geom
            return y
        # the second half as tensors of their own (a MEM slice streams one view of a tensor at a time)
        bv, bi = new("argbv"), new("argbi")
        for src, dst in ((val, bv), (idx, bi)):
            lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, dst,
                                 sources=[half(src, n - h)], steps=[Step("COPY", [("src", 0)])],
                                 fusable=False))
        # keep A when it is better, or equal with the preferred index
        keep_a = [Step(better, [("src", 0), ("src", 1)]), Step("EQ", [("src", 0), ("src", 1)]),
                  Step(tie, [("src", 2), ("src", 3)]), Step("MUL", [("step", 1), ("step", 2)]),
                  Step("MAX", [("step", 0), ("step", 3)])]
        ka = new("argkeep")
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, ka,
                             sources=[half(val, 0), View(bv), half(idx, 0), View(bi)], steps=keep_a,
                             fusable=False))
        ni = new("argidx")  # B's index + keep * (A's - B's)
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, ni,
                             sources=[half(idx, 0), View(bi), View(ka)],
                             steps=[Step("SUB", [("src", 0), ("src", 1)]), Step("MUL", [("src", 2), ("step", 0)]),
                                    Step("ADD", [("src", 1), ("step", 1)])], fusable=False))
        nv = new("argval")
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, nv,
                             sources=[half(val, 0), View(bv)],
                             steps=[Step("MAX" if op == "ArgMax" else "MIN", [("src", 0), ("src", 1)])],
                             fusable=False))
        val, idx, n = nv, ni, h
    if idx == lw.values.get(node.input[0], (None,))[0] or lw.tensors[idx].kind == "const":
        y = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=[View(idx)],
                             steps=[Step("COPY", [("src", 0)])]))
        idx = y
    if as_matrix(out_shape) != (lw.tensors[idx].rows, c) or len(out_shape) == 4:
        raise CompileError(f"{lw.where(node)}: {op} over axis {axis} of {shape} gives {out_shape}, whose "
                           f"rows are laid out differently (not supported yet)")
    lw.tensors[idx].shape = out_shape
    lw.values[node.output[0]] = (idx, out_shape)
    lw.integral.add(node.output[0])
