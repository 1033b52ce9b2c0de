"""Which graph inputs the backend binds at run time: operator parameters and weights given as graph inputs.

A TSP program is a static schedule: axes, shapes, pads, scales, bounds and weights are compiled into it. onnx's node
tests (and exporters) often pass them as graph inputs, so the backend reads them from each run's inputs and folds
them into the graph as initializers before compiling (`bind`); one program is then compiled per distinct set of
bound values (cache.py).

Whether an input is a parameter is decided by the op that consumes it and the operand position (PARAMETERS). An
input consumed at any listed position is bound, even when it also feeds an ordinary operand (its value is fixed for
the run either way). Positions marked SMALL bind only when the run's array has at most MAX_SMALL elements: an index
tensor of a few entries is an operator parameter, a long one (token ids) is data the chip gathers by itself.
An integer (or bool) input that an ALWAYS operand is computed from, through any ops but Shape and Size, is bound
too: an expanded function computes Pad's pads from its own size inputs.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

ALWAYS, SMALL = "always", "small"
MAX_SMALL = 64  # elements: the largest index tensor (Gather/GatherND indices) bound as a parameter

_REDUCES = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
            "ReduceProd", "ReduceSum", "ReduceSumSquare")

_INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                  onnx.TensorProto.UINT64, onnx.TensorProto.UINT32, onnx.TensorProto.UINT16, onnx.TensorProto.UINT8,
                  onnx.TensorProto.BOOL}

# op type -> {operand position: ALWAYS | SMALL}, with what the operand is.
PARAMETERS: dict[str, dict[int, str]] = {
    **{op: {1: ALWAYS} for op in _REDUCES},                        # axes
    "Reshape": {1: ALWAYS}, "Expand": {1: ALWAYS},                 # shape
    "Tile": {1: ALWAYS},                                           # repeats
    "Squeeze": {1: ALWAYS}, "Unsqueeze": {1: ALWAYS},              # axes
    "Split": {1: ALWAYS},                                          # split sizes
    "Slice": {1: ALWAYS, 2: ALWAYS, 3: ALWAYS, 4: ALWAYS},         # starts, ends, axes, steps
    "Pad": {1: ALWAYS, 2: ALWAYS, 3: ALWAYS},                      # pads, constant_value, axes
    "Resize": {1: ALWAYS, 2: ALWAYS, 3: ALWAYS},                   # roi, scales, sizes
    "Upsample": {1: ALWAYS},                                       # scales
    "Clip": {1: ALWAYS, 2: ALWAYS},                                # min, max
    "ConstantOfShape": {0: ALWAYS},                                # shape
    "Range": {0: ALWAYS, 1: ALWAYS, 2: ALWAYS},                    # start, limit, delta
    "Dropout": {1: ALWAYS, 2: ALWAYS},                             # ratio, training_mode
    "Gather": {1: SMALL}, "GatherND": {1: SMALL},                  # indices
    # weights: the MXM holds them (MatMul/Gemm B, Gemm's C, convolution weights and bias)
    "MatMul": {1: ALWAYS}, "Gemm": {1: ALWAYS, 2: ALWAYS}, "Conv": {1: ALWAYS, 2: ALWAYS},
    "ConvTranspose": {1: ALWAYS, 2: ALWAYS}, "LSTM": {1: ALWAYS, 2: ALWAYS, 3: ALWAYS, 4: ALWAYS},  # W, R, B, lens
    # normalisation statistics and affine parameters
    "BatchNormalization": {1: ALWAYS, 2: ALWAYS, 3: ALWAYS, 4: ALWAYS},
    "LayerNormalization": {1: ALWAYS, 2: ALWAYS},
    # the integer ops' scales, zero points and integer weights
    "QuantizeLinear": {1: ALWAYS, 2: ALWAYS}, "DequantizeLinear": {1: ALWAYS, 2: ALWAYS},
    "MatMulInteger": {1: ALWAYS, 2: ALWAYS, 3: ALWAYS}, "ConvInteger": {1: ALWAYS, 2: ALWAYS, 3: ALWAYS},
    "QLinearMatMul": {i: ALWAYS for i in range(1, 8)}, "QLinearConv": {i: ALWAYS for i in range(1, 9)},
}


def parameter_uses(model: onnx.ModelProto, names) -> dict[str, str]:
    """{graph input name: ALWAYS | SMALL} for the inputs in `names` consumed at a PARAMETERS position (ALWAYS wins
    when one input has both kinds of use), and the integer inputs a parameter is computed from (an expanded
    function's crop sizes feeding Pad's pads through Sub and Div): those are parameters too."""
    names = set(names)
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input if i.type.HasField("tensor_type")}
    uses: dict[str, str] = {}
    derived: set[str] = set()  # values a parameter is computed from
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        for pos, name in enumerate(node.input):
            kind = PARAMETERS.get(node.op_type, {}).get(pos)
            if kind is None:
                continue
            if kind == ALWAYS:
                derived.add(name)
            if name in names and uses.get(name) != ALWAYS:
                uses[name] = kind
    for node in reversed(model.graph.node):
        if node.op_type not in ("Shape", "Size") and any(o in derived for o in node.output):
            derived.update(n for n in node.input if n)
    for name in derived & names:
        if name not in uses and types.get(name) in _INTEGER_TYPES:
            uses[name] = ALWAYS
    return uses


def to_bind(uses: dict[str, str], feeds: dict) -> list[str]:
    """The inputs of this run to bind: every ALWAYS parameter, and SMALL ones of at most MAX_SMALL elements."""
    return sorted(n for n, kind in uses.items() if kind == ALWAYS or np.asarray(feeds[n]).size <= MAX_SMALL)


def bind(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with `values` as initializers of the same names. The names stay graph inputs (an input
    with an initializer is a constant with a default, and before IR version 4 every initializer must be one);
    the compiler takes an input with an initializer as the constant."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    bound.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in sorted(values.items()))
    return bound
