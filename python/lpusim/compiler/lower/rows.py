"""Whole rows moved between tensors: Concat along a row axis, Slice/Split along row axes (any step, negative too),
Pad of any mode on any axes (crops too), Tile repeating rows.

Every one of these is, per output row, "row j of input k, or the fill value": the host computes that map once on a
grid of row numbers (`row_ids`, the op applied to it with numpy), and the chip copies the rows through row-map views
(ir.View.rows: one READ per run of rows with one address step, as for Gather and Transpose):

* one source: a VXM COPY through the row map (transpose.copy_rows), exact;
* several sources (Concat's inputs, a pad value other than +0): a bitwise select, exact for every bit pattern
  (inf, NaN, -0): out = OR_k (src_k[map_k] AND mask_k) (i32 AND/OR on the float bits, docs/isa.md section 4), then a
  COPY.f32 that reads the bits back as a float. mask_k is a row map over a two-row i32 constant [0, -1] (row 1 where
  source k owns the output row); the fill value is a row map over a two-row constant [0, bits(value)], an OR
  operand without an AND. At most SELECT_SOURCES computed sources per VXM chain; more are combined in steps, each
  taking the one before as a source.

The lane axis (the last axis; an image's channels) moves on the MXM (`select_lanes`: a constant 0/1 matrix, fp16
on the way through, -1 lanes give 0); a constant fill on lanes is an added row. Also here: `row_view` (a tensor
read at every row of a larger shape), `placement`, `const_input`.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.lanes import lane_axis, lane_matmul, row_axes
from lpusim.compiler.lower.transpose import copy_rows, row_map, row_strides
from lpusim.compiler.row_layout import to_rows
from lpusim.errors import CompileError


SELECT_SOURCES = 4  # computed sources per bitwise-select chain: 2k steps (k AND, k-1 OR, a COPY), delay lines, CVTs


def row_ids(shape: tuple) -> np.ndarray:
    """An int64 array of `shape` with the lane axis cut to 1: each element's row number in the chip's layout."""
    shape = tuple(int(d) for d in shape)
    cut = tuple(1 if i == lane_axis(shape) else d for i, d in enumerate(shape))
    return np.arange(int(np.prod(cut, dtype=np.int64)), dtype=np.int64).reshape(cut)


def take_fill(arr: np.ndarray, idx, axis: int) -> np.ndarray:
    """np.take along `axis`, where an index of -1 gives -1 (the fill)."""
    idx = np.asarray(idx, dtype=np.int64)
    out = np.take(arr, np.maximum(idx, 0), axis=axis)
    shape = [1] * arr.ndim
    shape[axis] = len(idx)
    return np.where((idx < 0).reshape(shape), -1, out)


def pad_index(n: int, begin: int, end: int, mode: str) -> np.ndarray:
    """The source index of each position along one padded axis (negative pads crop): -1 for the constant fill."""
    idx = np.arange(n, dtype=np.int64)[max(0, -begin): n - max(0, -end)]
    b, e = max(0, begin), max(0, end)
    if not b and not e:
        return idx
    if mode == "constant":
        return np.concatenate([-np.ones(b, np.int64), idx, -np.ones(e, np.int64)])
    if len(idx) < (2 if mode == "reflect" else 1):  # onnxruntime refuses these too
        raise ValueError("too few elements to repeat")
    return np.pad(idx, (b, e), mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


# ----- the one chip mechanism: output rows taken from sources through row maps ---------------------------
def _bits_const(lw, cols: int, word: int, slot: int, hint: str) -> str:
    """A two-row i32 constant [0, word] of `cols` lanes, shared per (cols, word, slot): a chain reads each
    stored tensor once (one READ a cycle per MEM slice), so each term of a chain has its own slot."""
    cache = lw.row_bits
    key = (cols, int(word) & 0xFFFFFFFF, slot)
    if key not in cache:
        data = np.zeros((2, cols), dtype=np.int32)
        data[1] = np.int32(np.uint32(word & 0xFFFFFFFF).view(np.int32))
        name = lw.const_tensor(np.zeros((2, cols), np.float32), hint)
        lw.tensors[name].dtype = "i32"
        lw.tensors[name].data = data
        cache[key] = name
    return cache[key]


def assemble_rows(lw, node, srcs: list, gid: np.ndarray, out_shape: tuple, hint: str, mag: float,
                  fill: float = 0.0) -> str:
    """The IR tensor of `out_shape` whose row r is row gid[r] of the virtual stack of `srcs` (IR tensors, all
    with the output's lanes), or the constant `fill` in every lane where gid[r] < 0."""
    gid = np.asarray(gid, dtype=np.int64).ravel()
    counts = [lw.tensors[s].rows for s in srcs]
    bases = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    k_of = np.searchsorted(bases, np.maximum(gid, 0), side="right") - 1
    names = sorted(set(srcs), key=srcs.index)  # a tensor given twice (Concat(x, x)) is one source
    owner = np.where(gid < 0, -1, np.array([names.index(s) for s in srcs], dtype=np.int64)[k_of])
    row = np.where(gid < 0, 0, gid - bases[k_of])
    used = [k for k in range(len(names)) if np.any(owner == k)]
    if len(used) == 1 and not np.any(owner < 0):
        return copy_rows(lw, node, names[used[0]], out_shape, row, hint, mag)
    cols = lw.tensors[srcs[0]].cols
    dtypes = {lw.tensors[names[k]].dtype for k in used}
    if not dtypes <= {"f32"} and not dtypes <= {"i32"}:
        raise CompileError(f"{lw.where(node)}: moving rows of tensors of types {sorted(dtypes)} at once is "
                           f"not supported")
    dtype = dtypes.pop() if dtypes else "f32"
    if dtype == "i32" and fill != 0.0 and np.any(owner < 0):
        raise CompileError(f"{lw.where(node)}: a fill value of {fill} for an integer (i32) tensor is not "
                           f"supported (only 0)")
    word = int(np.float32(fill).view(np.uint32)) if dtype == "f32" else 0
    terms = [(View(names[k], rows=tuple(np.where(owner == k, row, 0).tolist())), owner == k) for k in used]
    prev = None
    while True:
        take, terms = terms[:SELECT_SOURCES - (prev is not None)], terms[SELECT_SOURCES - (prev is not None):]
        last = not terms
        if prev is not None:
            take = [(View(prev[0]), prev[1])] + take
        sources, steps, operands = [], [], []
        for slot, (view, owned) in enumerate(take):
            sources.append(view)
            sources.append(View(_bits_const(lw, cols, -1, slot, "rowmask"),
                                rows=tuple(owned.astype(int).tolist())))
            steps.append(Step("AND", [("src", len(sources) - 2), ("src", len(sources) - 1)], "i32"))
            operands.append(("step", len(steps) - 1))
        if last and np.any(owner < 0) and (word or not operands):
            sources.append(View(_bits_const(lw, cols, word, 0, "rowfill"), rows=tuple((owner < 0).astype(int)
                                                                                    .tolist())))
            operands.append(("src", len(sources) - 1))
        while len(operands) > 1:  # a balanced OR tree: fewer delay lines than a chain
            pairs, operands = operands, []
            for i in range(0, len(pairs) - 1, 2):
                steps.append(Step("OR", [pairs[i], pairs[i + 1]], "i32"))
                operands.append(("step", len(steps) - 1))
            if len(pairs) % 2:
                operands.append(pairs[-1])
        acc = operands[0]
        if dtype == "f32" or acc[0] == "src":
            steps.append(Step("COPY", [acc], dtype))  # COPY.f32 reads the bits back as a float
        out = lw.add_tensor(lw.fresh(hint if last else "rowsel"), out_shape, "value")
        lw.tensors[out].dtype = dtype
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=sources,
                             steps=steps, fusable=len(steps) <= 8))
        lw.derived[out] = max(mag, abs(fill) if np.isfinite(fill) else 0.0)
        if last:
            return out
        owned_so_far = np.zeros(len(gid), dtype=bool)
        for _, owned in take:
            owned_so_far |= owned
        prev = (out, owned_so_far)


