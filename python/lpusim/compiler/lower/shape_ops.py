"""Ops that move or view data without computing: Reshape/Flatten/Squeeze/Unsqueeze, Concat, Slice, Split, Pad,
Tile, Expand, Identity/Dropout, Shape/Size, Range, Constant, ConstantOfShape.

A Reshape is a pure view when the rows and lanes stay (`same_layout`); else an image flattened for a MatMul, a
mask row, a pending head split (attention.py), a flat-rows column (attention_masks.py), a channel shuffle's 5-D view
(`grouped_reshape`), an SXM transpose of one vector, or SXM relayouts (transpose.py).

Data movement without the SXM: lane selections on the MXM, row selections as address arithmetic.

* Lanes (channels of an image, the last axis otherwise): a constant 0/1 matrix moves lanes (`x @ P`): Slice,
  Split, Concat (each input placed at its offset and accumulated: y_k = x_k @ P_k + y_(k-1)), a channel shuffle
  (Reshape to 5-D, Transpose of the two channel groups, Reshape back), LRN's window sum across channels. Values
  pass through the MXM as fp16 (scaled as calibrated), which is exact for a matmul's own inputs and within fp16's
  rounding otherwise.
* Rows (every other axis): whole rows through row-map views (rows.py: Slice/Split along any row axes with
  any steps, Concat along a row axis); an empty selection is a zero-size constant, which a Concat drops.
The SXM would move lanes without the fp16 rounding; the scheduler does not drive it yet.
* Pad: constant 0 on the two spatial axes of an image is a copy through a view whose taps start before the image,
  so the zero border of the input's store fills the new edge (like a convolution's padding); every other form (any
  value, reflect, edge, wrap, an axes input, any rank and axis, negative pads) is rows by row maps and lanes on the
  MXM (rows.pad_any).
* Expand: a row broadcast is a view that reads one row for every row; a (..., 1) column goes across the lanes on
  the MXM (elementwise.operand).
* Tile along row axes: a row map (rows.tile_rows); along the lanes: an MXM selection.
"""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.elementwise import emit_binary, exact_broadcast
from lpusim.compiler.lower.lanes import CODE_MAGNITUDE, lane_axis
from lpusim.compiler.lower.rows import concat_rows, pad_any, select_lanes, select_rows, tile_rows
from lpusim.compiler.lower.state import Renamed
from lpusim.compiler.lower.transpose import reshape_regroup, reshape_relayout, same_layout
from lpusim.compiler.row_layout import as_matrix, to_rows
from lpusim.errors import CompileError


PASSTHROUGH = {"Identity", "Dropout"}
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}


