"""Attention heads (mask rows and flat rows: attention_masks.py).

Multi-head attention as exported from PyTorch: [B, S, H] -> Reshape [B, S, NH, D] -> Transpose -> per-head work.

A 4-D [B, NH, S, D] activation would read as an NCHW image, so heads are kept apart instead: a *heads value* is
one IR matrix per (batch element, head) pair ([S, D], rows = that element's tokens, lanes = the head's features;
part b*NH + h), plus whether the ONNX tensor is the transpose of each part ([B, NH, D, S], the K^T of scores).
* Reshape [B, S, NH*D] -> [B, S, NH, D] then Transpose (0, 2, 1, 3): head h is lanes h*D.. of the input, picked by
  an MXM selection (rows.select_lanes); Transpose (0, 2, 3, 1) gives the same parts, marked transposed. At batch
  B > 1 the selection of part (b, h) reads rows b*S.. of the input through a row-offset view (the input is seen
  as one image of B*S x 1 pixels, the part as one of S x 1: address arithmetic, no data moves).
* MatMul(heads, heads): per part, the second operand's part is loaded as computed MXM weights, after an SXM/MEM
  transpose when it is marked transposed (schedule/sxm.py).
* Elementwise ops, Softmax, scalar or broadcast constants ([B|1, NH|1, S|1, X]: the part's slice): lowered once
  per part. An attention mask [B, 1, 1, K] is kept as B rows of K lanes (`lower_maskrow`); part (b, h) reads a
  copy of row b.
* Transpose (0, 2, 1, 3) then Reshape [B, S, NH*D]: the parts are placed side by side on the lanes (a Concat), one
  [S, NH*D] matrix per batch element; at B > 1 these are stacked on the rows by B VXM passes (`stack_rows`), each
  reading one element's matrix through a row map and zeroing the other elements' rows by a 0/1 row-mapped constant.
The nodes of the parts are interleaved (`interleave_parts`), so the parts' dependent chains overlap in time.

Decoder LLMs: rotate_half is a Slice/Neg/Concat of the heads (per part, lanes or rows only); grouped-query
attention repeats the key/value parts (`lower_heads_repeat`).

Attention masks and flat rows: attention_masks.py.
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.compiler.ir import Node, node_inputs, Step, View
from lpusim.compiler.lower.attention_masks import mask_row
from lpusim.compiler.lower.lanes import CODE_MAGNITUDE, fp16_residual, shared_const, UP, vector
from lpusim.compiler.lower.matmul import lower_computed_matmul
from lpusim.compiler.lower.quant_codes import (q_alias_requantized, q_const, q_quantize_steps, q_requantizer,
                                               q_scalar_scale, q_users, q_vector, q_zero)
from lpusim.compiler.lower.rows import concat_rows, select_lanes
from lpusim.compiler.lower.shape_ops import lower_concat, reshape_target
from lpusim.compiler.lower.state import Renamed
from lpusim.compiler.lower.transpose import copy_rows, reshape_relayout
from lpusim.errors import CompileError


def lower_split_transpose(lw, node, a):
    ir_name, shape, nh, d = lw.splits[node.input[0]]
    perm = list(a.get("perm", []))
    if perm not in ([0, 2, 1, 3], [0, 2, 3, 1]):
        raise CompileError(f"{lw.where(node)}: Transpose perm={perm} of a [B, S, heads, D] view is not "
                           f"supported (perm [0,2,1,3] or [0,2,3,1])")
    nb, s = shape[0], shape[1]
    transposed = perm == [0, 2, 3, 1]
    parts = split_parts(lw, node, ir_name, shape, nh, d)
    lw.heads[node.output[0]] = (parts, transposed, (nb, nh, d, s) if transposed else (nb, nh, s, d))


def split_parts(lw, node, ir_name: str, shape: tuple, nh: int, d: int) -> list:
    """The parts of a [B, S, heads, D] split of `ir_name` ([B, S, heads*D]): head h of element b is lanes h*D..
    of its rows, selected on the MXM (tagged "head selection")."""
    nb = shape[0]
    parts, first = [], len(lw.nodes)
    # quantised models (precise_sums): the MXM selection moves fp16 values. Floats dequantized from codes:
    # select the codes minus the zero point (integers, exact in fp16) and keep the scale aside (`head_scales`:
    # a heads MatMul applies it in its epilogue, other readers multiply first, `head_float`). Other floats:
    # select x's fp16 copy and its residual (scaled up) and add them back in f32 (~22 significant bits).
    codes = lw.q_state.get("dequantized", {}).get(ir_name) if lw.precise_sums else None
    lo = fp16_residual(lw, node, ir_name, shape, f"{node.output[0]}.lo", lw.magnitudes.get(node.input[0]),
                       up=True) if lw.precise_sums and codes is None else None
    for b in range(nb):
        for h in range(nh):
            cols = list(range(h * d, (h + 1) * d))
            tag = f"{node.output[0]}@h{h}" if nb == 1 else f"{node.output[0]}@b{b}h{h}"
            sub = Renamed(node, tag)
            if codes is not None:
                q, scale, zp = codes
                y = select_part(lw, sub, q, shape, b, cols, f"{tag}.codes",
                                     [Step("SUB", [("acc",), ("imm", float(zp))])] if zp else [])
                lw.derived[y] = CODE_MAGNITUDE
                lw.head_scales[y] = scale
                parts.append(y)
                continue
            y = select_part(lw, sub, ir_name, shape, b, cols, tag)
            if lo is not None:
                y = select_part(lw, sub, lo, shape, b, cols, tag,
                                     [Step("MUL", [("acc",), ("imm", 1.0 / UP)]),
                                      Step("ADD", [("step", 0), ("src", 0)])], [y])
            parts.append(y)
    tag_matmuls(lw, first, "head selection")
    return parts


def select_part(lw, node, x: str, shape: tuple, b: int, cols: list, out_name: str, steps=(), sources=()):
    """Lanes `cols` of batch element b's rows of x ([B, S, C]) as one [S, len(cols)] part, on the MXM."""
    nb, s = shape[0], shape[1]
    if nb == 1:
        y, _ = select_lanes(lw, node, x, shape, cols, out_name, steps, sources)
    else:
        t = lw.tensors[x]
        if t.geom not in (None, (1, nb * s, 1)):
            raise CompileError(f"{lw.where(node)}: the rows of batch element {b} of '{x}' cannot be read as "
                               f"a view: the tensor is already laid out as images {t.geom}")
        t.geom = (1, nb * s, 1)  # one image of B*S x 1 pixels: a tap at dh = b*S reads element b's rows
        c = shape[-1]

        def make():
            p = np.zeros((c, len(cols)), dtype=np.float32)
            p[np.asarray(cols), np.arange(len(cols))] = 1.0
            return p
        w = shared_const(lw, ("sel", c, tuple(int(v) for v in cols)), make)
        y = lw.add_tensor(lw.fresh(out_name), (1, s, len(cols)), "value")
        lw.tensors[y].geom = (1, s, 1)
        lw.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, y,
                             sources=[View(v) for v in sources], steps=list(steps),
                             terms=[(View(x, dh=b * s, spatial=True), w)]))
        lw.derived.setdefault(y, lw.magnitudes.get(node.input[0], 0.0))
    lw.tensors[y].shape = (1, s, len(cols))
    return y