# ----- ops -----------------------------------------------------------------------------------------------
def select_rows(lw, node, x: str, shape: tuple, ranges: dict, hint: str) -> tuple[str, tuple]:
    """x restricted to index sequences (any order, steps of any sign) along row axes."""
    ids = row_ids(shape)
    for ax, idx in ranges.items():
        ids = take_fill(ids, list(idx), ax)
    out_shape = tuple(len(ranges[i]) if i in ranges else d for i, d in enumerate(shape))
    y = assemble_rows(lw, node, [x], ids, out_shape, hint, lw.tensor_magnitude(node, x))
    return y, out_shape


def concat_rows(lw, node, values, shapes, axis: int) -> None:
    """Concat along a row axis: each input's rows placed one after another (constant inputs as constants)."""
    srcs, parts, base = [], [], 0
    for x, s in zip(values, shapes):
        name = x[1] if x[0] == "value" else const_input(lw, np.asarray(x[1], np.float32), s)
        srcs.append(name)
        parts.append(row_ids(s) + base)
        base += lw.tensors[name].rows
    gid = np.concatenate(parts, axis=axis)
    out_shape = tuple(sum(s[axis] for s in shapes) if i == axis else d for i, d in enumerate(shapes[0]))
    mag = max(lw.magnitudes.get(n, 0.0) for n in node.input if n)
    y = assemble_rows(lw, node, srcs, gid, out_shape, node.output[0], mag)
    lw.values[node.output[0]] = (y, out_shape)


