"""Gather, GatherElements and GatherND (the table entries); the computed-index forms are index.py's.

* Constant indices (Gather along any axis, GatherND, GatherElements picking one row for every lane): the host
  applies the op to a grid of row * C + lane numbers and reads off, per output row, which input rows and lanes it
  holds (`gather_row_map`). Whole rows (a Gather along a row axis with any indices: repeats, any order, negative;
  GatherND picking rows, e.g. an export's last token): the chip copies them through a row-map view (ir.View.rows):
  the VXM streams the output rows in order while each input row is READ from its own address, one READ + REPEAT
  per run of rows with one address step (rising, falling or repeated). Exact (f32 copies). Elements that leave
  their lane (GatherND down to scalars, a Gather along the lanes with index rows or an image's channels): one term
  per source row of an output row and lane pattern, each a row-map copy then an MXM lane selection (masked to its
  rows when the pattern differs between rows), summed (at most MAX_SELECTIONS): values pass the MXM as fp16.
* GatherElements with constant indices along the lanes: one MXM selection per distinct row pattern of indices,
  masked to its rows and accumulated (at most 8 patterns); along a row axis: whole rows in any order are a row-map
  view, any other pattern of one matrix a sum of row views times constant 0/1 masks (VXM).
Negative indices count from the end. Out-of-range indices are an ONNX error: constant ones are refused (by
onnxruntime's calibration run or a CompileError); computed ones give 0 where onnxruntime would raise.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.fold import fold
from lpusim.compiler.lower.index import gather_ids_masked, lower_gather_computed, lower_gather_elements_computed
from lpusim.compiler.lower.lanes import lane_axis, with_lanes
from lpusim.compiler.lower.lookup import lookup_fits, lower_gather_lookup
from lpusim.compiler.lower.rows import const_input, select_lanes
from lpusim.compiler.row_layout import as_matrix, from_rows, to_rows
from lpusim.errors import CompileError


def lower_gather(lw, node, a, args):
    data, idx = args[0], args[1]
    if idx[0] != "const":
        if lookup_fits(lw, node, a, args):  # an embedding lookup: MEM GATHER (lookup.py)
            return lower_gather_lookup(lw, node, a, args)
        return lower_gather_computed(lw, node, a, args)  # one-hot rows @ table (index.py)
    _, x, shape = data
    nd = len(shape)
    axis = a.get("axis", 0) % nd
    ind = np.asarray(idx[1]).astype(np.int64)
    if axis != lane_axis(shape):
        # along a row axis: whole rows in any order (repeats, descending, negative): a row-map view
        return gather_rows_const(lw, node, x, tuple(shape), axis, ind)
    ind = np.where(ind < 0, ind + shape[axis], ind)
    out_shape = tuple(shape[:axis]) + tuple(ind.shape) + tuple(shape[axis + 1:])
    if ind.ndim != 1 or nd == 4:  # index rows, a 4-D result, a scalar: rows and lane patterns
        return gather_const_lanes(lw, node, x, tuple(shape), axis, ind)
    y, _ = select_lanes(lw, node, x, tuple(shape), ind.ravel(), node.output[0])
    lw.tensors[y].shape = out_shape
    lw.values[node.output[0]] = (y, out_shape)


# ----- GatherElements with constant indices ----------------------------------------------------------------
def lower_gather_elements(lw, node, a, args) -> None:
    data, idx = args[0], args[1]
    if idx[0] != "const":
        return lower_gather_elements_computed(lw, node, a, args)  # one-hot masks (index.py)
    _, x, shape = data
    shape = tuple(shape)
    nd = len(shape)
    axis = a.get("axis", 0) % nd
    ind = np.asarray(idx[1]).astype(np.int64)
    ind = np.where(ind < 0, ind + shape[axis], ind)
    if ind.ndim != nd or any(ind.shape[i] != shape[i] for i in range(nd) if i != axis):
        raise CompileError(f"{lw.where(node)}: GatherElements indices of shape {ind.shape} on data "
                           f"{shape}: only indices as large as the data off the gather axis are supported")
    if np.any((ind < 0) | (ind >= shape[axis])):
        raise CompileError(f"{lw.where(node)}: GatherElements index out of range for axis {axis} of {shape}")
    out_shape = tuple(ind.shape)
    lane = lane_axis(shape)
    if axis == lane:
        rows = to_rows(ind, out_shape)  # [R, J] lane indices per output row
        patterns, where = np.unique(rows, axis=0, return_inverse=True)
        where = np.asarray(where).ravel()
        if len(patterns) > 8:
            raise CompileError(f"{lw.where(node)}: GatherElements along the lanes with {len(patterns)} "
                               f"different index rows (at most 8: one MXM selection each)")
        prev = None
        for p, cols in enumerate(patterns):
            last = p == len(patterns) - 1
            if len(patterns) == 1:
                steps, sources = [], []
            else:
                mask = np.repeat((where == p).astype(np.float32)[:, None], rows.shape[1], axis=1)
                sources = [lw.const_tensor(mask, "rowmask")]
                steps = [Step("MUL", [("acc",), ("src", 0)])]
                if prev is not None:
                    sources.append(prev)
                    steps.append(Step("ADD", [("step", 0), ("src", 1)]))
            y, _ = select_lanes(lw, node, x, shape, cols, node.output[0] if last else "gathered", steps,
                                sources)
            lw.tensors[y].shape = out_shape
            prev = y
        lw.values[node.output[0]] = (prev, out_shape)
        return
    # along a row axis: every output row must take one whole input row, in an evenly spaced rising run
    moved = np.moveaxis(ind, axis, 0).reshape(ind.shape[axis], -1)
    if any(d != 1 for i, d in enumerate(shape) if i not in (axis, lane)):  # several matrices: the masked
        idx_t = const_input(lw, ind.astype(np.float32), out_shape)  # passes of computed indices (index.py)
        return lower_gather_elements_computed(lw, node, a, [data, ("value", idx_t, out_shape)])
    if not np.all(moved == moved[:, :1]):
        return _gather_elements_rows(lw, node, x, shape, axis, ind, out_shape)
    gather_elements_same_rows(lw, node, x, shape, axis, ind)  # whole rows: a row map


def _gather_elements_rows(lw, node, x, shape, axis, ind, out_shape) -> None:
    """out[i, j] = x[ind[i, j], j] of one matrix: each source row k that is used, as a one-row tensor (a row
    view), times the constant 0/1 mask of where it goes, accumulated on the VXM (exact while the unselected
    values are finite: 0 * inf is NaN, as in Where)."""
    rows_used = np.unique(ind)
    if len(rows_used) > 64:
        raise CompileError(f"{lw.where(node)}: GatherElements along the rows from {len(rows_used)} different "
                           f"rows (at most 64: two VXM passes each)")
    r, c = shape[axis], shape[-1]
    t = lw.tensors[x]
    if t.geom is None and t.kind != "input":
        t.geom = (1, r, 1)
    if t.geom != (1, r, 1):
        y = lw.add_tensor(lw.fresh("gerows"), (r, c), "value")
        lw.tensors[y].geom = (1, r, 1)
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=[View(x)],
                             steps=[Step("COPY", [("src", 0)])], fusable=False))
        x = y
    idx2 = ind.reshape(-1, c)
    prev = None
    for n, k in enumerate(rows_used):
        row = lw.add_tensor(lw.fresh("gerow"), (1, c), "value")
        lw.tensors[row].geom = (1, 1, 1)
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, row,
                             sources=[View(x, dh=int(k), spatial=True)], steps=[Step("COPY", [("src", 0)])],
                             fusable=False))
        mask = lw.const_tensor((idx2 == k).astype(np.float32), "gemask")
        last = n == len(rows_used) - 1
        y = lw.add_tensor(lw.fresh(node.output[0] if last else "gesum"), out_shape, "value")
        sources = [View(row), View(mask)] + ([View(prev)] if prev is not None else [])
        steps = [Step("MUL", [("src", 0), ("src", 1)])]
        if prev is not None:
            steps.append(Step("ADD", [("step", 0), ("src", 2)]))
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=sources,
                             steps=steps))
        lw.derived[y] = lw.magnitudes.get(node.input[0], 0.0)
        prev = y
    lw.values[node.output[0]] = (prev, out_shape)


MAX_SELECTIONS = 64  # constant indices moving lanes: MXM lane selections (each masked to its rows when needed)

HOST_MAP_LIMIT = 1 << 25  # elements of the host's (row, lane) index grid


# ----- constant indices: a host map of which input row (and lane) each output element is ----------------
def gather_row_map(lw, node, shape, apply, lanes_move: bool):
    """Apply `apply` (the op with its constant indices) to a grid of row * c + lane numbers of `shape` (lane
    axis cut to c = 2 unless `lanes_move`); returns (terms, ONNX output shape): the output is the sum of the
    terms (source row per output row, lane pattern or None: -1 gives 0), one term per distinct source row of
    an output row. CompileError if a term's lane pattern differs between rows (or, without `lanes_move`, an
    output row is not one whole input row)."""
    shape = tuple(shape)
    lane = lane_axis(shape)
    c_real = shape[lane]
    c = c_real if lanes_move else min(c_real, 2)
    small = tuple(c if i == lane else d for i, d in enumerate(shape))
    rows, _ = as_matrix(small)
    if rows * c > HOST_MAP_LIMIT:
        raise CompileError(f"{lw.where(node)}: {node.op_type} of {shape} moving lanes: the host's index map "
                           f"of {rows * c} elements is larger than {HOST_MAP_LIMIT} (not supported)")
    grid = np.arange(rows * c, dtype=np.int64).reshape(rows, c)
    out = np.asarray(apply(from_rows(grid, small)))
    out_shape = tuple(out.shape)
    if out.size == 0:
        raise CompileError(f"{lw.where(node)}: {node.op_type} of {shape} gives an empty {out_shape} result "
                           f"(zero-size tensors are not supported)")
    m = to_rows(out, out_shape)
    src, lanes = m // c, m % c
    whole = np.all(src == src[:, :1]) and np.all(lanes == lanes[:1])
    fail = CompileError(f"{lw.where(node)}: {node.op_type} of {shape} to {out_shape} moves elements between "
                        f"rows and lanes in a way one row-map and one lane pattern per term cannot (not "
                        f"supported yet)")
    if not lanes_move:
        if not (whole and m.shape[1] == c and np.array_equal(lanes[0], np.arange(c))):
            raise fail
        out_lane = lane_axis(out_shape)  # the input's lane axis, back at its real size
        return [(src[:, 0], None, None)], tuple(c_real if i == out_lane else d for i, d in enumerate(out_shape))
    if whole:
        same = m.shape[1] == c and np.array_equal(lanes[0], np.arange(c))
        return [(src[:, 0], None if same else lanes[0], None)], out_shape
    # each output row's distinct source rows, in order of first use: term t takes the t-th of every row; the
    # rows of a term whose lane patterns differ are split by pattern, each part masked to its rows
    firsts = [list(dict.fromkeys(r.tolist())) for r in src]
    terms = []
    for t in range(max(len(f) for f in firsts)):
        rows_t = np.array([f[t] if t < len(f) else f[0] for f in firsts])
        has = np.array([t < len(f) for f in firsts])[:, None]
        pats = np.where((src == rows_t[:, None]) & has, lanes, -1)
        uniq, where = np.unique(pats, axis=0, return_inverse=True)
        where = np.asarray(where).ravel()
        for u, pat in enumerate(uniq):
            if np.all(pat < 0):
                continue
            terms.append((rows_t, pat, None if len(uniq) == 1 else (where == u)))
    if len(terms) > MAX_SELECTIONS:
        raise CompileError(f"{lw.where(node)}: {node.op_type} of {shape} to {out_shape} needs {len(terms)} "
                           f"MXM lane selections (one per source row of an output row and lane pattern: at "
                           f"most {MAX_SELECTIONS})")
    return terms, out_shape


def gather_copy_rows(lw, node, x: str, shape, terms, out_shape) -> None:
    """The output: per term, rows of x (a row-map view on the VXM, exact), then its lanes (an MXM selection)
    added to the terms before."""
    t = lw.tensors[x]
    out_shape = tuple(out_shape)
    name = node.output[0]
    prev = None
    for k, (src, pattern, rowmask) in enumerate(terms):
        last = k == len(terms) - 1
        same = len(src) == t.rows and np.array_equal(src, np.arange(t.rows)) and \
            (len(out_shape) == 4) == (len(shape) == 4) and (len(shape) != 4 or out_shape == tuple(shape))
        if same:
            y = x
        else:
            mid_shape = out_shape if pattern is None else with_lanes(out_shape, t.cols)
            y = lw.add_tensor(lw.fresh(name if pattern is None else "gatherrows"), mid_shape, "value")
            lw.nodes.append(Node("vector", node.name or name, node.op_type, y,
                                 sources=[View(x, rows=tuple(int(r) for r in src))],
                                 steps=[Step("COPY", [("src", 0)])]))
            lw.derived[y] = lw.magnitudes.get(node.input[0], 0.0)
        if pattern is not None:
            steps, sources, acc = [], [], ("acc",)
            if rowmask is not None:  # this lane pattern serves only these rows
                mask = np.repeat(rowmask.astype(np.float32)[:, None], len(pattern), axis=1)
                sources.append(lw.const_tensor(mask, "rowmask"))
                steps.append(Step("MUL", [acc, ("src", 0)]))
                acc = ("step", 0)
            if prev is not None:
                sources.append(prev)
                steps.append(Step("ADD", [acc, ("src", len(sources) - 1)]))
            y, _ = select_lanes(lw, node, y, lw.tensors[y].shape if y != x else shape, np.asarray(pattern),
                                name if last else "gatherterm", steps, sources)
            lw.tensors[y].shape = out_shape
            lw.derived[y] = lw.magnitudes.get(node.input[0], 0.0)
        prev = y
    lw.values[name] = (prev, out_shape)


def gather_rows_const(lw, node, x, shape, axis: int, ind: np.ndarray) -> None:
    """Gather along a row axis with constant indices (any order, repeats, negative)."""
    n = shape[axis]
    if np.any((ind < -n) | (ind >= n)):
        raise CompileError(f"{lw.where(node)}: Gather index out of range for axis {axis} of {tuple(shape)}")
    terms, out_shape = gather_row_map(lw, node, shape, lambda g: np.take(g, ind, axis=axis), lanes_move=False)
    gather_copy_rows(lw, node, x, shape, terms, out_shape)


def gather_const_lanes(lw, node, x, shape, axis: int, ind: np.ndarray) -> None:
    """Gather along the lanes with constant indices the plain MXM selection cannot take (index rows, a 4-D or
    scalar result): each output row is an input row with a lane pattern (terms masked by rows)."""
    try:
        terms, out_shape = gather_row_map(lw, node, shape, lambda g: np.take(g, ind, axis=axis), lanes_move=True)
    except CompileError:
        if lw.tensors[x].rows != 1 or ind.ndim == 0:
            raise
        # one row of data (a 1-D table) and many index rows: the masked broadcasts of computed ids, the ids
        # being a constant (C passes)
        ids = const_input(lw, ind.astype(np.float32), tuple(ind.shape))
        out_shape = tuple(shape[:axis]) + tuple(ind.shape) + tuple(shape[axis + 1:])
        return gather_ids_masked(lw, node, x, shape, ids, tuple(ind.shape), out_shape,
                                 lw.magnitudes.get(node.input[0], 0.0))
    gather_copy_rows(lw, node, x, shape, terms, out_shape)


def lower_gather_nd(lw, node, a, args) -> None:
    data, idx = args[0], args[1]
    if data[0] != "value":
        raise CompileError(f"{lw.where(node)}: GatherND of a {data[0]} operand is not supported")
    if idx[0] != "const":
        raise CompileError(f"{lw.where(node)}: GatherND with computed indices is not supported yet "
                           f"(constant indices)")
    _, x, shape = data
    shape = tuple(shape)
    ind = np.asarray(idx[1]).astype(np.int64)
    b = int(a.get("batch_dims", 0))
    k = ind.shape[-1] if ind.ndim else 0
    lanes_move = b <= lane_axis(shape) < b + k
    terms, out_shape = gather_row_map(lw, node, shape, lambda g: fold(lw, node, "GatherND", a, [g, ind]),
                                      lanes_move)
    gather_copy_rows(lw, node, x, shape, terms, out_shape)


def gather_elements_same_rows(lw, node, x, shape, axis, ind) -> None:
    """GatherElements along a row axis whose indices are the same in every lane: whole rows (a row map)."""
    lane = lane_axis(shape)
    moved = np.moveaxis(ind, lane, -1)
    if not np.all(moved == moved[..., :1]) or ind.shape[lane] != shape[lane]:
        raise CompileError(f"{lw.where(node)}: internal: GatherElements indices are not whole rows")
    picks = np.take(ind, [0], axis=lane)  # the row of each output row (lane axis of size 1)

    def apply(grid):
        return np.take_along_axis(grid, np.repeat(picks, grid.shape[lane], axis=lane), axis=axis)
    terms, out_shape = gather_row_map(lw, node, shape, apply, lanes_move=False)
    gather_copy_rows(lw, node, x, shape, terms, out_shape)