# ----- shapes ---------------------------------------------------------------------------------------
def reshape_target(lw, node, a, args, shape) -> tuple:
    """The output shape of a Reshape/Flatten/Squeeze/Unsqueeze of a tensor of `shape`."""
    op = node.op_type
    if op == "Flatten":
        axis = a.get("axis", 1)
        axis = axis + len(shape) if axis < 0 else axis  # axis == rank is valid: (all, 1)
        new = (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
    elif op == "Reshape":
        if args[1] is None or args[1][0] != "const":
            raise CompileError(f"{lw.where(node)}: the target shape must be constant")
        target = [int(v) for v in args[1][1]]
        target = [shape[i] if v == 0 and not a.get("allowzero", 0) else v for i, v in enumerate(target)]
        new = tuple(np.empty(shape, dtype=np.bool_).reshape(target).shape) if shape else tuple(target)
    else:
        axes = a.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = [int(v) for v in args[1][1]]
        if op == "Squeeze":
            new = tuple(np.squeeze(np.empty(shape, dtype=np.bool_), axis=tuple(axes) if axes else None).shape)
        else:
            new = tuple(np.expand_dims(np.empty(shape, dtype=np.bool_), tuple(axes)).shape)
    return tuple(int(v) for v in new)


def lower_reshape(lw, node, op, a, args):
    kind, ir_name, shape = args[0]
    new = reshape_target(lw, node, a, args, shape)
    t = lw.tensors[ir_name]
    if t.geom is None and t.kind == "value" and all(o.name != node.output[0] for o in lw.model.graph.output) \
            and split_reshape(lw, node, ir_name, shape, new):  # (a graph output is never a pending split)
        return  # [B, S, H] -> [B, S, heads, D]: attention heads (attention.py)
    new_rows, new_cols = as_matrix(new)
    # a graph output is never left a pending view (mask rows, row views): nothing would read it back into a value
    is_output = any(o.name == node.output[0] for o in lw.model.graph.output)
    if (new_rows, new_cols) == (t.rows, t.cols) and same_layout(shape, new):
        lw.values[node.output[0]] = (ir_name, new)  # same rows of the same vectors: a pure view
    elif t.geom is not None and len(new) == 2 and new[0] == t.geom[0] and t.kind != "input":
        lw.flat[node.output[0]] = (ir_name, tuple(shape))  # [N, C, H, W] -> [N, C*H*W]
    elif len(new) == 4 and new[1:3] == (1, 1) and (t.rows, t.cols) == (new[0], new[3]) and t.geom is None \
            and not is_output:  # (an output is returned as the image of its 4-D shape: laid out below)
        lw.maskrows[node.output[0]] = (ir_name, new)  # [B, K] -> [B, 1, 1, K]: attention mask rows
    elif flatten_rows(lw, node, ir_name, shape, new):  # [R, C] -> [R*C, 1] (attention_masks.py)
        return
    elif t.kind == "input":
        # The host lays out inputs, so a reshaped input is just another view of the same host array.
        name = lw.add_tensor(lw.fresh(node.output[0]), new, "input", onnx_input=t.onnx_input)
        lw.inputs.append(name)
        lw.values[node.output[0]] = (name, new)
    elif t.geom is not None and len(shape) == 4 and grouped_reshape(lw, node, ir_name, shape, new):
        return  # a 5-D view for a channel shuffle
    elif len(new) == 4 and new[:3] == (1, 1, 1) and (t.rows, t.cols) == (1, new[3]) and not is_output:
        lw.maskrows[node.output[0]] = (ir_name, new)  # [K] -> [1, 1, 1, K]: an attention mask's row
    elif (new_rows, new_cols) == (t.cols, t.rows) and 1 in (t.rows, t.cols) and max(t.rows, t.cols) <= 320 \
            and len(new) != 4 and len(shape) != 4:
        # a column to a row or back (an exported attention mask's Flatten): an SXM transpose of one vector
        out = lw.add_tensor(lw.fresh(node.output[0]), new, "value")
        lw.nodes.append(Node("transpose", node.name or node.output[0], node.op_type, out,
                             sources=[View(ir_name)], fusable=False))
        lw.derived[out] = lw.tensor_magnitude(node, ir_name)
        lw.values[node.output[0]] = (out, new)
    elif len(new) == 4 and len(shape) == 3 and new[1] == 1 and tuple(shape) == (new[0], new[2], new[3]) \
            and new[2] > 1 and t.geom is None and t.kind == "value" and not is_output:
        # [B, S, X] -> [B, 1, S, X] (rotary cos/sin, read by every head): kept as B*S rows of X lanes, like an
        # attention mask with a row per query (attention_masks.py), instead of an image of one channel; any reader other
        # than the heads gets that image (dispatch.relaid_row_views: reshape_relayout below)
        lw.maskrows[node.output[0]] = (ir_name, new)
        lw.row_views[node.output[0]] = (ir_name, tuple(shape), None)
    elif not reshape_relayout(lw, node, ir_name, shape, new) and \
            not reshape_regroup(lw, node, ir_name, shape, new):  # any other (transpose.py)
        raise CompileError(f"{lw.where(node)}: reshaping a computed {t.rows}x{t.cols} tensor to "
                           f"{new_rows}x{new_cols} moves data between lanes, which needs the SXM "
                           f"(not supported yet)")


def lower_concat(lw, node, a, args):
    values = [x for x in args if x is not None]
    shapes = [tuple(x[1].shape) if x[0] == "const" else tuple(x[2]) for x in values]
    nd = len(shapes[0])
    axis = a.get("axis") % nd
    kept = [(x, s) for x, s in zip(values, shapes) if s[axis] != 0]  # an empty past (a KV cache) adds nothing
    if len(kept) == 1 and kept[0][0][0] == "value":
        lw.values[node.output[0]] = (kept[0][0][1], kept[0][1])
        return
    if not kept and values[0][0] == "value":  # every operand empty: the result is empty too (a later Concat drops it)
        lw.values[node.output[0]] = (values[0][1], tuple(sum(s[axis] for s in shapes) if i == axis else d
                                                          for i, d in enumerate(shapes[0])))
        return
    values, shapes = [x for x, _ in kept], [s for _, s in kept]
    if axis != lane_axis(shapes[0]):  # whole rows one after another (rows.py)
        return concat_rows(lw, node, values, shapes, axis)
    total = sum(s[axis] for s in shapes)
    out_shape = tuple(total if i == axis else d for i, d in enumerate(shapes[0]))
    consts = np.zeros(as_matrix(out_shape), dtype=np.float32)  # constant inputs, placed, added exactly
    parts, offset = [], 0
    for x, s in zip(values, shapes):
        if x[0] == "const":
            consts[:, offset:offset + s[axis]] = to_rows(np.asarray(x[1], np.float32), s)
        else:
            parts.append((x, s, offset))
        offset += s[axis]
    const_name = lw.const_tensor(consts, "placed") if consts.any() else None
    mag = max(lw.magnitudes.get(n, 0.0) for n in node.input if n)
    prev = None
    for k, (x, s, offset) in enumerate(parts):
        cols = -np.ones(total, dtype=np.int64)
        cols[offset:offset + s[axis]] = np.arange(s[axis])
        last = k == len(parts) - 1
        adds = ([prev] if prev is not None else []) + ([const_name] if last and const_name else [])
        steps = []
        for i in range(len(adds)):
            steps.append(Step("ADD", [("step", i - 1) if i else ("acc",), ("src", i)]))
        y, _ = select_lanes(lw, node, x[1], s, cols, node.output[0] if last else "concat", steps, adds)
        lw.derived[y] = mag
        if lw.precise_sums and lw.derived.get(x[1]) != CODE_MAGNITUDE:  # quantised models: onnxruntime
            # concatenates f32 exactly (rotary angles, rotate_half); codes (merged heads) are exact in fp16
            y = exact_broadcast(lw, node, x[1], s, cols, y, lw.ir_magnitude(x[1]))
        lw.tensors[y].shape = out_shape
        prev = y
    lw.values[node.output[0]] = (prev, out_shape)


def lower_slice(lw, node, a, args):
    _, x, shape = args[0]
    nd = len(shape)
    if len(args) > 1:  # opset >= 10: starts, ends, axes, steps are inputs
        vals = [None if i >= len(args) or args[i] is None else np.asarray(args[i][1]).ravel() for i in range(1, 5)]
        if any(v is None and i < 2 for i, v in enumerate(vals)) or any(
                args[i] is not None and args[i][0] != "const" for i in range(1, len(args))):
            raise CompileError(f"{lw.where(node)}: Slice starts/ends/axes/steps must be constant")
        starts, ends, axes, steps = vals
    else:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    axes = list(range(len(starts))) if axes is None else [int(v) % nd for v in axes]
    steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
    ranges = {}
    for ax, st, en, sp in zip(axes, starts, ends, steps):
        idx = range(*slice(int(st), int(en), sp).indices(shape[ax]))
        if len(idx) != shape[ax] or sp != 1:
            ranges[ax] = idx
    emit_selection(lw, node, x, shape, ranges)


def emit_selection(lw, node, x, shape, ranges: dict):
    """out = x restricted to index sequences per axis: rows by a row-map copy (rows.py), then lanes on
    the MXM."""
    out_shape = tuple(len(ranges[i]) if i in ranges else d for i, d in enumerate(shape))
    if not ranges:
        lw.values[node.output[0]] = (x, tuple(shape))
        return
    if any(len(r) == 0 for ax, r in ranges.items() if ax != lane_axis(shape)):
        if any(o.name == node.output[0] for o in lw.model.graph.output):
            raise CompileError(f"{lw.where(node)}: an empty selection (a zero-size graph output)")
        lw.consts[node.output[0]] = np.zeros(out_shape, dtype=np.float32)  # no values: a Concat drops it
        return
    lane = lane_axis(shape)
    cur, cur_shape = x, tuple(shape)
    row_axes = [i for i in ranges if i != lane]
    if row_axes:  # whole rows, any steps (rows.py)
        cur, cur_shape = select_rows(lw, node, cur, cur_shape, {k: ranges[k] for k in row_axes},
                                     node.output[0] if lane not in ranges else "rows")
    if lane in ranges:
        idx = ranges[lane]
        src, src_shape = cur, cur_shape
        cur, cur_shape = select_lanes(lw, node, cur, cur_shape, np.array(list(idx)), node.output[0])
        if lw.precise_sums and lw.derived.get(src) != CODE_MAGNITUDE:  # quantised models: onnxruntime slices f32
            # exactly (rotate_half of rotary heads); codes are exact in fp16
            cur = exact_broadcast(lw, node, src, src_shape, np.array(list(idx)), cur, lw.ir_magnitude(src))
    lw.tensors[cur].shape = out_shape
    lw.values[node.output[0]] = (cur, out_shape)


def lower_split(lw, node, a, args):
    _, x, shape = args[0]
    nd = len(shape)
    axis = a.get("axis", 0) % nd
    if len(args) > 1 and args[1] is not None:
        sizes = [int(v) for v in np.asarray(args[1][1]).ravel()]
    elif "split" in a:
        sizes = list(a["split"])
    else:
        n = a.get("num_outputs", len(node.output))
        each = -(-shape[axis] // n)
        sizes = [min(each, shape[axis] - i * each) for i in range(n)]
    start = 0
    for out, size in zip(node.output, sizes):
        emit_selection(lw, Renamed(node, out), x, shape, {axis: range(start, start + size)})
        start += size


# ----- a channel shuffle: Reshape [N,C,H,W] -> [N,g,C/g,H,W], Transpose(0,2,1,3,4), Reshape back -----------
def grouped_reshape(lw, node, ir_name, shape, new) -> bool:
    n, c, h, w = shape
    if len(new) == 5 and new[0] == n and tuple(new[3:]) == (h, w) and new[1] * new[2] == c:
        lw.grouped[node.output[0]] = (ir_name, tuple(shape), (int(new[1]), int(new[2])), False)
        return True
    return False


def lower_grouped_transpose(lw, node, a):
    ir_name, shape, groups, swapped = lw.grouped[node.input[0]]
    if list(a.get("perm", [])) != [0, 2, 1, 3, 4]:
        raise CompileError(f"{lw.where(node)}: only the channel-shuffle Transpose perm=[0,2,1,3,4] of a "
                           f"5-D view of an image is supported")
    lw.grouped[node.output[0]] = (ir_name, shape, groups, not swapped)


def finish_grouped(lw, node, new) -> None:
    ir_name, shape, (g1, g2), swapped = lw.grouped[node.input[0]]
    if tuple(new) != tuple(shape):
        raise CompileError(f"{lw.where(node)}: a 5-D view of an image must be reshaped back to {shape}")
    if not swapped:
        lw.values[node.output[0]] = (ir_name, tuple(shape))
        return
    # after the transpose, channel j*g1 + i holds input channel i*g2 + j
    cols = np.array([i * g2 + j for j in range(g2) for i in range(g1)])
    y, _ = select_lanes(lw, node, ir_name, shape, cols, node.output[0])
    lw.values[node.output[0]] = (y, tuple(shape))


def lower_pad(lw, node, a, args):
    _, x, shape = args[0]
    pads = a.get("pads")
    if pads is None and len(args) > 1 and args[1] is not None:
        if args[1][0] != "const":
            raise CompileError(f"{lw.where(node)}: Pad needs constant pads")
        pads = [int(v) for v in np.asarray(args[1][1]).ravel()]
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = float(a.get("value", 0.0))  # opset < 11: an attribute
    if len(args) > 2 and args[2] is not None:
        value = float(np.asarray(args[2][1]).reshape(())) if args[2][0] == "const" else None
    nd = len(shape)
    if len(args) > 3 and args[3] is not None:  # opset 18: pads name only these axes
        if args[3][0] != "const":
            raise CompileError(f"{lw.where(node)}: Pad needs constant axes")
        axes = [int(v) % nd for v in np.asarray(args[3][1]).ravel()]
        full = [0] * (2 * nd)
        for i, ax in enumerate(axes):
            full[ax], full[nd + ax] = pads[i], pads[len(axes) + i]
        pads = full
    begin, end = list(pads[:nd]), list(pads[nd:])
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise CompileError(f"{lw.where(node)}: Pad mode={mode} is not an ONNX mode")
    if value is None:
        raise CompileError(f"{lw.where(node)}: Pad needs a constant pad value")
    if mode != "constant" or value != 0.0 or nd != 4 or any(begin[:2]) or any(end[:2]) or min(pads) < 0:
        # any mode, value, axes and crops: row maps and lane moves (rows.py)
        return pad_any(lw, node, x, tuple(shape), begin, end, mode, value)
    # constant 0 on an image's two spatial axes: one copy through a view reading the zero border
    n, c, h, w = shape
    out_shape = (n, c, h + begin[2] + end[2], w + begin[3] + end[3])
    out = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
    view = View(x, stride=1, pad_top=begin[2], pad_left=begin[3], spatial=True)
    lw.nodes.append(Node("vector", node.name or node.output[0], "Pad", out, sources=[view],
                         steps=[Step("COPY", [("src", 0)])]))
    lw.values[node.output[0]] = (out, out_shape)


def lower_expand(lw, node, a, args):
    x, target = args[0], args[1]
    if target[0] != "const":
        raise CompileError(f"{lw.where(node)}: Expand needs a constant shape")
    shape = tuple(x[1].shape) if x[0] == "const" else tuple(x[2])
    out_shape = tuple(np.broadcast_shapes(shape, tuple(int(v) for v in np.asarray(target[1]).ravel())))
    if out_shape == shape and x[0] == "value":
        lw.values[node.output[0]] = (x[1], shape)
        return
    # x * 1 at the output shape: the operand rules do the row and lane broadcasts
    emit_binary(lw, node, "MUL", x, ("const", np.ones(out_shape, np.float32)), node.output[0])


def lower_tile(lw, node, a, args):
    _, x, shape = args[0]
    if args[1][0] != "const":
        raise CompileError(f"{lw.where(node)}: Tile needs constant repeats")
    reps = [int(v) for v in np.asarray(args[1][1]).ravel()]
    lane = lane_axis(shape)
    if any(r != 1 for i, r in enumerate(reps) if i != lane):  # rows repeated: a row map (rows.py)
        return tile_rows(lw, node, x, tuple(shape), reps)
    c = shape[lane]
    y, y_shape = select_lanes(lw, node, x, tuple(shape), np.tile(np.arange(c), reps[lane]), node.output[0])
    lw.values[node.output[0]] = (y, y_shape)


# ----- an attention mask kept as one row: [1, 1, Q|1, K] whose rows are all the same ----------------------------
def lower_range(lw, node, a, args) -> None:
    computed = [node.input[i] for i, v in enumerate(args) if v is not None and v[0] != "const"]
    raise CompileError(f"{lw.where(node)}: Range with computed input(s) {', '.join(computed)}: lpusim folds "
                       f"Range on the host when start, limit and delta are constants or come from shapes; a "
                       f"data-dependent length has no static schedule")


def split_reshape(lw, node, ir_name, shape, new) -> bool:
    """[B, S, H] -> [B, S, NH, D] of a computed tensor: remember it (no data moves yet). Not when D is 1: that is
    an Unsqueeze of a trailing axis, as tf2onnx writes a 1-D convolution's input ([B, L, C] -> [B, L, C, 1], then a
    Transpose to NCHW), an image and not attention heads of one lane each."""
    if len(shape) == 3 and len(new) == 4 and tuple(new[:2]) == tuple(shape[:2]) and new[2] * new[3] == shape[2] \
            and new[3] != 1:
        lw.splits[node.output[0]] = (ir_name, tuple(shape), int(new[2]), int(new[3]))
        return True
    return False


def split_as_row_view(lw, name: str) -> bool:
    """A pending split [B, 1, X] -> [B, 1, 1, X] (one head of one token) read by an op other than a Transpose is a
    row view instead (rotary cos/sin of a decode step's single token, read by every head: the [B, S, X] ->
    [B, 1, S, X] case of `lower_reshape` at S = 1). False if the split is not of that form."""
    ir_name, shape, nh, d = lw.splits[name]
    if nh != 1 or shape[1] != 1 or lw.tensors[ir_name].geom is not None:
        return False
    del lw.splits[name]
    lw.maskrows[name] = (ir_name, (shape[0], 1, 1, d))
    lw.row_views[name] = (ir_name, tuple(shape), None)
    return True


def flatten_rows(lw, node, ir_name: str, shape: tuple, new: tuple) -> bool:
    """A Flatten/Reshape of a computed [R, C] matrix (R > 1, no image) to a column [R*C, 1] or [R*C]."""
    t = lw.tensors[ir_name]
    n = t.rows * t.cols
    if t.kind != "value" or t.geom is not None or t.rows < 2 or t.cols < 2 \
            or tuple(new) not in ((n, 1), (n,)) or int(np.prod(shape)) != n:
        return False
    lw.flatrows[node.output[0]] = (ir_name, t.cols, np.arange(n, dtype=np.int64), tuple(new))
    return True


# ----- constants, identities, shapes -----------------------------------------------------------------------
def lower_constant(lw, node, a, args) -> None:
    lw.consts[node.output[0]] = numpy_helper.to_array(a["value"]) if "value" in a else np.asarray(
        a.get("value_float", a.get("value_floats", a.get("value_int", a.get("value_ints")))))


def lower_identity(lw, node, a, args) -> None:
    """Identity, inference Dropout: the same value."""
    lw.values[node.output[0]] = lw.values[node.input[0]]


def lower_shape(lw, node, a, args) -> None:
    """Shape/Size of a computed tensor: shapes are static, so these are constants."""
    shape = np.array(args[0][2], dtype=np.int64)
    if node.op_type == "Size":
        lw.consts[node.output[0]] = np.array(np.prod(shape), dtype=np.int64)
    else:
        lw.consts[node.output[0]] = shape[a.get("start", 0):a.get("end", len(shape))]


def lower_constant_of_shape(lw, node, a, args) -> None:
    raise CompileError(f"{lw.where(node)}: ConstantOfShape of a computed shape: the output's size would "
                       f"depend on data, which a static schedule cannot have (a constant or Shape-derived "
                       f"shape is folded on the host)")
