"""Attention masks and flat rows, as exported decoders and encoders compute them (the heads that read them:
attention.py).

Attention masks ([B, 1, Q|1, K]): kept as rows of K lanes (`lower_maskrow`, the ops on them; `mask_row`, the rows
each part reads): B rows while every query row reads the same one, B*Q once a constant that differs between query
rows (a decoder's causal mask) met them. A computed [B, S, X] Unsqueezed to [B, 1, S, X] (rotary cos/sin) is kept
the same way (shape_ops.lower_reshape), so every head reads its element's S rows.

Flat rows (`lower_flatrows`): a computed [R, C] matrix flattened to one column [R*C, 1] and gathered back, as
exported attention masks do.

transformers' mask code (BertModel, GPT2Model with an `attention_mask`) turns the [B, S] mask into [B*S, 1]
(Flatten), picks entries with constant indices (Gather axis 0, indices b*S + k of shape [B, 1, 1, S]), and
reshapes the result to [B*S] and then [B, 1, 1, S]. On the chip a column of B*S rows would be a transpose of the
matrix, and the Gather a row gather: instead the column is kept as a *flat-rows value* (no data moves): the IR
matrix [R, C] plus, per entry of the ONNX tensor, which flat element (r*C + c) of the matrix it holds. A Gather
with constant indices composes that map; a Reshape whose rows of C lanes each read one whole row of the matrix in
lane order turns it back into a matrix: the matrix itself (rows in order) or a VXM copy through a row-map view
(rows picked, repeated or reordered). A flat-rows graph output is copied out as whole rows (`flatrows_output`).
Anything else is a CompileError saying why. (At R = 1 the column is one
vector and shape_ops.lower_reshape transposes it on the SXM, as before.)
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.elementwise import BINARY, UNARY
from lpusim.compiler.lower.shape_ops import lower_reshape, reshape_target
from lpusim.errors import CompileError


# ----- attention masks at batch B > 1: [B, 1, 1, K] kept as B rows of K lanes --------------------------------
def mask_row(lw, node, name: str, b: int) -> str:
    """Batch element b's [1, K] row of the mask `name` (`lower_maskrow` keeps a [1, 1, Q|1, K] mask
    as one row; a [B, 1, 1, K] one is B rows, `lower_maskrow` below): a VXM copy of row b, read through a tap
    of the rows seen as one image of B x 1 pixels (one copy per mask and element, shared by heads and layers)."""
    rows, shape = lw.maskrows[name]
    t = lw.tensors[rows]
    if t.rows == 1 or shape[0] == 1:
        return rows
    cache = lw.mask_rows
    per = t.rows // shape[0]
    if per > 1 and (rows, b) not in cache:  # a mask with a row per query (causal): element b's rows, copied
        cache[(rows, b)] = vector_rows(lw, node, rows, tuple(range(b * per, (b + 1) * per)), f"{name}@rows{b}")
    if (rows, b) not in cache:
        if t.geom not in (None, (1, t.rows, 1)):
            raise CompileError(f"{lw.where(node)}: the attention mask rows '{rows}' are laid out as images "
                               f"{t.geom}; row {b} cannot be read as a view")
        t.geom = (1, t.rows, 1)
        y = lw.add_tensor(lw.fresh(f"{name}@row{b}"), (1, t.cols), "value")
        lw.tensors[y].geom = (1, 1, 1)
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y,
                             sources=[View(rows, dh=b, spatial=True)], steps=[Step("COPY", [("src", 0)])],
                             fusable=False))
        lw.derived[y] = lw.ir_magnitude(rows)
        cache[(rows, b)] = y
    return cache[(rows, b)]


def lower_maskrow(lw, node, op, a, args) -> None:
    """Ops on a computed attention mask of ONNX shape [B, 1, Q|1, K], kept as its B rows of K lanes (an NCHW
    layout would put K on the rows), or as B*Q rows once a constant that differs between query rows (a causal
    mask) met it: elementwise ops with constants (which may differ between batch elements and query rows),
    Expand to [B, 1, Q, K], Shape; lowered on the rows, which the attention scores read for every head of their
    element (a one-row mask for every query row)."""
    why = maskrow_unsupported(lw, op, a, args)
    if why:
        raise CompileError(f"{lw.where(node)}: {why}")
    masks = [lw.maskrows[x[1]] for x in args if x is not None and x[0] == "maskrow"]
    shapes = [x[1].shape if x[0] == "const" else lw.maskrows[x[1]][1] for x in args if x is not None]
    if op == "Shape":
        lw.consts[node.output[0]] = np.array(shapes[0], dtype=np.int64)[a.get("start", 0):a.get("end", 4)]
        return
    if op == "Identity":
        lw.maskrows[node.output[0]] = lw.maskrows[node.input[0]]
        return
    if op == "Expand" and args[1][0] == "const" and expanded_mask(shapes[0], args[1][1]):
        lw.maskrows[node.output[0]] = (lw.maskrows[node.input[0]][0], expanded_mask(shapes[0], args[1][1]))
        return
    out_shape = tuple(np.broadcast_shapes(*[tuple(s_) for s_ in shapes]))
    nb, k = out_shape[0], out_shape[-1]
    # A constant that differs between query rows (a causal mask) meets the rows: the result is a mask with a row
    # per query, B*Q rows of K lanes (element b's on rows b*Q..), which the scores read as a whole per element.
    # So is any result of a mask that already has a row per query.
    q = out_shape[2]
    per_query = q > 1 and (any(per_query_const(x[1], out_shape) for x in args if x is not None and x[0] == "const")
                           or any(lw.tensors[rows].rows > nb for rows, _ in masks))
    inputs = []
    for i, x in enumerate(args):
        if x is None:
            inputs.append("")
            continue
        name = f"{node.output[0]}@rows{i}"
        if x[0] == "maskrow":
            rows, shape = lw.maskrows[x[1]]
            n = lw.tensors[rows].rows
            if per_query and n == nb and nb > 1:  # element b's row for each of its Q query rows: a row-map copy
                rows = vector_rows(lw, node, rows, tuple(r // q for r in range(nb * q)), f"{name}.q")
                n = nb * q
            lw.values[name] = (rows, (n, k))  # one row (B = 1): read for every query row
        else:
            full = np.broadcast_to(np.asarray(x[1]), out_shape)
            same = full.size and np.all((full == full.flat[0]) | (np.isnan(full) & np.isnan(full.flat[0])))
            if same:
                lw.consts[name] = np.asarray(full.flat[0])
            elif per_query:
                lw.consts[name] = np.ascontiguousarray(full[:, 0]).reshape(nb * q, k)
            else:
                lw.consts[name] = np.ascontiguousarray(full[:, 0, 0, :])
        inputs.append(name)
    sub = onnx.helper.make_node(op, inputs, [f"{node.output[0]}@rows"], name=node.name or node.output[0], **a)
    lw.lower(sub)
    rows, _ = lw.values.pop(sub.output[0])
    lw.maskrows[node.output[0]] = (rows, out_shape)


def expanded_mask(shape: tuple, target) -> tuple | None:
    """The shape of an Expand of mask rows of `shape` to `target` when the rows stay (to [B, 1, Q, K]: every
    query row reads the same row), else None."""
    out_shape = tuple(np.broadcast_shapes(tuple(shape), tuple(int(v) for v in np.asarray(target).ravel())))
    ok = len(out_shape) == 4 and out_shape[:2] == (shape[0], 1) and out_shape[3] == shape[3]
    return out_shape if ok else None


def maskrow_unsupported(lw, op: str, a: dict, args: list) -> str | None:
    """Why `lower_maskrow` cannot lower this op on mask rows (None: it can)."""
    shapes = [x[1].shape if x[0] == "const" else lw.maskrows[x[1]][1] if x[0] == "maskrow" else None
              for x in args if x is not None]
    if op in ("Shape", "Identity") or (op == "Expand" and args[1][0] == "const"
                                       and expanded_mask(shapes[0], args[1][1])):
        return None
    elementwise = op in ("Where", "Cast", "Not") or op in BINARY or op in UNARY or op in ("Pow", "Clip")
    if not elementwise or any(s_ is None for s_ in shapes):
        return (f"attention mask rows [B, 1, Q, K] are read by {op}; only elementwise ops with constants, Expand "
                f"and the attention scores can read them")
    try:
        out_shape = tuple(np.broadcast_shapes(*[tuple(s_) for s_ in shapes]))
    except ValueError:
        return f"shapes {shapes} do not broadcast"
    nb = out_shape[0] if out_shape else 1
    masks = [lw.maskrows[x[1]] for x in args if x is not None and x[0] == "maskrow"]
    if len(out_shape) != 4 or out_shape[1] != 1 or any(sh[0] not in (1, nb) for _, sh in masks):
        return f"attention mask rows broadcast to {out_shape} (only [B, 1, Q|1, K])"
    if any(sh[0] != nb for _, sh in masks):
        return f"a one-row mask meets a mask of {nb} rows"
    return None


def per_query_const(arr, out_shape: tuple) -> bool:
    """Whether a constant broadcast to the mask's [B, 1, Q, K] differs between query rows (NaN equals NaN)."""
    full = np.broadcast_to(np.asarray(arr), out_shape)
    return not np.all((full == full[:, :, :1, :]) | (np.isnan(full) & np.isnan(full[:, :, :1, :])))


