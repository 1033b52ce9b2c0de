"""A computed [R, C] matrix flattened to one column [R*C, 1] and gathered back, as exported attention masks do.

transformers' mask code (BertModel, GPT2Model with an `attention_mask`) turns the [B, S] mask into [B*S, 1]
(Flatten), picks entries with constant indices (Gather axis 0, indices b*S + k of shape [B, 1, 1, S]), and
reshapes the result to [B*S] and then [B, 1, 1, S]. On the chip a column of B*S rows would be a transpose of the
matrix, and the Gather a row gather: instead the column is kept as a *flat-rows value* (no data moves): the IR
matrix [R, C] plus, per entry of the ONNX tensor, which flat element (r*C + c) of the matrix it holds. A Gather
with constant indices composes that map; a Reshape whose rows of C lanes each read one whole row of the matrix in
lane order turns it back into a matrix: the matrix itself (rows in order) or a VXM copy through a row-map view
(rows picked, repeated or reordered). Anything else is a CompileError saying why. (At R = 1 the column is one
vector and importer.lower_reshape transposes it on the SXM, as before.)
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.errors import CompileError


class FlatRowsLowering:
    """Mixed into the importer's `_Lowering`: `flatrows` holds ONNX name -> (IR matrix, C, flat index per entry,
    ONNX shape)."""

    def flatten_rows(self, node, ir_name: str, shape: tuple, new: tuple) -> bool:
        """A Flatten/Reshape of a computed [R, C] matrix (R > 1, no image) to a column [R*C, 1] or [R*C]."""
        t = self.tensors[ir_name]
        n = t.rows * t.cols
        if t.kind != "value" or t.geom is not None or t.rows < 2 or t.cols < 2 \
                or tuple(new) not in ((n, 1), (n,)) or int(np.prod(shape)) != n:
            return False
        self.flatrows[node.output[0]] = (ir_name, t.cols, np.arange(n, dtype=np.int64), tuple(new))
        return True

    def lower_flatrows(self, node, op: str, a: dict, args: list) -> None:
        name = node.input[0]
        if args[0] is None or args[0][0] != "flatrows" or any(x is not None and x[0] == "flatrows"
                                                              for x in args[1:]):
            raise CompileError(f"{self.where(node)}: input '{args[0][1] if args[0] else name}' is a matrix "
                               f"flattened to one column, which only a Gather (axis 0, constant indices) or a "
                               f"Reshape can read")
        ir_name, c, idx, shape = self.flatrows[name]
        if op == "Gather":
            return self.gather_flatrows(node, a, args, ir_name, c, idx, shape)
        if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"):
            new = shape if op == "Identity" else self.reshape_target(node, a, args, shape)
            rows = self.flat_matrix_rows(idx, c, new)
            if rows is None:  # not yet rows of whole matrix rows: still a flat-rows value
                self.flatrows[node.output[0]] = (ir_name, c, idx, tuple(new))
                return
            t = self.tensors[ir_name]
            if rows == list(range(t.rows)):
                base = ir_name
            else:  # rows picked, repeated or reordered: a VXM copy through a row-map view (exact)
                base = self.add_tensor(self.fresh(node.output[0]), (len(rows), c), "value")
                self.nodes.append(Node("vector", node.name or node.output[0], op, base,
                                       sources=[View(ir_name, rows=tuple(rows))], steps=[Step("COPY", [("src", 0)])]))
                self.derived[base] = self.tensor_magnitude(node, ir_name)
            if op == "Identity" or (len(new) == 2 and tuple(new) == (len(rows), c)):
                self.values[node.output[0]] = (base, tuple(new))
                return
            return self.lower_reshape(node, op if op != "Identity" else "Reshape", a,
                                      [("value", base, (len(rows), c))] + list(args[1:]))
        raise CompileError(f"{self.where(node)}: input '{name}' is a [{idx.size}, 1] column flattened from a "
                           f"computed matrix of {c} lanes; {op} of it is not supported (only a Gather along "
                           f"axis 0 with constant indices, and a Reshape back to rows of {c} lanes)")

    def gather_flatrows(self, node, a, args, ir_name, c, idx, shape) -> None:
        axis = int(a.get("axis", 0))
        axis = axis + len(shape) if axis < 0 else axis
        if args[1] is None or args[1][0] != "const":
            raise CompileError(f"{self.where(node)}: a Gather from a matrix flattened to one column needs constant "
                               f"indices (computed ones are not supported)")
        if axis != 0 or int(np.prod(shape[1:], dtype=np.int64)) != 1:
            raise CompileError(f"{self.where(node)}: a Gather from a matrix flattened to shape {shape} is only "
                               f"supported along axis 0 of a column (axis {a.get('axis', 0)})")
        ids = np.asarray(args[1][1], dtype=np.int64)
        n = idx.size
        if ids.size == 0 or ids.min() < -n or ids.max() >= n:
            raise CompileError(f"{self.where(node)}: Gather indices out of range for {n} rows (or empty)")
        ids = np.where(ids < 0, ids + n, ids)
        new = tuple(int(v) for v in ids.shape) + tuple(shape[1:])
        self.flatrows[node.output[0]] = (ir_name, c, idx[ids.reshape(-1)], new)

    @staticmethod
    def flat_matrix_rows(idx: np.ndarray, c: int, new: tuple) -> list | None:
        """The matrix row each row of `new` (last axis on the lanes) reads, when every such row is one whole row
        of the matrix in lane order; else None."""
        if not new or int(new[-1]) != c or idx.size % c:
            return None
        m = idx.reshape(-1, c)
        if not np.all(m % c == np.arange(c)) or not np.all(m // c == (m[:, :1] // c)):
            return None
        return [int(v) for v in m[:, 0] // c]
