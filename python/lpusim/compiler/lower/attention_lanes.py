"""Attention heads read where they lie on the lanes: no MXM passes to select heads or to place their contexts.

A [B, S, NH*D] value reshaped to [B, S, NH, D] and transposed to heads (attention.lower_split_transpose) is kept as
a `LaneSplit`: the tensor and where head h's lanes are (h*D..), nothing moved. Two readers take it as it is:
* scores, Q @ K^T of two lane splits: each 320-lane column tile of K that holds heads is transposed once on the SXM
  (K^T tile t: [320, S]); head h's scores are Q's tile t, its other heads' lanes cleared on the VXM (AND with a lane
  mask), @ K^T tile t loaded as computed weights: the MXM multiplies the other heads' rows of K^T by zeros. A head
  whose lanes straddle two tiles is a term per tile.
* contexts, P @ V with V a lane split: V's tile with the other heads' lanes cleared (VXM) is loaded as computed
  weights, so head h's context comes out on its own lanes; all heads' terms add into one matmul whose term i adds
  to its head's output tile (`Node.out_tiles`): the merged [S, NH*D] directly, kept as a lane split of it (the
  Transpose and Reshape that merge heads then move nothing). At B > 1 one such matmul per batch element, stacked on
  the rows as before (attention.stack_rows).
An elementwise op of a lane split and a scalar constant (Hugging Face's sdpa export scales Q and K^T each by
sqrt(1/sqrt(D)) after the split) runs once over the whole tensor (`lower_lanes_scalar`): its result is a lane split
with the same lane map, so the scores still read it in place.
Any other reader of a lane split gets the parts the MXM selections make (`materialize`), as before.

Exact where the selections were: the products are the same fp16 numbers (a cleared lane is +0, and the selections
multiplied the same other lanes by a 0 weight), the accumulator sums exactly and rounds once; a context is rounded
to fp16 once, where its part was before. Off for quantised models (precise_sums: their selections move codes or
fp16 pieces) and at precision fp32 (fp32_split.py splits one tensor's terms).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from lpusim.compiler.frontend.calibrate import scale_exponent
from lpusim.compiler.ir import TILE_LANES, Node, Step, View, tile_width
from lpusim.compiler.lower.attention import (head_float, interleave_parts, lower_merge_reshape, split_parts,
                                             stack_rows)


@dataclass(eq=False)
class LaneSplit:
    """The parts of attention heads as lanes of one IR tensor ([B*S, NH*D]; head h of element b: rows b*S..,
    lanes h*D..), not yet moved; `parts` once materialized."""

    tensor: str
    shape: tuple  # the ONNX [B, S, NH*D] it splits
    nh: int
    d: int
    node: object  # the ONNX node named in what materializing it makes (its input: the magnitudes)
    parts: list | None = None
    transposed_tiles: dict = field(default_factory=dict)  # (b, tile) -> its K^T tile (`k_tile`)


def lanes_ok(lw) -> bool:
    return not lw.precise_sums and not lw.fp32


def split_lazily(lw, node, perm: list) -> bool:
    """Keep a [B, S, heads, D] split's Transpose as a LaneSplit (True), or leave it to the selections (False)."""
    if not lanes_ok(lw):
        return False
    ir_name, shape, nh, d = lw.splits[node.input[0]]
    nb, s = shape[0], shape[1]
    transposed = perm == [0, 2, 3, 1]
    lw.heads[node.output[0]] = (LaneSplit(ir_name, tuple(shape), nh, d, node), transposed,
                                (nb, nh, d, s) if transposed else (nb, nh, s, d))
    return True


def materialize(lw, node, args: list) -> list:
    """`args` with every LaneSplit operand's parts made (attention.split_parts: MXM selections), once per split."""
    out = list(args)
    for i, x in enumerate(args):
        if x is None or x[0] != "heads" or not isinstance(x[1], LaneSplit):
            continue
        ls = x[1]
        if ls.parts is None:
            ir_name, shape = ls.tensor, ls.shape
            ls.parts = split_parts(lw, ls.node, ir_name, shape, ls.nh, ls.d)
        name = node.input[i]
        lw.heads[name] = (ls.parts,) + tuple(lw.heads[name][1:])
        out[i] = lw.get(node, i)
    return out


