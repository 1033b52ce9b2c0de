"""Transpose of a computed tensor, for any permutation.

In the chip's layout (row_layout.as_matrix) one axis of a tensor is on the lanes (the last axis; the channels of a
4-D NCHW tensor) and the others, in order, number the rows. A Transpose either keeps the lane axis on the lanes or
moves a row axis there:

* lane axis kept (perm [1, 0, 2] of a 3-D tensor, [0, 2, 1, 3], [0, 1, 3, 2] of a 4-D image ...): only whole rows
  move. Output row r takes input row map[r], a constant row map computed here; a VXM COPY through a row-map view
  (View.rows, the MEM address arithmetic Gather and Slice use) streams the rows in that order. Size-1 axes moving
  alone change nothing: the output is a view of the same rows.
* a row axis `a` onto the lanes: a batched matrix transpose. The input rows are read in the order (batch..., a)
  (the other row axes, in the order the output wants them) through the transpose's own source view, so that
  reordering costs nothing; each of the B matrices of M = |a| rows and N = |lane axis| lanes becomes N rows of M
  lanes by skew / gather / unskew on the SXM and MEM, in blocks of at most 320 x 320 (schedule/sxm.py). If the
  output wants its rows in another order than (batch..., old lane axis), a row-map COPY follows.

Every permutation is one of these two, so Transpose has no unsupported case left; only the scheduler's own limits
(SRAM for the SXM tables) can refuse one.

The same `permute` serves Gemm transA=1 on a computed A, and a Reshape to or from a 4-D image whose rows and lanes
differ from the target's (shape_ops.lower_reshape: `same_layout` says whether a reshape is a pure view,
`reshape_relayout` turns image <-> plain layouts into one batched transpose each way when the lanes line up).
`reshape_regroup` (any other Reshape of a computed tensor): SXM transposes, bit exact (the
LayerNormalization/GroupNormalization expansions' [R, C1] <-> [R', C2]).
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.lanes import lane_axis, row_axes
from lpusim.compiler.row_layout import as_matrix, to_rows
from lpusim.errors import CompileError


def row_strides(shape: tuple) -> dict[int, int]:
    """Axis -> how far one step along it moves in row index (the lane axis: 0)."""
    strides, step = {}, 1
    for k in reversed(row_axes(len(shape))):
        strides[k] = step
        step *= int(shape[k])
    strides[lane_axis(shape)] = 0
    return strides


def same_layout(shape: tuple, new: tuple) -> bool:
    """Whether a tensor of ONNX `shape` reshaped to `new` keeps every value in the same row and lane (an image's
    channels are on the lanes: [1, C, H, W] -> [C, H*W] keeps the rows and lanes counts when C = H*W, not the
    values)."""
    if len(shape) != 4 and len(new) != 4:
        return True
    if as_matrix(tuple(shape)) != as_matrix(tuple(new)):
        return False
    flat = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    return np.array_equal(to_rows(flat.reshape(shape), tuple(shape)), to_rows(flat.reshape(new), tuple(new)))


def row_map(counts: list[int], strides: list[int]) -> np.ndarray:
    """The source row of every output row whose digits (outer to inner) run over `counts`: sum(digit * stride)."""
    idx = np.zeros(1, dtype=np.int64)
    for n, s in zip(counts, strides):
        idx = (idx[:, None] + np.arange(n, dtype=np.int64)[None, :] * s).reshape(-1)
    return idx


def lower_transpose(lw, node, a, args):
    _, x, shape = args[0]
    shape = tuple(int(d) for d in shape)
    nd = len(shape)
    perm = [int(p) for p in a.get("perm", reversed(range(nd)))]
    if sorted(perm) != list(range(nd)):
        raise CompileError(f"{lw.where(node)}: perm={perm} is not a permutation of the {nd} axes")
    new = tuple(shape[p] for p in perm)
    y = permute(lw, node, x, shape, perm, new, node.output[0], lw.magnitudes.get(node.input[0], 0.0))
    lw.values[node.output[0]] = (y, new)


def permute(lw, node, x: str, shape: tuple, perm: list, final: tuple, hint: str, mag: float) -> str:
    """The IR tensor holding x (ONNX `shape`, in its layout) transposed by `perm`, laid out as the ONNX shape
    `final` (`shape` permuted, or an image shape whose layout is the same rows and lanes); x itself when no
    row moves."""
    nd = len(shape)
    if nd < 2:
        return x
    lane = lane_axis(shape)
    src = perm[lane]  # the input axis landing on the output's lanes
    out_rows = [perm[k] for k in row_axes(nd)]  # the output's row axes, as input axes, outer to inner
    stride = row_strides(shape)
    if src == lane or shape[src] == shape[lane] == 1:  # the lanes stay: a row permutation
        return copy_rows(lw, node, x, final, row_map([shape[k] for k in out_rows],
                                                      [stride[k] for k in out_rows]), hint, mag)
    m, n = shape[src], shape[lane]
    batch = [k for k in out_rows if k != lane and shape[k] != 1]
    b = int(np.prod([shape[k] for k in batch], dtype=np.int64))
    # the source rows in the order (batch..., src): B matrices of M rows of the N input lanes
    order = row_map([shape[k] for k in batch] + [m], [stride[k] for k in batch + [src]])
    if lw.tensors[x].kind == "input":  # the transpose moves stored bytes: an input has only its f32 copy
        x = copy_rows(lw, node, x, (b * m, n), order, "tin", mag, force=True)
        order = np.arange(b * m)
    view = View(x) if np.array_equal(order, np.arange(len(order))) else View(x, rows=tuple(order.tolist()))
    # the result's rows are (batch..., the input's lane axis); the output's order of those axes:
    t_stride = {lane: 1}
    step = n
    for k in reversed(batch):
        t_stride[k] = step
        step *= shape[k]
    rows = row_map([shape[k] for k in out_rows], [t_stride.get(k, 0) for k in out_rows])
    in_order = np.array_equal(rows, np.arange(len(rows)))
    t = lw.add_tensor(lw.fresh(hint), final if in_order else (b * n, m), "value")
    lw.nodes.append(Node("transpose", node.name or node.output[0], node.op_type, t, sources=[view],
                         fusable=False))
    lw.derived[t] = mag
    return t if in_order else copy_rows(lw, node, t, final, rows, hint, mag)


def reshape_relayout(lw, node, x: str, shape: tuple, new: tuple) -> bool:
    """A Reshape to or from a 4-D image whose rows and lanes are not the same as the target's: an image
    [N, C, H, W] is the plain [N, HW/L, L, C] (rows n, pixel; lanes c), and the plain [N, C, HW/L, L] (lanes L)
    holds the same values in ONNX order; for an L dividing H*W one batched transpose goes from one to the other.
    False when no such L exists (the lanes would have to be regrouped)."""
    shape, new = tuple(shape), tuple(new)
    if len(shape) != 4 and len(new) != 4:
        return False
    pix = lambda s: s[2] * s[3]  # noqa: E731
    if len(shape) == 4:
        lanes = int(np.gcd(pix(shape), pix(new))) if len(new) == 4 else new[-1] if new else 1
    else:
        lanes = shape[-1] if shape else 1
    if lanes < 1 or (len(shape) == 4 and pix(shape) % lanes) or (len(new) == 4 and pix(new) % lanes):
        return False
    mag = lw.tensor_magnitude(node, x)
    cur = x
    if len(shape) == 4:  # image -> plain with `lanes` lanes (a leading 1 keeps the 5-D shapes plain)
        n, c, h, w = shape
        cur = permute(lw, node, cur, (1, n, h * w // lanes, lanes, c), [0, 1, 4, 2, 3],
                           (1, n, c, h * w // lanes, lanes), lw.fresh("plain") if len(new) == 4 else
                      node.output[0], mag)
    if len(new) == 4:  # plain -> image
        n, c, h, w = new
        cur = permute(lw, node, cur, (1, n, c, h * w // lanes, lanes), [0, 1, 3, 4, 2], new, node.output[0],
                      mag)
    lw.values[node.output[0]] = (cur, new)
    return True


def copy_rows(lw, node, x: str, new: tuple, rows: np.ndarray, hint: str, mag: float,
              force: bool = False) -> str:
    """A tensor of shape `new` whose row r is row rows[r] of x: x itself when that is every row in order
    (unless `force`), else a VXM COPY through a row-map view."""
    same = np.array_equal(rows, np.arange(lw.tensors[x].rows))
    if same and not force:
        return x
    out = lw.add_tensor(lw.fresh(hint), new, "value")
    view = View(x) if same else View(x, rows=tuple(rows.tolist()))
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=[view],
                         steps=[Step("COPY", [("src", 0)])]))
    lw.derived[out] = mag
    return out


# ----- Reshape that regroups lanes (LayerNormalization/GroupNormalization expansions) -----------------------
def reshape_regroup(lw, node, x, shape, new) -> bool:
    """Any Reshape of a computed tensor, by SXM transposes (exact): an image first becomes the plain
    (1, N, C, H, W) (lanes W); the plain [R1, C1] then [R1 C1 / L, L] for L = gcd(C1, C2) (a transpose, then
    a batched one of the C1 / L blocks of L rows), then [R2, C2] (the same backwards); an image target last."""
    shape, new = tuple(int(d) for d in shape), tuple(int(d) for d in new)
    mag = lw.tensor_magnitude(node, x)
    cur = x
    if len(shape) == 4:
        n, c, h, w = shape
        cur = permute(lw, node, cur, (1, n, h, w, c), [0, 1, 4, 2, 3], (1, n, c, h, w), "plain", mag)
        r1, c1 = n * c * h, w
    else:
        r1, c1 = lw.tensors[cur].rows, lw.tensors[cur].cols
    plain = (1,) + new if len(new) == 4 else new
    c2 = plain[-1] if plain else 1
    r2 = r1 * c1 // c2
    lanes = int(np.gcd(c1, c2))
    if c1 != lanes:  # [r1, a*L] -> [r1*a, L]
        a_ = c1 // lanes
        t = permute(lw, node, cur, (r1, c1), [1, 0], (c1, r1), "regroup", mag)
        cur = permute(lw, node, t, (a_, lanes, r1), [2, 0, 1], (r1, a_, lanes), "regroup", mag)
    if c2 != lanes:  # [r2*b, L] -> [r2, b*L]
        b = c2 // lanes
        t = permute(lw, node, cur, (r2, b, lanes), [1, 2, 0], (b, lanes, r2), "regroup", mag)
        cur = permute(lw, node, t, (b * lanes, r2), [1, 0], (r2, c2), "regroup", mag)
    if len(new) == 4:
        n, c, h, w = new
        cur = permute(lw, node, cur, (1, n, c, h, w), [0, 1, 3, 4, 2], new, node.output[0], mag)
    elif cur == x:
        lw.values[node.output[0]] = (x, new)
        return True
    lw.tensors[cur].shape = new
    lw.values[node.output[0]] = (cur, new)
    return True
