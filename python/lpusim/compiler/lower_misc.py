"""Pad, Expand, Tile, Gather (constant indices) and the Einsum forms attention uses, built from the other lowerings.

* Pad: constant 0 on the two spatial axes of an image is a copy through a view whose taps start before the image,
  so the zero border of the input's store fills the new edge (like a convolution's padding); every other form (any
  value, reflect, edge, wrap, an axes input, any rank and axis, negative pads) is rows by row maps and lanes on the
  MXM (lower_rows.pad_any).
* Expand: a row broadcast is a view that reads one row for every row; a (..., 1) column goes across the lanes on
  the MXM (importer.operand).
* Tile along row axes: a row map (lower_rows.tile_rows). Tile along the lanes and Gather with constant indices
  along the lanes: MXM selections (lower_moves.py); Gather with constant indices along a row axis: a row-map view
  (lower_gather.py); with computed indices: lower_index.py (a constant table) and lower_gather.py.
* Einsum "...qd,...kd->...qk" (Q K^T) and "...qk,...kd->...qd" (P V): a Transpose and/or a MatMul.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower_lanes import lane_axis
from lpusim.errors import CompileError


class MiscLowering:
    """Mixed into the importer's `_Lowering`."""

    def lower_pad(self, node, a, args):
        _, x, shape = args[0]
        pads = a.get("pads")
        if pads is None and len(args) > 1 and args[1] is not None:
            if args[1][0] != "const":
                raise CompileError(f"{self.where(node)}: Pad needs constant pads")
            pads = [int(v) for v in np.asarray(args[1][1]).ravel()]
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        value = float(a.get("value", 0.0))  # opset < 11: an attribute
        if len(args) > 2 and args[2] is not None:
            value = float(np.asarray(args[2][1]).reshape(())) if args[2][0] == "const" else None
        nd = len(shape)
        if len(args) > 3 and args[3] is not None:  # opset 18: pads name only these axes
            if args[3][0] != "const":
                raise CompileError(f"{self.where(node)}: Pad needs constant axes")
            axes = [int(v) % nd for v in np.asarray(args[3][1]).ravel()]
            full = [0] * (2 * nd)
            for i, ax in enumerate(axes):
                full[ax], full[nd + ax] = pads[i], pads[len(axes) + i]
            pads = full
        begin, end = list(pads[:nd]), list(pads[nd:])
        if mode not in ("constant", "reflect", "edge", "wrap"):
            raise CompileError(f"{self.where(node)}: Pad mode={mode} is not an ONNX mode")
        if value is None:
            raise CompileError(f"{self.where(node)}: Pad needs a constant pad value")
        if mode != "constant" or value != 0.0 or nd != 4 or any(begin[:2]) or any(end[:2]) or min(pads) < 0:
            # any mode, value, axes and crops: row maps and lane moves (lower_rows.py)
            return self.pad_any(node, x, tuple(shape), begin, end, mode, value)
        # constant 0 on an image's two spatial axes: one copy through a view reading the zero border
        n, c, h, w = shape
        out_shape = (n, c, h + begin[2] + end[2], w + begin[3] + end[3])
        out = self.add_tensor(self.fresh(node.output[0]), out_shape, "value")
        view = View(x, stride=1, pad_top=begin[2], pad_left=begin[3], spatial=True)
        self.nodes.append(Node("vector", node.name or node.output[0], "Pad", out, sources=[view],
                               steps=[Step("COPY", [("src", 0)])]))
        self.values[node.output[0]] = (out, out_shape)

    def lower_expand(self, node, args):
        x, target = args[0], args[1]
        if target[0] != "const":
            raise CompileError(f"{self.where(node)}: Expand needs a constant shape")
        shape = tuple(x[1].shape) if x[0] == "const" else tuple(x[2])
        out_shape = tuple(np.broadcast_shapes(shape, tuple(int(v) for v in np.asarray(target[1]).ravel())))
        if out_shape == shape and x[0] == "value":
            self.values[node.output[0]] = (x[1], shape)
            return
        # x * 1 at the output shape: the operand rules do the row and lane broadcasts
        self.emit_binary(node, "MUL", x, ("const", np.ones(out_shape, np.float32)), node.output[0])

    def lower_tile(self, node, args):
        _, x, shape = args[0]
        if args[1][0] != "const":
            raise CompileError(f"{self.where(node)}: Tile needs constant repeats")
        reps = [int(v) for v in np.asarray(args[1][1]).ravel()]
        lane = lane_axis(shape)
        if any(r != 1 for i, r in enumerate(reps) if i != lane):  # rows repeated: a row map (lower_rows.py)
            return self.tile_rows(node, x, tuple(shape), reps)
        c = shape[lane]
        y, y_shape = self.select_lanes(node, x, tuple(shape), np.tile(np.arange(c), reps[lane]), node.output[0])
        self.values[node.output[0]] = (y, y_shape)

    def lower_gather(self, node, a, args):
        data, idx = args[0], args[1]
        if idx[0] != "const":
            return self.lower_gather_computed(node, a, args)  # one-hot rows @ table (lower_index.py)
        _, x, shape = data
        nd = len(shape)
        axis = a.get("axis", 0) % nd
        ind = np.asarray(idx[1]).astype(np.int64)
        if axis != lane_axis(shape):
            # along a row axis: whole rows in any order (repeats, descending, negative): a row-map view
            return self.gather_rows_const(node, x, tuple(shape), axis, ind)  # (lower_gather.py)
        ind = np.where(ind < 0, ind + shape[axis], ind)
        out_shape = tuple(shape[:axis]) + tuple(ind.shape) + tuple(shape[axis + 1:])
        if ind.ndim != 1 or nd == 4:  # index rows, a 4-D result, a scalar: rows and lane patterns (lower_gather.py)
            return self.gather_const_lanes(node, x, tuple(shape), axis, ind)
        y, _ = self.select_lanes(node, x, tuple(shape), ind.ravel(), node.output[0])
        self.tensors[y].shape = out_shape
        self.values[node.output[0]] = (y, out_shape)

    def lower_einsum(self, node, a, args):
        eq = a["equation"].decode() if isinstance(a["equation"], bytes) else a["equation"]
        eq = eq.replace(" ", "")
        lhs, rhs = eq.split("->")
        ins = lhs.split(",")
        if len(ins) != 2 or len({len(s) for s in ins + [rhs]}) != 1:
            raise CompileError(f"{self.where(node)}: Einsum '{eq}' is not supported yet (two operands, the "
                               f"attention forms ...qd,...kd->...qk and ...qk,...kd->...qd)")
        p, q = ins
        batch = p[:-2]
        if q[:-2] != batch or rhs[:-2] != batch:
            raise CompileError(f"{self.where(node)}: Einsum '{eq}' with different batch letters is not supported")
        i, k = p[-2:]
        if q[-2:] == (rhs[-1] + k) and rhs[-2:] == i + rhs[-1]:  # x @ y^T
            transposed = True
        elif q[-2:] == (k + rhs[-1]) and rhs[-2:] == i + rhs[-1]:  # x @ y
            transposed = False
        else:
            raise CompileError(f"{self.where(node)}: Einsum '{eq}' is not a matrix product of the supported forms")
        import onnx
        second = node.input[1]
        nodes = []
        if transposed:
            nd = len(q)
            perm = list(range(nd - 2)) + [nd - 1, nd - 2]
            second = f"{node.output[0]}@einsum.T"
            nodes.append(onnx.helper.make_node("Transpose", [node.input[1]], [second], perm=perm, name=node.name))
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], second], list(node.output), name=node.name))
        for sub in nodes:
            self.lower(sub)