def tag_matmuls(lw, first: int, purpose: str) -> None:
    """The matmuls lowered since node `first` move heads' lanes: say so (`lpusim run --explain`)."""
    for n in lw.nodes[first:]:
        if n.kind == "matmul":
            n.purpose = purpose


def concat_heads(lw, node, out: str, args: list, nb: int) -> None:
    """values[out] = the parts' lanes side by side ([B, S, NH*D]): one lane Concat per batch element, then
    (B > 1) the elements stacked on the rows (`stack_rows`)."""
    first = len(lw.nodes)
    if nb == 1:
        lower_concat(lw, Renamed(node, out), {"axis": -1}, args)
        tag_matmuls(lw, first, "head placement")
        return
    nh = len(args) // nb
    cats, bounds = [], []
    for b in range(nb):
        bounds.append(len(lw.nodes))
        sub = Renamed(node, f"{out}@b{b}")
        lower_concat(lw, sub, {"axis": -1}, args[b * nh:(b + 1) * nh])
        cats.append(lw.values.pop(sub.output[0]))
    interleave_parts(lw, bounds)
    tag_matmuls(lw, first, "head placement")
    _, (_, s, width) = cats[0]
    y = stack_rows(lw, node, [c for c, _ in cats], s, out)
    lw.values[out] = (y, (nb, s, width))


