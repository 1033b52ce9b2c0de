"""Normalisations over any axes, broadcasts of computed operands, Pow with computed exponents, one-input Max/Min.

* Softmax / LogSoftmax over any axis (and opset < 13's flattened axes), LayerNormalization over axes [axis, ...)
  with its Mean and InvStdDev outputs. The reduced axes A split into the lane axis and row axes
  (`reduce_axes`): the lane axis by lower_lanes.py (`lane_sum`: x @ ones on the MXM puts the row sum in every
  lane; `lane_extreme`: the rotation tree puts the row maximum in every lane), the row axes by lower_reduce.py's
  halving trees on the VXM (float32, exact maxima). The result R has A's row axes reduced to one row and, when the
  lane axis is reduced, the same value in every lane, so it meets the input again elementwise through a row-map
  view (View.rows, `row_view`: output row r reads the row of R its non-reduced coordinates name) with no lane
  broadcast at all. A softmax over a row axis is VXM work only, in float32 (no fp16 rounding anywhere), and
  cheaper than permuting the axis onto the lanes (lower_transpose.permute), the lane softmax and permuting back:
  cycles measured (row trees / permutes) Softmax [64, 100] axis 0: 721 / 5,403; [300, 20] axis 0: 2,028 / 4,261;
  [8, 40, 330] axis 1: 2,377 / 87,888; LogSoftmax [4, 128, 64] axis 1: 2,975 / 14,637.
* Elementwise operands of shape (..., 1) or with fewer rows (`broadcast_operand`, called by importer.operand):
  a lower-rank operand of an image first put in the image's layout (one batched SXM transpose: its lanes are the
  image's W axis); a lane-0 copy to every lane (MoveLowering.select_lanes, the MXM path importer.operand already
  had, now also before a row broadcast: the value passes as fp16); then the rows broadcast by a VXM COPY through
  a row map. (A bit-exact SXM route, column -> row -> c rows -> transposed back, was measured 18-35% more cycles
  for x / max(x, lanes) at [64, 100], [512, 768], [8, 12, 330] and is not used.)
* Reshape of a computed tensor that regroups lanes (`reshape_regroup`, after lower_transpose.reshape_relayout):
  SXM transposes, bit exact (the LayerNormalization/GroupNormalization expansions' [R, C1] <-> [R', C2]).
* Pow with a computed or non-scalar exponent b, or a constant one outside importer._POW's exact table: |a|^b = exp(b log(|a| + [b == 0])) on the VXM, times -1 where
  a < 0 and b is an odd integer, NaN where a < 0 and b is not an integer (ONNX/numpy semantics; x^0 = 1 even
  for x = 0); integer-typed outputs rounded to the nearest whole number.
* Max/Min of one input: the input itself.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower_lanes import lane_axis, with_lanes
from lpusim.compiler.lower_transpose import row_map, row_strides, same_layout
from lpusim.errors import CompileError


def _row_axes(shape: tuple) -> list[int]:
    lane = lane_axis(shape)
    return [k for k in range(len(shape)) if k != lane]


class NormLowering:
    """Mixed into the importer's `_Lowering` (uses LaneLowering, ReduceLowering, TransposeLowering, MoveLowering)."""

    # ----- which nodes come here -----------------------------------------------------------------------------
    def norm_axes(self, node, op, a, shape) -> list[int]:
        """The axes a Softmax/LogSoftmax/LayerNormalization normalises over (size-1 axes included)."""
        nd = len(shape)
        if op == "LayerNormalization":
            axis = a.get("axis", -1)
            if not -nd <= axis < nd:
                raise CompileError(f"{self.where(node)}: axis {axis} out of range for a {nd}-D input")
            return list(range(axis % nd, nd))
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        axis = a.get("axis", -1 if opset >= 13 else 1)
        if not -nd <= axis < nd:
            raise CompileError(f"{self.where(node)}: axis {axis} out of range for a {nd}-D input")
        return [axis % nd] if opset >= 13 else list(range(axis % nd, nd))

    def norm_elsewhere(self, node, op, a, args) -> bool:
        """Whether this normalisation needs lower_norm (not only the lane axis, or LayerNormalization's extra
        outputs); lower_lanes.py keeps the lane-axis-only forms."""
        if not args or args[0] is None or args[0][0] != "value" or not args[0][2]:
            return False
        shape = tuple(args[0][2])
        axes = [k for k in self.norm_axes(node, op, a, shape) if shape[k] != 1]
        extra = op == "LayerNormalization" and any(node.output[1:])
        return extra or axes != [lane_axis(shape)]

    # ----- reductions and their broadcast back -------------------------------------------------------------------
    def reduce_axes(self, node, x, shape, axes, combine, mag):
        """x reduced over `axes` by ADD or MAX: (tensor, its shape: reduced row axes 1, the lanes kept, every lane
        the same value when the lane axis is reduced)."""
        lane = lane_axis(shape)
        cur = x
        if lane in axes and shape[lane] > 1:
            if combine == "ADD":
                cur, _ = self.lane_sum(node, cur, shape, hint=f"{node.output[0]}.lsum", magnitude=mag)
                mag = mag * shape[lane]
            else:
                cur = self.lane_extreme(node, cur, shape, combine, f"{node.output[0]}.lmax", magnitude=mag)
            self.derived[cur] = mag
        rows = [k for k in axes if k != lane and shape[k] > 1]
        if rows:
            cur = self.reduce_row_axes(node, cur, shape, rows, combine, mag)
            self.derived[cur] = mag * (int(np.prod([shape[k] for k in rows])) if combine == "ADD" else 1)
        return cur, tuple(1 if k in rows else d for k, d in enumerate(shape))

    def row_view(self, t, small: tuple, full: tuple) -> View:
        """A view of `t` (laid out as `small`, the lanes of `full`) read at every row of `full`: rows of axes
        where small has 1 repeat."""
        stride = row_strides(small)
        axes = _row_axes(full)
        rows = row_map([full[k] for k in axes], [stride[k] if small[k] != 1 else 0 for k in axes])
        if np.array_equal(rows, np.arange(len(rows))) or self.tensors[t].rows == 1:
            return View(t)
        return View(t, rows=tuple(int(r) for r in rows))

    def node_of(self, node, sources: list, steps: list, shape: tuple, hint: str, mag: float,
                fusable: bool = True) -> str:
        uniq = list(dict.fromkeys(sources))  # a reduction over size-1 axes only is x itself: read x once
        if len(uniq) < len(sources):
            at = [uniq.index(v) for v in sources]
            steps = [Step(s.op, [("src", at[a[1]]) if a[0] == "src" else a for a in s.args], s.t) for s in steps]
            sources = uniq
        out = self.add_tensor(self.fresh(hint), shape, "value")
        self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=list(sources),
                               steps=steps, fusable=fusable))
        self.derived[out] = mag
        return out

    # ----- Softmax / LogSoftmax / LayerNormalization ---------------------------------------------------------
    def lower_norm(self, node, op, a, args) -> None:
        _, x, shape = args[0]
        shape = tuple(int(d) for d in shape)
        axes = [k for k in self.norm_axes(node, op, a, shape) if shape[k] != 1]
        mag = self.magnitudes.get(node.input[0], 0.0)
        if op == "LayerNormalization":
            return self.lower_norm_layer(node, a, args, x, shape, axes, mag)
        lane = lane_axis(shape)
        if lane in axes and len(axes) > 1 and 2.0 * mag > 2.0 ** 12:
            raise CompileError(f"{self.where(node)}: {op} over axes {axes} of {shape} including the lane axis, "
                               f"with values as large as {mag:g}: the lane maximum is found in fp16, too coarse a "
                               f"shift past 4096")
        m, small = self.reduce_axes(node, x, shape, axes, "MAX", mag)
        sub = Step("SUB", [("src", 0), ("src", 1)])
        e = self.node_of(node, [View(x), self.row_view(m, small, shape)], [sub, Step("EXP", [("step", 0)])],
                         shape, f"{node.output[0]}.exp", 1.0)
        s, _ = self.reduce_axes(node, e, shape, axes, "ADD", 1.0)
        if op == "Softmax":
            y = self.node_of(node, [View(e), self.row_view(s, small, shape)],
                             [Step("DIV", [("src", 0), ("src", 1)])], shape, node.output[0], 1.0)
        else:  # (x - m) - log(sum)
            y = self.node_of(node, [View(x), self.row_view(m, small, shape), self.row_view(s, small, shape)],
                             [sub, Step("LOG", [("src", 2)]), Step("SUB", [("step", 0), ("step", 1)])],
                             shape, node.output[0], 2.0 * mag + 10.0)
        self.values[node.output[0]] = (y, shape)

    def lower_norm_layer(self, node, a, args, x, shape, axes, mag) -> None:
        lane = lane_axis(shape)
        n = int(np.prod([shape[k] for k in axes])) if axes else 1
        s, small = self.reduce_axes(node, x, shape, axes, "ADD", mag)
        d = self.node_of(node, [View(x), self.row_view(s, small, shape)],
                         [Step("MUL", [("src", 1), ("imm", 1.0 / n)]), Step("SUB", [("src", 0), ("step", 0)])],
                         shape, f"{node.output[0]}.centred", 2.0 * mag)
        sq = self.node_of(node, [View(d)], [Step("MUL", [("src", 0), ("src", 0)])], shape, f"{node.output[0]}.sq",
                          (2.0 * mag) ** 2)
        v, _ = self.reduce_axes(node, sq, shape, axes, "ADD", (2.0 * mag) ** 2)
        eps = float(a.get("epsilon", 1e-5))
        inv = self.node_of(node, [View(v)], [Step("MUL", [("src", 0), ("imm", 1.0 / n)]),
                                            Step("ADD", [("step", 0), ("imm", eps)]), Step("RSQRT", [("step", 1)])],
                           small, f"{node.output[0]}.inv", 1.0 / np.sqrt(eps))
        sources = [View(d), self.row_view(inv, small, shape)]
        steps = [Step("MUL", [("src", 0), ("src", 1)])]
        for i in (1, 2):
            arg = args[i] if len(args) > i else None
            if arg is None:
                continue
            kind, val = self.operand(node, arg, shape)
            last = ("step", len(steps) - 1)
            if kind != "imm":
                sources.append(View(val))
                val = len(sources) - 1
            steps.append(Step("MUL" if i == 1 else "ADD", [last, ("imm", val) if kind == "imm" else ("src", val)]))
        y = self.node_of(node, sources, steps, shape, node.output[0], 2.0 * mag)
        self.values[node.output[0]] = (y, shape)
        out_shape = tuple(d if k < min(self.norm_axes(node, "LayerNormalization", a, shape)) else 1
                          for k, d in enumerate(shape))
        for i, (src, hint, chain) in enumerate(
                ((s, "mean", [Step("MUL", [("src", 0), ("imm", 1.0 / n)])]), (inv, "inv", None)), start=1):
            if len(node.output) <= i or not node.output[i]:
                continue
            t = self.node_of(node, [View(src)], chain, small, f"{node.output[i]}.full", mag) if chain else src
            if lane in axes and shape[lane] > 1:  # every lane holds the value: keep lane 0 (hi + lo, ~22 bits)
                t = self.lane0_precise(node, t, small, node.output[i])
            self.values[node.output[i]] = (t, out_shape)

    def lane0_precise(self, node, t, shape, hint) -> str:
        """Lane 0 of t as a column: hi and lo (fp16_residual) through E[C, 1] on the MXM, added."""
        c = shape[lane_axis(shape)]
        e0 = lambda: np.eye(c, 1, dtype=np.float32)  # noqa: E731
        hi, _ = self.lane_matmul(node, t, shape, ("lane0", c), e0, f"{hint}.hi")
        lo = self.fp16_residual(node, t, shape, f"{hint}.lo", self.ir_magnitude(t))
        y, _ = self.lane_matmul(node, lo, shape, ("lane0", c), e0, hint,
                                [Step("ADD", [("acc",), ("src", 0)])], [hi])
        return y

    # ----- elementwise broadcasts of computed operands -----------------------------------------------------
    def broadcast_operand(self, node, name, shape, out_shape):
        """('src', tensor) holding the computed `name` (ONNX `shape`) broadcast to `out_shape`."""
        shape, out_shape = tuple(int(d) for d in shape), tuple(int(d) for d in out_shape)
        nd = len(out_shape)
        full = (1,) * (nd - len(shape)) + shape
        lane = lane_axis(out_shape)
        mag = self.tensor_magnitude(node, name)
        cur = name
        if full != shape and not same_layout(shape or (1,), full):
            if nd != 4:
                raise CompileError(f"{self.where(node)}: broadcasting {shape} to {out_shape}: the operand's "
                                   f"layout as a {nd}-D tensor differs from its own")
            # a lower-rank operand of an image: its lanes are the image's W axis; as the 5-D plain (1, N, C, H, W)
            # its rows and lanes are the stored ones, (1, N, H, W, C) the image's: one batched SXM transpose
            cur = self.permute(node, name, (1,) + full, [0, 1, 3, 4, 2], full, self.fresh("bcast"), mag)
        if full[lane] != out_shape[lane]:  # (..., 1) across the lanes: lane 0 to every lane (MXM)
            cur, _ = self.select_lanes(node, cur, full, np.zeros(out_shape[lane], dtype=np.int64),
                                       self.fresh("bcast"))
            self.derived[cur] = mag
            full = with_lanes(full, out_shape[lane])
        if full == out_shape or self.tensors[cur].rows == 1:
            return ("src", cur)
        view = self.row_view(cur, full, out_shape)
        if view.rows is None:  # the same rows (size-1 axes only differ)
            return ("src", cur)
        return ("src", self.node_of(node, [view], [Step("COPY", [("src", 0)])], out_shape, "bcast", mag))

    # ----- Reshape that regroups lanes (LayerNormalization/GroupNormalization expansions) -----------------------
    def reshape_regroup(self, node, x, shape, new) -> bool:
        """Any Reshape of a computed tensor, by SXM transposes (exact): an image first becomes the plain
        (1, N, C, H, W) (lanes W); the plain [R1, C1] then [R1 C1 / L, L] for L = gcd(C1, C2) (a transpose, then
        a batched one of the C1 / L blocks of L rows), then [R2, C2] (the same backwards); an image target last."""
        shape, new = tuple(int(d) for d in shape), tuple(int(d) for d in new)
        mag = self.tensor_magnitude(node, x)
        cur = x
        if len(shape) == 4:
            n, c, h, w = shape
            cur = self.permute(node, cur, (1, n, h, w, c), [0, 1, 4, 2, 3], (1, n, c, h, w), "plain", mag)
            r1, c1 = n * c * h, w
        else:
            r1, c1 = self.tensors[cur].rows, self.tensors[cur].cols
        plain = (1,) + new if len(new) == 4 else new
        c2 = plain[-1] if plain else 1
        r2 = r1 * c1 // c2
        lanes = int(np.gcd(c1, c2))
        if c1 != lanes:  # [r1, a*L] -> [r1*a, L]
            a_ = c1 // lanes
            t = self.permute(node, cur, (r1, c1), [1, 0], (c1, r1), "regroup", mag)
            cur = self.permute(node, t, (a_, lanes, r1), [2, 0, 1], (r1, a_, lanes), "regroup", mag)
        if c2 != lanes:  # [r2*b, L] -> [r2, b*L]
            b = c2 // lanes
            t = self.permute(node, cur, (r2, b, lanes), [1, 2, 0], (b, lanes, r2), "regroup", mag)
            cur = self.permute(node, t, (b * lanes, r2), [1, 0], (r2, c2), "regroup", mag)
        if len(new) == 4:
            n, c, h, w = new
            cur = self.permute(node, cur, (1, n, c, h, w), [0, 1, 3, 4, 2], new, node.output[0], mag)
        elif cur == x:
            self.values[node.output[0]] = (x, new)
            return True
        self.tensors[cur].shape = new
        self.values[node.output[0]] = (cur, new)
        return True

    # ----- Pow, one-input Max/Min ----------------------------------------------------------------------------
    def lower_pow_general(self, node, args) -> None:
        """a^b elementwise for a computed or non-scalar exponent (ONNX semantics, see the module docstring)."""
        shapes = [tuple(x[1].shape) if x[0] == "const" else tuple(x[2]) for x in args[:2]]
        out_shape = tuple(np.broadcast_shapes(*shapes))
        sources, refs = [], []
        for x in args[:2]:
            kind, v = self.operand(node, x, out_shape)
            if kind == "imm":
                refs.append(("imm", v))
            else:
                if View(v) not in sources:
                    sources.append(View(v))
                refs.append(("src", sources.index(View(v))))
        a_, b_ = refs
        mag = self.magnitudes.get(node.output[0], 0.0)
        # |a|^b, with log(|a| + 1) where b == 0 (x^0 = 1, 0^0 too)
        head = [Step("ABS", [a_]), Step("EQ", [b_, ("imm", 0.0)]), Step("ADD", [("step", 0), ("step", 1)]),
                Step("LOG", [("step", 2)]), Step("MUL", [b_, ("step", 3)]), Step("EXP", [("step", 4)])]
        if self.integer_typed(node.output[0]):  # whole results: the nearest whole number
            head += [Step("ADD", [("step", 5), ("imm", 0.5)]), Step("FLOOR", [("step", 6)])]
        p = self.node_of(node, sources, head, out_shape, f"{node.output[0]}.abs", mag, fusable=False)
        if args[0][0] == "const" and np.all(np.asarray(args[0][1]) >= 0):
            self.values[node.output[0]] = (p, out_shape)
            return
        # sign: -1 where a < 0 and b is odd (frac(b / 2) = 0.5); NaN where a < 0 and b is not whole (sqrt(-1))
        k = len(sources)
        srcs = sources + [View(p)]
        sign = [Step("LT", [a_, ("imm", 0.0)]), Step("MUL", [b_, ("imm", 0.5)]), Step("FLOOR", [("step", 1)]),
                Step("SUB", [("step", 1), ("step", 2)]), Step("MUL", [("step", 3), ("step", 0)]),
                Step("MUL", [("step", 4), ("imm", 4.0)]), Step("SUB", [("imm", 1.0), ("step", 5)]),
                Step("MUL", [("src", k), ("step", 6)])]
        signed = self.node_of(node, srcs, sign, out_shape, f"{node.output[0]}.signed", mag, fusable=False)
        srcs = sources + [View(signed)]
        nan = [Step("LT", [a_, ("imm", 0.0)]), Step("FLOOR", [b_]), Step("NE", [("step", 1), b_]),
               Step("MUL", [("step", 2), ("step", 0)]), Step("NEG", [("step", 3)]), Step("SQRT", [("step", 4)]),
               Step("ADD", [("src", k), ("step", 5)])]
        y = self.node_of(node, srcs, nan, out_shape, node.output[0], mag, fusable=False)
        self.values[node.output[0]] = (y, out_shape)

    def lower_one_input(self, node, args) -> None:
        """Max/Min of one input: the input itself (a graph output of it is copied by `finish`)."""
        if args[0] is None or args[0][0] != "value":
            raise CompileError(f"{self.where(node)}: {node.op_type} of one input of this kind ({args[0][0] if args[0] else 'absent'}) "
                               f"is not supported")
        self.values[node.output[0]] = self.values[node.input[0]]
