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
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # a memory copy (serialising and parsing 350 MB of weights took 2 s)
    model = copy
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
                   per_channel: bool = True, in_memory: bool = True) -> onnx.ModelProto:
    """The QDQ int8 model onnxruntime's quantiser makes of `model`, calibrated on the one batch `calibration`.

    `in_memory` (the default) runs the same onnxruntime steps as `quant_pre_process` + `quantize_static` on the
    model in memory, its large weights kept out of shape inference and handed to the calibration session as
    in-memory initializers (`_quantize_in_memory`): the same quantised model, bit for bit
    (tests/ops/test_int8_fast_path.py), without saving, re-loading and re-inferring the float model six times.
    `in_memory=False` calls onnxruntime's file-based functions themselves."""
    # each input in its graph type (an int64 attention mask stays int64; float inputs as float32)
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
             for i in model.graph.input if i.type.tensor_type.elem_type}
    batch = {k: np.asarray(v, dtype=types.get(k, np.float32)) for k, v in calibration.items()}

    inits = {i.name for i in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):  # old IR: weights listed as inputs; the quantiser would
        copy = onnx.ModelProto()  # drop some and then ask for them
        copy.CopyFrom(model)
        model = copy
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
        # onnxruntime's optimiser folds BatchNormalization into Conv, which the quantiser needs; it also
        # rewrites MatMul+Add into Reshape+Gemm+Reshape and merges an attention Transpose across GPT-2's
        # KV-cache Concat, which the attention lowering does not follow, so it runs only for models with a
        # BatchNormalization; Constant nodes (a torch export's Gemm biases) become initializers instead
        fold = any(n.op_type == "BatchNormalization" for n in model.graph.node)
        src = model if fold else constants_to_initializers(model)
        if in_memory:
            try:
                return _quantize_in_memory(src, fold, batch, per_channel)
            except _NotInMemory:
                pass
        return _quantize_files(src, fold, batch, per_channel)
    except CompileError:
        raise
    except Exception as e:
        raise CompileError(f"precision='int8': onnxruntime's quantiser failed on this model: "
                           f"{type(e).__name__}: {e}") from None
    finally:
        root.setLevel(level)


def _reader(batch: dict):
    from onnxruntime.quantization import CalibrationDataReader

    class _Once(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([batch])

        def get_next(self):
            return next(self.batches, None)
    return _Once()


def _quantize_static_options(per_channel: bool, exclude: list) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType

    return dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=per_channel, op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=exclude,
                extra_options={"DedicatedQDQPair": True})


