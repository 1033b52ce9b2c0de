"""Data movement without the SXM: lane selections on the MXM, row selections as address arithmetic.

* Lanes (channels of an image, the last axis otherwise): a constant 0/1 matrix moves lanes (`x @ P`): Slice,
  Split, Concat (each input placed at its offset and accumulated: y_k = x_k @ P_k + y_(k-1)), a channel shuffle
  (Reshape to 5-D, Transpose of the two channel groups, Reshape back), LRN's window sum across channels. Values
  pass through the MXM as fp16 (scaled as calibrated), which is exact for a matmul's own inputs and within fp16's
  rounding otherwise.
* Rows (every other axis): whole rows through row-map views (lower_rows.py: Slice/Split along any row axes with
  any steps, Concat along a row axis); an empty selection is a zero-size constant, which a Concat drops.
The SXM would move lanes without the fp16 rounding; the scheduler does not drive it yet.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Step
from lpusim.compiler.lower_lanes import lane_axis
from lpusim.errors import CompileError


def placement(c_in: int, c_out: int, offset: int, step: int = 1, count: int | None = None) -> np.ndarray:
    """P [c_in, c_out] with P[offset + i*step, i] = 1 (a selection) when c_out <= c_in, else placing."""
    count = c_out if count is None else count
    p = np.zeros((c_in, c_out), dtype=np.float32)
    i = np.arange(count)
    p[offset + i * step, i] = 1.0
    return p


class MoveLowering:
    """Mixed into the importer's `_Lowering` after LaneLowering."""

    def select_lanes(self, node, x, shape, cols: np.ndarray, out_name, steps=(), sources=()):
        """y[..., j] = x[..., cols[j]] on the MXM (cols may repeat; -1 gives 0)."""
        c = shape[lane_axis(shape)]
        key = ("sel", c, tuple(int(v) for v in cols))

        def make():
            p = np.zeros((c, len(cols)), dtype=np.float32)
            for j, v in enumerate(cols):
                if v >= 0:
                    p[v, j] = 1.0
            return p
        y, y_shape = self.lane_matmul(node, x, shape, key, make, out_name, steps, sources)
        self.derived.setdefault(y, self.magnitudes.get(node.input[0], 0.0))
        return y, y_shape

    def lower_concat(self, node, a, args):
        values = [x for x in args if x is not None]
        shapes = [tuple(x[1].shape) if x[0] == "const" else tuple(x[2]) for x in values]
        nd = len(shapes[0])
        axis = a.get("axis") % nd
        kept = [(x, s) for x, s in zip(values, shapes) if s[axis] != 0]  # an empty past (a KV cache) adds nothing
        if len(kept) == 1 and kept[0][0][0] == "value":
            self.values[node.output[0]] = (kept[0][0][1], kept[0][1])
            return
        values, shapes = [x for x, _ in kept], [s for _, s in kept]
        if axis != lane_axis(shapes[0]):  # whole rows one after another (lower_rows.py)
            return self.concat_rows(node, values, shapes, axis)
        total = sum(s[axis] for s in shapes)
        out_shape = tuple(total if i == axis else d for i, d in enumerate(shapes[0]))
        from lpusim.compiler.row_layout import as_matrix, to_rows
        consts = np.zeros(as_matrix(out_shape), dtype=np.float32)  # constant inputs, placed, added exactly
        parts, offset = [], 0
        for x, s in zip(values, shapes):
            if x[0] == "const":
                consts[:, offset:offset + s[axis]] = to_rows(np.asarray(x[1], np.float32), s)
            else:
                parts.append((x, s, offset))
            offset += s[axis]
        const_name = self.const_tensor(consts, "placed") if consts.any() else None
        mag = max(self.magnitudes.get(n, 0.0) for n in node.input if n)
        prev = None
        for k, (x, s, offset) in enumerate(parts):
            cols = -np.ones(total, dtype=np.int64)
            cols[offset:offset + s[axis]] = np.arange(s[axis])
            last = k == len(parts) - 1
            adds = ([prev] if prev is not None else []) + ([const_name] if last and const_name else [])
            steps = []
            for i in range(len(adds)):
                steps.append(Step("ADD", [("step", i - 1) if i else ("acc",), ("src", i)]))
            y, _ = self.select_lanes(node, x[1], s, cols, node.output[0] if last else "concat", steps, adds)
            self.derived[y] = mag
            self.tensors[y].shape = out_shape
            prev = y
        self.values[node.output[0]] = (prev, out_shape)

    def const_input(self, array, shape) -> str:
        from lpusim.compiler.row_layout import to_rows
        return self.add_tensor(self.fresh("c"), shape, "const", to_rows(np.asarray(array, np.float32), shape))

    def lower_slice(self, node, a, args):
        _, x, shape = args[0]
        nd = len(shape)
        if len(args) > 1:  # opset >= 10: starts, ends, axes, steps are inputs
            vals = [None if i >= len(args) or args[i] is None else np.asarray(args[i][1]).ravel() for i in range(1, 5)]
            if any(v is None and i < 2 for i, v in enumerate(vals)) or any(
                    args[i] is not None and args[i][0] != "const" for i in range(1, len(args))):
                raise CompileError(f"{self.where(node)}: Slice starts/ends/axes/steps must be constant")
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
        self.emit_selection(node, x, shape, ranges)

    def emit_selection(self, node, x, shape, ranges: dict):
        """out = x restricted to index sequences per axis: rows by a row-map copy (lower_rows.py), then lanes on
        the MXM."""
        out_shape = tuple(len(ranges[i]) if i in ranges else d for i, d in enumerate(shape))
        if not ranges:
            self.values[node.output[0]] = (x, tuple(shape))
            return
        if any(len(r) == 0 for ax, r in ranges.items() if ax != lane_axis(shape)):
            if any(o.name == node.output[0] for o in self.model.graph.output):
                raise CompileError(f"{self.where(node)}: an empty selection (a zero-size graph output)")
            self.consts[node.output[0]] = np.zeros(out_shape, dtype=np.float32)  # no values: a Concat drops it
            return
        lane = lane_axis(shape)
        cur, cur_shape = x, tuple(shape)
        row_axes = [i for i in ranges if i != lane]
        if row_axes:  # whole rows, any steps (lower_rows.py)
            cur, cur_shape = self.select_rows(node, cur, cur_shape, {k: ranges[k] for k in row_axes},
                                              node.output[0] if lane not in ranges else "rows")
        if lane in ranges:
            idx = ranges[lane]
            cur, cur_shape = self.select_lanes(node, cur, cur_shape, np.array(list(idx)), node.output[0])
        self.tensors[cur].shape = out_shape
        self.values[node.output[0]] = (cur, out_shape)

    def lower_split(self, node, a, args):
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
            self.emit_selection(_Renamed(node, out), x, shape, {axis: range(start, start + size)})
            start += size

    def lower_lrn(self, node, a, args):
        _, x, shape = args[0]
        if len(shape) != 4:
            raise CompileError(f"{self.where(node)}: LRN needs an NCHW image")
        size, alpha = int(a["size"]), float(a.get("alpha", 1e-4))
        beta, bias = float(a.get("beta", 0.75)), float(a.get("bias", 1.0))
        c = shape[1]
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        band = lambda: np.array([[1.0 if n - lo <= k <= n + hi else 0.0 for n in range(c)]  # noqa: E731
                                 for k in range(c)], dtype=np.float32)
        sq = self.vector(node, [x], [Step("MUL", [("src", 0), ("src", 0)])], shape, "sq")
        self.derived[sq] = (2.0 * self.magnitudes.get(node.input[0], 0.0)) ** 2
        # y = x * exp(-beta * log(bias + alpha/size * window sum of x^2))
        steps = [Step("MUL", [("acc",), ("imm", alpha / size)]), Step("ADD", [("step", 0), ("imm", bias)]),
                 Step("LOG", [("step", 1)]), Step("MUL", [("step", 2), ("imm", -beta)]), Step("EXP", [("step", 3)]),
                 Step("MUL", [("src", 0), ("step", 4)])]
        y, _ = self.lane_matmul(node, sq, shape, ("lrn", c, size), band, node.output[0], steps, [x])
        self.values[node.output[0]] = (y, tuple(shape))

    # ----- a channel shuffle: Reshape [N,C,H,W] -> [N,g,C/g,H,W], Transpose(0,2,1,3,4), Reshape back -----------
    def grouped_reshape(self, node, ir_name, shape, new) -> bool:
        n, c, h, w = shape
        if len(new) == 5 and new[0] == n and tuple(new[3:]) == (h, w) and new[1] * new[2] == c:
            self.grouped[node.output[0]] = (ir_name, tuple(shape), (int(new[1]), int(new[2])), False)
            return True
        return False

    def lower_grouped_transpose(self, node, a):
        ir_name, shape, groups, swapped = self.grouped[node.input[0]]
        if list(a.get("perm", [])) != [0, 2, 1, 3, 4]:
            raise CompileError(f"{self.where(node)}: only the channel-shuffle Transpose perm=[0,2,1,3,4] of a "
                               f"5-D view of an image is supported")
        self.grouped[node.output[0]] = (ir_name, shape, groups, not swapped)

    def finish_grouped(self, node, new) -> None:
        ir_name, shape, (g1, g2), swapped = self.grouped[node.input[0]]
        if tuple(new) != tuple(shape):
            raise CompileError(f"{self.where(node)}: a 5-D view of an image must be reshaped back to {shape}")
        if not swapped:
            self.values[node.output[0]] = (ir_name, tuple(shape))
            return
        # after the transpose, channel j*g1 + i holds input channel i*g2 + j
        cols = np.array([i * g2 + j for j in range(g2) for i in range(g1)])
        y, _ = self.select_lanes(node, ir_name, shape, cols, node.output[0])
        self.values[node.output[0]] = (y, tuple(shape))


class _Renamed:
    """A node seen through one of its outputs (Split emits one selection per output)."""

    def __init__(self, node, output):
        self._node, self.output = node, [output]

    def __getattr__(self, name):
        return getattr(self._node, name)
