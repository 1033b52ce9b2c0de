"""Gathers with computed indices: embedding lookups (a constant table), Gather of computed data, GatherElements
with computed indices (gather.py lowers the ops and hands these forms here).

The chip computes in float32; integer values (token ids, masks, argmax indices) are float32 whole numbers, exact up
to 2^24. Integer and bool graph inputs are converted on the host (runtime.host_layout.host_input); integer outputs are turned
back into their ONNX type when the program decodes them (runtime.host_layout.decode_output).

* Gather(table [V, H] constant, ids computed): a one-hot matrix built on the VXM and MXM, then `onehot @ table` on
  the MXM. The ids arrive as a column (one id per row: the host lays out an integer graph input that way, as it lays
  out any input; a computed [1, S] row is transposed on the SXM). Ids enter the MXM as fp16, exact below 2048: a
  larger V splits each id into base-256 digits on the VXM (FLOOR), each digit is copied across V lanes by a [1, V]
  matmul whose epilogue compares it (`EQ`) with the matching digit of the lane index; the product of the digit
  matches is the one-hot row. Out-of-range ids (>= V or < -V) give a zero row; negative ids count from the end.
* Gather of computed data with computed indices (x[ids], both activations):
  - along a row axis (of any batch of matrices, or an image's pixel axes): the input row number of every output
    row (the ids through a row-map view, times the axis' row stride, plus the batch offset: VXM, float32) makes
    one-hot rows [R_out, R_in] as for an embedding (`index_digits`: VXM compares, MXM broadcasts,
    base-256 digits past 2048), and `onehot @ data` runs on the MXM with all the data's rows loaded as computed
    weights (like attention's V, schedule/sxm.py);
  - along the lane axis, ids in one row [1, n]: the transposed one-hot
    [C, n] is `EQ(ids, c)` on the VXM in float32 (exact for any C), and `data @ onehot^T` runs on the MXM;
  - one row of data (a 1-D table), ids of any shape: sum_c x[c] * (ids == c), lane c broadcast on the MXM, the
    mask and the sum on the VXM (C passes; also for constant ids too varied for lane selections).
  The selection is exact (one product of 1.0 per output, the accumulator sums exactly), but the data pass the MXM
  as their fp16 copies (scaled as calibrated): f32 data come back rounded to fp16 (relative error <= 2^-11, inside
  check.py's fp16 tolerance); fp16-exact data come back exactly. An infinite or NaN data value poisons the outputs
  that meet it through a zero (inf * 0 is NaN on the MXM and the VXM alike).
* GatherElements with computed indices (and constant ones over several matrices):
  - along the lanes: out[r, j] = sum_c x[r, c] * (idx[r, j] == c): for each c, lane c broadcast across the lanes
    on the MXM (`x @ E_c`, fp16 rounding of x as above), times the VXM mask, accumulated in the epilogue: C passes;
  - along a row axis: out[.., i, .., j] = sum_k x[.., k, .., j] * (idx[.., i, .., j] == k): pass k reads row k of
    every matrix for its output rows (a row-map view), times the mask, on the VXM in float32 (exact for finite
    data): one pass per index value. Both at most MAX_MASK_PASSES passes.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.lanes import add_piece_steps, FP16_EXACT, lane_axis, lane_matmul, UP, vector
from lpusim.compiler.lower.rows import select_lanes
from lpusim.compiler.row_layout import as_matrix, from_rows, to_rows
from lpusim.errors import CompileError


DIGIT = 256  # base of the digits a large id is split into


# ----- Gather with computed indices: one-hot rows times the table -----------------------------------------
def lower_gather_computed(lw, node, a, args) -> None:
    data, idx = args[0], args[1]
    if data[0] != "const" or np.asarray(data[1]).ndim != 2 or a.get("axis", 0) % 2 != 0:
        return lower_gather_ids(lw, node, a, args)  # computed data, or along the lanes
    table = np.asarray(data[1], dtype=np.float32)
    v, h = table.shape
    _, ids, ishape = idx
    ishape = tuple(ishape)
    n = int(np.prod(ishape, dtype=np.int64))
    out_shape = ishape + (h,)
    if len(out_shape) == 4 or n == 0:
        raise CompileError(f"{lw.where(node)}: Gather of {ishape} ids from a [{v}, {h}] table gives a "
                           f"{len(out_shape)}-D result, not supported yet")
    onehot = gather_onehot_rows(lw, node, ids, ishape, v)
    pieces = [table]
    if lw.precise_sums:  # quantised models: onnxruntime gathers f32 exactly; the table as three fp16 pieces, the
        pieces, rest = [], table  # residuals scaled by UP each, summed in f32 (lanes.add_piece_steps)
        for _ in range(3):
            hi = rest.astype(np.float16).astype(np.float32)
            pieces.append(hi)
            rest = (rest - hi) * np.float32(UP)
    out = None
    for k, piece in enumerate(pieces):
        y = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
        steps = add_piece_steps(k) if k else []
        lw.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, y,
                             sources=[View(out)] if k else [], steps=steps,
                             terms=[(View(onehot), lw.const_tensor(piece, "w"))]))
        out = y
    lw.values[node.output[0]] = (out, out_shape)


def index_digits(lw, node, ids, ishape, v) -> list:
    """[(column [n, 1] of one digit of each id, that digit of every lane index [V])], least significant
    last; negative ids are counted from the end."""
    n = int(np.prod(ishape, dtype=np.int64))
    t = lw.tensors[ids]
    if t.kind == "input" and t.im2col is None:  # the host lays the ids out one per row
        col = lw.add_tensor(lw.fresh(ids + ".col"), ishape + (1,), "input", onnx_input=t.onnx_input)
        lw.inputs.append(col)
        layout = "col"
    elif t.cols == 1 and t.rows == n:
        col, layout = ids, "col"
    elif t.rows == 1 and t.cols == n:
        if n > 320:
            raise CompileError(f"{lw.where(node)}: {n} computed ids in one row: turning them into a column "
                               f"(an SXM transpose) takes at most 320")
        col, layout = ids, "row"
    else:
        raise CompileError(f"{lw.where(node)}: computed ids of shape {ishape} lie in {t.rows} rows of "
                           f"{t.cols} lanes; the one-hot lookup needs one id per row (a graph input, a "
                           f"[..., 1] column or a single [1, S] row)")
    pos = [("LT", [("in",), ("imm", 0.0)]), ("MUL", [("step", 0), ("imm", float(v))]),
           ("ADD", [("in",), ("step", 1)])]
    lanes = np.arange(v)
    if v <= FP16_EXACT:
        chains = [(pos, lanes, float(v))]
    else:
        hi = pos + [("MUL", [("step", 2), ("imm", 1.0 / DIGIT)]), ("FLOOR", [("step", 3)])]
        lo = hi + [("MUL", [("step", 4), ("imm", float(DIGIT))]), ("SUB", [("step", 2), ("step", 5)])]
        chains = [(hi, lanes // DIGIT, float(v // DIGIT + 1)), (lo, lanes % DIGIT, float(DIGIT))]
    src_shape = ishape + (1,) if layout == "col" else (1, n)
    digits = []
    for chain, iota, mag in chains:
        steps = [Step(op, [("src", 0) if arg == ("in",) else arg for arg in vargs]) for op, vargs in chain]
        d = vector(lw, node, [col], steps, src_shape, "digit")
        lw.derived[d] = mag
        if layout == "row":  # [1, n] -> [n, 1] on the SXM (whole numbers below 2048: exact in fp16)
            dt = lw.add_tensor(lw.fresh("digitT"), (n, 1), "value")
            lw.nodes.append(Node("transpose", node.name or node.output[0], node.op_type, dt,
                                 sources=[View(d)], fusable=False))
            lw.derived[dt] = mag
            d = dt
        digits.append((d, iota.astype(np.float32)))
    return digits


MAX_MASK_PASSES = 512  # GatherElements with computed indices: one pass per lane (row) the indices may name


# ----- Gather with computed data and computed indices ----------------------------------------------------
def lower_gather_ids(lw, node, a, args) -> None:
    data, idx = args[0], args[1]
    _, ids, ishape = idx
    ishape = tuple(ishape)
    x, shape = _gather_data(lw, node, data)
    nd = len(shape)
    if nd == 0:
        raise CompileError(f"{lw.where(node)}: Gather of a scalar")
    axis = a.get("axis", 0) % nd
    out_shape = tuple(shape[:axis]) + ishape + tuple(shape[axis + 1:])
    n = int(np.prod(ishape, dtype=np.int64))
    if n == 0:
        raise CompileError(f"{lw.where(node)}: Gather of no indices (an empty result)")
    mag = lw.magnitudes.get(node.input[0], lw.derived.get(x, 0.0))
    if axis == lane_axis(shape):
        return _gather_ids_lanes(lw, node, x, shape, ids, ishape, out_shape, mag)
    return _gather_ids_rows(lw, node, x, shape, axis, ids, ishape, out_shape, mag)


def _gather_ids_rows(lw, node, x, shape, axis, ids, ishape, out_shape, mag) -> None:
    """Along a row axis: output row (p, i, q) is input row (p, ids[i], q) = offset(p, q) + ids[i] * stride.
    That row number per output row (the ids column through a row-map view, on the VXM in float32) makes the
    one-hot rows [R_out, R_in], and `onehot @ x` runs on the MXM with all of x's rows as computed weights (a
    batch's rows meet only its own one-hot columns)."""
    nd = len(shape)
    lane = lane_axis(shape)
    v = shape[axis]
    n = int(np.prod(ishape, dtype=np.int64))
    if (len(out_shape) == 4) != (nd == 4):
        raise CompileError(f"{lw.where(node)}: Gather of {ishape} computed ids along axis {axis} of {shape} "
                           f"gives {out_shape}, whose rows and lanes are laid out differently (not supported "
                           f"yet)")
    small = tuple(1 if i == lane else d for i, d in enumerate(shape))
    rows_in = as_matrix(small)[0]
    if rows_in > DIGIT * FP16_EXACT:
        raise CompileError(f"{lw.where(node)}: Gather of computed ids from {rows_in} rows: the one-hot's "
                           f"base-{DIGIT} digits are exact in fp16 up to {DIGIT * FP16_EXACT} rows")
    grid = from_rows(np.arange(rows_in, dtype=np.int64).reshape(rows_in, 1), small)
    base = np.take(grid, [0], axis=axis)
    stride = np.take(grid, [1], axis=axis) - base if v > 1 else np.zeros_like(base)
    if not np.all(stride == stride.flat[0]):
        raise CompileError(f"{lw.where(node)}: internal: rows along axis {axis} of {shape} are not evenly "
                           f"spaced")
    out_small = tuple(1 if i == lane_axis(out_shape) else d for i, d in enumerate(out_shape))
    offs = np.take(base, np.zeros(ishape, dtype=np.int64), axis=axis)  # [pre, ids..., post]
    which = np.broadcast_to(np.arange(n, dtype=np.int64).reshape((1,) * axis + ishape +
                                                                   (1,) * (nd - axis - 1)), offs.shape)
    if offs.shape != out_small:
        raise CompileError(f"{lw.where(node)}: internal: Gather row map {offs.shape} for {out_shape}")
    offs, which = to_rows(offs, out_small)[:, 0], to_rows(np.ascontiguousarray(which), out_small)[:, 0]
    if rows_in == v and np.array_equal(which, np.arange(n)):  # one matrix: the ids are the row numbers
        onehot = gather_onehot_rows(lw, node, ids, ishape, v)
        return _gather_ids_matmul(lw, node, x, shape, onehot, out_shape, mag)
    col = gather_ids_column(lw, node, ids, ishape)
    rows_out = len(which)
    # the input row number of every output row: (ids + V * (ids < 0)) * stride + offset
    steps = [Step("LT", [("src", 0), ("imm", 0.0)]), Step("MUL", [("step", 0), ("imm", float(v))]),
             Step("ADD", [("src", 0), ("step", 1)]), Step("MUL", [("step", 2), ("imm", float(stride.flat[0]))]),
             Step("ADD", [("step", 3), ("src", 1)])]
    big = lw.add_tensor(lw.fresh("gatherrow"), (rows_out, 1), "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, big,
                         sources=[View(col, rows=tuple(which.tolist())),
                                  View(lw.const_tensor(offs.astype(np.float32)[:, None], "rowoffs"))],
                         steps=steps))
    lw.derived[big] = float(rows_in)
    onehot = gather_onehot_rows(lw, node, big, (rows_out,), rows_in)
    _gather_ids_matmul(lw, node, x, shape, onehot, out_shape, mag)


