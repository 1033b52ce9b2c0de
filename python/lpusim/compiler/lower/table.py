"""The lowering of each supported ONNX op type: `TABLE` (op type -> `lowering(lw, node, a, args)`, with `a` the
node's attributes and `args` its inputs as LowerState.get gives them). dispatch.lower_node looks nodes up here
once no view of an input claims them; SUPPORTED_OPS is its key set.
"""
from __future__ import annotations

from lpusim.compiler.lower import (conv_pool, decompose, elementwise, gather, matmul, norms, reduce, resize,
                                   shape_ops, transpose)


def _with_op(lowering):
    """A lowering whose op argument other callers set (e.g. a GlobalAveragePool as a ReduceMean): the node's own."""
    return lambda lw, node, a, args: lowering(lw, node, node.op_type, a, args)


TABLE = {
    # elementwise.py
    **{op: elementwise.lower_unary_op for op in [*elementwise.UNARY, "Clip"]},
    **{op: elementwise.lower_binary_op for op in elementwise.BINARY},
    "Pow": elementwise.lower_pow,
    "Where": elementwise.lower_where,
    "Sum": elementwise.lower_sum,
    "Cast": elementwise.lower_cast_op,
    # matmul.py
    "MatMul": _with_op(matmul.lower_matmul),
    "Gemm": _with_op(matmul.lower_matmul),
    "Einsum": matmul.lower_einsum,
    # conv_pool.py (1-D/3-D forms: spatial_nd.py)
    **{op: conv_pool.lower_conv_pool for op in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
                                                "GlobalMaxPool")},
    "BatchNormalization": conv_pool.lower_batchnorm,
    "LRN": conv_pool.lower_lrn,
    # reduce.py
    **{op: _with_op(reduce.lower_reduction) for op in reduce.KINDS},
    "ArgMax": _with_op(reduce.lower_argmax),
    "ArgMin": _with_op(reduce.lower_argmax),
    # norms.py
    "Softmax": norms.lower_softmax_op,
    "LogSoftmax": norms.lower_softmax_op,
    "LayerNormalization": norms.lower_layernorm_op,
    # shape_ops.py
    **{op: _with_op(shape_ops.lower_reshape) for op in shape_ops.RESHAPES},
    **{op: shape_ops.lower_identity for op in shape_ops.PASSTHROUGH},
    "Constant": shape_ops.lower_constant,
    "Shape": shape_ops.lower_shape,
    "Size": shape_ops.lower_shape,
    "ConstantOfShape": shape_ops.lower_constant_of_shape,
    "Concat": shape_ops.lower_concat,
    "Slice": shape_ops.lower_slice,
    "Split": shape_ops.lower_split,
    "Pad": shape_ops.lower_pad,
    "Tile": shape_ops.lower_tile,
    "Expand": shape_ops.lower_expand,
    "Range": shape_ops.lower_range,
    # transpose.py
    "Transpose": transpose.lower_transpose,
    # gather.py (computed indices: index.py)
    "Gather": gather.lower_gather,
    "GatherElements": gather.lower_gather_elements,
    "GatherND": gather.lower_gather_nd,
    # resize.py
    "Resize": resize.lower_resize,
    # decompose.py: as graphs of the ops above
    "ConvTranspose": decompose.lower_conv_transpose,
    "LSTM": decompose.lower_lstm,
}
SUPPORTED_OPS = sorted(TABLE)
