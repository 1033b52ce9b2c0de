"""Gather, GatherElements and GatherND beyond the embedding lookup (lower_index.py) and lane selections (lower_misc.py).

* Constant indices (Gather along any axis, GatherND, GatherElements picking one row for every lane): the host
  applies the op to a grid of row * C + lane numbers and reads off, per output row, which input rows and lanes it
  holds (`gather_row_map`). Whole rows (a Gather along a row axis with any indices: repeats, any order, negative;
  GatherND picking rows, e.g. an export's last token): the chip copies them through a row-map view (ir.View.rows):
  the VXM streams the output rows in order while each input row is READ from its own address, one READ + REPEAT
  per run of rows with one address step (rising, falling or repeated). Exact (f32 copies). Elements that leave
  their lane (GatherND down to scalars, a Gather along the lanes with index rows or an image's channels): one term
  per source row of an output row and lane pattern, each a row-map copy then an MXM lane selection (masked to its
  rows when the pattern differs between rows), summed (at most MAX_SELECTIONS): values pass the MXM as fp16.
* Gather of computed data with computed indices (x[ids], both activations):
  - along a row axis (of any batch of matrices, or an image's pixel axes): the input row number of every output
    row (the ids through a row-map view, times the axis' row stride, plus the batch offset: VXM, float32) makes
    one-hot rows [R_out, R_in] as for an embedding (lower_index.index_digits: VXM compares, MXM broadcasts,
    base-256 digits past 2048), and `onehot @ data` runs on the MXM with all the data's rows loaded as computed
    weights (like attention's V, schedule_sxm.py);
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
Negative indices count from the end. Out-of-range indices are an ONNX error: constant ones are refused (by
onnxruntime's calibration run or a CompileError); computed ones give 0 where onnxruntime would raise.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower_index import DIGIT, FP16_EXACT
from lpusim.compiler.lower_lanes import lane_axis, with_lanes
from lpusim.errors import CompileError

MAX_MASK_PASSES = 512  # GatherElements with computed indices: one pass per lane (row) the indices may name
MAX_SELECTIONS = 64  # constant indices moving lanes: MXM lane selections (each masked to its rows when needed)
HOST_MAP_LIMIT = 1 << 25  # elements of the host's (row, lane) index grid


def as_matrix(shape):
    from lpusim.compiler.row_layout import as_matrix as m
    return m(tuple(shape))


class GatherLowering:
    """Mixed into the importer's `_Lowering`."""

    # ----- constant indices: a host map of which input row (and lane) each output element is ----------------
    def gather_row_map(self, node, shape, apply, lanes_move: bool):
        """Apply `apply` (the op with its constant indices) to a grid of row * c + lane numbers of `shape` (lane
        axis cut to c = 2 unless `lanes_move`); returns (terms, ONNX output shape): the output is the sum of the
        terms (source row per output row, lane pattern or None: -1 gives 0), one term per distinct source row of
        an output row. CompileError if a term's lane pattern differs between rows (or, without `lanes_move`, an
        output row is not one whole input row)."""
        from lpusim.compiler.row_layout import from_rows, to_rows
        shape = tuple(shape)
        lane = lane_axis(shape)
        c_real = shape[lane]
        c = c_real if lanes_move else min(c_real, 2)
        small = tuple(c if i == lane else d for i, d in enumerate(shape))
        rows, _ = as_matrix(small)
        if rows * c > HOST_MAP_LIMIT:
            raise CompileError(f"{self.where(node)}: {node.op_type} of {shape} moving lanes: the host's index map "
                               f"of {rows * c} elements is larger than {HOST_MAP_LIMIT} (not supported)")
        grid = np.arange(rows * c, dtype=np.int64).reshape(rows, c)
        out = np.asarray(apply(from_rows(grid, small)))
        out_shape = tuple(out.shape)
        if out.size == 0:
            raise CompileError(f"{self.where(node)}: {node.op_type} of {shape} gives an empty {out_shape} result "
                               f"(zero-size tensors are not supported)")
        m = to_rows(out, out_shape)
        src, lanes = m // c, m % c
        whole = np.all(src == src[:, :1]) and np.all(lanes == lanes[:1])
        fail = CompileError(f"{self.where(node)}: {node.op_type} of {shape} to {out_shape} moves elements between "
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
            raise CompileError(f"{self.where(node)}: {node.op_type} of {shape} to {out_shape} needs {len(terms)} "
                               f"MXM lane selections (one per source row of an output row and lane pattern: at "
                               f"most {MAX_SELECTIONS})")
        return terms, out_shape

    def gather_copy_rows(self, node, x: str, shape, terms, out_shape) -> None:
        """The output: per term, rows of x (a row-map view on the VXM, exact), then its lanes (an MXM selection)
        added to the terms before."""
        t = self.tensors[x]
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
                y = self.add_tensor(self.fresh(name if pattern is None else "gatherrows"), mid_shape, "value")
                self.nodes.append(Node("vector", node.name or name, node.op_type, y,
                                       sources=[View(x, rows=tuple(int(r) for r in src))],
                                       steps=[Step("COPY", [("src", 0)])]))
                self.derived[y] = self.magnitudes.get(node.input[0], 0.0)
            if pattern is not None:
                steps, sources, acc = [], [], ("acc",)
                if rowmask is not None:  # this lane pattern serves only these rows
                    mask = np.repeat(rowmask.astype(np.float32)[:, None], len(pattern), axis=1)
                    sources.append(self.const_tensor(mask, "rowmask"))
                    steps.append(Step("MUL", [acc, ("src", 0)]))
                    acc = ("step", 0)
                if prev is not None:
                    sources.append(prev)
                    steps.append(Step("ADD", [acc, ("src", len(sources) - 1)]))
                y, _ = self.select_lanes(node, y, self.tensors[y].shape if y != x else shape, np.asarray(pattern),
                                         name if last else "gatherterm", steps, sources)
                self.tensors[y].shape = out_shape
                self.derived[y] = self.magnitudes.get(node.input[0], 0.0)
            prev = y
        self.values[name] = (prev, out_shape)

    def gather_rows_const(self, node, x, shape, axis: int, ind: np.ndarray) -> None:
        """Gather along a row axis with constant indices (any order, repeats, negative)."""
        n = shape[axis]
        if np.any((ind < -n) | (ind >= n)):
            raise CompileError(f"{self.where(node)}: Gather index out of range for axis {axis} of {tuple(shape)}")
        terms, out_shape = self.gather_row_map(node, shape, lambda g: np.take(g, ind, axis=axis), lanes_move=False)
        self.gather_copy_rows(node, x, shape, terms, out_shape)

    def gather_const_lanes(self, node, x, shape, axis: int, ind: np.ndarray) -> None:
        """Gather along the lanes with constant indices the plain MXM selection cannot take (index rows, a 4-D or
        scalar result): each output row is an input row with a lane pattern (terms masked by rows)."""
        try:
            terms, out_shape = self.gather_row_map(node, shape, lambda g: np.take(g, ind, axis=axis), lanes_move=True)
        except CompileError:
            if self.tensors[x].rows != 1 or ind.ndim == 0:
                raise
            # one row of data (a 1-D table) and many index rows: the masked broadcasts of computed ids, the ids
            # being a constant (C passes)
            ids = self.const_input(ind.astype(np.float32), tuple(ind.shape))
            out_shape = tuple(shape[:axis]) + tuple(ind.shape) + tuple(shape[axis + 1:])
            return self._gather_ids_masked(node, x, shape, ids, tuple(ind.shape), out_shape,
                                           self.magnitudes.get(node.input[0], 0.0))
        self.gather_copy_rows(node, x, shape, terms, out_shape)

    def lower_gather_nd(self, node, a, args) -> None:
        data, idx = args[0], args[1]
        if data[0] != "value":
            raise CompileError(f"{self.where(node)}: GatherND of a {data[0]} operand is not supported")
        if idx[0] != "const":
            raise CompileError(f"{self.where(node)}: GatherND with computed indices is not supported yet "
                               f"(constant indices)")
        _, x, shape = data
        shape = tuple(shape)
        ind = np.asarray(idx[1]).astype(np.int64)
        b = int(a.get("batch_dims", 0))
        k = ind.shape[-1] if ind.ndim else 0
        lanes_move = b <= lane_axis(shape) < b + k
        terms, out_shape = self.gather_row_map(node, shape, lambda g: self.fold(node, "GatherND", a, [g, ind]),
                                               lanes_move)
        self.gather_copy_rows(node, x, shape, terms, out_shape)

    def gather_elements_same_rows(self, node, x, shape, axis, ind) -> None:
        """GatherElements along a row axis whose indices are the same in every lane: whole rows (a row map)."""
        lane = lane_axis(shape)
        moved = np.moveaxis(ind, lane, -1)
        if not np.all(moved == moved[..., :1]) or ind.shape[lane] != shape[lane]:
            raise CompileError(f"{self.where(node)}: internal: GatherElements indices are not whole rows")
        picks = np.take(ind, [0], axis=lane)  # the row of each output row (lane axis of size 1)

        def apply(grid):
            return np.take_along_axis(grid, np.repeat(picks, grid.shape[lane], axis=lane), axis=axis)
        terms, out_shape = self.gather_row_map(node, shape, apply, lanes_move=False)
        self.gather_copy_rows(node, x, shape, terms, out_shape)

    # ----- Gather with computed data and computed indices ----------------------------------------------------
    def lower_gather_ids(self, node, a, args) -> None:
        data, idx = args[0], args[1]
        _, ids, ishape = idx
        ishape = tuple(ishape)
        x, shape = self._gather_data(node, data)
        nd = len(shape)
        if nd == 0:
            raise CompileError(f"{self.where(node)}: Gather of a scalar")
        axis = a.get("axis", 0) % nd
        out_shape = tuple(shape[:axis]) + ishape + tuple(shape[axis + 1:])
        n = int(np.prod(ishape, dtype=np.int64))
        if n == 0:
            raise CompileError(f"{self.where(node)}: Gather of no indices (an empty result)")
        mag = self.magnitudes.get(node.input[0], self.derived.get(x, 0.0))
        if axis == lane_axis(shape):
            return self._gather_ids_lanes(node, x, shape, ids, ishape, out_shape, mag)
        return self._gather_ids_rows(node, x, shape, axis, ids, ishape, out_shape, mag)

    def _gather_ids_rows(self, node, x, shape, axis, ids, ishape, out_shape, mag) -> None:
        """Along a row axis: output row (p, i, q) is input row (p, ids[i], q) = offset(p, q) + ids[i] * stride.
        That row number per output row (the ids column through a row-map view, on the VXM in float32) makes the
        one-hot rows [R_out, R_in], and `onehot @ x` runs on the MXM with all of x's rows as computed weights (a
        batch's rows meet only its own one-hot columns)."""
        from lpusim.compiler.row_layout import from_rows, to_rows
        nd = len(shape)
        lane = lane_axis(shape)
        v, h = shape[axis], shape[lane]
        n = int(np.prod(ishape, dtype=np.int64))
        if (len(out_shape) == 4) != (nd == 4):
            raise CompileError(f"{self.where(node)}: Gather of {ishape} computed ids along axis {axis} of {shape} "
                               f"gives {out_shape}, whose rows and lanes are laid out differently (not supported "
                               f"yet)")
        small = tuple(1 if i == lane else d for i, d in enumerate(shape))
        rows_in = as_matrix(small)[0]
        if rows_in > DIGIT * FP16_EXACT:
            raise CompileError(f"{self.where(node)}: Gather of computed ids from {rows_in} rows: the one-hot's "
                               f"base-{DIGIT} digits are exact in fp16 up to {DIGIT * FP16_EXACT} rows")
        grid = from_rows(np.arange(rows_in, dtype=np.int64).reshape(rows_in, 1), small)
        base = np.take(grid, [0], axis=axis)
        stride = np.take(grid, [1], axis=axis) - base if v > 1 else np.zeros_like(base)
        if not np.all(stride == stride.flat[0]):
            raise CompileError(f"{self.where(node)}: internal: rows along axis {axis} of {shape} are not evenly "
                               f"spaced")
        out_small = tuple(1 if i == lane_axis(out_shape) else d for i, d in enumerate(out_shape))
        offs = np.take(base, np.zeros(ishape, dtype=np.int64), axis=axis)  # [pre, ids..., post]
        which = np.broadcast_to(np.arange(n, dtype=np.int64).reshape((1,) * axis + ishape +
                                                                       (1,) * (nd - axis - 1)), offs.shape)
        if offs.shape != out_small:
            raise CompileError(f"{self.where(node)}: internal: Gather row map {offs.shape} for {out_shape}")
        offs, which = to_rows(offs, out_small)[:, 0], to_rows(np.ascontiguousarray(which), out_small)[:, 0]
        if rows_in == v and np.array_equal(which, np.arange(n)):  # one matrix: the ids are the row numbers
            onehot = self.gather_onehot_rows(node, ids, ishape, v)
            return self._gather_ids_matmul(node, x, shape, onehot, out_shape, mag)
        col = self._gather_ids_column(node, ids, ishape)
        rows_out = len(which)
        # the input row number of every output row: (ids + V * (ids < 0)) * stride + offset
        steps = [Step("LT", [("src", 0), ("imm", 0.0)]), Step("MUL", [("step", 0), ("imm", float(v))]),
                 Step("ADD", [("src", 0), ("step", 1)]), Step("MUL", [("step", 2), ("imm", float(stride.flat[0]))]),
                 Step("ADD", [("step", 3), ("src", 1)])]
        big = self.add_tensor(self.fresh("gatherrow"), (rows_out, 1), "value")
        self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, big,
                               sources=[View(col, rows=tuple(which.tolist())),
                                        View(self.const_tensor(offs.astype(np.float32)[:, None], "rowoffs"))],
                               steps=steps))
        self.derived[big] = float(rows_in)
        onehot = self.gather_onehot_rows(node, big, (rows_out,), rows_in)
        self._gather_ids_matmul(node, x, shape, onehot, out_shape, mag)

    def _gather_ids_matmul(self, node, x, shape, onehot, out_shape, mag) -> None:
        """onehot @ x on the MXM, x's rows loaded as computed weights (from its f16 copy)."""
        w = x
        if self.tensors[x].kind != "value":  # a graph input: the weights load from a computed tensor's f16 copy
            w = self.add_tensor(self.fresh("gdata"), shape, "value")
            self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, w, sources=[View(x)],
                                   steps=[Step("COPY", [("src", 0)])]))
            self.derived[w] = mag
        out = self.add_tensor(self.fresh(node.output[0]), out_shape, "value")
        self.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, out,
                               terms=[(View(onehot), w)]))
        self.values[node.output[0]] = (out, out_shape)

    def _gather_ids_column(self, node, ids: str, ishape: tuple) -> str:
        """The ids as a column [n, 1] (one id per row): a graph input as laid out so by the host, a computed
        column as it is, a computed row [1, n] through an SXM transpose (at most 320)."""
        n = int(np.prod(ishape, dtype=np.int64))
        t = self.tensors[ids]
        if t.kind == "input" and t.im2col is None:
            col = self.add_tensor(self.fresh(ids + ".col"), ishape + (1,), "input", onnx_input=t.onnx_input)
            self.inputs.append(col)
            return col
        if (t.rows, t.cols) == (n, 1):
            return ids
        if (t.rows, t.cols) == (1, n) and n <= 320:
            col = self.add_tensor(self.fresh("idsT"), (n, 1), "value")
            self.nodes.append(Node("transpose", node.name or node.output[0], node.op_type, col,
                                   sources=[View(ids)], fusable=False))
            self.derived[col] = self.derived.get(ids, self.magnitudes.get(node.input[1], 0.0))
            return col
        raise CompileError(f"{self.where(node)}: computed ids of shape {ishape} lie in {t.rows} rows of {t.cols} "
                           f"lanes; a Gather along a row axis needs one id per row (a graph input, a [..., 1] "
                           f"column or a single [1, S] row of at most 320)")

    def _gather_data(self, node, data) -> tuple:
        """(IR tensor, shape) of a gathered operand; a constant one (read by the MXM or a row-map view) is copied
        into a computed tensor first."""
        if data[0] == "value":
            return data[1], tuple(data[2])
        if data[0] != "const":
            raise CompileError(f"{self.where(node)}: {node.op_type} with computed indices of a {data[0]} operand "
                               f"is not supported")
        arr = np.asarray(data[1], dtype=np.float32)
        from lpusim.compiler.row_layout import to_rows
        c = self.const_tensor(to_rows(arr, arr.shape) if arr.ndim else arr.reshape(1, 1), "gdata")
        x = self.add_tensor(self.fresh("gdata"), arr.shape, "value")
        self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, x, sources=[View(c)],
                               steps=[Step("COPY", [("src", 0)])]))
        self.derived[x] = float(np.max(np.abs(arr), initial=0.0))
        return x, tuple(arr.shape)

    def gather_onehot_rows(self, node, ids: str, ishape: tuple, v: int) -> str:
        """[n, V]: row i is 1.0 in lane ids[i] (negative ids from the end; out of range: a zero row)."""
        n = int(np.prod(ishape, dtype=np.int64))
        digits = self.index_digits(node, ids, ishape, v)
        onehot, prev = None, None
        for k, (col, iota) in enumerate(digits):
            row = self.const_tensor(iota[None, :], "iota")
            steps = [Step("EQ", [("acc",), ("src", 0)])]
            sources = [row]
            if prev is not None:
                steps.append(Step("MUL", [("step", 0), ("src", 1)]))
                sources.append(prev)
            last = k == len(digits) - 1
            onehot, _ = self.select_lanes(node, col, (n, 1), np.zeros(v, dtype=np.int64),
                                          "onehot" if last else "digitmatch", steps, sources)
            self.derived[onehot] = 1.0
            prev = onehot
        return onehot

    def _gather_ids_row(self, node, ids: str, ishape: tuple, c: int) -> str:
        """The ids (one row [1, n]) with negative ids counted from the end: ids + c * (ids < 0), on the VXM."""
        n = int(np.prod(ishape, dtype=np.int64))
        t = self.tensors[ids]
        if (t.rows, t.cols) != (1, n):
            raise CompileError(f"{self.where(node)}: computed ids of shape {ishape} lie in {t.rows} rows of "
                               f"{t.cols} lanes; a Gather along the lanes needs them in one row")
        pos = [Step("LT", [("src", 0), ("imm", 0.0)]), Step("MUL", [("step", 0), ("imm", float(c))]),
               Step("ADD", [("src", 0), ("step", 1)])]
        y = self.vector(node, [ids], pos, (1, n), "ids")
        self.derived[y] = float(c)
        return y

    def _gather_ids_lanes(self, node, x, shape, ids, ishape, out_shape, mag) -> None:
        c = shape[lane_axis(shape)]
        n = int(np.prod(ishape, dtype=np.int64))
        rows, _ = as_matrix(shape)
        fits = len(ishape) and as_matrix(out_shape) == (rows, n) and (len(out_shape) == 4) == (len(shape) == 4)
        if not fits and rows == 1:  # one row of data (a 1-D table), ids of any shape: masked lane broadcasts
            return self._gather_ids_masked(node, x, shape, ids, ishape, out_shape, mag)
        if not fits:
            raise CompileError(f"{self.where(node)}: Gather of {ishape} computed ids along the lanes of {shape} "
                               f"gives {out_shape}, whose rows are laid out differently (supported: one row of "
                               f"ids, the lanes of the result)")
        row = self._gather_ids_row(node, ids, ishape, c)
        iota = self.const_tensor(np.repeat(np.arange(c, dtype=np.float32)[:, None], n, axis=1), "lanes")
        onehot_t = self.add_tensor(self.fresh("onehotT"), (c, n), "value")
        self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, onehot_t,
                               sources=[View(row), View(iota)], steps=[Step("EQ", [("src", 0), ("src", 1)])]))
        self.derived[onehot_t] = 1.0
        out = self.add_tensor(self.fresh(node.output[0]), out_shape, "value")
        self.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, out,
                               terms=[(View(x), onehot_t)]))
        self.values[node.output[0]] = (out, out_shape)

    def _gather_ids_masked(self, node, x, shape, ids, ishape, out_shape, mag) -> None:
        """y = sum_c x[c] * (ids == c) for one row x of C values: x[c] broadcast across the ids' lanes on the MXM
        (fp16 rounding of x), times the VXM mask, accumulated: C passes."""
        c = shape[lane_axis(shape)]
        r, j = as_matrix(ishape)
        if as_matrix(out_shape) != (r, j) or (len(out_shape) == 4) != (len(ishape) == 4):
            raise CompileError(f"{self.where(node)}: Gather of {ishape} computed ids from one row of {shape} gives "
                               f"{out_shape}, whose rows are laid out differently from the ids (not supported yet)")
        if c > MAX_MASK_PASSES:
            raise CompileError(f"{self.where(node)}: Gather of computed ids of shape {ishape} from a row of {c} "
                               f"values (one masked pass each: at most {MAX_MASK_PASSES})")
        nidx = self.vector(node, [ids], [Step("LT", [("src", 0), ("imm", 0.0)]),
                                         Step("MUL", [("step", 0), ("imm", float(c))]),
                                         Step("ADD", [("src", 0), ("step", 1)])], ishape, "gidx")
        self.derived[nidx] = float(c)
        prev = None
        for k in range(c):
            def make(k=k):
                e = np.zeros((c, j), dtype=np.float32)
                e[k] = 1.0
                return e
            bc, _ = self.lane_matmul(node, x, shape, ("lanebcast", c, j, k), make, "gbcast")
            self.derived[bc] = mag
            steps = [Step("EQ", [("src", 1), ("imm", float(k))]), Step("MUL", [("src", 0), ("step", 0)])]
            if prev is not None:
                steps.append(Step("ADD", [("step", 1), ("src", 2)]))
            y = self.vector(node, [bc, nidx] + ([prev] if prev is not None else []), steps, out_shape,
                            node.output[0] if k == c - 1 else "gsum")
            self.derived[y] = mag
            prev = y
        self.tensors[prev].shape = out_shape
        self.values[node.output[0]] = (prev, out_shape)

    # ----- GatherElements with computed indices: one-hot masks ---------------------------------------------
    def lower_gather_elements_computed(self, node, a, args) -> None:
        data, idx = args[0], args[1]
        x, shape = self._gather_data(node, data)
        _, ind, ishape = idx
        ishape = tuple(ishape)
        nd = len(shape)
        axis = a.get("axis", 0) % nd
        lane = lane_axis(shape)
        if len(ishape) != nd or any(ishape[i] != shape[i] for i in range(nd) if i != axis):
            raise CompileError(f"{self.where(node)}: GatherElements indices of shape {ishape} on data {shape}: only "
                               f"indices as large as the data off the gather axis are supported")
        n = shape[axis]
        if n > MAX_MASK_PASSES:
            raise CompileError(f"{self.where(node)}: GatherElements with computed indices along an axis of {n} "
                               f"(one masked pass each: at most {MAX_MASK_PASSES})")
        mag = self.magnitudes.get(node.input[0], self.derived.get(x, 0.0))
        # negative indices count from the end: idx + n * (idx < 0)
        nidx = self.vector(node, [ind], [Step("LT", [("src", 0), ("imm", 0.0)]),
                                         Step("MUL", [("step", 0), ("imm", float(n))]),
                                         Step("ADD", [("src", 0), ("step", 1)])], ishape, "gidx")
        self.derived[nidx] = float(n)
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
                y, _ = self.lane_matmul(node, x, shape, ("lanebcast", n, j, k), make,
                                        node.output[0] if last else "gesum", steps, sources)
                self.derived[y] = mag
                prev = y
        else:
            # output row r of the k-th pass reads the input row with index k along the axis (same other indices)
            from lpusim.compiler.row_layout import from_rows, to_rows
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
                y = self.add_tensor(self.fresh(node.output[0] if last else "gesum"), ishape, "value")
                self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=sources,
                                       steps=steps))
                self.derived[y] = mag
                prev = y
        self.tensors[prev].shape = ishape
        self.values[node.output[0]] = (prev, ishape)