def _gather_ids_matmul(lw, node, x, shape, onehot, out_shape, mag) -> None:
    """onehot @ x on the MXM, x's rows loaded as computed weights (from its f16 copy)."""
    w = x
    if lw.tensors[x].kind != "value":  # a graph input: the weights load from a computed tensor's f16 copy
        w = lw.add_tensor(lw.fresh("gdata"), shape, "value")
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, w, sources=[View(x)],
                             steps=[Step("COPY", [("src", 0)])]))
        lw.derived[w] = mag
    out = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
    lw.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, out,
                         terms=[(View(onehot), w)]))
    lw.values[node.output[0]] = (out, out_shape)


def gather_ids_column(lw, node, ids: str, ishape: tuple) -> str:
    """The ids as a column [n, 1] (one id per row): a graph input as laid out so by the host, a computed
    column as it is, a computed row [1, n] through an SXM transpose (at most 320)."""
    n = int(np.prod(ishape, dtype=np.int64))
    t = lw.tensors[ids]
    if t.kind == "input" and t.im2col is None:
        col = lw.add_tensor(lw.fresh(ids + ".col"), ishape + (1,), "input", onnx_input=t.onnx_input)
        lw.inputs.append(col)
        return col
    if (t.rows, t.cols) == (n, 1):
        return ids
    if (t.rows, t.cols) == (1, n) and n <= 320:
        col = lw.add_tensor(lw.fresh("idsT"), (n, 1), "value")
        lw.nodes.append(Node("transpose", node.name or node.output[0], node.op_type, col,
                             sources=[View(ids)], fusable=False))
        lw.derived[col] = lw.derived.get(ids, lw.magnitudes.get(node.input[1], 0.0))
        return col
    raise CompileError(f"{lw.where(node)}: computed ids of shape {ishape} lie in {t.rows} rows of {t.cols} "
                       f"lanes; a Gather along a row axis needs one id per row (a graph input, a [..., 1] "
                       f"column or a single [1, S] row of at most 320)")


