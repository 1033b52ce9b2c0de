"""One ONNX node to IR: `lower` (the dispatcher every node, and every sub-node a lowering builds, goes through).

`lower_node` first lets the int8 lowering take the node (quant.py), then folds what depends on constants alone,
then routes nodes whose inputs are kept as views (attention mask rows, flat rows, pending head splits and merges,
attention heads, 5-D image views) to the family that owns the view, in that order; every other node goes to its
op type's lowering in table.py.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.frontend.load import attrs
from lpusim.compiler.lower.attention import (lower_heads_matmul, lower_heads_repeat, lower_heads_transpose,
                                             lower_per_head, lower_split_transpose)
from lpusim.compiler.lower.attention_lanes import (lower_lanes_matmul, lower_lanes_merge, lower_lanes_scalar,
                                                   materialize, split_lazily)
from lpusim.compiler.lower.attention_masks import lower_flatrows, lower_maskrow
from lpusim.compiler.lower.elementwise import BINARY, lower_cast_op, UNARY
from lpusim.compiler.lower.fold import fold_outputs
from lpusim.compiler.lower.quant import lower_quant
from lpusim.compiler.lower.shape_ops import (PASSTHROUGH, RESHAPES, finish_grouped, lower_constant,
                                             lower_grouped_transpose, lower_identity, lower_shape, reshape_target,
                                             split_as_row_view)
from lpusim.compiler.lower.state import LowerState, Renamed
from lpusim.compiler.lower.transpose import reshape_relayout
from lpusim.compiler.lower.table import SUPPORTED_OPS, TABLE
from lpusim.errors import CompileError

# Which results hold whole numbers (gather.py, index.py: a Cast to an integer type of such a value moves nothing):
KEEP_INTEGRAL = {"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Slice", "Transpose",
                 "Tile", "Neg", "Abs", "Relu", "Floor", "Ceil", "Cast"}  # when the first input does
WHOLE_ARITH = {"Add", "Sub", "Mul", "Max", "Min", "Where", "Concat"}  # when every input does
# ops whose lowerings assume every input holds values: a zero-size one is refused by name first
EMPTY_REFUSED = set(BINARY) | set(UNARY) | {"MatMul", "Gemm", "Transpose", "Softmax", "LogSoftmax", "Where", "Pow",
                                            "Clip", "LayerNormalization"}
BOOLEAN = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "IsNaN",
           "ArgMax", "ArgMin"}


def lower(lw: LowerState, node) -> None:
    lower_node(lw, node)
    ins = [i for i in node.input if i]
    def whole(i):  # infinities are not whole numbers (np.mod of inf warns and gives NaN)
        if i in lw.integral:
            return True
        if i not in lw.consts:
            return False
        v = np.asarray(lw.consts[i], dtype=np.float64)
        return bool(np.isfinite(v).all() and np.all(np.mod(v, 1) == 0))
    if node.op_type in KEEP_INTEGRAL and ins and whole(ins[0]) or \
            node.op_type in WHOLE_ARITH and ins and all(whole(i) for i in ins) or node.op_type in BOOLEAN:
        lw.integral.update(o for o in node.output if o and o in lw.values)


def lower_node(lw: LowerState, node) -> None:
    if lower_quant(lw, node):  # int8: QDQ and QOperator forms (quant.py)
        return
    op, a = node.op_type, attrs(node)
    args = [lw.get(node, i) for i in range(len(node.input))]
    if node.domain not in ("", "ai.onnx"):
        raise CompileError(f"{lw.where(node)}: operator domain '{node.domain}' is not supported")
    if op == "Constant":
        return lower_constant(lw, node, a, args)
    if op in EMPTY_REFUSED and any(x is not None and x[0] == "value" and 0 in tuple(x[2]) for x in args):
        empty = next(node.input[i] for i, x in enumerate(args) if x is not None and x[0] == "value" and 0 in x[2])
        raise CompileError(f"{lw.where(node)}: input '{empty}' has the zero-size shape "
                           f"{tuple(lw.values[empty][1])}; zero-size tensors are only supported where they add "
                           f"nothing (a Concat operand: a prefill's empty KV-cache past)")
    if all(x is None or x[0] == "const" for x in args) and op not in ("Dropout",):
        values = fold_outputs(lw, node, op, a, [None if x is None else x[1] for x in args])
        for name, value in zip(node.output, values):  # every output (Unique, TopK), not only the first
            if name and value is not None:
                lw.consts[name] = value
        return
    if op in ("Shape", "Size") and args[0][0] == "value":  # shapes are static: these are constants
        return lower_shape(lw, node, a, args)
    if op == "Dropout" and len(args) > 2 and args[2] is not None and (
            args[2][0] != "const" or bool(np.asarray(args[2][1]))):
        raise CompileError(f"{lw.where(node)}: Dropout in training mode (random masks) is not supported; "
                           f"inference Dropout is the identity")
    if any(x is not None and x[0] == "maskrow" for x in args) and not any(
            x is not None and x[0] == "heads" for x in args):
        args = relaid_row_views(lw, node, args)  # a [B, 1, S, X] value read by another op: its NCHW layout
        if any(x is not None and x[0] == "maskrow" for x in args):
            return lower_maskrow(lw, node, op, a, args)
    if any(x is not None and x[0] == "flatrows" for x in args):
        return lower_flatrows(lw, node, op, a, args)
    if op in PASSTHROUGH and args[0] is not None and args[0][0] != "heads":  # heads: lower_view
        return lower_identity(lw, node, a, args)
    if op == "Cast" and args[0] is not None and args[0][0] != "heads":  # heads: a Cast per head (lower_view)
        return lower_cast_op(lw, node, a, args)
    if lower_view(lw, node, op, a, args):
        return
    lowering = TABLE.get(op)
    if lowering is None:
        raise CompileError(f"{lw.where(node)}: operator {op} is not supported yet "
                           f"(supported: {', '.join(SUPPORTED_OPS)})")
    lowering(lw, node, a, args)


def relaid_row_views(lw: LowerState, node, args: list) -> list:
    """`args` with each row view (a [B, S, X] value reshaped to [B, 1, S, X], kept as rows for the attention
    heads) as the [B, 1, S, X] image it is in ONNX, for a reader other than the heads: the Reshape's lowering had
    it not been kept as rows (made once per view; the heads still read the rows)."""
    out = list(args)
    for i, x in enumerate(args):
        if x is None or x[0] != "maskrow" or x[1] not in lw.row_views:
            continue
        name = x[1]
        ir_name, shape, image = lw.row_views[name]
        new = lw.maskrows[name][1]
        if image is None:
            tag = f"{name}@image"
            if not reshape_relayout(lw, Renamed(node, tag), ir_name, shape, new):
                raise CompileError(f"{lw.where(node)}: input '{name}' ({shape} reshaped to {new}) cannot be laid "
                                   f"out as an image")
            image = lw.values.pop(tag)[0]
            lw.row_views[name] = (ir_name, shape, image)
        out[i] = ("value", image, new)
    return out


def lower_view(lw: LowerState, node, op: str, a: dict, args: list) -> bool:
    """Lower `node` if an input is a pending head split or merge, attention heads or a 5-D image view (in that
    order); False if none is."""
    kinds = {x[0] for x in args if x is not None}
    if "split" in kinds:
        if op != "Transpose":
            if all(split_as_row_view(lw, x[1]) for x in args if x is not None and x[0] == "split"):
                lower_node(lw, node)  # a one-token, one-head "split": rows every head reads
                return True
            raise CompileError(f"{lw.where(node)}: a [B, S, heads, D] view is only read by a Transpose")
        if list(a.get("perm", [])) not in ([0, 2, 1, 3], [0, 2, 3, 1]) or not split_lazily(lw, node, list(a["perm"])):
            lower_split_transpose(lw, node, a)  # (a perm it does not take: its error)
        return True
    if "merge" in kinds:
        if op in ("Shape", "Size"):  # shapes are static: [B, S, heads, D]
            b, nh, s_, d = lw.merges[node.input[0]][1]
            shape4 = np.array([b, s_, nh, d], dtype=np.int64)
            lw.consts[node.output[0]] = np.array(np.prod(shape4)) if op == "Size" else \
                shape4[a.get("start", 0):a.get("end", 4)]
            return True
        if op != "Reshape":
            raise CompileError(f"{lw.where(node)}: merged attention heads are only read by a Reshape")
        b, nh, s_, d = lw.merges[node.input[0]][1]
        lower_lanes_merge(lw, node, reshape_target(lw, node, a, args, (b, s_, nh, d)))
        return True
    if "heads" in kinds:
        if op == "MatMul" and lower_lanes_matmul(lw, node, args):  # lane splits read in place
            return True
        if lower_lanes_scalar(lw, node, args):  # a lane split by a scalar: still a lane split
            return True
        repeat = any(x is not None and x[0] == "heads" and len(x[3]) == 5 for x in args) or (
            op in ("Unsqueeze", "Reshape") and len(reshape_target(lw, node, a, args,
                                                                  lw.heads[node.input[0]][2])) == 5)
        if repeat or op not in ("Transpose", "Shape", "Size") and op not in RESHAPES and op not in PASSTHROUGH:
            args = materialize(lw, node, args)  # (views of a lane split keep it: attention_lanes.py)
        if repeat:
            lower_heads_repeat(lw, node, op, a, args)  # grouped-query attention's repeat_kv
        elif op == "MatMul":
            lower_heads_matmul(lw, node, args)
        elif op == "Transpose":
            lower_heads_transpose(lw, node, a)
        elif op in ("Shape", "Size"):  # shapes are static
            shape4 = np.array(lw.heads[node.input[0]][2], dtype=np.int64)
            lw.consts[node.output[0]] = np.array(np.prod(shape4)) if op == "Size" else \
                shape4[a.get("start", 0):a.get("end", len(shape4))]
        elif op in RESHAPES or op in PASSTHROUGH:  # a reshape to the same [B, heads, S, D]: no data moves
            shape4 = lw.heads[node.input[0]][2]
            new = shape4 if op in PASSTHROUGH else reshape_target(lw, node, a, args, shape4)
            if tuple(new) != tuple(shape4):
                raise CompileError(f"{lw.where(node)}: reshaping attention heads {shape4} to {tuple(new)} "
                                   f"is not supported")
            lw.heads[node.output[0]] = lw.heads[node.input[0]]
        else:
            lower_per_head(lw, node, args)
        return True
    if args and args[0] is not None and args[0][0] == "grouped":
        if op == "Transpose":
            lower_grouped_transpose(lw, node, a)
        else:
            finish_grouped(lw, node, reshape_target(lw, node, a, args, lw.grouped[node.input[0]][1]))
        return True
    return False
