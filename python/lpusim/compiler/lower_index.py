"""Index-valued ops: ArgMax/ArgMin, Gather with computed indices (embedding lookups), GatherElements with constant
indices, Cast of computed values, Range, computed attention masks. Gathers of computed data with
computed indices, GatherElements with computed indices or over several matrices, GatherND: lower_gather.py.

The chip computes in float32; integer values (token ids, masks, argmax indices) are float32 whole numbers, exact up
to 2^24. Integer and bool graph inputs are converted on the host (importer.host_input); integer outputs are turned
back into their ONNX type when the program decodes them (importer.decode_output).

* ArgMax/ArgMin over the lane axis: the row maximum by the rotation tree of lower_lanes.py (on the fp16 values the
  MXM moves), `EQ` of each lane's fp16 value with it on the VXM gives the candidates, each candidate lane holds its
  index (a constant row), the others `C`; a MIN tree finds the first (`select_last_index`: a MAX tree, the last);
  lane 0 is kept through a [C, 1] selection. Ties after fp16 rounding resolve to the first (last) index, so the
  result is onnxruntime's whenever the row's largest value differs from the others by more than fp16's rounding.
* ArgMax/ArgMin along a row axis: a halving tree on the VXM in float32 (exact, ties included): each stage compares
  the first and the last ceil(n/2) rows along the axis (strided row views) and keeps the better (value, index).
* Gather(table [V, H] constant, ids computed): a one-hot matrix built on the VXM and MXM, then `onehot @ table` on
  the MXM. The ids arrive as a column (one id per row: the host lays out an integer graph input that way, as it lays
  out any input; a computed [1, S] row is transposed on the SXM). Ids enter the MXM as fp16, exact below 2048: a
  larger V splits each id into base-256 digits on the VXM (FLOOR), each digit is copied across V lanes by a [1, V]
  matmul whose epilogue compares it (`EQ`) with the matching digit of the lane index; the product of the digit
  matches is the one-hot row. Out-of-range ids (>= V or < -V) give a zero row; negative ids count from the end.
* GatherElements with constant indices along the lanes: one MXM selection per distinct row pattern of indices,
  masked to its rows and accumulated (at most 8 patterns); along a row axis: whole rows in any order are a row-map
  view (lower_gather.py), any other pattern of one matrix a sum of row views times constant 0/1 masks (VXM).
* A computed attention mask of ONNX shape [1, 1, Q|1, K] (transformers' export: Cast, Reshape to [1, 1, 1, K], And,
  Expand, Where) is kept as its one [1, K] row (the NCHW layout of a 4-D tensor would put K on the rows): elementwise
  ops with constants that agree across query rows run on that row, and every head's scores read it for every query
  row (lower_heads.py). Where with an infinite constant branch is finite + log(c) (importer.lower_where).
* Resize: lower_resize.py.
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower_lanes import lane_axis, rotation
from lpusim.errors import CompileError

def _elementwise_ops() -> set:
    from lpusim.compiler.importer import _BINARY, _UNARY
    return set(_BINARY) | set(_UNARY) | {"Pow", "Clip"}


_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
              onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
FP16_EXACT = 2048  # whole numbers fp16 holds exactly
DIGIT = 256  # base of the digits a large id is split into


class IndexLowering:
    """Mixed into the importer's `_Lowering`."""

    # ----- Cast of a computed value -------------------------------------------------------------------------
    def lower_cast(self, node, a, args, force: bool = False) -> None:
        """`force`: truncate `node`'s own output in place (integer Div)."""
        to = a.get("to", 0)
        _, x, shape = args[0]
        src, out = node.input[0], node.output[0]
        if not force and (to == onnx.TensorProto.FLOAT or (to in _INT_TYPES and src in self.integral)):
            self.values[out] = self.values[src]
            if src in self.integral:
                self.integral.add(out)
            return
        if to in _INT_TYPES:  # truncation toward zero: x >= 0 ? floor(x) : ceil(x)
            chain = [("FLOOR", [("in",)]), ("CEIL", [("in",)]), ("GE", [("in",), ("imm", 0.0)]),
                     ("SUB", [("step", 0), ("step", 1)]), ("MUL", [("step", 2), ("step", 3)]),
                     ("ADD", [("step", 4), ("step", 1)])]
        elif to == onnx.TensorProto.BOOL:
            chain = [("NE", [("in",), ("imm", 0.0)])]
        else:
            raise CompileError(f"{self.where(node)}: Cast to {onnx.TensorProto.DataType.Name(to)} of a computed "
                               f"tensor is not supported (the chip path carries float32 values; casts to float, "
                               f"bool and integer types are)")
        self.emit_chain(node, args[0], chain)
        self.integral.add(out)

    # ----- ArgMax / ArgMin ----------------------------------------------------------------------------------
    def lower_argmax(self, node, op, a, args) -> None:
        _, x, shape = args[0]
        shape = tuple(shape)
        axis = a.get("axis", 0)
        if len(shape) not in (0, 4) and -len(shape) <= axis < len(shape) - 1 and axis % len(shape) != len(shape) - 1:
            return self.lower_argmax_rows(node, op, a, x, shape, axis % len(shape))
        self._check_lane_axis(node, shape, axis)
        keep, last = a.get("keepdims", 1), a.get("select_last_index", 0)
        lane = lane_axis(shape)
        c = shape[lane]
        if c > FP16_EXACT:
            raise CompileError(f"{self.where(node)}: {op} over {c} lanes: the indices pass the MXM as fp16, exact "
                               f"only below {FP16_EXACT} (not supported yet)")
        out_shape = tuple(1 if i == lane else d for i, d in enumerate(shape)) if keep else \
            tuple(d for i, d in enumerate(shape) if i != lane)
        if not keep and self.feeds_other_nodes(node.output[0]):
            raise CompileError(f"{self.where(node)}: keepdims=0 feeding another node moves the result from rows to "
                               f"lanes, which needs the SXM (not supported yet)")
        extreme = "MAX" if op == "ArgMax" else "MIN"
        mag = self.magnitudes.get(node.input[0], 0.0)
        # every lane's fp16 value (what the rotations compare), then the row's extreme in every lane
        m0, _ = self.lane_matmul(node, x, shape, ("eye", c), lambda: np.eye(c, dtype=np.float32), "argx")
        self.tensors[x].f16_saturate = True
        self.derived[m0] = mag
        self.tensors[m0].f16_saturate = True
        m, s = m0, 1
        while s < c:
            m, _ = self.lane_matmul(node, m, shape, (f"rot{s}", c), lambda s=s: rotation(c, s), f"arg{s}",
                                    [Step(extreme, [("acc",), ("src", 0)])], [m])
            self.derived[m] = mag
            self.tensors[m].f16_saturate = True
            s *= 2
        # candidates: a lane equal to the extreme holds its index (last: index + 1), the others c (last: 0)
        j = np.arange(c, dtype=np.float32)
        iota = self.const_tensor((j + 1.0 if last else j - c)[None, :], "iota")
        steps = [Step("EQ", [("src", 0), ("src", 1)]), Step("MUL", [("step", 0), ("src", 2)])]
        if not last:
            steps.append(Step("ADD", [("step", 1), ("imm", float(c))]))
        cand = self.vector(node, [m0, m, iota], steps, shape, "argcand")
        pick = self.lane_extreme(node, cand, shape, "MAX" if last else "MIN", hint="argpick", magnitude=float(c))
        y, _ = self.lane_matmul(node, pick, shape, ("lane0", c), lambda: np.eye(c, 1, dtype=np.float32),
                                node.output[0], [Step("ADD", [("acc",), ("imm", -1.0)])] if last else [])
        self.derived[y] = float(c)
        self.tensors[y].shape = out_shape
        self.values[node.output[0]] = (y, out_shape)
        self.integral.add(node.output[0])

    def lower_argmax_rows(self, node, op, a, x, shape, axis) -> None:
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
        t = self.tensors[x]
        geom = (outer, n, inner)
        if t.geom is None and t.kind != "input":
            t.geom = geom
        if t.geom != geom:  # an input's rows are laid out by the host: copy them into a tensor of this geometry
            y = self.add_tensor(self.fresh("argrows"), (outer * n * inner, c), "value")
            self.tensors[y].geom = geom
            self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=[View(x)],
                                   steps=[Step("COPY", [("src", 0)])], fusable=False))
            x = y
        pos = np.broadcast_to(np.arange(n, dtype=np.float32)[None, :, None, None], (outer, n, inner, c))
        val, idx = x, self.const_tensor(pos.reshape(outer * n * inner, c).copy(), "argpos")
        self.tensors[idx].geom = geom
        better = "GT" if op == "ArgMax" else "LT"
        tie = "GE" if last else "LE"
        while n > 1:
            h = (n + 1) // 2
            out_geom = (outer, h, inner)

            def half(tensor, start):
                return View(tensor, dh=start, spatial=True)

            def new(hint):
                y = self.add_tensor(self.fresh(hint), (outer * h * inner, c), "value")
                self.tensors[y].geom = out_geom
                return y
            # the second half as tensors of their own (a MEM slice streams one view of a tensor at a time)
            bv, bi = new("argbv"), new("argbi")
            for src, dst in ((val, bv), (idx, bi)):
                self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, dst,
                                       sources=[half(src, n - h)], steps=[Step("COPY", [("src", 0)])],
                                       fusable=False))
            # keep A when it is better, or equal with the preferred index
            keep_a = [Step(better, [("src", 0), ("src", 1)]), Step("EQ", [("src", 0), ("src", 1)]),
                      Step(tie, [("src", 2), ("src", 3)]), Step("MUL", [("step", 1), ("step", 2)]),
                      Step("MAX", [("step", 0), ("step", 3)])]
            ka = new("argkeep")
            self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, ka,
                                   sources=[half(val, 0), View(bv), half(idx, 0), View(bi)], steps=keep_a,
                                   fusable=False))
            ni = new("argidx")  # B's index + keep * (A's - B's)
            self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, ni,
                                   sources=[half(idx, 0), View(bi), View(ka)],
                                   steps=[Step("SUB", [("src", 0), ("src", 1)]), Step("MUL", [("src", 2), ("step", 0)]),
                                          Step("ADD", [("src", 1), ("step", 1)])], fusable=False))
            nv = new("argval")
            self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, nv,
                                   sources=[half(val, 0), View(bv)],
                                   steps=[Step("MAX" if op == "ArgMax" else "MIN", [("src", 0), ("src", 1)])],
                                   fusable=False))
            val, idx, n = nv, ni, h
        if idx == self.values.get(node.input[0], (None,))[0] or self.tensors[idx].kind == "const":
            y = self.add_tensor(self.fresh(node.output[0]), out_shape, "value")
            self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=[View(idx)],
                                   steps=[Step("COPY", [("src", 0)])]))
            idx = y
        from lpusim.compiler.row_layout import as_matrix
        if as_matrix(out_shape) != (self.tensors[idx].rows, c) or len(out_shape) == 4:
            raise CompileError(f"{self.where(node)}: {op} over axis {axis} of {shape} gives {out_shape}, whose "
                               f"rows are laid out differently (not supported yet)")
        self.tensors[idx].shape = out_shape
        self.values[node.output[0]] = (idx, out_shape)
        self.integral.add(node.output[0])

    # ----- Gather with computed indices: one-hot rows times the table -----------------------------------------
    def lower_gather_computed(self, node, a, args) -> None:
        data, idx = args[0], args[1]
        if data[0] != "const" or np.asarray(data[1]).ndim != 2 or a.get("axis", 0) % 2 != 0:
            return self.lower_gather_ids(node, a, args)  # computed data, or along the lanes (lower_gather.py)
        table = np.asarray(data[1], dtype=np.float32)
        v, h = table.shape
        _, ids, ishape = idx
        ishape = tuple(ishape)
        n = int(np.prod(ishape, dtype=np.int64))
        out_shape = ishape + (h,)
        if len(out_shape) == 4 or n == 0:
            raise CompileError(f"{self.where(node)}: Gather of {ishape} ids from a [{v}, {h}] table gives a "
                               f"{len(out_shape)}-D result, not supported yet")
        onehot = self.gather_onehot_rows(node, ids, ishape, v)
        out = self.add_tensor(self.fresh(node.output[0]), out_shape, "value")
        self.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, out,
                               terms=[(View(onehot), self.const_tensor(table, "w"))]))
        self.values[node.output[0]] = (out, out_shape)

    def index_digits(self, node, ids, ishape, v) -> list:
        """[(column [n, 1] of one digit of each id, that digit of every lane index [V])], least significant
        last; negative ids are counted from the end."""
        n = int(np.prod(ishape, dtype=np.int64))
        t = self.tensors[ids]
        if t.kind == "input" and t.im2col is None:  # the host lays the ids out one per row
            col = self.add_tensor(self.fresh(ids + ".col"), ishape + (1,), "input", onnx_input=t.onnx_input)
            self.inputs.append(col)
            layout = "col"
        elif t.cols == 1 and t.rows == n:
            col, layout = ids, "col"
        elif t.rows == 1 and t.cols == n:
            if n > 320:
                raise CompileError(f"{self.where(node)}: {n} computed ids in one row: turning them into a column "
                                   f"(an SXM transpose) takes at most 320")
            col, layout = ids, "row"
        else:
            raise CompileError(f"{self.where(node)}: computed ids of shape {ishape} lie in {t.rows} rows of "
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
            d = self.vector(node, [col], steps, src_shape, "digit")
            self.derived[d] = mag
            if layout == "row":  # [1, n] -> [n, 1] on the SXM (whole numbers below 2048: exact in fp16)
                dt = self.add_tensor(self.fresh("digitT"), (n, 1), "value")
                self.nodes.append(Node("transpose", node.name or node.output[0], node.op_type, dt,
                                       sources=[View(d)], fusable=False))
                self.derived[dt] = mag
                d = dt
            digits.append((d, iota.astype(np.float32)))
        return digits

    # ----- GatherElements with constant indices ----------------------------------------------------------------
    def lower_gather_elements(self, node, a, args) -> None:
        data, idx = args[0], args[1]
        if idx[0] != "const":
            return self.lower_gather_elements_computed(node, a, args)  # one-hot masks (lower_gather.py)
        _, x, shape = data
        shape = tuple(shape)
        nd = len(shape)
        axis = a.get("axis", 0) % nd
        ind = np.asarray(idx[1]).astype(np.int64)
        ind = np.where(ind < 0, ind + shape[axis], ind)
        if ind.ndim != nd or any(ind.shape[i] != shape[i] for i in range(nd) if i != axis):
            raise CompileError(f"{self.where(node)}: GatherElements indices of shape {ind.shape} on data "
                               f"{shape}: only indices as large as the data off the gather axis are supported")
        if np.any((ind < 0) | (ind >= shape[axis])):
            raise CompileError(f"{self.where(node)}: GatherElements index out of range for axis {axis} of {shape}")
        from lpusim.compiler.row_layout import to_rows
        out_shape = tuple(ind.shape)
        lane = lane_axis(shape)
        if axis == lane:
            rows = to_rows(ind, out_shape)  # [R, J] lane indices per output row
            patterns, where = np.unique(rows, axis=0, return_inverse=True)
            where = np.asarray(where).ravel()
            if len(patterns) > 8:
                raise CompileError(f"{self.where(node)}: GatherElements along the lanes with {len(patterns)} "
                                   f"different index rows (at most 8: one MXM selection each)")
            prev = None
            for p, cols in enumerate(patterns):
                last = p == len(patterns) - 1
                if len(patterns) == 1:
                    steps, sources = [], []
                else:
                    mask = np.repeat((where == p).astype(np.float32)[:, None], rows.shape[1], axis=1)
                    sources = [self.const_tensor(mask, "rowmask")]
                    steps = [Step("MUL", [("acc",), ("src", 0)])]
                    if prev is not None:
                        sources.append(prev)
                        steps.append(Step("ADD", [("step", 0), ("src", 1)]))
                y, _ = self.select_lanes(node, x, shape, cols, node.output[0] if last else "gathered", steps,
                                         sources)
                self.tensors[y].shape = out_shape
                prev = y
            self.values[node.output[0]] = (prev, out_shape)
            return
        # along a row axis: every output row must take one whole input row, in an evenly spaced rising run
        moved = np.moveaxis(ind, axis, 0).reshape(ind.shape[axis], -1)
        if any(d != 1 for i, d in enumerate(shape) if i not in (axis, lane)):  # several matrices: the masked
            idx_t = self.const_input(ind.astype(np.float32), out_shape)  # passes of computed indices (lower_gather.py)
            return self.lower_gather_elements_computed(node, a, [data, ("value", idx_t, out_shape)])
        if not np.all(moved == moved[:, :1]):
            return self._gather_elements_rows(node, x, shape, axis, ind, out_shape)
        self.gather_elements_same_rows(node, x, shape, axis, ind)  # whole rows: a row map (lower_gather.py)

    def _gather_elements_rows(self, node, x, shape, axis, ind, out_shape) -> None:
        """out[i, j] = x[ind[i, j], j] of one matrix: each source row k that is used, as a one-row tensor (a row
        view), times the constant 0/1 mask of where it goes, accumulated on the VXM (exact while the unselected
        values are finite: 0 * inf is NaN, as in Where)."""
        rows_used = np.unique(ind)
        if len(rows_used) > 64:
            raise CompileError(f"{self.where(node)}: GatherElements along the rows from {len(rows_used)} different "
                               f"rows (at most 64: two VXM passes each)")
        r, c = shape[axis], shape[-1]
        t = self.tensors[x]
        if t.geom is None and t.kind != "input":
            t.geom = (1, r, 1)
        if t.geom != (1, r, 1):
            y = self.add_tensor(self.fresh("gerows"), (r, c), "value")
            self.tensors[y].geom = (1, r, 1)
            self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=[View(x)],
                                   steps=[Step("COPY", [("src", 0)])], fusable=False))
            x = y
        idx2 = ind.reshape(-1, c)
        prev = None
        for n, k in enumerate(rows_used):
            row = self.add_tensor(self.fresh("gerow"), (1, c), "value")
            self.tensors[row].geom = (1, 1, 1)
            self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, row,
                                   sources=[View(x, dh=int(k), spatial=True)], steps=[Step("COPY", [("src", 0)])],
                                   fusable=False))
            mask = self.const_tensor((idx2 == k).astype(np.float32), "gemask")
            last = n == len(rows_used) - 1
            y = self.add_tensor(self.fresh(node.output[0] if last else "gesum"), out_shape, "value")
            sources = [View(row), View(mask)] + ([View(prev)] if prev is not None else [])
            steps = [Step("MUL", [("src", 0), ("src", 1)])]
            if prev is not None:
                steps.append(Step("ADD", [("step", 0), ("src", 2)]))
            self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=sources,
                                   steps=steps))
            self.derived[y] = self.magnitudes.get(node.input[0], 0.0)
            prev = y
        self.values[node.output[0]] = (prev, out_shape)

    # ----- an attention mask kept as one row: [1, 1, Q|1, K] whose rows are all the same ----------------------------
    def lower_range(self, node, args) -> None:
        computed = [node.input[i] for i, v in enumerate(args) if v is not None and v[0] != "const"]
        raise CompileError(f"{self.where(node)}: Range with computed input(s) {', '.join(computed)}: lpusim folds "
                           f"Range on the host when start, limit and delta are constants or come from shapes; a "
                           f"data-dependent length has no static schedule")