def _gather_data(lw, node, data) -> tuple:
    """(IR tensor, shape) of a gathered operand; a constant one (read by the MXM or a row-map view) is copied
    into a computed tensor first."""
    if data[0] == "value":
        return data[1], tuple(data[2])
    if data[0] != "const":
        raise CompileError(f"{lw.where(node)}: {node.op_type} with computed indices of a {data[0]} operand "
                           f"is not supported")
    arr = np.asarray(data[1], dtype=np.float32)
    c = lw.const_tensor(to_rows(arr, arr.shape) if arr.ndim else arr.reshape(1, 1), "gdata")
    x = lw.add_tensor(lw.fresh("gdata"), arr.shape, "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, x, sources=[View(c)],
                         steps=[Step("COPY", [("src", 0)])]))
    lw.derived[x] = float(np.max(np.abs(arr), initial=0.0))
    return x, tuple(arr.shape)


def gather_onehot_rows(lw, node, ids: str, ishape: tuple, v: int) -> str:
    """[n, V]: row i is 1.0 in lane ids[i] (negative ids from the end; out of range: a zero row)."""
    n = int(np.prod(ishape, dtype=np.int64))
    digits = index_digits(lw, node, ids, ishape, v)
    onehot, prev = None, None
    for k, (col, iota) in enumerate(digits):
        row = lw.const_tensor(iota[None, :], "iota")
        steps = [Step("EQ", [("acc",), ("src", 0)])]
        sources = [row]
        if prev is not None:
            steps.append(Step("MUL", [("step", 0), ("src", 1)]))
            sources.append(prev)
        last = k == len(digits) - 1
        onehot, _ = select_lanes(lw, node, col, (n, 1), np.zeros(v, dtype=np.int64),
                                 "onehot" if last else "digitmatch", steps, sources)
        lw.derived[onehot] = 1.0
        prev = onehot
    return onehot


