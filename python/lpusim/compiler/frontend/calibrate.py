"""Magnitude calibration: how large each tensor gets, so fp16 copies can be scaled by a power of two.

The MXM reads fp16 (largest finite value 65504), while the VXM and the accumulators work in f32. Models whose
activations leave fp16's range (onnx's `light_*` models, whose constant weights drive ResNet-50's activations to
1e19) would overflow on the chip. lpusim keeps such a tensor's fp16 copy as `value * 2^-k` and folds `2^k` back into
the f32 epilogue of every matmul reading it: powers of two are exact, so this costs one VXM multiply and no accuracy.

`k` comes from one onnxruntime run of the model on calibration inputs (seeded standard-normal values, the same
distribution `Program.run` uses by default, or inputs the caller passes): the scale is fixed at compile time, as in
any static-scaling scheme, so inputs of a very different magnitude than the calibration inputs can still overflow.
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.errors import CompileError

# A tensor is rescaled when its calibrated largest magnitude falls outside [2^LOW, 2^HIGH]; it is then scaled so
# that its largest magnitude lands near 2^TARGET, leaving 2^(15 - TARGET) of headroom below fp16's 65504 for inputs
# larger than the calibration inputs, and keeping its small elements out of fp16's subnormal range.
# HIGH = TARGET: every fp16 copy gets that headroom. With HIGH = 12 a tensor calibrated at up to 2^12 kept its
# values unscaled and only 2^4 of headroom: SmolLM2-135M's layer-10 RMSNorm x*x, calibrated at 2,048, reached
# 153,270 on a later token (75x), its fp16 copy was inf and the norm's output 0 (docs/precision.md).
HIGH, LOW, TARGET = 8, -8, 8
# precision="fp32" (compiler/fp32_split.py) scales small tensors up until their largest magnitude exceeds 2^LOW_FP32:
# a residual piece below fp16's normal range (2^-14) keeps an absolute error of 2^-25, at most 2^-26 of such a
# tensor's largest value; larger tensors keep fp16's rule, and its headroom
LOW_FP32 = 1


def scale_exponent(magnitude: float, tight: bool = False) -> int:
    """k such that an fp16 copy holds value * 2^-k (0 when the tensor already sits well inside fp16's range).
    `tight` (precision="fp32"): the lower bound is 2^LOW_FP32, so that a tensor's residual pieces (2^-11 and 2^-22 of
    its values) stay normal fp16 numbers for all but its smallest values."""
    if not np.isfinite(magnitude) or magnitude == 0.0:
        return 0
    e = int(np.ceil(np.log2(magnitude)))
    if (LOW_FP32 if tight else LOW) <= e <= HIGH:
        return 0
    return e - TARGET


# Initializers with at least this many elements go to onnxruntime as in-memory external data, and to shape
# inference as bare declarations: neither needs their bytes copied through a serialised model. Smaller ones (shape
# operands, whose values shape inference reads) stay in the model.
EXTERNAL_MIN_ELEMENTS = 1024
_NUMPY_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
                onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
                onnx.TensorProto.INT64}


def without_large_initializers(proto: onnx.ModelProto, values: bool = True):
    """A copy of `proto` whose large initializers are declared as external data (name, type and dims, no bytes),
    and (`values`) their values by name: what shape and type inference need, without serialising the weights."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)  # a memory copy: cheap next to serialising
    model.graph.ClearField("initializer")
    arrays: dict[str, np.ndarray] = {}
    stubs: set[str] = set()
    for init in proto.graph.initializer:
        size = int(np.prod(init.dims, dtype=np.int64))
        if init.data_type not in _NUMPY_TYPES or size < EXTERNAL_MIN_ELEMENTS \
                or init.data_location == onnx.TensorProto.EXTERNAL or init.name in stubs:
            model.graph.initializer.append(init)
            continue
        stubs.add(init.name)
        if values:
            arrays[init.name] = onnx.numpy_helper.to_array(init)
        stub = model.graph.initializer.add()
        stub.name = init.name
        stub.data_type = init.data_type
        stub.dims.extend(init.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value="lpusim-calibration")
    return (model, arrays) if values else model


def tensor_magnitudes(proto: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """max |value| of every float tensor the model computes, from one onnxruntime run on `inputs` (onnx's
    ReferenceEvaluator when onnxruntime cannot run the model)."""
    import onnxruntime as ort

    model, weights = without_large_initializers(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    outputs = {o.name for o in model.graph.output}
    floats = {vi.name for vi in inferred.graph.value_info
              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    for node in model.graph.node:
        for name in node.output:
            if name and name in floats and name not in outputs:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                outputs.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.log_severity_level = 3
    if weights:
        options.add_external_initializers(list(weights), [ort.OrtValue.ortvalue_from_numpy(v)
                                                          for v in weights.values()])
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        feed = {i.name: inputs[i.name] for i in session.get_inputs() if i.name in inputs}
        pairs = list(zip(names, session.run(names, feed)))
    except Exception as ort_error:  # onnxruntime has no kernel for this opset or type (Gemm-6, QuantizeLinear-25)
        pairs = _reference_values(proto, inputs, ort_error)
    return _magnitudes(pairs + list(inputs.items()))


def _reference_values(proto: onnx.ModelProto, inputs: dict[str, np.ndarray], ort_error: Exception) -> list:
    """Every tensor's value from onnx's own ReferenceEvaluator (slow, but it implements every opset), for models
    onnxruntime cannot run; CompileError naming both failures when it cannot either."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(proto)
        feed = {name: inputs[name] for name in evaluator.input_names if name in inputs}
        values = evaluator.run(None, feed, intermediate=True)
    except Exception as e:
        first = str(ort_error).strip().splitlines()[0][:300]
        raise CompileError(f"the calibration run failed: onnxruntime: {first}; onnx's ReferenceEvaluator: "
                           f"{type(e).__name__}: {str(e)[:300]}") from None
    return [(k, v) for k, v in values.items() if k not in inputs]


def _magnitudes(pairs: list) -> dict[str, float]:
    result: dict[str, float] = {}
    for name, v in pairs:
        v = np.asarray(v)
        if v.dtype.kind != "f":
            continue
        hi, lo = (float(v.max()), float(v.min())) if v.size else (0.0, 0.0)
        if not (np.isfinite(hi) and np.isfinite(lo)):  # (a NaN makes both NaN)
            v = v[np.isfinite(v)]  # an inf (a -inf attention mask) says nothing about the scale
            hi, lo = (float(v.max()), float(v.min())) if v.size else (0.0, 0.0)
        result[name] = max(abs(hi), abs(lo))
        result[name + "#max"] = hi  # the largest value, signed
    return result
