"""Lowerings that work across the lanes of a row: Softmax, LayerNormalization, and the lane sums, maxima and
minima the reductions (lower_reduce.py) use.

A row's elements sit on the lanes of one vector, so a reduction over the last axis (the channel axis of an image)
crosses lanes. lpusim does it on the MXM with constant 0/1 matrices, using only the matmul and vector node kinds:
* sum: `x @ ones[C, C]` puts the row sum in every lane (the accumulator adds exactly; x enters as fp16);
* max/min: `m = x @ I` (x's fp16 values, the same in every lane's view), then a tree of `ceil(log2 C)` steps
  `m = MAX(m, m @ R_s)` where `R_s` rotates the C lanes cyclically by s = 1, 2, 4, ...: after the last step every
  lane holds the row's maximum. `m @ R_s` moves fp16 values exactly,
  so the result is the maximum of x's fp16-rounded values (within fp16's rounding of the true maximum);
* a reduction that keeps one column (`keepdims`) reads lane 0 through `E[C, 1]`.
The SXM (shift/permute) could do the rotations without rounding and in fewer cycles; the scheduler does not
drive the SXM yet.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.frontend.calibrate import scale_exponent
from lpusim.compiler.ir import Node, Step, View
from lpusim.errors import CompileError

LANES = 320  # tsp_v1's vector length: the tile the padding lanes of a sum fill up to
UP = 2048.0  # fp16_residual(up=True): the residual scaled to its source's size


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


class LaneLowering:
    """Mixed into the importer's `_Lowering` (which provides tensors, nodes, values, fresh, add_tensor)."""

    def shared_const(self, key, make) -> str:
        """One constant per key (ones matrices, rotations): weight tiles are stored once."""
        cache = self.__dict__.setdefault("_shared_consts", {})
        if key not in cache:
            cache[key] = self.const_tensor(make(), str(key[0]))
        return cache[key]

    def lane_matmul(self, node, x: str, shape: tuple, wkey, make_w, hint: str, steps=(), sources=(),
                    out_cols: int | None = None) -> tuple:
        """A matmul node `x @ W` (W constant [C, N], shared by key) with an epilogue; returns (name, shape).
        `out_cols` < N: W's extra columns only fill the output's padding lanes (of its last 320-lane tile)."""
        w = self.shared_const(wkey, make_w)
        out_shape = with_lanes(shape, out_cols or self.tensors[w].cols)
        out = self.add_tensor(self.fresh(hint), out_shape, "value")
        self.nodes.append(Node("matmul", node.name or node.output[0], node.op_type, out,
                               sources=[View(s) for s in sources], steps=list(steps), terms=[(View(x), w)]))
        return out, out_shape

    def vector(self, node, sources: list, steps: list, shape: tuple, hint: str) -> str:
        out = self.add_tensor(self.fresh(hint), shape, "value")
        self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out,
                               sources=[View(s) for s in sources], steps=steps))
        return out

    # ----- f32-accurate sums through the fp16 MXM ------------------------------------------------------------
    def precise_sums(self) -> bool:
        """Whether sums and attention products split their fp16 operands into hi + lo (`fp16_residual`): for
        quantised models (any QuantizeLinear/DequantizeLinear), whose reference (onnxruntime) keeps Softmax,
        LayerNormalization and the attention matmuls in float32, so that the QuantizeLinear after them lands on
        its codes. fp16 models keep one pass (the fp16 rule judges them)."""
        if "_precise_sums" not in self.__dict__:
            self._precise_sums = any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                                     for n in self.model.graph.node)
        return self._precise_sums

    def ir_magnitude(self, ir_name: str) -> float:
        """The expected max |value| of an IR tensor, as scale_fp16 will see it (derived, else calibrated)."""
        if ir_name in self.derived:
            return self.derived[ir_name]
        onnx_name = next((k for k, v in self.values.items() if v and v[0] == ir_name), None)
        return self.magnitudes.get(onnx_name, 0.0) if onnx_name else 0.0

    def fp16_residual(self, node, x: str, shape: tuple, hint: str, magnitude: float | None = None,
                      up: bool = False) -> str:
        """lo = x - hi, hi being x's value as its fp16 copy holds it (fp16(x * 2^-k) * 2^k, k from x's magnitude
        as scale_fp16 chooses it): |lo| <= 2^-11 |x|, and its own fp16 copy (scaled for magnitude * 2^-11) keeps
        11 more bits, so hi @ W + lo @ W carries ~22 significant bits of x where x @ W carries 11."""
        if magnitude is None:
            magnitude = self.ir_magnitude(x)
        k = scale_exponent(magnitude)
        if k:
            steps = [Step("MUL", [("src", 0), ("imm", float(2.0 ** -k))]), Step("CVT", [("step", 0)], "f32.f16"),
                     Step("MUL", [("step", 1), ("imm", float(2.0 ** k))]), Step("SUB", [("src", 0), ("step", 2)])]
        else:
            steps = [Step("CVT", [("src", 0)], "f32.f16"), Step("SUB", [("src", 0), ("step", 0)])]
        if up:  # lo * 2^11 (`UP`): as large as x, for moves that keep x's fp16 scale (selections, concats)
            steps.append(Step("MUL", [("step", len(steps) - 1), ("imm", UP)]))
        lo = self.vector(node, [x], steps, tuple(shape), hint)
        self.tensors[lo].shape = self.tensors[x].shape
        self.derived[lo] = magnitude * (1.0 if up else 2.0 ** -11)
        return lo

    def lane_sum(self, node, x, shape, scale=1.0, hint="sum", steps=(), sources=(), magnitude=None):
        """Row sums (times `scale`) in every lane, then `steps` (whose step 0 is that sum) as the epilogue.
        With `precise_sums`, two passes: hi's sums, then lo's (`fp16_residual`) added in the second's epilogue."""
        c = shape[lane_axis(shape)]
        padded = -(-c // LANES) * LANES
        ones = lambda: np.ones((c, padded), np.float32)  # noqa: E731
        acc, shift = ("acc",), 1
        if self.precise_sums():
            hi, _ = self.lane_matmul(node, x, shape, ("ones", c), ones, f"{hint}.hi", out_cols=c)
            x = self.fp16_residual(node, x, shape, f"{hint}.lo", magnitude)
            sources = list(sources) + [hi]
            pre = [Step("ADD", [("acc",), ("src", len(sources) - 1)])]
            acc, shift = ("step", 0), 2
        else:
            pre = []
        first = [Step("MUL", [acc, ("imm", float(scale))])] if scale != 1.0 else [Step("COPY", [acc])]
        rest = [Step(s.op, [("step", shift - 1) if a == ("sum",) else ("step", a[1] + shift) if a[0] == "step"
                            else a for a in s.args]) for s in steps]
        if pre:
            return self.lane_matmul(node, x, shape, ("ones", c), ones, hint, pre + first + rest, sources,
                                    out_cols=c)
        # The sum also fills the padding lanes up to the 320-lane tile boundary: padding lanes hold 0, and
        # what follows a sum (a division, a logarithm, a reciprocal square root) must not turn them into
        # inf or NaN, which a later matmul would multiply by its zero weight rows into NaN.
        return self.lane_matmul(node, x, shape, ("ones", c), ones, hint,
                                first + rest if (rest or scale != 1.0) else [], sources, out_cols=c)

    def lane_extreme(self, node, x, shape, op, hint="max", magnitude=None):
        """Row max (op MAX) or min (MIN) in every lane: the rotation tree (`magnitude`: of x, for fp16 scales)."""
        if magnitude is None:
            magnitude = self.magnitudes.get(node.input[0], 0.0)
        c = shape[lane_axis(shape)]
        self.tensors[x].f16_saturate = True  # an inf in a rotation's input would make the whole row NaN
        # Every lane must compare the same (fp16-rounded) values, or each lane keeps its own unrounded value and
        # the lanes disagree on the maximum: start from x's fp16 copy, read back through the identity.
        m, _ = self.lane_matmul(node, x, shape, ("eye", c), lambda: np.eye(c, dtype=np.float32), f"{hint}0")
        self.derived[m] = magnitude
        self.tensors[m].f16_saturate = True
        s = 1
        while s < c:
            m, _ = self.lane_matmul(node, m, shape, (f"rot{s}", c), lambda s=s: rotation(c, s), f"{hint}{s}",
                                    [Step(op, [("acc",), ("src", 0)])], [m])
            self.derived[m] = magnitude
            self.tensors[m].f16_saturate = True
            s *= 2
        return m

    def keep_lane0(self, node, x, shape, out_onnx):
        c = shape[lane_axis(shape)]
        e0 = lambda: np.eye(c, 1, dtype=np.float32)  # noqa: E731
        out, out_shape = self.lane_matmul(node, x, shape, ("lane0", c), e0, out_onnx)
        return out, out_shape

    # ----- ONNX ops ---------------------------------------------------------------------------------------
    def _check_lane_axis(self, node, shape, axis):
        nd = len(shape)
        if axis is None or not -nd <= axis < nd or axis % nd != lane_axis(shape):
            where = "the channel axis (1)" if nd == 4 else "the last axis"
            raise CompileError(f"{self.where(node)}: reducing over axis {axis} of a {nd}-D tensor is not "
                               f"supported yet (only {where}, which lies across the lanes)")

    def lower_softmax(self, node, op, a, args):
        _, x, shape = args[0]
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        axis = a.get("axis", -1 if opset >= 13 else 1)
        if opset < 13:  # the axes from `axis` on are flattened: fine when only the lane axis among them is > 1
            axis %= len(shape)
            lane = lane_axis(shape)
            if lane < axis or int(np.prod(shape[axis:])) != shape[lane]:
                raise CompileError(f"{self.where(node)}: opset-{opset} {op} flattens axes {axis}.. of "
                                   f"{tuple(shape)}; only a flattening that leaves the lane axis is supported")
            axis = lane
        self._check_lane_axis(node, shape, axis)
        # Shift by the row maximum so exp stays in range (any shift gives the same softmax). The tree finds the
        # maximum of fp16-rounded values, within 2^-11 of the largest magnitude r: while that error could push
        # exp(x - m) past fp16 (r > 2^12), shift by that estimate and search again, the error shrinking 2^10-fold
        # per pass (onnx's light_* models have logits near 1e19: six passes).
        # r: the scale of the row maxima (the largest value, not the largest magnitude: a -1e38 attention mask
        # never wins the maximum)
        top = self.magnitudes.get(node.input[0] + "#max")
        r = 2.0 * (abs(top) if top is not None else self.magnitudes.get(node.input[0], 0.0))
        r = min(r, 2.0 ** 128)
        if x in self.derived:  # a per-head part only the maximum search reads in fp16: scale its copy by r
            self.derived[x] = r
        m = self.lane_extreme(node, x, shape, "MAX", magnitude=r)
        while r > 2.0 ** 12:
            x = self.vector(node, [x, m], [Step("SUB", [("src", 0), ("src", 1)])], shape, "shifted")
            r *= 2.0 ** -10
            self.derived[x] = r
            m = self.lane_extreme(node, x, shape, "MAX", magnitude=r)
        sub = [Step("SUB", [("src", 0), ("src", 1)])]
        if op == "Softmax":
            e = self.vector(node, [x, m], sub + [Step("EXP", [("step", 0)])], shape, "exp")
            self.derived[e] = 1.0
            y, _ = self.lane_sum(node, e, shape, hint=node.output[0],
                                 steps=[Step("DIV", [("src", 0), ("sum",)])], sources=[e], magnitude=1.0)
        else:  # LogSoftmax: (x - m) - log(sum exp(x - m))
            d = self.vector(node, [x, m], sub, shape, "shifted")
            e = self.vector(node, [d], [Step("EXP", [("src", 0)])], shape, "exp")
            y, _ = self.lane_sum(node, e, shape, hint=node.output[0],
                                 steps=[Step("LOG", [("sum",)]), Step("SUB", [("src", 0), ("step", 0)])],
                                 sources=[d])
        self.values[node.output[0]] = (y, tuple(shape))

    def lower_layernorm(self, node, a, args):
        _, x, shape = args[0]
        axis = a.get("axis", -1)
        self._check_lane_axis(node, shape, axis)
        if len(node.output) > 1 and any(node.output[1:]):
            raise CompileError(f"{self.where(node)}: the Mean and InvStdDev outputs are not supported")
        c = shape[lane_axis(shape)]
        mean, _ = self.lane_sum(node, x, shape, 1.0 / c, "mean", magnitude=self.magnitudes.get(node.input[0]))
        d = self.vector(node, [x, mean], [Step("SUB", [("src", 0), ("src", 1)])], shape, "centred")
        sq = self.vector(node, [d], [Step("MUL", [("src", 0), ("src", 0)])], shape, "sq")
        self.derived[sq] = (2.0 * self.magnitudes.get(node.input[0], 0.0)) ** 2
        steps = [Step("ADD", [("sum",), ("imm", float(a.get("epsilon", 1e-5)))]), Step("RSQRT", [("step", 0)]),
                 Step("MUL", [("src", 0), ("step", 1)])]
        sources = [d]
        for i, arg in ((1, args[1] if len(args) > 1 else None), (2, args[2] if len(args) > 2 else None)):
            if arg is None:
                continue
            kind, v = self.operand(node, arg, tuple(shape))
            last = ("step", len(steps) - 1)
            if kind == "imm":
                steps.append(Step("MUL" if i == 1 else "ADD", [last, ("imm", v)]))
            else:
                sources.append(v)
                steps.append(Step("MUL" if i == 1 else "ADD", [last, ("src", len(sources) - 1)]))
        y, _ = self.lane_sum(node, sq, shape, 1.0 / c, node.output[0], steps, sources, magnitude=self.derived[sq])
        self.values[node.output[0]] = (y, tuple(shape))