def tile_rows(lw, node, x: str, shape: tuple, reps: list) -> None:
    lane = lane_axis(shape)
    ids = np.tile(row_ids(shape), [1 if i == lane else r for i, r in enumerate(reps)])
    row_shape = tuple(d if i == lane else d * r for i, (d, r) in enumerate(zip(shape, reps)))
    mag = lw.magnitudes.get(node.input[0], 0.0)
    last = reps[lane] == 1
    y = assemble_rows(lw, node, [x], ids, row_shape, node.output[0] if last else "tilerows", mag)
    if not last:
        c = shape[lane]
        y, row_shape = select_lanes(lw, node, y, row_shape, np.tile(np.arange(c), reps[lane]), node.output[0])
    lw.values[node.output[0]] = (y, row_shape)


def pad_any(lw, node, x: str, shape: tuple, begin: list, end: list, mode: str, value: float) -> None:
    """Pad of any mode on any axes, negative pads cropping: rows by row maps, lanes on the MXM."""
    lane = lane_axis(shape)
    idx = {}
    for ax, (b, e) in enumerate(zip(begin, end)):
        if b or e:
            try:
                idx[ax] = pad_index(shape[ax], b, e, mode)
            except ValueError:
                raise CompileError(f"{lw.where(node)}: Pad mode={mode} of an axis of fewer than 1 (edge, "
                                   f"wrap) or 2 (reflect) elements after the crop "
                                   f"({tuple(shape)}, pads {list(begin) + list(end)})") from None
    out_shape = tuple(len(idx[i]) if i in idx else d for i, d in enumerate(shape))
    if any(d == 0 for d in out_shape):
        raise CompileError(f"{lw.where(node)}: Pad of {tuple(shape)} gives an empty {out_shape} result "
                           f"(zero-size tensors are not supported)")
    mag = max(lw.magnitudes.get(node.input[0], 0.0), abs(value) if np.isfinite(value) else 0.0)
    cur, cur_shape = x, tuple(shape)
    rows = {ax: i for ax, i in idx.items() if ax != lane}
    if rows:
        ids = row_ids(cur_shape)
        for ax, i in rows.items():
            ids = take_fill(ids, i, ax)
        cur_shape = tuple(len(rows[i]) if i in rows else d for i, d in enumerate(cur_shape))
        cur = assemble_rows(lw, node, [cur], ids, cur_shape, node.output[0] if lane not in idx else "padrows",
                            mag, fill=value)
    if lane in idx:
        cols = idx[lane]
        steps, sources = [], []
        if mode == "constant" and value != 0.0 and np.any(cols < 0):
            row = np.where(cols < 0, np.float32(value), np.float32(0.0)).astype(np.float32)[None, :]
            sources.append(lw.const_tensor(row, "padlanes"))
            steps.append(Step("ADD", [("acc",), ("src", 0)]))
        cur, cur_shape = select_lanes(lw, node, cur, cur_shape, cols, node.output[0], steps, sources)
        lw.derived[cur] = mag
    lw.tensors[cur].shape = out_shape
    lw.values[node.output[0]] = (cur, out_shape)


def placement(c_in: int, c_out: int, offset: int, step: int = 1, count: int | None = None) -> np.ndarray:
    """P [c_in, c_out] with P[offset + i*step, i] = 1 (a selection) when c_out <= c_in, else placing."""
    count = c_out if count is None else count
    p = np.zeros((c_in, c_out), dtype=np.float32)
    i = np.arange(count)
    p[offset + i * step, i] = 1.0
    return p


def select_lanes(lw, node, x, shape, cols: np.ndarray, out_name, steps=(), sources=()):
    """y[..., j] = x[..., cols[j]] on the MXM (cols may repeat; -1 gives 0)."""
    c = shape[lane_axis(shape)]
    key = ("sel", c, tuple(int(v) for v in cols))

    def make():
        p = np.zeros((c, len(cols)), dtype=np.float32)
        for j, v in enumerate(cols):
            if v >= 0:
                p[v, j] = 1.0
        return p
    y, y_shape = lane_matmul(lw, node, x, shape, key, make, out_name, steps, sources)
    lw.derived.setdefault(y, lw.magnitudes.get(node.input[0], 0.0))
    return y, y_shape


def const_input(lw, array, shape) -> str:
    return lw.add_tensor(lw.fresh("c"), shape, "const", to_rows(np.asarray(array, np.float32), shape))


def row_view(lw, t, small: tuple, full: tuple) -> View:
    """A view of `t` (laid out as `small`, the lanes of `full`) read at every row of `full`: rows of axes
    where small has 1 repeat."""
    stride = row_strides(small)
    axes = row_axes(len(full))
    rows = row_map([full[k] for k in axes], [stride[k] if small[k] != 1 else 0 for k in axes])
    if np.array_equal(rows, np.arange(len(rows))) or lw.tensors[t].rows == 1:
        return View(t)
    return View(t, rows=tuple(int(r) for r in rows))