def materialize_heads(lw, name: str) -> None:
    """lw.heads[name] with its parts made, if it is a lane split (a graph output: attention.heads_output)."""
    parts = lw.heads[name][0]
    if isinstance(parts, LaneSplit):
        node = onnx.helper.make_node("Identity", [name], [name], name=name)
        materialize(lw, node, [("heads",) + lw.heads[name]])


def lower_lanes_matmul(lw, node, args) -> bool:
    """A heads MatMul read from lane splits (scores or contexts, see above); False when neither form applies."""
    if not lanes_ok(lw) or args[0] is None or args[1] is None or args[0][0] != "heads" or args[1][0] != "heads":
        return False
    (a, a_t, a_shape), (b, b_t, b_shape) = args[0][1:], args[1][1:]
    if a_t or len(a_shape) != 4 or len(b_shape) != 4 or a_shape[:2] != b_shape[:2]:
        return False
    if isinstance(a, LaneSplit) and isinstance(b, LaneSplit) and b_t and a.parts is None and b.parts is None \
            and (a.nh, a.d, a.shape[0]) == (b.nh, b.d, b.shape[0]):
        lanes_scores(lw, node, a, b)
        return True
    if isinstance(b, LaneSplit) and not b_t and b.parts is None and not isinstance(a, LaneSplit) \
            and len(a) == b.shape[0] * b.nh and lw.tensors[a[0]].cols == b.shape[1]:
        lanes_contexts(lw, node, a, b)
        return True
    return False


SCALAR_OPS = ("Mul", "Div", "Add", "Sub")


def lower_lanes_scalar(lw, node, args) -> bool:
    """A lane split times (over, plus, minus) a scalar constant: the op once over the split's whole tensor, its
    result a lane split with the same lane map; transposed (K^T) stays transposed, the op commutes with it. False
    when it is not that.

    Exact as per part: a part was the split tensor's fp16 copy moved by the MXM, then the op (fused into that
    selection's epilogue). Here the op may fuse into the split tensor's producer (the projection's accumulator),
    so it first rounds the value as that fp16 copy holds it (`fp16_copy`): the same fp32 op on the same value."""
    if not lanes_ok(lw) or node.op_type not in SCALAR_OPS or len(args) != 2 or any(x is None for x in args):
        return False
    split = [i for i, x in enumerate(args) if x[0] == "heads" and isinstance(x[1], LaneSplit) and x[1].parts is None]
    if len(split) != 1 or args[1 - split[0]][0] != "const" or np.asarray(args[1 - split[0]][1]).size != 1:
        return False
    i = split[0]
    ls, transposed, shape4 = args[i][1:]
    name = node.output[0]
    inputs = list(node.input)
    inputs[i] = f"{node.input[i]}@lanes"  # the split's tensor, as its fp16 copy holds it: a [B, S, NH*D] value
    lw.values[inputs[i]] = (fp16_copy(lw, node, ls.tensor, f"{ls.tensor}.f16"), tuple(ls.shape))
    inputs[1 - i] = f"{node.input[1 - i]}@scalar"  # (a [1, 1, 1, 1] one would broadcast the value to 4-D)
    lw.consts[inputs[1 - i]] = np.asarray(args[1 - i][1]).reshape(())
    sub = onnx.helper.make_node(node.op_type, inputs, [f"{name}@lanes"], name=node.name)
    try:
        lw.lower(sub)
    finally:
        del lw.values[inputs[i]], lw.consts[inputs[1 - i]]
    y = lw.values.pop(sub.output[0])[0]
    # what materializing it would name (its magnitudes: this op's output)
    source = onnx.helper.make_node(node.op_type, [name], [name], name=node.name)
    lw.heads[name] = (LaneSplit(y, tuple(ls.shape), ls.nh, ls.d, source), transposed, tuple(shape4))
    return True