def vector_rows(lw, node, x: str, rows: tuple, hint: str) -> str:
    """A VXM copy of `x` through a row map (output row r is row rows[r] of x)."""
    y = lw.add_tensor(lw.fresh(hint), (len(rows), lw.tensors[x].cols), "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=[View(x, rows=rows)],
                         steps=[Step("COPY", [("src", 0)])], fusable=False))
    lw.derived[y] = lw.ir_magnitude(x)
    return y


def lower_flatrows(lw, node, op: str, a: dict, args: list) -> None:
    name = node.input[0]
    if args[0] is None or args[0][0] != "flatrows" or any(x is not None and x[0] == "flatrows"
                                                          for x in args[1:]):
        raise CompileError(f"{lw.where(node)}: input '{args[0][1] if args[0] else name}' is a matrix "
                           f"flattened to one column, which only a Gather (axis 0, constant indices) or a "
                           f"Reshape can read")
    ir_name, c, idx, shape = lw.flatrows[name]
    if op == "Gather":
        return gather_flatrows(lw, node, a, args, ir_name, c, idx, shape)
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"):
        new = shape if op == "Identity" else reshape_target(lw, node, a, args, shape)
        rows = flat_matrix_rows(idx, c, new)
        if rows is None:  # not yet rows of whole matrix rows: still a flat-rows value
            lw.flatrows[node.output[0]] = (ir_name, c, idx, tuple(new))
            return
        t = lw.tensors[ir_name]
        if rows == list(range(t.rows)):
            base = ir_name
        else:  # rows picked, repeated or reordered: a VXM copy through a row-map view (exact)
            base = lw.add_tensor(lw.fresh(node.output[0]), (len(rows), c), "value")
            lw.nodes.append(Node("vector", node.name or node.output[0], op, base,
                                 sources=[View(ir_name, rows=tuple(rows))], steps=[Step("COPY", [("src", 0)])]))
            lw.derived[base] = lw.tensor_magnitude(node, ir_name)
        if op == "Identity" or (len(new) == 2 and tuple(new) == (len(rows), c)):
            lw.values[node.output[0]] = (base, tuple(new))
            return
        return lower_reshape(lw, node, op if op != "Identity" else "Reshape", a,
                                  [("value", base, (len(rows), c))] + list(args[1:]))
    raise CompileError(f"{lw.where(node)}: input '{name}' is a [{idx.size}, 1] column flattened from a "
                       f"computed matrix of {c} lanes; {op} of it is not supported (only a Gather along "
                       f"axis 0 with constant indices, and a Reshape back to rows of {c} lanes)")