def _quantize_files(src: onnx.ModelProto, fold: bool, batch: dict, per_channel: bool) -> onnx.ModelProto:
    """onnxruntime's `quant_pre_process` and `quantize_static` on files, as they are meant to be called."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as d:
        path, pre, out = (os.path.join(d, n) for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(src, path)
        quant_pre_process(path, pre, skip_optimization=not fold, skip_symbolic_shape=True)
        pm = onnx.load(pre)
        exclude = computed_matmuls(pm) + attention_score_adds(pm)
        quantize_static(pre, out, _reader(batch), **_quantize_static_options(per_channel, exclude))
        return onnx.load(out)


def _read_names(graph: onnx.GraphProto) -> set:
    """The tensor names the nodes of `graph` and of its subgraphs read, and its outputs."""
    names = {o.name for o in graph.output}
    for n in graph.node:
        names.update(n.input)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= _read_names(g)
    return names


class _NotInMemory(Exception):
    """A step `_quantize_in_memory` does not reproduce (onnxruntime would convert the opset): use the files."""


def _quantize_in_memory(src: onnx.ModelProto, fold: bool, batch: dict, per_channel: bool) -> onnx.ModelProto:
    """`_quantize_files` without the files: the same onnxruntime steps on the model in memory.

    What the file-based functions do to the float model, and what is done here instead:
    - `quant_pre_process` (skip_optimization, skip_symbolic_shape): save, onnx shape inference (`infer_shapes_path`),
      load, tag (`add_pre_process_metadata`), save. Here: onnx's `infer_shapes` on the model with its large
      initializers declared as external data (`calibrate.without_large_initializers`: name, type and dims, which is
      all shape inference reads of them; shape operands stay whole), then the same tag. (With a BatchNormalization
      the file-based pre-processing still runs: onnxruntime's optimiser writes the folded model to a file.)
    - `quantize_static`: shape inference again and `add_infer_metadata` (done alike, on the declared model);
      the calibrator loads and infers the model a third time, adds ReduceMin/ReduceMax outputs (`augment_graph`, its
      own code here), saves that and opens an onnxruntime session on it (ORT_DISABLE_ALL): here the session is made
      from the small augmented model with the weights handed over as in-memory initializers (the same values, the
      same kernels); then `collect_data`/`compute_data` (its own code); the QDQQuantizer gets the inferred model
      with its initializers put back (the original TensorProtos), and the result is what `save_model_to_file` would
      write (after its `topological_sort`), without the save and load."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater
    from onnxruntime.quantization.quant_utils import (add_infer_metadata, add_pre_process_metadata,
                                                      update_opset_version)
    from onnxruntime.quantization.quantize import check_static_quant_arguments
    import onnxruntime as ort

    from lpusim.compiler.frontend.calibrate import without_large_initializers

    if fold:  # onnxruntime's optimiser (BatchNormalization folding) runs on files; the rest in memory
        with tempfile.TemporaryDirectory() as d:
            path, pre_path = os.path.join(d, "float.onnx"), os.path.join(d, "pre.onnx")
            onnx.save(src, path)
            from onnxruntime.quantization.shape_inference import quant_pre_process
            quant_pre_process(path, pre_path, skip_optimization=False, skip_symbolic_shape=True)
            src = onnx.load(pre_path)
        pre, weights = without_large_initializers(src)
    else:
        declared, weights = without_large_initializers(src)
        pre = onnx.shape_inference.infer_shapes(declared)
        add_pre_process_metadata(pre)
    originals = {i.name: i for i in src.graph.initializer if i.name in weights}
    exclude = computed_matmuls(pre) + attention_score_adds(pre)
    options = _quantize_static_options(per_channel, exclude)
    check_static_quant_arguments(options["quant_format"], options["activation_type"], options["weight_type"])

    def inferred():  # `load_model_with_shape_infer` of the pre-processed model
        m = onnx.shape_inference.infer_shapes(pre)
        add_infer_metadata(m)
        return m
    model = inferred()
    if update_opset_version(model, options["weight_type"], options["activation_type"]) is not model:
        raise _NotInMemory

    class _Calibrator(MinMaxCalibrater):
        def __init__(self, proto):  # MinMaxCalibrater.__init__ with the model given, not loaded from a file
            self.model = proto
            self.op_types_to_calibrate = options["op_types_to_quantize"]
            self.augmented_model_path = None
            self.symmetric = False
            self.use_external_data_format = False
            self.per_channel = False
            self.augment_model = None
            self.infer_session = None
            self.execution_providers = ["CPUExecutionProvider"]
            self.intermediate_outputs = []
            self.calibrate_tensors_range = None
            self.num_model_outputs = len(self.model.graph.output)
            self.model_original_outputs = {output.name for output in self.model.graph.output}
            self.moving_average = False
            self.averaging_constant = 0.01
            self.max_intermediate_outputs = None

        def create_inference_session(self):
            sess_options = ort.SessionOptions()
            sess_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            # onnxruntime drops initializers no node reads (an Identity's source made an initializer itself)
            # before it takes the external ones, and then refuses those
            used = _read_names(self.model.graph)
            names = [k for k in weights if k in used]
            self.values = [ort.OrtValue.ortvalue_from_numpy(weights[k]) for k in names]
            if names:
                sess_options.add_external_initializers(names, self.values)
            self.infer_session = ort.InferenceSession(self.model.SerializeToString(), sess_options,
                                                      providers=self.execution_providers)

    calibrator = _Calibrator(inferred())
    with tempfile.TemporaryDirectory() as d:
        calibrator.augmented_model_path = os.path.join(d, "augmented_model.onnx")  # small: no weights
        calibrator.augment_graph()
    calibrator.create_inference_session()
    calibrator.collect_data(_reader(batch))
    tensors_range = calibrator.compute_data()
    del calibrator
    for init in model.graph.initializer:
        if init.name in originals:
            init.CopyFrom(originals[init.name])
    quantizer = _vectorised_quantizer()(model, options["per_channel"], False, options["weight_type"],
                             options["activation_type"], tensors_range, [], options["nodes_to_exclude"],
                             options["op_types_to_quantize"], options["extra_options"])
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # what save_model_to_file does before saving
    for init in quantizer.model.model.graph.initializer:
        quantizer.model._check_init(init, "end")
    return quantizer.model.model


_VECTORISED: list = []


def _vectorised_quantizer():
    """onnxruntime's QDQQuantizer with its per-channel int8 weight quantisation done for all channels at once.

    onnxruntime quantises a per-channel weight one channel at a time (`take` of the channel, its min and max,
    `compute_scale_zp`, `quantize_nparray`), twice over (parameters, then codes): 8 s of Python loops for the 15,361
    channels of a Llama-2-70B MLP share. The same float32/float64 element operations on whole arrays give the same
    scales, zero points and codes (tests/ops/test_int8_fast_path.py compares the models byte for byte). Weights the
    vectorised form does not cover (overrides, blocks, per-tensor, other types) go through onnxruntime's code."""
    if _VECTORISED:
        return _VECTORISED[0]
    import types

    from onnxruntime.quantization import qdq_quantizer
    from onnxruntime.quantization.base_quantizer import QuantizationParams
    from onnxruntime.quantization.quant_utils import (get_qmin_qmax_for_qType, normalize_axis,
                                                      quantize_onnx_initializer, TENSOR_NAME_QUANT_SUFFIX)

    int8 = onnx.TensorProto.INT8

    def channels(data: np.ndarray, axis: int) -> tuple:
        return tuple(a for a in range(data.ndim) if a != axis)

    def per_channel_params(data: np.ndarray, axis: int):
        """compute_data_quant_params(channel, INT8, symmetric=True) of every channel (quant_utils)."""
        qmin, qmax = get_qmin_qmax_for_qType(int8, False, symmetric=True)
        rmin = np.minimum(data.min(axis=channels(data, axis)), np.array(0, dtype=data.dtype))
        rmax = np.maximum(data.max(axis=channels(data, axis)), np.array(0, dtype=data.dtype))
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, +absmax
        dr = rmax.astype(np.float64) - rmin.astype(np.float64)
        dq = np.array(qmax, dtype=np.float64) - np.array(qmin, dtype=np.float64)
        scale = dr / dq
        tiny = np.finfo(rmax.dtype).tiny
        zero = np.array(np.round((qmin + qmax) / np.array(2.0, dtype=np.float64)), dtype=qmin.dtype)
        small = scale < tiny
        zero_point = np.where(small, np.array(0, dtype=qmin.dtype), zero).astype(qmin.dtype)
        return zero_point, np.where(small, np.array(1.0, dtype=rmax.dtype), scale.astype(rmax.dtype))

    def fast_quantize_onnx_initializer(weight, quant_type, zero_point, scale, axis=None, quant_weight_name=None,
                                       block_size=0):
        """quantize_onnx_initializer's per-channel integer case on all channels at once."""
        if axis is None or block_size or quant_type != int8 or weight.data_type != onnx.TensorProto.FLOAT or \
                np.asarray(scale).dtype != np.float32 or np.asarray(zero_point).dtype != np.int8:
            return quantize_onnx_initializer(weight, quant_type, zero_point, scale, axis, quant_weight_name,
                                             block_size=block_size)
        data = onnx.numpy_helper.to_array(weight)
        shape = [1] * data.ndim
        shape[axis] = data.shape[axis]
        # quantize_nparray's (x / scale).round() + zero_point, clipped, in float32, one step at a time in place
        q = data.astype(np.float32)
        np.divide(q, np.asarray(scale).reshape(shape), out=q)
        np.round(q, out=q)
        np.add(q, np.asarray(zero_point).reshape(shape), out=q)
        qmin, qmax = get_qmin_qmax_for_qType(quant_type, reduce_range=False, symmetric=False)
        np.clip(q, qmin, qmax, out=q)
        q = q.astype(onnx.helper.tensor_dtype_to_np_dtype(quant_type)).reshape(weight.dims)
        return onnx.numpy_helper.from_array(q, quant_weight_name or f"{weight.name}{TENSOR_NAME_QUANT_SUFFIX}")

    base = qdq_quantizer.QDQQuantizer
    add = base._add_qdq_nodes_for_initializer

    class Quantizer(base):
        # onnxruntime's own method, its quantize_onnx_initializer the one above
        _add_qdq_nodes_for_initializer = types.FunctionType(
            add.__code__, {**vars(qdq_quantizer), "quantize_onnx_initializer": fast_quantize_onnx_initializer},
            add.__name__, add.__defaults__, add.__closure__)

        def _vectorised_params(self, name, info):
            if info.tensor_type is not qdq_quantizer.QDQQuantTensorType.WEIGHT or info.axis is None or \
                    self.block_size or self.weight_qType != int8 or self.min_real_range is not None or \
                    self.reduce_range or self.tensor_quant_overrides.overrides:
                return None
            init = qdq_quantizer.find_by_name(name, self.model.initializer())
            if init is None or init.data_type != onnx.TensorProto.FLOAT or not all(init.dims):
                return None
            data = onnx.numpy_helper.to_array(init)
            valid, axis = normalize_axis(info.axis, data.ndim)
            if not valid:
                return None
            zero_point, scale = per_channel_params(data, axis)
            return QuantizationParams(zero_point=zero_point, scale=scale, quant_type=int8, axis=axis)

        def _calc_initializer_quant_params(self):
            every = self.tensors_to_quantize
            mine = {}
            for name, info in every.items():
                params = self._vectorised_params(name, info)
                if params is not None:
                    mine[name] = params
            self.tensors_to_quantize = {k: v for k, v in every.items() if k not in mine}
            try:
                theirs = super()._calc_initializer_quant_params()
            finally:
                self.tensors_to_quantize = every
            return {k: mine[k] if k in mine else theirs[k] for k in every if k in mine or k in theirs}

    _VECTORISED.append(Quantizer)
    return Quantizer