def _gather_ids_row(lw, node, ids: str, ishape: tuple, c: int) -> str:
    """The ids (one row [1, n]) with negative ids counted from the end: ids + c * (ids < 0), on the VXM."""
    n = int(np.prod(ishape, dtype=np.int64))
    t = lw.tensors[ids]
    if (t.rows, t.cols) != (1, n):
        raise CompileError(f"{lw.where(node)}: computed ids of shape {ishape} lie in {t.rows} rows of "
                           f"{t.cols} lanes; a Gather along the lanes needs them in one row")
    pos = [Step("LT", [("src", 0), ("imm", 0.0)]), Step("MUL", [("step", 0), ("imm", float(c))]),
           Step("ADD", [("src", 0), ("step", 1)])]
    y = vector(lw, node, [ids], pos, (1, n), "ids")
    lw.derived[y] = float(c)
    return y


def _gather_ids_lanes(lw, node, x, shape, ids, ishape, out_shape, mag) -> None:
    c = shape[lane_axis(shape)]
    n = int(np.prod(ishape, dtype=np.int64))
    rows, _ = as_matrix(shape)
    fits = len(ishape) and as_matrix(out_shape) == (rows, n) and (len(out_shape) == 4) == (len(shape) == 4)
    if not fits and rows == 1:  # one row of data (a 1-D table), ids of any shape: masked lane broadcasts
        return gather_ids_masked(lw, node, x, shape, ids, ishape, out_shape, mag)
    if not fits:
        raise CompileError(f"{lw.where(node)}: Gather of {ishape} computed ids along the lanes of {shape} "
                           f"gives {out_shape}, whose rows are laid out differently (supported: one row of "
                           f"ids, the lanes of the result)")
    row = _gather_ids_row(lw, node, ids, ishape, c)
    iota = lw.const_tensor(np.repeat(np.arange(c, dtype=np.float32)[:, None], n, axis=1), "lanes")
    onehot_t = lw.add_tensor(lw.fresh("onehotT"), (c, n), "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, onehot_t,
                         sources=[View(row), View(iota)], steps=[Step("EQ", [("src", 0), ("src", 1)])]))
    lw.derived[onehot_t] = 1.0
    out = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
    lw.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, out,
                         terms=[(View(x), onehot_t)]))
    lw.values[node.output[0]] = (out, out_shape)


