"""Embedding lookups by MEM GATHER: Gather along axis 0 of a constant table [V, H] with computed ids.

The chip copies whole table rows byte for byte (docs/isa.md section 4, `GATHER S, M`: lane l reads the byte at
address map[l] of its own column; an entry >= mem_words reads 0). The scheduler (schedule/lookup.py) stores the
table in f32 as *groups*: per column tile, rows 8192k .. 8192k + 8191 of the table at addresses 0.. of their own
`width` slices, so the map that fetches row `id` from group k is `id - 8192k` in every lane; ids of other groups
give an address below 0 (read as u16: 65536 - ..., past the slice) or past 8191, which read 0, and the groups'
rows are ORed on the VXM. The lowering here only makes the ids: an i32 column [n, 1] holding, per output row,
`id + V * (id < 0)` (negative ids count from the end) where that lies in 0..V-1 and -1 otherwise (out of range:
a zero row, as the one-hot path gives; onnxruntime refuses such ids).

Rule (`lookup_fits`): the GATHER path takes a constant 2-D table gathered along axis 0 whose ids can be laid out
one per row (a graph input, a computed [.., 1] column, or one computed row of at most 320: gather_ids_column),
with a result of at most 3 dimensions and V <= MAX_LOOKUP_ROWS. Everything else keeps the one-hot matmul of
index.py (computed data, a Gather along the lanes, 4-D results).
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.index import gather_ids_column
from lpusim.compiler.lower.lanes import vector

# Integer ids reach the chip as float32 (runtime.host_layout refuses |id| > 2^24): a table of more rows than that
# could not be addressed exactly.
MAX_LOOKUP_ROWS = 2 ** 24


def lookup_fits(lw, node, a, args) -> bool:
    """Whether the Gather is an embedding lookup the GATHER path takes (the module docstring's rule)."""
    data, idx = args[0], args[1]
    if data[0] != "const" or idx[0] != "value" or np.asarray(data[1]).ndim != 2 or a.get("axis", 0) % 2 != 0:
        return False
    v, _ = np.asarray(data[1]).shape
    ishape = tuple(idx[2])
    n = int(np.prod(ishape, dtype=np.int64))
    if not 0 < v <= MAX_LOOKUP_ROWS or n == 0 or len(ishape) + 1 > 3:
        return False
    t = lw.tensors[idx[1]]
    return (t.kind == "input" and t.im2col is None) or (t.rows, t.cols) == (n, 1) or \
        ((t.rows, t.cols) == (1, n) and n <= 320)


def lower_gather_lookup(lw, node, a, args) -> None:
    """ids -> the i32 id column (VXM) -> a `lookup` node: out[i] = table[ids[i]] (schedule/lookup.py)."""
    table = np.asarray(args[0][1], dtype=np.float32)
    v, h = table.shape
    _, ids, ishape = args[1]
    ishape = tuple(ishape)
    n = int(np.prod(ishape, dtype=np.int64))
    col = gather_ids_column(lw, node, ids, ishape)
    # id + V * (id < 0), clamped to -1 .. V, and V (too large) made -1: every id out of range reads no group
    steps = [Step("LT", [("src", 0), ("imm", 0.0)]), Step("MUL", [("step", 0), ("imm", float(v))]),
             Step("ADD", [("src", 0), ("step", 1)]), Step("MAX", [("step", 2), ("imm", -1.0)]),
             Step("MIN", [("step", 3), ("imm", float(v))]), Step("GE", [("step", 4), ("imm", float(v))]),
             Step("MUL", [("step", 5), ("imm", float(-(v + 1)))]), Step("ADD", [("step", 4), ("step", 6)]),
             Step("CVT", [("step", 7)], "f32.i32")]
    rows = vector(lw, node, [col], steps, (n, 1), "lookupids")
    lw.tensors[rows].dtype = "i32"
    lw.derived[rows] = float(v)
    t = lw.const_tensor(table, "table")
    out_shape = ishape + (h,)
    out = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
    lw.nodes.append(Node("lookup", node.name or node.output[0], node.op_type, out,
                         sources=[View(rows), View(t)], fusable=False))
    lw.derived[out] = float(np.max(np.abs(table), initial=0.0))
    lw.values[node.output[0]] = (out, out_shape)