def fp16_copy(lw, node, x: str, hint: str) -> str:
    """x as its fp16 copy holds it (fp16(x * 2^-k) * 2^k, k from x's magnitude as scale_fp16 chooses it), on the
    VXM: a no-op on that copy, a rounding where the node fuses into x's producer."""
    magnitude = lw.ir_magnitude(x)
    k = scale_exponent(magnitude)
    steps = [Step("CVT", [("src", 0)], "f32.f16")]
    if k:
        steps = [Step("MUL", [("src", 0), ("imm", float(2.0 ** -k))]), Step("CVT", [("step", 0)], "f32.f16"),
                 Step("MUL", [("step", 1), ("imm", float(2.0 ** k))])]
    t = lw.tensors[x]
    y = lw.add_tensor(lw.fresh(hint), t.shape, "value")
    lw.tensors[y].geom = t.geom
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=[View(x)], steps=steps))
    lw.derived[y] = magnitude
    return y


def head_tiles(h: int, d: int, cols: int) -> list[tuple[int, int, int]]:
    """(tile, first lane, end lane) within each column tile head h's lanes h*d..(h+1)*d touch."""
    out = []
    lo, hi = h * d, (h + 1) * d
    for t in range(lo // TILE_LANES, (hi - 1) // TILE_LANES + 1):
        out.append((t, max(lo, t * TILE_LANES) - t * TILE_LANES, min(hi, (t + 1) * TILE_LANES) - t * TILE_LANES))
    assert hi <= cols
    return out


def rows_of(ls: LaneSplit, b: int) -> tuple | None:
    """The row map of batch element b's rows (None at B = 1: all rows)."""
    s = ls.shape[1]
    return None if ls.shape[0] == 1 else tuple(range(b * s, (b + 1) * s))


def lane_mask(lw, width: int, lo: int, hi: int) -> str:
    """An i32 constant [1, width]: all ones on lanes lo..hi-1, zero elsewhere (AND keeps those lanes' bits)."""
    key = ("head_lanes", width, lo, hi)
    if key not in lw.shared_consts:
        data = np.zeros((1, width), dtype=np.float32)
        data[0, lo:hi] = -1.0
        name = lw.const_tensor(data, "lanes")
        lw.tensors[name].dtype = "i32"
        lw.shared_consts[key] = name
    return lw.shared_consts[key]


def head_lanes(lw, node, ls: LaneSplit, b: int, t: int, lo: int, hi: int, hint: str) -> tuple[str, View]:
    """Batch element b's rows of column tile t of the split tensor, lanes outside lo..hi cleared: (tensor, view).
    The tensor itself when that is all of it (B = 1, one tile, every lane); else a VXM pass."""
    t_ir = lw.tensors[ls.tensor]
    width = tile_width(t_ir.cols, t)
    if ls.shape[0] == 1 and lo == 0 and hi == width and t_ir.cols <= TILE_LANES:
        return ls.tensor, View(ls.tensor)
    s = ls.shape[1]
    y = lw.add_tensor(lw.fresh(hint), (1, s, width), "value")
    mask = lane_mask(lw, width, lo, hi)
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y,
                         sources=[View(ls.tensor, rows=rows_of(ls, b), tile=t), View(mask)],
                         steps=[Step("AND", [("src", 0), ("src", 1)], "i32"), Step("COPY", [("step", 0)])]))
    lw.derived[y] = lw.ir_magnitude(ls.tensor)
    return y, View(y)


def k_tile(lw, node, k: LaneSplit, b: int, t: int) -> str:
    """K^T of batch element b's column tile t ([tile width, S]), transposed on the SXM once for its heads."""
    key = (b, t)
    if key not in k.transposed_tiles:
        t_ir = lw.tensors[k.tensor]
        s = k.shape[1]
        width = tile_width(t_ir.cols, t)
        kt = lw.add_tensor(lw.fresh(f"{k.tensor}.T{t}"), (1, width, s), "value")
        whole = t_ir.cols <= TILE_LANES and k.shape[0] == 1
        lw.nodes.append(Node("transpose", node.name or node.output[0], "Transpose", kt, fusable=False,
                             sources=[View(k.tensor) if whole else View(k.tensor, rows=rows_of(k, b), tile=t)]))
        lw.derived[kt] = lw.ir_magnitude(k.tensor)
        k.transposed_tiles[key] = kt
    return k.transposed_tiles[key]