def gather_ids_masked(lw, node, x, shape, ids, ishape, out_shape, mag) -> None:
    """y = sum_c x[c] * (ids == c) for one row x of C values: x[c] broadcast across the ids' lanes on the MXM
    (fp16 rounding of x), times the VXM mask, accumulated: C passes."""
    c = shape[lane_axis(shape)]
    r, j = as_matrix(ishape)
    if as_matrix(out_shape) != (r, j) or (len(out_shape) == 4) != (len(ishape) == 4):
        raise CompileError(f"{lw.where(node)}: Gather of {ishape} computed ids from one row of {shape} gives "
                           f"{out_shape}, whose rows are laid out differently from the ids (not supported yet)")
    if c > MAX_MASK_PASSES:
        raise CompileError(f"{lw.where(node)}: Gather of computed ids of shape {ishape} from a row of {c} "
                           f"values (one masked pass each: at most {MAX_MASK_PASSES})")
    nidx = vector(lw, node, [ids], [Step("LT", [("src", 0), ("imm", 0.0)]),
                                    Step("MUL", [("step", 0), ("imm", float(c))]),
                                    Step("ADD", [("src", 0), ("step", 1)])], ishape, "gidx")
    lw.derived[nidx] = float(c)
    prev = None
    for k in range(c):
        def make(k=k):
            e = np.zeros((c, j), dtype=np.float32)
            e[k] = 1.0
            return e
        bc, _ = lane_matmul(lw, node, x, shape, ("lanebcast", c, j, k), make, "gbcast")
        lw.derived[bc] = mag
        steps = [Step("EQ", [("src", 1), ("imm", float(k))]), Step("MUL", [("src", 0), ("step", 0)])]
        if prev is not None:
            steps.append(Step("ADD", [("step", 1), ("src", 2)]))
        y = vector(lw, node, [bc, nidx] + ([prev] if prev is not None else []), steps, out_shape,
                   node.output[0] if k == c - 1 else "gsum")
        lw.derived[y] = mag
        prev = y
    lw.tensors[prev].shape = out_shape
    lw.values[node.output[0]] = (prev, out_shape)