def flatrows_output(lw, name: str) -> None:
    """A flat-rows value that is a graph output (a computed matrix Reshaped to a column or to one flat vector): the
    host reads outputs row by row in C order, so the output is the matrix rows it holds, in order, VXM-copied
    (exact) into a tensor of its own flagged `flat_rows` (the host only reshapes it); lw.values[name] holds it. A
    column of elements picked from the matrix (a Gather of it) that are not whole rows would need lane moves: a
    CompileError."""
    ir_name, c, idx, shape = lw.flatrows[name]
    rows = flat_matrix_rows(idx, c, (idx.size // c, c)) if idx.size % c == 0 else None
    if rows is None:
        raise CompileError(f"output '{name}': elements picked from a computed matrix of {c} lanes flattened to one "
                           f"column are not supported as a graph output (only whole rows of it)")
    out = lw.add_tensor(lw.fresh(name), (len(rows), c), "value")
    lw.nodes.append(Node("vector", name, "Reshape", out, sources=[View(ir_name, rows=tuple(rows))],
                         steps=[Step("COPY", [("src", 0)])]))
    lw.derived[out] = lw.ir_magnitude(ir_name)
    lw.tensors[out].flat_rows = True
    lw.values[name] = (out, tuple(shape))


def gather_flatrows(lw, node, a, args, ir_name, c, idx, shape) -> None:
    axis = int(a.get("axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    if args[1] is None or args[1][0] != "const":
        raise CompileError(f"{lw.where(node)}: a Gather from a matrix flattened to one column needs constant "
                           f"indices (computed ones are not supported)")
    if axis != 0 or int(np.prod(shape[1:], dtype=np.int64)) != 1:
        raise CompileError(f"{lw.where(node)}: a Gather from a matrix flattened to shape {shape} is only "
                           f"supported along axis 0 of a column (axis {a.get('axis', 0)})")
    ids = np.asarray(args[1][1], dtype=np.int64)
    n = idx.size
    if ids.size == 0 or ids.min() < -n or ids.max() >= n:
        raise CompileError(f"{lw.where(node)}: Gather indices out of range for {n} rows (or empty)")
    ids = np.where(ids < 0, ids + n, ids)
    new = tuple(int(v) for v in ids.shape) + tuple(shape[1:])
    lw.flatrows[node.output[0]] = (ir_name, c, idx[ids.reshape(-1)], new)


def flat_matrix_rows(idx: np.ndarray, c: int, new: tuple) -> list | None:
    """The matrix row each row of `new` (last axis on the lanes) reads, when every such row is one whole row
    of the matrix in lane order; else None."""
    if not new or int(new[-1]) != c or idx.size % c:
        return None
    m = idx.reshape(-1, c)
    if not np.all(m % c == np.arange(c)) or not np.all(m // c == (m[:, :1] // c)):
        return None
    return [int(v) for v in m[:, 0] // c]
