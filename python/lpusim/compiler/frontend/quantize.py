"""`precision="int8"` for float models: quantise with onnxruntime's own tools, then compile the QDQ model.

Groq's published ResNet-50 number is int8; lpusim reaches that path the way a user would: onnxruntime's
`quant_pre_process` (constant folding, BatchNormalization folded into Conv, shape inference), then `quantize_static`
in the QDQ format with uint8 activations and int8 per-channel weights, MinMax calibration on the compile's
calibration inputs, and one DequantizeLinear per consumer (`DedicatedQDQPair`). uint8 activations (U8S8) because
onnxruntime's x86 graph optimiser then fuses every QDQ Conv into its integer QLinearConv, so the reference is integer
arithmetic throughout; with int8 activations it leaves the 1x1 Convs of a small ResNet in float (they still matched
on the inputs tried, but a float convolution's rounding is not guaranteed to land on the same code).

`lower/quant.py` then puts every quantised Conv/MatMul/Gemm on the int8 MXM path; ops the quantiser leaves in float
(Softmax, AveragePool, residual Sums) run between DequantizeLinear and QuantizeLinear as usual. The result matches
onnxruntime running the same quantised model (`quantize_model` gives it), not the float model: quantisation error
is the model's, not the chip's.
"""
from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import onnx

from lpusim.errors import CompileError

# QDQ needs opset 13 for per-channel weights (the quantiser refuses older models)
MIN_OPSET = 13
# The ops quantised: contractions, the global average, max pools, Relu/Clip (folded into the quantisation range)
# and Add; everything else stays float between DequantizeLinear and QuantizeLinear. (onnxruntime's default list
# also quantises Reshape/Transpose, which puts Q/DQ between an attention Reshape and its Transpose, which the heads
# lowering does not look through.)
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm", "GlobalAveragePool", "MaxPool", "Relu", "Clip", "Add"]


def computed_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls of two computed tensors (attention): they stay float (fp16 MXM), as lpusim's int8 path takes constant
    weights."""
    consts = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name and
            not any(i in consts for i in n.input[:2])]


def attention_score_adds(model: onnx.ModelProto) -> list[str]:
    """Adds between an attention-score MatMul (`computed_matmuls`) and its Softmax (the mask): they stay float with
    the scores. GPT-2's causal mask holds -3.4e38, so a quantised mask Add gets an infinite scale."""
    names = set(computed_matmuls(model))
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    found, todo = [], [o for n in model.graph.node if n.name in names for o in n.output]
    while todo:
        for u in users.get(todo.pop(), []):
            if u.op_type in ("Add", "Sub", "Mul", "Div", "Where") and u.name not in found:
                found.append(u.name)
                todo.extend(u.output)
    return [n for n in found if n]


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every Constant node holding a tensor (`value`), and every Identity of an initializer, made an
    initializer: a torch export's Gemm biases (GPT-2's equal zero biases are one initializer behind Identities),
    which the quantiser quantises to int32 only when it sees them as initializers."""
    if not any(n.op_type in ("Constant", "Identity") for n in model.graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    keep = []
    for n in model.graph.node:
        value = None
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            value = onnx.TensorProto()
            value.CopyFrom(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
            value = onnx.TensorProto()
            value.CopyFrom(inits[n.input[0]])
        if value is None:
            keep.append(n)
            continue
        value.name = n.output[0]
        model.graph.initializer.append(value)
        inits[value.name] = value
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def quantize_model(model: onnx.ModelProto, calibration: dict[str, np.ndarray],
                   per_channel: bool = True) -> onnx.ModelProto:
    """The QDQ int8 model onnxruntime's quantiser makes of `model`, calibrated on the one batch `calibration`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # each input in its graph type (an int64 attention mask stays int64; float inputs as float32)
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
             for i in model.graph.input if i.type.tensor_type.elem_type}

    class _Once(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{k: np.asarray(v, dtype=types.get(k, np.float32)) for k, v in calibration.items()}])

        def get_next(self):
            return next(self.batches, None)

    inits = {i.name for i in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):  # old IR: weights listed as inputs; the quantiser would
        model = onnx.ModelProto.FromString(model.SerializeToString())  # drop some and then ask for them
        keep = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:
            raise CompileError(f"precision='int8': converting the opset-{opset} model to opset {MIN_OPSET} for "
                               f"onnxruntime's quantiser failed: {e}") from None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice through the root logger
    try:
        with tempfile.TemporaryDirectory() as d:
            src, pre, out = (os.path.join(d, n) for n in ("float.onnx", "pre.onnx", "int8.onnx"))
            # onnxruntime's optimiser folds BatchNormalization into Conv, which the quantiser needs; it also
            # rewrites MatMul+Add into Reshape+Gemm+Reshape and merges an attention Transpose across GPT-2's
            # KV-cache Concat, which the attention lowering does not follow, so it runs only for models with a
            # BatchNormalization; Constant nodes (a torch export's Gemm biases) become initializers instead
            fold = any(n.op_type == "BatchNormalization" for n in model.graph.node)
            onnx.save(model if fold else constants_to_initializers(model), src)
            quant_pre_process(src, pre, skip_optimization=not fold, skip_symbolic_shape=True)
            pm = onnx.load(pre)
            exclude = computed_matmuls(pm) + attention_score_adds(pm)
            quantize_static(pre, out, _Once(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=per_channel,
                            op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=exclude,
                            extra_options={"DedicatedQDQPair": True})
            return onnx.load(out)
    except CompileError:
        raise
    except Exception as e:
        raise CompileError(f"precision='int8': onnxruntime's quantiser failed on this model: "
                           f"{type(e).__name__}: {e}") from None
    finally:
        root.setLevel(level)