def stack_rows(lw, node, mats: list, s: int, hint: str) -> str:
    """B matrices of [S, C] -> one [B*S, C] (element b on rows b*S..), on the VXM: y_b = y_(b-1) + mats[b] *
    keep_b over all B*S rows, mats[b] read through a row map (output row r reads row r - b*S, clamped into
    0..S-1) and keep_b a shared constant [2, C] (a row of zeros, a row of ones) read through a row map (row 1
    on rows b*S.., row 0 elsewhere): exact for finite values, no border and no data moved ahead of time.
    Costs B passes of B*S rows and no SRAM beyond the B*S-row results."""
    nb = len(mats)
    cols = lw.tensors[mats[0]].cols
    mag = max(lw.ir_magnitude(m) for m in mats)
    keep = shared_const(lw, ("zero_one_rows", cols), lambda: np.repeat(
        np.array([[0.0], [1.0]], dtype=np.float32), cols, axis=1))
    prev = None
    for b, m in enumerate(mats):
        r = np.arange(nb * s) - b * s
        rows = tuple(int(v) for v in np.clip(r, 0, s - 1))
        inside = tuple(int(v) for v in ((r >= 0) & (r < s)))
        sources = [View(m, rows=rows), View(keep, rows=inside)] + ([View(prev)] if prev is not None else [])
        steps = [Step("MUL", [("src", 0), ("src", 1)])]
        if prev is not None:
            steps.append(Step("ADD", [("src", 2), ("step", 0)]))
        y = lw.add_tensor(lw.fresh(hint), (nb, s, cols), "value")
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=sources,
                             steps=steps, fusable=False))
        lw.derived[y] = mag
        prev = y
    return prev


def lower_heads_transpose(lw, node, a):
    parts, transposed, shape4 = lw.heads[node.input[0]]
    perm = list(a.get("perm", []))
    if perm == [0, 1, 3, 2]:
        b, nh, s, d = shape4
        lw.heads[node.output[0]] = (parts, not transposed, (b, nh, d, s))
    elif perm == [0, 2, 1, 3] and not transposed:
        lw.merges[node.output[0]] = (parts, shape4)
    else:
        raise CompileError(f"{lw.where(node)}: Transpose perm={perm} of attention heads is not supported")


def lower_merge_reshape(lw, node, new):
    parts, (b, nh, s, d) = lw.merges[node.input[0]]
    if tuple(new) != (b, s, nh * d):
        raise CompileError(f"{lw.where(node)}: merged heads must be reshaped to {(b, s, nh * d)}")
    if lw.precise_sums and merge_codes(lw, node, parts, (b, s, nh * d)):
        return
    parts = [head_float(lw, node, p) for p in parts]
    # a lane Concat: in quantised models (precise_sums) lower_concat moves each float part exactly (three fp16
    # pieces), so no residual is added here (one was: x - fp16(x) counted twice, up to 2^-12 of x off)
    concat_heads(lw, node, node.output[0], [("value", p, (1, s, d)) for p in parts], b)