# ----- GatherElements with computed indices: one-hot masks ---------------------------------------------
def lower_gather_elements_computed(lw, node, a, args) -> None:
    data, idx = args[0], args[1]
    x, shape = _gather_data(lw, node, data)
    _, ind, ishape = idx
    ishape = tuple(ishape)
    nd = len(shape)
    axis = a.get("axis", 0) % nd
    lane = lane_axis(shape)
    if len(ishape) != nd or any(ishape[i] != shape[i] for i in range(nd) if i != axis):
        raise CompileError(f"{lw.where(node)}: GatherElements indices of shape {ishape} on data {shape}: only "
                           f"indices as large as the data off the gather axis are supported")
    n = shape[axis]
    if n > MAX_MASK_PASSES:
        raise CompileError(f"{lw.where(node)}: GatherElements with computed indices along an axis of {n} "
                           f"(one masked pass each: at most {MAX_MASK_PASSES})")
    mag = lw.magnitudes.get(node.input[0], lw.derived.get(x, 0.0))
    # negative indices count from the end: idx + n * (idx < 0)
    nidx = vector(lw, node, [ind], [Step("LT", [("src", 0), ("imm", 0.0)]),
                                    Step("MUL", [("step", 0), ("imm", float(n))]),
                                    Step("ADD", [("src", 0), ("step", 1)])], ishape, "gidx")
    lw.derived[nidx] = float(n)
    prev = None
    if axis == lane:
        j = ishape[lane]
        for k in range(n):
            last = k == n - 1
            steps = [Step("EQ", [("src", 0), ("imm", float(k))]), Step("MUL", [("acc",), ("step", 0)])]
            sources = [nidx] + ([prev] if prev is not None else [])
            if prev is not None:
                steps.append(Step("ADD", [("step", 1), ("src", 1)]))

            def make(k=k):
                e = np.zeros((n, j), dtype=np.float32)
                e[k] = 1.0
                return e
            y, _ = lane_matmul(lw, node, x, shape, ("lanebcast", n, j, k), make,
                               node.output[0] if last else "gesum", steps, sources)
            lw.derived[y] = mag
            prev = y
    else:
        # output row r of the k-th pass reads the input row with index k along the axis (same other indices)
        small = tuple(1 if i == lane else d for i, d in enumerate(shape))
        ismall = tuple(1 if i == lane else d for i, d in enumerate(ishape))
        rows_in = as_matrix(small)[0]
        grid = from_rows(np.arange(rows_in, dtype=np.int64).reshape(rows_in, 1), small)
        for k in range(n):
            src = to_rows(np.take_along_axis(grid, np.full(ismall, k, dtype=np.int64), axis=axis), ismall)[:, 0]
            last = k == n - 1
            sources = [View(x, rows=tuple(src.tolist())), View(nidx)] + ([View(prev)] if prev is not None else [])
            steps = [Step("EQ", [("src", 1), ("imm", float(k))]), Step("MUL", [("src", 0), ("step", 0)])]
            if prev is not None:
                steps.append(Step("ADD", [("step", 1), ("src", 2)]))
            y = lw.add_tensor(lw.fresh(node.output[0] if last else "gesum"), ishape, "value")
            lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=sources,
                                 steps=steps))
            lw.derived[y] = mag
            prev = y
    lw.tensors[prev].shape = ishape
    lw.values[node.output[0]] = (prev, ishape)