def lanes_scores(lw, node, q: LaneSplit, k: LaneSplit) -> None:
    """Per head: (Q's tile, other lanes cleared) @ K^T tile, a term per tile the head's lanes touch."""
    nb, nh, d = q.shape[0], q.nh, q.d
    s_q, s_k = q.shape[1], k.shape[1]
    out_parts, bounds = [], []
    for i in range(nb * nh):
        bounds.append(len(lw.nodes))
        b, h = divmod(i, nh)
        part = f"{node.output[0]}@h{i}"
        terms = []
        for t, lo, hi in head_tiles(h, d, q.shape[2]):
            _, view = head_lanes(lw, node, q, b, t, lo, hi, f"{part}.q{t}")
            terms.append((view, k_tile(lw, node, k, b, t)))
        y = lw.add_tensor(lw.fresh(part), (1, s_q, s_k), "value")
        lw.nodes.append(Node("matmul", node.name or node.output[0], "MatMul", y, terms=terms))
        lw.values[part] = (y, (1, s_q, s_k))
        out_parts.append(y)
    interleave_parts(lw, bounds)
    lw.heads[node.output[0]] = (out_parts, False, (nb, nh, s_q, s_k))


def lanes_contexts(lw, node, probs: list, v: LaneSplit) -> None:
    """Per batch element: sum over heads of P_h @ (V's tile, other lanes cleared), each term into its head's
    output tile: the merged contexts [S, NH*D], kept as a lane split (the merge moves nothing)."""
    nb, nh, d, cols = v.shape[0], v.nh, v.d, v.shape[2]
    s_q = lw.tensors[probs[0]].rows
    name = node.output[0]
    merged = []
    for b in range(nb):
        terms, tiles = [], []
        for h in range(nh):
            p = head_float(lw, node, probs[b * nh + h])
            for t, lo, hi in head_tiles(h, d, cols):
                w, _ = head_lanes(lw, node, v, b, t, lo, hi, f"{name}@b{b}h{h}.v{t}")
                terms.append((View(p), w))
                tiles.append(t)
        y = lw.add_tensor(lw.fresh(name if nb == 1 else f"{name}@b{b}"), (1, s_q, cols), "value")
        lw.nodes.append(Node("matmul", node.name or name, "MatMul", y, terms=terms, out_tiles=tuple(tiles)))
        lw.derived[y] = lw.magnitudes.get(name, lw.ir_magnitude(v.tensor))
        merged.append(y)
    y = merged[0] if nb == 1 else stack_rows(lw, node, merged, s_q, name)
    # what materializing the contexts' parts would name (their magnitudes: the MatMul's output)
    source = onnx.helper.make_node("Transpose", [name], [name], name=node.name)
    lw.heads[name] = (LaneSplit(y, (nb, s_q, cols), nh, d, source), False, (nb, nh, s_q, d))


def lower_lanes_merge(lw, node, new) -> None:
    """Merged heads reshaped to [B, S, NH*D]: a lane split's tensor as it is, else attention.lower_merge_reshape."""
    parts, (b, nh, s, d) = lw.merges[node.input[0]]
    if isinstance(parts, LaneSplit):
        if tuple(new) == tuple(parts.shape) and (parts.nh, parts.d) == (nh, d):
            lw.values[node.output[0]] = (parts.tensor, tuple(new))
            return
        if parts.parts is None:
            parts.parts = split_parts(lw, parts.node, parts.tensor, parts.shape, parts.nh, parts.d)
        lw.merges[node.input[0]] = (parts.parts, (b, nh, s, d))
    lower_merge_reshape(lw, node, new)
