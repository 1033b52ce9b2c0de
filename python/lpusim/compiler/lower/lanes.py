"""Lane primitives: work across the lanes of a row (sums, maxima, minima, selections) with constant matrices on the
MXM, shared by Softmax/LayerNormalization (norms.py), the reductions (reduce.py), attention and the row moves.

A row's elements sit on the lanes of one vector, so a reduction over the last axis (the channel axis of an image)
crosses lanes. lpusim does it on the MXM with constant 0/1 matrices, using only the matmul and vector node kinds:
* sum: `x @ ones[C, C]` puts the row sum in every lane (the accumulator adds exactly; x enters as fp16); past 320
  lanes `x @ ones[C, 320]` (`lane_sum_tile`) puts it in every lane of one tile, which every tile of the row reads
  (View.tile0);
* max/min: `m = x @ I` (x's fp16 values, the same in every lane's view), then a tree of `ceil(log2 C)` steps
  `m = MAX(m, m @ R_s)` where `R_s` rotates the C lanes cyclically by s = 1, 2, 4, ...: after the last step every
  lane holds the row's maximum. `m @ R_s` moves fp16 values exactly,
  so the result is the maximum of x's fp16-rounded values (within fp16's rounding of the true maximum);
* a reduction that keeps one column (`keepdims`) reads lane 0 through `E[C, 1]`.
The SXM's PERMUTE could do the rotations without rounding; the scheduler drives it only for transposes, which
Softmax over many rows uses instead of the tree (norms.turned_softmax), as ReduceMax does (reduce.py).
Also here: `vector`/`node_of` (one VXM node), `shared_const` (a constant stored once per key), `fp16_residual`
(hi + lo for f32-accurate sums of quantised models), the layout helpers `lane_axis`, `with_lanes`, `row_axes`.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.frontend.calibrate import scale_exponent
from lpusim.compiler.ir import Node, Step, View
from lpusim.errors import CompileError


LANES = 320  # tsp_v1's vector length: the tile the padding lanes of a sum fill up to

UP = 2048.0  # fp16_residual(up=True): the residual scaled to its source's size
# A tensor of codes minus zero point (|v| <= 255, attention.py): exact in fp16, its fp16 copy needs no scaling, and
# moving it on the MXM needs no residual pieces
CODE_MAGNITUDE = 256.0


def add_piece_steps(k: int) -> list[Step]:
    """Epilogue adding piece k of a value split into fp16 pieces (piece k scaled up by UP**k: fp16_residual with
    up=True, or split on the host) to the running sum, source 0: exact in f32, each partial sum being the value
    truncated."""
    return [Step("MUL", [("acc",), ("imm", 1.0 / UP ** k)]), Step("ADD", [("src", 0), ("step", 0)])]


def with_lanes(shape: tuple, n: int) -> tuple:
    """`shape` with its lane axis (channels of an image, else the last axis) resized to n."""
    shape = tuple(shape)
    return (shape[0], n) + shape[2:] if len(shape) == 4 else shape[:-1] + (n,)


def lane_axis(shape: tuple) -> int:
    return 1 if len(shape) == 4 else len(shape) - 1


def rotation(c: int, s: int) -> np.ndarray:
    """R with (x @ R)[n] = x[(n - s) mod c]."""
    r = np.zeros((c, c), dtype=np.float32)
    r[(np.arange(c) - s) % c, np.arange(c)] = 1.0
    return r


def shared_const(lw, key, make) -> str:
    """One constant per key (ones matrices, rotations): weight tiles are stored once."""
    cache = lw.shared_consts
    if key not in cache:
        cache[key] = lw.const_tensor(make(), str(key[0]))
    return cache[key]


# The purpose of a lane matmul by its constant's key (the first match of a key prefix; else a lane move): what
# `lpusim run --explain` groups MXM work by. Attention retags its head selections and placements.
LANE_PURPOSES = (("ones", "lane sums"), ("lrn", "lane sums"), ("eye", "lane max/min"), ("rot", "lane max/min"))


def lane_purpose(key: str) -> str:
    return next((p for prefix, p in LANE_PURPOSES if key.startswith(prefix)), "lane moves")


def lane_matmul(lw, node, x: str, shape: tuple, wkey, make_w, hint: str, steps=(), sources=(),
                out_cols: int | None = None) -> tuple:
    """A matmul node `x @ W` (W constant [C, N], shared by key) with an epilogue; returns (name, shape).
    `out_cols` < N: W's extra columns only fill the output's padding lanes (of its last 320-lane tile)."""
    w = shared_const(lw, wkey, make_w)
    out_shape = with_lanes(shape, out_cols or lw.tensors[w].cols)
    out = lw.add_tensor(lw.fresh(hint), out_shape, "value")
    lw.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, out,
                         sources=[View(s) for s in sources], steps=list(steps), terms=[(View(x), w)],
                         purpose=lane_purpose(str(wkey[0]))))
    return out, out_shape


def vector(lw, node, sources: list, steps: list, shape: tuple, hint: str) -> str:
    """One VXM node; `sources` are tensor names (read row for row) or Views."""
    out = lw.add_tensor(lw.fresh(hint), shape, "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out,
                         sources=[s if isinstance(s, View) else View(s) for s in sources], steps=steps))
    return out


def fp16_residual(lw, node, x: str, shape: tuple, hint: str, magnitude: float | None = None,
                  up: bool = False) -> str:
    """lo = x - hi, hi being x's value as its fp16 copy holds it (fp16(x * 2^-k) * 2^k, k from x's magnitude
    as scale_fp16 chooses it): |lo| <= 2^-11 |x|, and its own fp16 copy (scaled for magnitude * 2^-11) keeps
    11 more bits, so hi @ W + lo @ W carries ~22 significant bits of x where x @ W carries 11."""
    if magnitude is None:
        magnitude = lw.ir_magnitude(x)
    k = scale_exponent(magnitude)
    if k:
        steps = [Step("MUL", [("src", 0), ("imm", float(2.0 ** -k))]), Step("CVT", [("step", 0)], "f32.f16"),
                 Step("MUL", [("step", 1), ("imm", float(2.0 ** k))]), Step("SUB", [("src", 0), ("step", 2)])]
    else:
        steps = [Step("CVT", [("src", 0)], "f32.f16"), Step("SUB", [("src", 0), ("step", 0)])]
    if up:  # lo * 2^11 (`UP`): as large as x, for moves that keep x's fp16 scale (selections, concats)
        steps.append(Step("MUL", [("step", len(steps) - 1), ("imm", UP)]))
    lo = vector(lw, node, [x], steps, tuple(shape), hint)
    lw.tensors[lo].shape = lw.tensors[x].shape
    lw.derived[lo] = magnitude * (1.0 if up else 2.0 ** -11)
    return lo


def lane_sum(lw, node, x, shape, scale=1.0, hint="sum", steps=(), sources=(), magnitude=None):
    """Row sums (times `scale`) in every lane, then `steps` (whose step 0 is that sum) as the epilogue.
    With `precise_sums`, two passes: hi's sums, then lo's (`fp16_residual`) added in the second's epilogue."""
    c = shape[lane_axis(shape)]
    padded = -(-c // LANES) * LANES
    ones = lambda: np.ones((c, padded), np.float32)  # noqa: E731
    acc, shift = ("acc",), 1
    if lw.precise_sums:
        hi, _ = lane_matmul(lw, node, x, shape, ("ones", c), ones, f"{hint}.hi", out_cols=c)
        x = fp16_residual(lw, node, x, shape, f"{hint}.lo", magnitude)
        sources = list(sources) + [hi]
        pre = [Step("ADD", [("acc",), ("src", len(sources) - 1)])]
        acc, shift = ("step", 0), 2
    else:
        pre = []
    first = [Step("MUL", [acc, ("imm", float(scale))])] if scale != 1.0 else [Step("COPY", [acc])]
    rest = [Step(s.op, [("step", shift - 1) if a == ("sum",) else ("step", a[1] + shift) if a[0] == "step"
                        else a for a in s.args]) for s in steps]
    if pre:
        return lane_matmul(lw, node, x, shape, ("ones", c), ones, hint, pre + first + rest, sources,
                           out_cols=c)
    # The sum also fills the padding lanes up to the 320-lane tile boundary: padding lanes hold 0, and
    # what follows a sum (a division, a logarithm, a reciprocal square root) must not turn them into
    # inf or NaN, which a later matmul would multiply by its zero weight rows into NaN.
    return lane_matmul(lw, node, x, shape, ("ones", c), ones, hint,
                       first + rest if (rest or scale != 1.0) else [], sources, out_cols=c)


def lane_sum_tile(lw, node, x, shape, scale=1.0, hint="sum", magnitude=None) -> str:
    """Row sums (times `scale`) in every lane of one 320-lane tile: `x @ ones[C, 320]`, C/320 weight tiles where
    lane_sum's ones[C, C] takes (C/320)^2, for rows of more than 320 lanes, whose readers take the sum through
    View(tile0=True). The same fp16 products accumulated in the same order as lane_sum's, so the same float32
    sums; `precise_sums`: hi's sums, then lo's."""
    c = shape[lane_axis(shape)]
    ones = lambda: np.ones((c, LANES), np.float32)  # noqa: E731
    acc, pre, sources = ("acc",), [], []
    if lw.precise_sums:
        hi, _ = lane_matmul(lw, node, x, shape, ("ones", c, LANES), ones, f"{hint}.hi")
        x = fp16_residual(lw, node, x, shape, f"{hint}.lo", magnitude)
        pre, sources, acc = [Step("ADD", [("acc",), ("src", 0)])], [hi], ("step", 0)
    first = [Step("MUL", [acc, ("imm", float(scale))])] if scale != 1.0 else []
    s, _ = lane_matmul(lw, node, x, shape, ("ones", c, LANES), ones, hint, pre + first, sources)
    lw.derived[s] = float(magnitude or 0.0) * c * abs(float(scale))
    return s


def lane_extreme(lw, node, x, shape, op, hint="max", magnitude=None):
    """Row max (op MAX) or min (MIN) in every lane: the rotation tree (`magnitude`: of x, for fp16 scales)."""
    return lane_extreme_and_copy(lw, node, x, shape, op, hint, magnitude)[0]


def lane_extreme_and_copy(lw, node, x, shape, op, hint="max", magnitude=None) -> tuple[str, str]:
    """`lane_extreme`, and the fp16 values it compared (x through the identity; ArgMax finds the extreme's lane
    among them): (extreme in every lane, that copy)."""
    if magnitude is None:
        magnitude = lw.magnitudes.get(node.input[0], 0.0)
    c = shape[lane_axis(shape)]
    lw.tensors[x].f16_saturate = True  # an inf in a rotation's input would make the whole row NaN
    # Every lane must compare the same (fp16-rounded) values, or each lane keeps its own unrounded value and
    # the lanes disagree on the maximum: start from x's fp16 copy, read back through the identity.
    copy, _ = lane_matmul(lw, node, x, shape, ("eye", c), lambda: np.eye(c, dtype=np.float32), f"{hint}0")
    lw.derived[copy] = magnitude
    lw.tensors[copy].f16_saturate = True
    return rotation_tree(lw, node, copy, shape, c, op, hint, magnitude), copy


def rotation_tree(lw, node, m, shape, c, op, hint, magnitude) -> str:
    """`op` (MAX/MIN) over the first `c` lanes of m's rows, into every one of them: log2(c) lane rotations on the
    MXM, each combined with its input in the epilogue (m holds fp16 values: every lane compares the same ones)."""
    s = 1
    while s < c:
        m, _ = lane_matmul(lw, node, m, shape, (f"rot{s}", c), lambda s=s: rotation(c, s), f"{hint}{s}",
                           [Step(op, [("acc",), ("src", 0)])], [m])
        lw.derived[m] = magnitude
        lw.tensors[m].f16_saturate = True
        s *= 2
    return m


def keep_lane0(lw, node, x, shape, out_onnx):
    c = shape[lane_axis(shape)]
    e0 = lambda: np.eye(c, 1, dtype=np.float32)  # noqa: E731
    out, out_shape = lane_matmul(lw, node, x, shape, ("lane0", c), e0, out_onnx)
    return out, out_shape


# ----- ONNX ops ---------------------------------------------------------------------------------------
def check_lane_axis(lw, node, shape, axis):
    nd = len(shape)
    if axis is None or not -nd <= axis < nd or axis % nd != lane_axis(shape):
        where = "the channel axis (1)" if nd == 4 else "the last axis"
        raise CompileError(f"{lw.where(node)}: reducing over axis {axis} of a {nd}-D tensor is not "
                           f"supported yet (only {where}, which lies across the lanes)")


def node_of(lw, node, sources: list, steps: list, shape: tuple, hint: str, mag: float,
            fusable: bool = True) -> str:
    uniq = list(dict.fromkeys(sources))  # a reduction over size-1 axes only is x itself: read x once
    if len(uniq) < len(sources):
        at = [uniq.index(v) for v in sources]
        steps = [Step(s.op, [("src", at[a[1]]) if a[0] == "src" else a for a in s.args], s.t) for s in steps]
        sources = uniq
    out = lw.add_tensor(lw.fresh(hint), shape, "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=list(sources),
                         steps=steps, fusable=fusable))
    lw.derived[out] = mag
    return out


FP16_EXACT = 2048  # whole numbers fp16 holds exactly


def row_axes(nd: int) -> list[int]:
    """The axes of a rank-`nd` tensor that are on the rows (all but the lane axis), outer to inner."""
    lane = lane_axis(tuple(range(nd)))
    return [k for k in range(nd) if k != lane]
