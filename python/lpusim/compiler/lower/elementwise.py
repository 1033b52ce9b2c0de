"""Elementwise ops: the unary chains (UNARY, Clip), binary ops with broadcasting (BINARY, variadic Max/Min, Sum),
Pow, Where, Cast of computed values; and the operands they share (`operand`, `emit_binary`, `emit_chain`).

* A unary op is one VXM chain (`UNARY`: x is ("in",), constants come from attributes); on the channels-last output
  of a 1-D/3-D convolution it runs on that tensor (`lower_spatial_nd_unary`, spatial_nd.py). A Tanh of a quantised
  model runs onnxruntime's MLAS kernel (mlas.py) unless the VXM's TANH is known to give the same codes.
* A binary op is one VXM node; a constant operand is an immediate, one row read for every row, or a full constant;
  a computed operand of another shape is broadcast (`broadcast_operand`: a lower-rank operand of an image first put
  in the image's layout by one batched SXM transpose, a (..., 1) column to every lane on the MXM, then the rows by
  a VXM COPY through a row map).
* Pow: exact arithmetic for the exponents in POW; any other (computed, non-scalar) exponent b is
  |a|^b = exp(b log(|a| + [b == 0])), times -1 where a < 0 and b is an odd integer, NaN where a < 0 and b is not an
  integer (ONNX/numpy semantics; x^0 = 1 even for x = 0); integer-typed outputs rounded to the nearest whole number.
* Where: c * a + (1 - c) * b with c in {1.0, 0.0}; with an infinite constant branch (an attention mask's -inf)
  finite + log(c).
* Cast: to float a copy; to an integer type truncation toward zero (nothing for values known to be whole numbers).
* Max/Min of one input: the input itself.
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.compiler.frontend.calibrate import without_large_initializers
from lpusim.compiler.frontend.load import HOST_TYPES
from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower import mlas
from lpusim.compiler.lower.lanes import add_piece_steps, fp16_residual, lane_axis, node_of, with_lanes
from lpusim.compiler.lower.rows import row_view, select_lanes
from lpusim.compiler.lower.spatial_nd import channels_last_readers_only, ELEMENTWISE, nd_finish
from lpusim.compiler.lower.state import Renamed
from lpusim.compiler.lower.transpose import permute, same_layout
from lpusim.compiler.row_layout import as_matrix, to_rows
from lpusim.errors import CompileError


def gelu(a) -> list:
    """0.5 * x * (1 + erf(x / sqrt(2))), or with approximate="tanh" 0.5 * x * (1 + tanh(sqrt(2/pi) * (x +
    0.044715 x^3)))."""
    if a.get("approximate", b"none") in (b"none", "none"):
        head = [("MUL", [("in",), ("imm", float(np.float32(1 / np.sqrt(2))))]), ("ERF", [("step", 0)])]
    else:
        head = [("MUL", [("in",), ("in",)]), ("MUL", [("step", 0), ("imm", 0.044715)]),
                ("MUL", [("step", 1), ("in",)]), ("ADD", [("step", 2), ("in",)]),
                ("MUL", [("step", 3), ("imm", float(np.float32(np.sqrt(2 / np.pi))))]), ("TANH", [("step", 4)])]
    k = len(head) - 1
    return head + [("ADD", [("step", k), ("imm", 1.0)]), ("MUL", [("in",), ("imm", 0.5)]),
                   ("MUL", [("step", k + 2), ("step", k + 1)])]


# ONNX unary ops and the VXM chain each lowers to (x is ("in",); constants come from attributes).
UNARY = {
    "Relu": lambda a: [("RELU", [("in",)])],
    "Sigmoid": lambda a: [("SIGMOID", [("in",)])],
    "Tanh": lambda a: [("TANH", [("in",)])],
    "Exp": lambda a: [("EXP", [("in",)])],
    "Neg": lambda a: [("NEG", [("in",)])],
    "Abs": lambda a: [("ABS", [("in",)])],
    "Erf": lambda a: [("ERF", [("in",)])],
    "Reciprocal": lambda a: [("RCP", [("in",)])],
    "Sqrt": lambda a: [("SQRT", [("in",)])],
    "Log": lambda a: [("LOG", [("in",)])],
    "Sin": lambda a: [("SIN", [("in",)])],  # rotary position embeddings: angles of computed positions
    "Cos": lambda a: [("COS", [("in",)])],
    "Floor": lambda a: [("FLOOR", [("in",)])],
    "Ceil": lambda a: [("CEIL", [("in",)])],
    "Not": lambda a: [("SUB", [("imm", 1.0), ("in",)])],  # booleans are 1.0 / 0.0
    "IsNaN": lambda a: [("NE", [("in",), ("in",)])],  # only NaN differs from itself
    # Softplus: max(x, 0) + log(1 + exp(-|x|)), which never overflows
    "Softplus": lambda a: [("ABS", [("in",)]), ("NEG", [("step", 0)]), ("EXP", [("step", 1)]),
                           ("ADD", [("step", 2), ("imm", 1.0)]), ("LOG", [("step", 3)]), ("RELU", [("in",)]),
                           ("ADD", [("step", 5), ("step", 4)])],
    # HardSwish: x * max(0, min(1, x/6 + 1/2))
    "HardSwish": lambda a: [("MUL", [("in",), ("imm", 1.0 / 6.0)]), ("ADD", [("step", 0), ("imm", 0.5)]),
                            ("MIN", [("step", 1), ("imm", 1.0)]), ("MAX", [("step", 2), ("imm", 0.0)]),
                            ("MUL", [("in",), ("step", 3)])],
    # max(x, alpha*x) equals LeakyRelu for 0 <= alpha <= 1; other alphas are rejected at lowering.
    "LeakyRelu": lambda a: [("MUL", [("in",), ("imm", a.get("alpha", 0.01))]), ("MAX", [("in",), ("step", 0)])],
    # HardSigmoid: max(0, min(1, alpha*x + beta))
    "HardSigmoid": lambda a: [("MUL", [("in",), ("imm", a.get("alpha", 0.2))]),
                              ("ADD", [("step", 0), ("imm", a.get("beta", 0.5))]),
                              ("MIN", [("step", 1), ("imm", 1.0)]), ("MAX", [("step", 2), ("imm", 0.0)])],
    "Gelu": lambda a: gelu(a),
}

BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Max": "MAX", "Min": "MIN",
          "Equal": "EQ", "Less": "LT", "Greater": "GT", "LessOrEqual": "LE", "GreaterOrEqual": "GE",
          "And": "MUL", "Or": "MAX", "Xor": "NE"}  # comparisons give 1.0 / 0.0; booleans are 1.0 / 0.0

# Pow with these constant exponents is exact arithmetic; any other exponent is exp(p * log(x)), defined for x > 0.
POW = {1.0: [("COPY", [("in",)])], 2.0: [("MUL", [("in",), ("in",)])],
       3.0: [("MUL", [("in",), ("in",)]), ("MUL", [("step", 0), ("in",)])],
       4.0: [("MUL", [("in",), ("in",)]), ("MUL", [("step", 0), ("step", 0)])],
       0.5: [("SQRT", [("in",)])], -1.0: [("RCP", [("in",)])], -0.5: [("RSQRT", [("in",)])]}
INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
             onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}


def lower_sum(lw, node, a, args):
    if len(args) == 1:
        lw.values[node.output[0]] = lw.values[node.input[0]]
        return
    acc = args[0]
    for i, x in enumerate(args[1:]):
        name = node.output[0] if i == len(args) - 2 else lw.fresh(node.output[0])
        emit_binary(lw, node, "ADD", acc, x, name)
        acc = ("value",) + lw.values[name]


# ----- elementwise ----------------------------------------------------------------------------------
def operand(lw, node, x, out_shape, exact: bool = False):
    """A binary operand as a chain argument: ('imm', v), or ('src', tensor name) for a row/full tensor."""
    if x[0] == "const":
        arr = np.asarray(x[1], dtype=np.float32)
        if arr.size == 1:
            return ("imm", float(arr.reshape(())))
        rows, cols = as_matrix(out_shape)
        as_rows = to_rows(np.broadcast_to(arr, out_shape), out_shape)
        if rows > 1 and np.all(as_rows == as_rows[:1]):
            return ("src", lw.const_tensor(as_rows[:1].copy(), "c"))  # one row, read for every row
        return ("src", lw.const_tensor(np.ascontiguousarray(as_rows), "c"))
    _, name, shape = x
    if tuple(shape) == tuple(out_shape):
        return ("src", name)
    rows, cols = as_matrix(shape)
    orows, ocols = as_matrix(out_shape)
    if cols == ocols and rows == 1 and (len(shape) == len(out_shape) or len(out_shape) != 4):
        return ("src", name)
    if cols == 1 and ocols > 1 and (rows == orows or rows == 1) and (len(shape) == 4) <= (len(out_shape) == 4):
        # (..., 1) across the lanes (x - ReduceMean(x) in an exported LayerNorm): lane 0 copied to every
        # lane on the MXM
        cols0 = np.zeros(ocols, dtype=np.int64)
        mag = lw.tensor_magnitude(node, name)
        y, _ = select_lanes(lw, node, name, tuple(shape) or (1,), cols0, lw.fresh("bcast"))
        lw.derived[y] = mag
        if exact and not lw.fp32:  # a comparison (Equal(x, ReduceMax(x))), or any op in a quantised model
            # (precision="fp32" moves x exactly already: fp32_split.py)
            y = exact_broadcast(lw, node, name, tuple(shape) or (1,), cols0, y, mag)
        return ("src", y)
    return broadcast_operand(lw, node, name, shape, out_shape)


def exact_broadcast(lw, node, x: str, shape: tuple, cols: np.ndarray, hi: str, mag: float) -> str:
    """x's lanes moved on the MXM exactly: `hi` (the move of x's fp16 copy) plus the moves of two residuals
    (lanes.fp16_residual, each scaled up by UP: 11 more bits each, so the three pieces hold all of f32's 24),
    added in f32 in the epilogues (each partial sum is x truncated, so it is exact)."""
    y, piece = hi, x
    for k in (1, 2):
        piece = fp16_residual(lw, node, piece, shape, f"{x}.lo{k}", mag, up=True)
        y, _ = select_lanes(lw, node, piece, shape, cols, lw.fresh("bcast"), add_piece_steps(k), [y])
        lw.derived[y] = mag
    return y


COMPARISONS = ("EQ", "LT", "GT", "LE", "GE", "NE")


def emit_binary(lw, node, vop, x, y, out_name):
    shapes = [x[1].shape if x[0] == "const" else x[2] for x in (x, y)]
    try:
        out_shape = tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise CompileError(f"{lw.where(node)}: shapes {shapes[0]} and {shapes[1]} do not broadcast") from None
    # comparisons: fp16's rounding would break ties; quantised models: onnxruntime's f32 elementwise ops read
    # x / ReduceMean(x)-like (..., 1) operands exactly (RMSNorm's x * 1/sqrt(mean + eps))
    exact = vop in COMPARISONS or lw.precise_sums
    ax, ay = operand(lw, node, x, out_shape, exact), operand(lw, node, y, out_shape, exact)
    sources, args = [], []
    for kind, v in (ax, ay):
        if kind == "imm":
            args.append(("imm", v))
        else:
            if View(v) not in sources:  # x * x reads x once
                sources.append(View(v))
            args.append(("src", sources.index(View(v))))
    out = lw.add_tensor(lw.fresh(out_name), out_shape, "value")
    lw.nodes.append(Node("vector", node.name or out_name, node.op_type, out, sources=sources,
                         steps=[Step(vop, args)]))
    lw.values[out_name] = (out, out_shape)


def lower_binary(lw, node, op, args):
    if len(args) == 1 and op in ("Max", "Min"):
        return lower_one_input(lw, node, args)
    if len(args) < 2 or (len(args) > 2 and op not in ("Max", "Min")):
        raise CompileError(f"{lw.where(node)}: {op} with {len(args)} inputs is not supported")
    acc = args[0]
    for i, x in enumerate(args[1:]):  # variadic Max/Min: a chain of binary nodes
        name = node.output[0] if i == len(args) - 2 else lw.fresh(node.output[0])
        emit_binary(lw, node, BINARY[op], acc, x, name)
        acc = ("value",) + lw.values[name]
    if op == "Div" and integer_typed(lw, node.output[0]):  # integer division truncates toward zero
        lower_cast(lw, Renamed(node, node.output[0]), {"to": onnx.TensorProto.INT64},
                        [("value",) + lw.values[node.output[0]]], force=True)


def integer_typed(lw, name: str) -> bool:
    """Whether ONNX types the value `name` as an integer (onnx shape inference, computed once)."""
    if lw.elem_types is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(without_large_initializers(lw.model, values=False))
            infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        except Exception:
            infos = list(lw.model.graph.input) + list(lw.model.graph.output)
        lw.elem_types = {v.name: v.type.tensor_type.elem_type for v in infos}
    elem = lw.elem_types.get(name)
    return elem in HOST_TYPES and elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL)


def lower_pow(lw, node, a, args):
    x, p = args
    if p[0] != "const" or np.asarray(p[1]).size != 1 or float(np.asarray(p[1]).reshape(())) not in POW:
        return lower_pow_general(lw, node, args)  # any exponent, negative bases
    e = float(np.asarray(p[1]).reshape(()))
    chain = POW.get(e, [("LOG", [("in",)]), ("MUL", [("step", 0), ("imm", e)]), ("EXP", [("step", 1)])])
    emit_chain(lw, node, x, chain)


def lower_where(lw, node, a, args):
    # c * a + (1 - c) * b with c in {1.0, 0.0}: exact whenever the unselected value is finite
    c, x, y = args
    # a constant branch that is one infinity everywhere (a scalar, or a ConstantOfShape's full tensor)
    inf = [v[0] == "const" and np.asarray(v[1]).size >= 1 and np.isinf(np.asarray(v[1], np.float64)).all() and
           bool((np.asarray(v[1]) == np.asarray(v[1]).flat[0]).all()) for v in (x, y)]
    if inf[0] != inf[1] and c[0] == "value":
        # an infinite branch (an attention mask's -inf): finite + log(c) (log 1 = 0, log 0 = -inf), never 0 * inf
        finite, infinite = (y, x) if inf[0] else (x, y)
        sign = float(np.sign(np.asarray(infinite[1]).flat[0]))
        cond = c
        if inf[0]:  # the infinity is taken where c is 1: log(1 - c)
            t = lw.fresh(node.output[0])
            emit_binary(lw, node, "SUB", ("const", np.float32(1.0)), c, t)
            cond = ("value",) + lw.values[t]
        logc = lw.fresh(node.output[0])
        emit_chain(lw, node, cond, [("LOG", [("in",)])], out_name=logc)
        emit_binary(lw, node, "SUB" if sign > 0 else "ADD", finite, ("value",) + lw.values[logc],
                    node.output[0])
        return
    t1 = lw.fresh(node.output[0])
    emit_binary(lw, node, "MUL", c, x, t1)
    c_name = lw.fresh(node.output[0])
    emit_binary(lw, node, "SUB", ("const", np.float32(1.0)), c, c_name)
    t2 = lw.fresh(node.output[0])
    emit_binary(lw, node, "MUL", ("value",) + lw.values[c_name], y, t2)
    emit_binary(lw, node, "ADD", ("value",) + lw.values[t1], ("value",) + lw.values[t2], node.output[0])


def emit_chain(lw, node, x, chain, out_name=None):
    _, name, shape = x
    out_name = out_name or node.output[0]
    steps = [Step(vop, [("src", 0) if arg == ("in",) else arg for arg in vargs]) for vop, vargs in chain]
    out = lw.add_tensor(lw.fresh(out_name), shape, "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=[View(name)],
                         steps=steps))
    lw.values[out_name] = (out, shape)


def lower_unary(lw, node, op, a, args):
    _, name, shape = args[0]
    if op == "LeakyRelu" and not 0.0 <= a.get("alpha", 0.01) <= 1.0:
        raise CompileError(f"{lw.where(node)}: LeakyRelu alpha={a['alpha']} outside [0, 1] is not supported")
    if op == "Clip":
        if any(x is not None and x[0] != "const" for x in args[1:]):
            raise CompileError(f"{lw.where(node)}: Clip bounds must be constants (computed bounds are not "
                               f"supported)")
        lo = args[1][1] if len(args) > 1 and args[1] is not None else a.get("min")
        hi = args[2][1] if len(args) > 2 and args[2] is not None else a.get("max")
        for bound in (lo, hi):
            if bound is not None and not isinstance(bound, (float, int)) and np.asarray(bound).size != 1:
                raise CompileError(f"{lw.where(node)}: Clip bounds must be constant scalars")
        chain = []
        if lo is not None:
            chain.append(("MAX", [("in",), ("imm", float(np.asarray(lo)))]))
        if hi is not None:
            chain.append(("MIN", [("step", len(chain) - 1) if chain else ("in",), ("imm", float(np.asarray(hi)))]))
        if not chain:
            chain = [("COPY", [("in",)])]
    elif op == "Gelu" and a.get("approximate", b"none") not in (b"none", "none"):
        # two nodes: the tanh form's delay lines would need more than the VXM's 16 ALUs in one chain
        inner = gelu(a)[:6]
        t = lw.fresh(node.output[0])
        emit_chain(lw, node, args[0], inner, out_name=t)
        lw.nodes[-1].fusable = False
        _, t_ir, _ = ("value",) + lw.values[t]
        steps = [Step("ADD", [("src", 1), ("imm", 1.0)]), Step("MUL", [("src", 0), ("imm", 0.5)]),
                 Step("MUL", [("step", 1), ("step", 0)])]
        out = lw.add_tensor(lw.fresh(node.output[0]), shape, "value")
        lw.nodes.append(Node("vector", node.name or node.output[0], op, out,
                             sources=[View(name), View(t_ir)], steps=steps))
        lw.values[node.output[0]] = (out, shape)
        return
    elif op == "Tanh" and lw.precise_sums and not mlas.vxm_tanh_gives_codes(lw, node):
        # quantised models: onnxruntime's MLAS kernel, operation for operation, unless TANH gives the same codes
        lw.values[node.output[0]] = (mlas.emit(lw, node, mlas.tanh_program(), name, shape), shape)
        return
    else:
        chain = UNARY[op](a)
    steps = [Step(vop, [("src", 0) if arg == ("in",) else arg for arg in vargs]) for vop, vargs in chain]
    out = lw.add_tensor(lw.fresh(node.output[0]), shape, "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], op, out, sources=[View(name)], steps=steps))
    lw.values[node.output[0]] = (out, shape)


# ----- elementwise broadcasts of computed operands -----------------------------------------------------
def broadcast_operand(lw, node, name, shape, out_shape):
    """('src', tensor) holding the computed `name` (ONNX `shape`) broadcast to `out_shape`."""
    shape, out_shape = tuple(int(d) for d in shape), tuple(int(d) for d in out_shape)
    nd = len(out_shape)
    full = (1,) * (nd - len(shape)) + shape
    lane = lane_axis(out_shape)
    mag = lw.tensor_magnitude(node, name)
    cur = name
    if full != shape and not same_layout(shape or (1,), full):
        if nd != 4:
            raise CompileError(f"{lw.where(node)}: broadcasting {shape} to {out_shape}: the operand's "
                               f"layout as a {nd}-D tensor differs from its own")
        # a lower-rank operand of an image: its lanes are the image's W axis; as the 5-D plain (1, N, C, H, W)
        # its rows and lanes are the stored ones, (1, N, H, W, C) the image's: one batched SXM transpose
        cur = permute(lw, node, name, (1,) + full, [0, 1, 3, 4, 2], full, lw.fresh("bcast"), mag)
    if full[lane] != out_shape[lane]:  # (..., 1) across the lanes: lane 0 to every lane (MXM)
        cur, _ = select_lanes(lw, node, cur, full, np.zeros(out_shape[lane], dtype=np.int64),
                              lw.fresh("bcast"))
        lw.derived[cur] = mag
        full = with_lanes(full, out_shape[lane])
    if full == out_shape or lw.tensors[cur].rows == 1:
        return ("src", cur)
    view = row_view(lw, cur, full, out_shape)
    if view.rows is None:  # the same rows (size-1 axes only differ)
        return ("src", cur)
    return ("src", node_of(lw, node, [view], [Step("COPY", [("src", 0)])], out_shape, "bcast", mag))


# ----- Pow, one-input Max/Min ----------------------------------------------------------------------------
def lower_pow_general(lw, node, args) -> None:
    """a^b elementwise for a computed or non-scalar exponent (ONNX semantics, see the module docstring)."""
    shapes = [tuple(x[1].shape) if x[0] == "const" else tuple(x[2]) for x in args[:2]]
    out_shape = tuple(np.broadcast_shapes(*shapes))
    sources, refs = [], []
    for x in args[:2]:
        kind, v = operand(lw, node, x, out_shape)
        if kind == "imm":
            refs.append(("imm", v))
        else:
            if View(v) not in sources:
                sources.append(View(v))
            refs.append(("src", sources.index(View(v))))
    a_, b_ = refs
    mag = lw.magnitudes.get(node.output[0], 0.0)
    # |a|^b, with log(|a| + 1) where b == 0 (x^0 = 1, 0^0 too)
    head = [Step("ABS", [a_]), Step("EQ", [b_, ("imm", 0.0)]), Step("ADD", [("step", 0), ("step", 1)]),
            Step("LOG", [("step", 2)]), Step("MUL", [b_, ("step", 3)]), Step("EXP", [("step", 4)])]
    if integer_typed(lw, node.output[0]):  # whole results: the nearest whole number
        head += [Step("ADD", [("step", 5), ("imm", 0.5)]), Step("FLOOR", [("step", 6)])]
    p = node_of(lw, node, sources, head, out_shape, f"{node.output[0]}.abs", mag, fusable=False)
    if args[0][0] == "const" and np.all(np.asarray(args[0][1]) >= 0):
        lw.values[node.output[0]] = (p, out_shape)
        return
    # sign: -1 where a < 0 and b is odd (frac(b / 2) = 0.5); NaN where a < 0 and b is not whole (sqrt(-1))
    k = len(sources)
    srcs = sources + [View(p)]
    sign = [Step("LT", [a_, ("imm", 0.0)]), Step("MUL", [b_, ("imm", 0.5)]), Step("FLOOR", [("step", 1)]),
            Step("SUB", [("step", 1), ("step", 2)]), Step("MUL", [("step", 3), ("step", 0)]),
            Step("MUL", [("step", 4), ("imm", 4.0)]), Step("SUB", [("imm", 1.0), ("step", 5)]),
            Step("MUL", [("src", k), ("step", 6)])]
    signed = node_of(lw, node, srcs, sign, out_shape, f"{node.output[0]}.signed", mag, fusable=False)
    srcs = sources + [View(signed)]
    nan = [Step("LT", [a_, ("imm", 0.0)]), Step("FLOOR", [b_]), Step("NE", [("step", 1), b_]),
           Step("MUL", [("step", 2), ("step", 0)]), Step("NEG", [("step", 3)]), Step("SQRT", [("step", 4)]),
           Step("ADD", [("src", k), ("step", 5)])]
    y = node_of(lw, node, srcs, nan, out_shape, node.output[0], mag, fusable=False)
    lw.values[node.output[0]] = (y, out_shape)


def lower_one_input(lw, node, args) -> None:
    """Max/Min of one input: the input itself (a graph output of it is copied by `finish`)."""
    if args[0] is None or args[0][0] != "value":
        raise CompileError(f"{lw.where(node)}: {node.op_type} of one input of this kind ({args[0][0] if args[0] else 'absent'}) "
                           f"is not supported")
    lw.values[node.output[0]] = lw.values[node.input[0]]


# ----- Cast of a computed value -------------------------------------------------------------------------
def lower_cast(lw, node, a, args, force: bool = False) -> None:
    """`force`: truncate `node`'s own output in place (integer Div)."""
    to = a.get("to", 0)
    _, x, shape = args[0]
    src, out = node.input[0], node.output[0]
    if not force and (to == onnx.TensorProto.FLOAT or (to in INT_TYPES and src in lw.integral)):
        lw.values[out] = lw.values[src]
        if src in lw.integral:
            lw.integral.add(out)
        return
    if to in INT_TYPES:  # truncation toward zero: x >= 0 ? floor(x) : ceil(x)
        chain = [("FLOOR", [("in",)]), ("CEIL", [("in",)]), ("GE", [("in",), ("imm", 0.0)]),
                 ("SUB", [("step", 0), ("step", 1)]), ("MUL", [("step", 2), ("step", 3)]),
                 ("ADD", [("step", 4), ("step", 1)])]
    elif to == onnx.TensorProto.BOOL:
        chain = [("NE", [("in",), ("imm", 0.0)])]
    else:
        raise CompileError(f"{lw.where(node)}: Cast to {onnx.TensorProto.DataType.Name(to)} of a computed "
                           f"tensor is not supported (the chip path carries float32 values; casts to float, "
                           f"bool and integer types are)")
    emit_chain(lw, node, args[0], chain)
    lw.integral.add(out)


def lower_spatial_nd_unary(lw, node, op, a, args) -> bool:
    """An elementwise op on a 1-D/3-D convolution's or pool's output, applied to its channels-last tensor
    (the layout does not matter elementwise), so a Conv -> Gelu -> Conv stack stays channels-last."""
    entry = lw.nd_lanes.get(node.input[0]) if node.input else None
    if entry is None or op not in ELEMENTWISE or args[0] is None or args[0][0] != "value" or \
            any(x is not None and x[0] != "const" for x in args[1:]):
        return False
    cl, cl_shape = entry
    if lw.values[node.input[0]][0] != cl and not channels_last_readers_only(lw, node.output[0],
                                                                            len(args[0][2])):
        return False  # the ONNX layout exists and is what this op's readers want
    lower_unary(lw, node, op, a, [("value", cl, cl_shape)] + list(args[1:]))
    y, _ = lw.values[node.output[0]]
    nd_finish(lw, node, node.output[0], y, cl_shape, tuple(args[0][2]))
    return True


# ----- table entries ------------------------------------------------------------------------------------------
def lower_unary_op(lw, node, a, args) -> None:
    """The UNARY ops and Clip."""
    op = node.op_type
    if lower_spatial_nd_unary(lw, node, op, a, args):  # on a 1-D/3-D conv's channels-last output
        return
    lower_unary(lw, node, op, a, args)


def lower_binary_op(lw, node, a, args) -> None:
    """The BINARY ops."""
    lower_binary(lw, node, node.op_type, args)


def lower_cast_op(lw, node, a, args) -> None:
    if args[0][0] == "value":
        return lower_cast(lw, node, a, args)
    raise CompileError(f"{lw.where(node)}: Cast to {onnx.TensorProto.DataType.Name(a.get('to', 0))} of a "
                       f"computed tensor is not supported (the chip path carries float32 values)")