def interleave_parts(lw, bounds: list, width: int = 0) -> None:
    """`interleave` in windows of `width` consecutive parts (0: all parts at once)."""
    width = width or lw.interleave_width
    ends = bounds[width::width] + [len(lw.nodes)]
    for k in reversed(range(0, len(bounds), width)):  # from the end: earlier windows keep their indices
        window = bounds[k:k + width]
        interleave(lw, window, ends[k // width])


def interleave(lw, bounds: list, end: int) -> None:
    """The nodes of consecutive parts (part i: lw.nodes[bounds[i]:bounds[i + 1]], the last up to the end)
    reordered round-robin, one node of each part in turn (a node waits until the nodes it reads are placed):
    the scheduler places nodes in order and each MXM plane only moves forward in time, so part after part
    would run the parts' dependent chains (Softmax's maximum tree, sums) one after another; interleaved,
    the chains of different parts overlap on the planes and the VXM."""
    start = bounds[0]
    groups = [lw.nodes[a:b] for a, b in zip(bounds, bounds[1:] + [end])]
    if sum(1 for g in groups if g) < 2:
        return
    pending = {n.output for g in groups for n in g}
    total = sum(len(g) for g in groups)
    order, placed, pos = [], set(), [0] * len(groups)
    while len(order) < total:
        progressed = False
        for i, g in enumerate(groups):
            if pos[i] < len(g) and all(name not in pending or name in placed for name in node_inputs(g[pos[i]])):
                order.append(g[pos[i]])
                placed.add(g[pos[i]].output)
                pos[i] += 1
                progressed = True
        if not progressed:  # cannot happen: the original order is a valid one
            raise AssertionError("interleave_parts: a part reads a node no part can place")
    lw.nodes[start:end] = order


def head_float(lw, node, part: str) -> str:
    """The floats of a head part (`head_scales`: code x scale, once per part)."""
    if part not in lw.head_scales:
        return part
    cache = lw.head_floats
    if part not in cache:
        y = vector(lw, node, [part], [Step("MUL", [("src", 0), ("imm", lw.head_scales[part])])],
                   lw.tensors[part].shape, f"{part}.f")
        lw.tensors[y].shape = lw.tensors[part].shape
        cache[part] = y
    return cache[part]


def merge_codes(lw, node, parts: list, shape: tuple) -> bool:
    """Merged heads read only by QuantizeLinears of one scale and zero point (an attention output before its
    int8 projection): quantise each part, then place the codes (exact in fp16) in one MXM pass each; the
    QuantizeLinears' outputs are those codes (elementwise, so the same as quantising the merged floats)."""
    name, via = node.output[0], None
    u = q_requantizer(lw, name)
    users = q_users(lw, name)
    if u is None and len(users) == 1 and users[0].op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") \
            and name not in {o.name for o in lw.model.graph.output}:
        via = users[0]  # GPT-2: the merged heads reshaped to [S, H], then quantised
        u = q_requantizer(lw, via.output[0])
    if u is None:
        return False
    zp_arr = q_const(lw, u, 2, "the zero point", required=False)
    kind = {np.dtype(np.uint8): "u8", np.dtype(np.int8): "i8"}.get(zp_arr.dtype) if zp_arr is not None else None
    if kind is None:
        return False
    scale = q_scalar_scale(lw, u, 1, "scale")
    zp = q_zero(lw, u, 2, kind, "zero point")
    steps = q_quantize_steps(lw, scale, zp)
    codes = []
    for h, p in enumerate(parts):
        c = q_vector(lw, u, head_float(lw, node, p), lw.tensors[p].shape, steps, f"{u.output[0]}@h{h}")
        lw.tensors[c].shape = lw.tensors[p].shape
        lw.derived[c] = CODE_MAGNITUDE
        codes.append(("value", c, lw.tensors[p].shape))
    if via is not None:  # the merged codes, dequantized lazily: the reshape runs on them, its QuantizeLinear
        out = f"{name}#q"  # (same scale and zero point) gives them back (quant.q_code_op, q_quantize)
        concat_heads(lw, Renamed(node, out), out, codes, shape[0])
        lw.derived[lw.values[out][0]] = CODE_MAGNITUDE
        lw.q_state["code"][out] = kind
        lw.q_state["pending"][name] = (out, scale, zp)
        return True
    concat_heads(lw, Renamed(node, u.output[0]), u.output[0], codes, shape[0])
    lw.derived[lw.values[u.output[0]][0]] = CODE_MAGNITUDE
    lw.q_state["code"][u.output[0]] = kind
    q_alias_requantized(lw, node.output[0], u.output[0])
    return True


def lower_heads_matmul(lw, node, args):
    if args[0][0] != "heads" or args[1][0] != "heads":
        raise CompileError(f"{lw.where(node)}: a MatMul of attention heads with a non-head operand is not "
                           f"supported yet")
    (a_parts, a_t, a_shape), (b_parts, b_t, _) = args[0][1:], args[1][1:]
    if a_t:
        raise CompileError(f"{lw.where(node)}: the left operand of a heads MatMul must not be transposed")
    out_parts = []
    precise = lw.precise_sums
    mx, mw = lw.magnitudes.get(node.input[0], 0.0), lw.magnitudes.get(node.input[1], 0.0)
    bounds = []
    # grouped-query attention (`lower_heads_repeat`): several query heads read one key/value part; what is made
    # of that part (its K^T on the SXM, its fp16 residual) is made once, by its first reader, and shared
    weights: dict[str, tuple[str, str | None]] = {}
    for h, (x, w) in enumerate(zip(a_parts, b_parts)):
        bounds.append(len(lw.nodes))
        sub = Renamed(node, f"{node.output[0]}@h{h}")
        # f32-accurate products (quantised models, LowerState.precise_sums): x @ w = xh @ wh + xl @ wh +
        # xh @ wl, h/l the fp16 copy and its residual (the dropped xl @ wl is 2^-22 of the product); an operand
        # of integer codes (`head_scales`) is exact in fp16 and needs no residual: its scale ends the epilogue
        sx, sw = lw.head_scales.get(x), lw.head_scales.get(w)
        if not precise:
            x = head_float(lw, sub, x)
        if w in weights:
            w, wl = weights[w]
        else:
            w, wl = weights.setdefault(w, head_weights(lw, node, sub, head_float(lw, sub, w) if not precise else w,
                                                       precise and sw is None, b_t, mw, h))
        wt = lw.tensors[w]
        lower_computed_matmul(lw, sub, ("value", x, lw.tensors[x].shape), ("value", w, (wt.rows, wt.cols)))
        y = lw.values[sub.output[0]][0]
        if precise:
            xl = fp16_residual(lw, sub, x, lw.tensors[x].shape, f"{node.input[0]}@h{h}.lo", mx) \
                if sx is None else None
            extra = [(v, u) for v, u in ((xl, w), (x, wl)) if v is not None and u is not None]
            scale = np.float32(sx if sx is not None else 1.0) * np.float32(sw if sw is not None else 1.0)
            for i, (xv, wv) in enumerate(extra):
                out = lw.add_tensor(lw.fresh(sub.output[0]), lw.tensors[y].shape, "value")
                lw.nodes.append(Node("matmul", node.name or node.output[0], "MatMul", out,
                                     sources=[View(y)], steps=[Step("ADD", [("acc",), ("src", 0)])],
                                     terms=[(View(xv), wv)]))
                y = out
            if scale != 1.0:
                last = lw.nodes[-1]
                assert last.kind == "matmul" and last.output == y
                last.steps = last.steps + [Step("MUL", [("step", len(last.steps) - 1) if last.steps else ("acc",),
                                                        ("imm", float(scale))])]
            lw.values[sub.output[0]] = (y, lw.values[sub.output[0]][1])
        out_parts.append(y)
    interleave_parts(lw, bounds)
    b, nh = a_shape[:2]
    lw.heads[node.output[0]] = (out_parts, False, (b, nh, a_shape[2], lw.tensors[out_parts[0]].cols))


def head_weights(lw, node, sub, w: str, residual: bool, transposed: bool, mw: float, h: int):
    """(weights, residual weights or None) a heads MatMul loads for its second operand's part w: w and, when
    `residual` (precise_sums), its fp16 residual; both transposed on the SXM first when the part is K^T."""
    wl = fp16_residual(lw, sub, w, lw.tensors[w].shape, f"{node.input[1]}@h{h}.lo", mw) if residual else None
    if not transposed:
        return w, wl
    ws = []
    for v in (w, wl) if wl is not None else (w,):
        k = lw.tensors[v]
        kt = lw.add_tensor(lw.fresh(f"{v}.T"), (1, k.cols, k.rows), "value")
        lw.nodes.append(Node("transpose", node.name or node.output[0], "Transpose", kt,
                             sources=[View(v)], fusable=False))
        lw.derived[kt] = lw.derived[v] if v is wl or v in lw.head_scales else mw
        ws.append(kt)
    return (ws[0], ws[1]) if wl is not None else (ws[0], None)


def lower_heads_repeat(lw, node, op: str, a: dict, args: list) -> None:
    """Grouped-query attention (transformers' repeat_kv): key/value heads [B, NKV, S, D] -> Unsqueeze
    [B, NKV, 1, S, D] -> Expand [B, NKV, R, S, D] -> Reshape [B, NKV*R, S, D]. Query head h reads key/value part
    h // R of its element: the parts are repeated by reference, no data moves. The 5-D steps are views of the
    same parts (a part per batch element and key/value head); nothing else may read them."""
    parts, transposed, shape = lw.heads[node.input[0]]
    if op in ("Unsqueeze", "Reshape") and len(shape) == 4:
        new = reshape_target(lw, node, a, args, shape)
        if tuple(new) != tuple(shape[:2]) + (1,) + tuple(shape[2:]):
            raise CompileError(f"{lw.where(node)}: reshaping attention heads {shape} to {tuple(new)} is not "
                               f"supported (only [B, heads, 1, S, D] for grouped-query attention)")
        lw.heads[node.output[0]] = (parts, transposed, tuple(new))
        return
    if len(shape) != 5:
        raise CompileError(f"{lw.where(node)}: {op} of attention heads {shape} is not supported")
    if op == "Expand" and args[1] is not None and args[1][0] == "const":
        new = tuple(int(v) for v in np.broadcast_shapes(shape, tuple(int(v) for v in np.ravel(args[1][1]))))
        if new[:2] + new[3:] != shape[:2] + shape[3:] or shape[2] != 1:
            raise CompileError(f"{lw.where(node)}: Expand of attention heads {shape} to {new} is not supported "
                               f"(only along the repeat axis of [B, heads, 1, S, D])")
        lw.heads[node.output[0]] = (parts, transposed, new)
        return
    if op == "Reshape":
        nb, nkv, rep, s_, d = shape
        new = reshape_target(lw, node, a, args, shape)
        if tuple(new) != (nb, nkv * rep, s_, d):
            raise CompileError(f"{lw.where(node)}: reshaping repeated attention heads {shape} to {tuple(new)} is "
                               f"not supported (only {(nb, nkv * rep, s_, d)})")
        repeated = [parts[b * nkv + kv] for b in range(nb) for kv in range(nkv) for _ in range(rep)]
        lw.heads[node.output[0]] = (repeated, transposed, tuple(new))
        return
    raise CompileError(f"{lw.where(node)}: {op} of attention heads {shape} (a 5-D view for grouped-query "
                       f"attention) is not supported; only Expand along the repeat axis and a Reshape to "
                       f"[B, heads, S, D] read it")


def lower_per_head(lw, node, args):
    """An elementwise op, a Softmax over the last axis, a Slice or Concat of the last two axes, once per head."""
    heads = [x for x in args if x is not None and x[0] == "heads"]
    nh = len(heads[0][1])
    transposed = heads[0][2]
    if node.op_type == "Concat":  # an empty operand (a prefill's KV cache of length 0) adds nothing
        axis = dict((at.name, onnx.helper.get_attribute_value(at)) for at in node.attribute).get("axis", 0)
        args = [None if x is not None and operand_shape(x)[axis] == 0 else x for x in args]
        kept = [i for i, x in enumerate(args) if x is not None]
        if len(kept) == 1 and args[kept[0]][0] == "heads":
            lw.heads[node.output[0]] = lw.heads[node.input[kept[0]]]
            return
    scalars_only = all(x is None or x[0] == "heads" or (x[0] == "const" and np.asarray(x[1]).size == 1)
                       for x in args)
    if any(x[2] != transposed for x in heads) or (transposed and not scalars_only):
        raise CompileError(f"{lw.where(node)}: {node.op_type} of transposed attention heads with a "
                           f"non-scalar operand is not supported")
    shape4 = heads[0][3]
    n_heads = shape4[1]
    op = node.op_type
    if op in ("Slice", "Concat") and transposed:
        raise CompileError(f"{lw.where(node)}: {op} of transposed attention heads is not supported")
    part_axes = None
    if op == "Slice":  # rotate_half of rotary embeddings: lanes (or rows) of every head
        axes = args[3] if len(args) > 3 else None
        if axes is None or axes[0] != "const" or any(x is not None and x[0] != "const" for x in args[1:]):
            raise CompileError(f"{lw.where(node)}: Slice of attention heads needs constant starts, ends and "
                               f"axes")
        part_axes = np.asarray(axes[1], dtype=np.int64) % 4
        if np.any(part_axes < 2):
            raise CompileError(f"{lw.where(node)}: Slice of attention heads along the batch or heads axis is "
                               f"not supported (only the last two axes)")
        part_axes = part_axes - 1  # [B, NH, S, X] -> the part's [1, S, X]
    if op == "Softmax" and stacked_softmax(lw, node, args, nh, transposed, shape4):
        return
    out_parts = []
    bounds = []
    for i_part in range(nh):
        bounds.append(len(lw.nodes))
        b, h = divmod(i_part, n_heads)
        saved = {}
        inputs = list(node.input)
        for i, x in enumerate(args):
            if x is None:
                inputs[i] = ""
                continue
            name = node.input[i]
            if x[0] == "heads":
                part = head_float(lw, node, x[1][i_part])
                saved[name] = lw.values.get(name)
                lw.values[name] = (part, lw.tensors[part].shape)
                lw.heads_hidden[name] = lw.heads.pop(name)
            elif part_axes is not None and i == 3:
                cname = f"{name}@part"
                lw.consts[cname] = part_axes
                inputs[i] = cname
            elif x[0] == "const" and x[1].ndim == 4:  # [B or 1, NH or 1, S or 1, X] -> the part's [1, ., X]
                bb = b if x[1].shape[0] > 1 else 0
                arr = x[1][bb:bb + 1, h if x[1].shape[1] > 1 else 0]
                cname = f"{name}@b{bb}h{h}"
                lw.consts[cname] = arr
                inputs[i] = cname
            elif x[0] == "maskrow":  # an attention mask [B|1, 1, Q|1, K]: its element's row, for every head
                row = mask_row(lw, node, name, b)
                cname = f"{name}@row" if lw.tensors[row] is lw.tensors[lw.maskrows[name][0]] else \
                    f"{name}@row{b}"
                lw.values[cname] = (row, (1, lw.tensors[row].rows, lw.tensors[row].cols))
                inputs[i] = cname
            elif x[0] == "value":  # [B, NH, S', X] (a KV cache's past): one part per head, as the heads have
                vb, vh = x[2][0] if len(x[2]) == 4 else 1, x[2][1] if len(x[2]) == 4 else 1
                part = value_parts(lw, node, name, x, shape4)[(b if vb > 1 else 0) * vh + (h if vh > 1 else 0)]
                saved[name] = lw.values.get(name)
                lw.values[name] = (part, lw.tensors[part].shape)
        attrs = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
        if "axis" in attrs and attrs["axis"] % 4 < 2:  # a part holds one batch element's one head
            raise CompileError(f"{lw.where(node)}: {op} of attention heads along axis {attrs['axis']} (batch or "
                               f"heads) is not supported")
        if "axis" in attrs and attrs["axis"] >= 0:
            attrs["axis"] = attrs["axis"] - 1 if attrs["axis"] > 0 else attrs["axis"]
        tag = f"@h{h}" if shape4[0] == 1 else f"@b{b}h{h}"
        sub = onnx.helper.make_node(node.op_type, inputs, [node.output[0] + tag], name=node.name, **attrs)
        try:
            lw.lower(sub)
        finally:
            for name, old in saved.items():
                if name in lw.heads_hidden:
                    lw.heads[name] = lw.heads_hidden.pop(name)
                if old is None:
                    del lw.values[name]
                else:
                    lw.values[name] = old
        out_parts.append(lw.values.pop(sub.output[0])[0])
    interleave_parts(lw, bounds)
    # an elementwise op with scalars commutes with the transpose: the parts stay untransposed
    if op in ("Slice", "Concat") or not transposed:  # the parts' rows or width change (Slice, Concat; an
        # elementwise op whose other operand broadcasts a heads operand's one row: a static KV cache's Where)
        shape4 = tuple(shape4[:2]) + tuple(lw.tensors[out_parts[0]].shape[-2:])
    lw.heads[node.output[0]] = (out_parts, transposed, shape4)


STACK_MIN_LANES = 320  # rows of at least this many lanes: one Softmax over the stacked rows pays for the moves
STACK_MAX_ROWS = 8  # at most this many rows per stacked Softmax (more parts: several groups; 16 rows of 401 lanes
# at batch 2 failed to schedule: "could not schedule the VXM chain of Softmax node 'layer0.probs'")


def stacked_softmax(lw, node, args, nh: int, transposed: bool, shape4: tuple) -> bool:
    """A Softmax over the last axis of long-row heads (a decoder's scores over its cache, [1, K] per head, K >= 320):
    the parts' rows stacked into one [nh * S, K] matrix (rows.concat_rows), one Softmax over it, then each part's
    rows copied back out (transpose.copy_rows). Softmax is row-wise and sees the same ONNX input (its magnitudes),
    so each row gets the same arithmetic as in its own part's Softmax: values bit-identical; the per-part lowering
    would run nh dependent chains of wide reductions (Llama-2-70B decode, 8 heads of [1, 4096]: 73,385 cycles
    against 12,305 for one [8, 4096]). At most STACK_MAX_ROWS rows per Softmax: more parts (batch 2) are stacked in
    groups, one Softmax each. False: not stacked."""
    if transposed or len(args) != 1 or args[0] is None or args[0][0] != "heads":
        return False
    attrs = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
    opset = next((o.version for o in lw.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13 or attrs.get("axis", -1) not in (-1, 3):
        return False
    parts = [head_float(lw, node, p) for p in args[0][1]]
    s, k = (int(v) for v in lw.tensors[parts[0]].shape[-2:])
    if nh < 2 or k < STACK_MIN_LANES or s > STACK_MAX_ROWS // 2 \
            or any(tuple(lw.tensors[p].shape[-2:]) != (s, k) for p in parts):
        return False
    per = STACK_MAX_ROWS // s  # parts per stacked Softmax
    out_parts = []
    for g in range(0, nh, per):
        out_parts += stack_group(lw, node, parts[g:g + per], s, k, "" if per >= nh else f"{g // per}")
    lw.heads[node.output[0]] = (out_parts, False, tuple(shape4[:2]) + (s, k))
    return True


def stack_group(lw, node, parts: list, s: int, k: int, tag: str) -> list:
    """One Softmax over `parts` ([S, K] each) stacked on the rows; the parts of its result."""
    name, n = node.input[0], len(parts)
    sub = Renamed(node, f"{node.output[0]}@rows{tag}")
    concat_rows(lw, sub, [("value", p, (1, s, k)) for p in parts], [(1, s, k)] * n, 1)
    stacked = lw.values.pop(sub.output[0])[0]
    saved = lw.values.get(name)
    lw.values[name] = (stacked, (1, n * s, k))
    lw.heads_hidden[name] = lw.heads.pop(name)
    sub = onnx.helper.make_node("Softmax", [name], [f"{node.output[0]}@stacked{tag}"], name=node.name, axis=-1)
    try:
        lw.lower(sub)
    finally:
        lw.heads[name] = lw.heads_hidden.pop(name)
        if saved is None:
            del lw.values[name]
        else:
            lw.values[name] = saved
    y = lw.values.pop(sub.output[0])[0]
    mag = lw.ir_magnitude(y)
    out = []
    for i in range(n):
        part = copy_rows(lw, node, y, (1, s, k), np.arange(i * s, (i + 1) * s), f"{node.output[0]}@p{tag}.{i}",
                         mag, force=True)
        lw.tensors[part].shape = (1, s, k)
        out.append(part)
    return out


def operand_shape(x) -> tuple:
    """The ONNX shape of a lowering argument (const, value or heads)."""
    return tuple(np.shape(x[1])) if x[0] == "const" else tuple(x[3]) if x[0] == "heads" else tuple(x[2])


def value_parts(lw, node, name: str, x, shape4: tuple) -> list:
    """A computed [B, NH, S', X] tensor read together with attention heads of [B, NH, S, D] (a KV cache's past
    keys or values, a graph input, Concat-ed with the new ones): one [S', X] part per (batch element, head), the
    heads' order ([1, 1, S', X], a decoder's one-key mask bias: one part every head reads). A graph input is
    read by the host as [B*NH, S', X] (a view of the same array); a computed
    image is relaid out to that once (SXM transposes, transpose.reshape_relayout). Each part is then a VXM copy of
    its S' rows. Made once per tensor (`lw.value_parts`)."""
    if name in lw.value_parts:
        return lw.value_parts[name]
    _, ir, shape = x
    shape = tuple(int(v) for v in shape)
    if len(shape) != 4 or any(v not in (1, w) for v, w in zip(shape[:2], shape4[:2])):
        raise CompileError(f"{lw.where(node)}: mixing attention heads {tuple(shape4)} with the computed "
                           f"non-head operand '{name}' {shape} is not supported (only [B|1, heads|1, S, X])")
    nb, nh, s, d = shape
    t = lw.tensors[ir]
    flat_shape = (nb * nh, s, d)
    mag = lw.magnitudes.get(name, lw.ir_magnitude(ir))
    if t.kind == "input":
        flat = lw.add_tensor(lw.fresh(f"{name}.rows"), flat_shape, "input", onnx_input=t.onnx_input)
        lw.inputs.append(flat)
    else:
        sub = Renamed(node, f"{name}@rows")
        if not reshape_relayout(lw, sub, ir, shape, flat_shape):
            raise CompileError(f"{lw.where(node)}: the computed [B, heads, S, X] operand '{name}' {shape} cannot be "
                               f"split into attention heads")
        flat = lw.values.pop(sub.output[0])[0]
    parts = [copy_rows(lw, node, flat, (1, s, d), np.arange(i * s, (i + 1) * s), f"{name}@p{i}", mag,
                       force=nb * nh > 1 or t.kind == "input") for i in range(nb * nh)]
    for p in parts:
        lw.tensors[p].shape = (1, s, d)
    lw.value_parts[name] = parts
    return parts


def heads_output(lw, name: str) -> None:
    """Attention heads that are a graph output (a decoder's present keys and values, or any [B, NH, S, D] heads):
    the parts stacked on the rows ([B*NH, S, D], rows.concat_rows); lw.values[name] holds the result. It stays in
    that row layout, the C-order flattening of [B, NH, S, D] (`Tensor.flat_rows`: the host only reshapes it), not
    the image layout of other 4-D outputs: it is the layout a KV-cache input ([B*NH, S', D], `value_parts`) is read
    in, so the next step can read a present where this step wrote it (docs/llm.md section 3.5), and it takes no
    SXM transposes."""
    parts, transposed, shape4 = lw.heads[name]
    node = onnx.helper.make_node("Identity", [name], [name], name=name)
    if transposed or len(shape4) != 4:
        raise CompileError(f"output '{name}': attention heads {tuple(shape4)}"
                           f"{' (transposed)' if transposed else ''} as a graph output are not supported "
                           f"(only [B, heads, S, D])")
    nb, nh, s, d = (int(v) for v in shape4)
    parts = [head_float(lw, node, p) for p in parts]
    sub = Renamed(node, f"{name}@stacked")
    concat_rows(lw, sub, [("value", p, (1, s, d)) for p in parts], [(1, s, d)] * len(parts), 0)
    stacked = lw.values.pop(sub.output[0])[0]
    lw.tensors[stacked].flat_rows = True
    lw.values[name] = (stacked, (nb, nh, s, d))
