"""Load and check an ONNX model, resolve its input shapes, and say what kind of values its non-float inputs hold.

The first stage of the compiler: everything here reads the ONNX graph only; nothing is lowered yet.
"""
from __future__ import annotations

import functools
import math
import os
import re

import numpy as np
import onnx
import onnx.external_data_helper
from onnx import numpy_helper

from lpusim.errors import CompileError, ModelError
from lpusim.files import MAX_MODEL_BYTES, MAX_TENSOR_BYTES, read_bytes


def read_model(path, external_data: bool = True) -> onnx.ModelProto:
    """An ONNX file parsed, unchecked: a regular file of at most `MAX_MODEL_BYTES` (files.py; a device or a
    directory is refused unread), its external data loaded unless `external_data` is False (onnx checks each
    tensor's file and bounds). ModelError naming the file on any problem."""
    where = os.fspath(path)
    data = read_bytes(where, "an ONNX model", MAX_MODEL_BYTES, ModelError)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ModelError(f"{where}: not a readable ONNX model (truncated or malformed?): {_first_line(e)}") from None
    if not external_data:
        return model
    try:
        onnx.external_data_helper.load_external_data_for_model(model, os.path.dirname(where))
    except Exception as e:  # onnx's checks of the location, offset and length; the file's own errors
        raise ModelError(f"{where}: cannot load the model's external data: {_first_line(e)}") from None
    return model


def load_model(model) -> onnx.ModelProto:
    """An ONNX path or ModelProto -> a checked ModelProto; ModelError with the file name on any problem: a file
    `read_model` refuses, a model onnx's checker refuses, opsets newer than the installed onnx or onnxruntime
    know (onnxruntime is the reference every run is checked against)."""
    if isinstance(model, onnx.ModelProto):
        where = "the given ModelProto"
    else:
        where = os.fspath(model)
        model = read_model(where)
    newest = {"": onnx.defs.onnx_opset_version(), "ai.onnx.ml": onnx.helper.VERSION_TABLE[-1][3]}
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        if domain in newest and opset.version > newest[domain]:
            raise ModelError(f"{where}: the model is stamped with opset {opset.version}"
                             f"{' of ' + domain if domain else ''}; the installed onnx {onnx.__version__} knows "
                             f"opsets up to {newest[domain]}")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ModelError(f"{where}: invalid ONNX model: {_first_line(e)}") from None
    if not model.graph.output:
        raise ModelError(f"{where}: the graph has no outputs")
    standard = tuple(sorted({("" if o.domain == "ai.onnx" else o.domain, o.version) for o in model.opset_import
                             if o.domain in ("", "ai.onnx", "ai.onnx.ml")}))
    refusal = _onnxruntime_refuses(standard)
    if refusal:
        raise ModelError(f"{where}: {refusal}")
    return model


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@functools.lru_cache(maxsize=32)
def _onnxruntime_refuses(opsets: tuple[tuple[str, int], ...]) -> str | None:
    """Why the installed onnxruntime refuses models stamped with `opsets` ((domain, version) of the standard
    domains), or None. Asked of onnxruntime itself with a one-node model of the same stamps (a few ms, once per set
    of stamps): onnxruntime may know fewer opsets than the installed onnx, and would refuse the model only after
    lpusim had compiled and simulated it."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    stamps = dict(opsets)
    stamps.setdefault("", 13)  # the probe's Identity needs the default domain
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "opsets", [x], [y])
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in stamps.items()])
    probe.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidArgument, ort_errors.NotImplemented) as e:
        text = onnxruntime_message(e, limit=100_000)
        said = re.search(r"Opset (\d+) is under development.*?support for domain (\S+) is till opset (\d+)", text)
        if said:
            return (f"the model is stamped with opset {said[1]} of {said[2]}; the installed onnxruntime "
                    f"{ort.__version__} (the reference lpusim checks against) supports opsets up to {said[3]}")
        return (f"the installed onnxruntime {ort.__version__} refuses the model's opsets {dict(opsets)}: "
                f"{onnxruntime_message(e)}")
    return None


def onnxruntime_message(e: Exception, limit: int = 300) -> str:
    """onnxruntime's error text without its code prefix and C++ source location, on one line, at most `limit`
    characters."""
    text = " ".join(str(e).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    located = re.match(r"\S+\.(?:h|cc|cpp):\d+ [^(]*\(", text)
    if located:  # skip the C++ function signature: up to its matching parenthesis
        depth, i = 1, located.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        text = text[i:].strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def validate_shape(name: str, dims) -> tuple[int, ...]:
    """The shape given for input `name` (--shape, `shapes=`, an array's shape) as a tuple of ints; CompileError
    naming the input for anything else: not a sequence, a dimension that is not an integer (1.5, "8", True), a
    negative one. Zero is allowed here (an empty KV-cache past); the ops that cannot take it say so."""
    try:
        items = list(dims)
    except TypeError:
        raise CompileError(f"input '{name}': the shape given ({dims!r}) is not a sequence of dimensions") from None
    out = []
    for d in items:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise CompileError(f"input '{name}': the shape given {items} has a dimension that is not an integer "
                               f"({d!r})")
        out.append(int(d))
    if any(d < 0 for d in out):
        raise CompileError(f"input '{name}': shape {out} has a negative dimension")
    return tuple(out)


def tensor_bytes_check(what: str, dims, itemsize: int) -> None:
    """CompileError when a tensor of shape `dims` would take more than `MAX_TENSOR_BYTES` (files.py), saying both
    numbers: checked for every input and every declared shape before anything is allocated for it."""
    need = math.prod(int(d) for d in dims) * itemsize
    if need > MAX_TENSOR_BYTES:
        raise CompileError(f"{what}: shape {list(dims)} needs {need:,} bytes at {itemsize} bytes an element; one "
                           f"tensor may take at most {MAX_TENSOR_BYTES:,} (the SRAM of an 8-chip node is "
                           f"{8 * 230_686_720:,})")


def _host_itemsize(elem: int) -> int:
    """Bytes an element of this ONNX type takes on the host: as given, and never less than the chip's float32."""
    try:
        size = onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize
    except Exception:  # an undefined or exotic element type: count it as float32
        size = 4
    return max(4, size)


def declared_dims(inp: onnx.ValueInfoProto) -> list:
    """An input's shape as the model declares it: an int per fixed dimension, the dimension's name (or "?") per
    dynamic one; [] when the model declares no shape. A negative dim_value is dynamic: paddle2onnx writes -1 for the
    batch (onnxruntime accepts any size)."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or "?")
            for d in inp.type.tensor_type.shape.dim]


def shape_contradiction(inp: onnx.ValueInfoProto, dims, given: str = "given") -> str | None:
    """Why `dims` cannot be the shape of input `inp`, naming the first dimension whose model value (fixed) and
    `given` value differ, or the ranks; None when they fit (a model that declares no shape fits anything)."""
    if not inp.type.tensor_type.HasField("shape"):
        return None
    declared = declared_dims(inp)
    if len(declared) != len(dims):
        return f"{len(dims)} dimension(s) {given}, {len(declared)} in the model"
    for i, (want, got) in enumerate(zip(declared, dims)):
        if isinstance(want, int) and want != got:
            return f"dimension {i} is {want} in the model, {got} {given}"
    return None


def given_shape(inp: onnx.ValueInfoProto, dims) -> tuple[int, ...]:
    """A shape given for input `inp` (--shape, `shapes=`, an --inputs array's shape), checked: CompileError naming
    the input and the first dimension that contradicts the model."""
    dims = validate_shape(inp.name, dims)
    problem = shape_contradiction(inp, dims)
    if problem:
        raise CompileError(f"input '{inp.name}': the shape given {list(dims)} contradicts the model's "
                           f"{declared_dims(inp)}: {problem}")
    return dims


def not_fixed(name: str, dim: str) -> CompileError:
    """The error for input `name`'s dynamic dimension `dim` when nothing fixes it."""
    return CompileError(f"input '{name}': dimension '{dim}' is not fixed; give it with --shape {name}=D0,D1,... "
                        f"(or shapes={{'{name}': (...)}})")


def dynamic_inputs(model: onnx.ModelProto, shapes: dict | None) -> list[str]:
    """The real graph inputs with a dimension the model leaves dynamic and `shapes` does not fix."""
    shapes = shapes or {}
    inits = {i.name for i in model.graph.initializer}
    return [inp.name for inp in model.graph.input if inp.name not in inits and inp.name not in shapes
            and any(not isinstance(d, int) for d in declared_dims(inp))]


def resolve_input_shapes(model: onnx.ModelProto, shapes: dict | None) -> dict[str, tuple]:
    """Concrete shape of every real graph input; CompileError naming the input when a dimension is unknown."""
    shapes = dict(shapes or {})
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if inp.name in shapes:
            out[inp.name] = given_shape(inp, shapes.pop(inp.name))
            continue
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(d.dim_value)
            else:
                raise not_fixed(inp.name, d.dim_param or "?")
        out[inp.name] = tuple(dims)
    for inp in model.graph.input:
        elem = inp.type.tensor_type.elem_type
        if inp.name in out:
            tensor_bytes_check(f"input '{inp.name}'", out[inp.name], _host_itemsize(elem))
    for vi in list(model.graph.output) + list(model.graph.value_info):  # shapes the model declares, when static
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            tensor_bytes_check(f"tensor '{vi.name}' (declared)", [d.dim_value for d in dims],
                               _host_itemsize(vi.type.tensor_type.elem_type))
    for inp in model.graph.input:
        elem = inp.type.tensor_type.elem_type
        if inp.name in out and elem not in HOST_TYPES:
            raise CompileError(f"input '{inp.name}': element type {onnx.TensorProto.DataType.Name(elem)} "
                               f"is not supported yet (float32, bool and integer inputs)")
    if shapes:
        raise CompileError(f"--shape names unknown input(s): {', '.join(sorted(shapes))}")
    return out


# Graph input element types the host converts to the chip's float32 (integers exactly when |v| <= 2^24).
HOST_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.BOOL: np.bool_,
              onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT16: np.int16,
              onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.UINT16: np.uint16,
              onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64}
_INDEX_OPERANDS = {"Gather": 1, "GatherElements": 1, "GatherND": 1}  # op -> its indices operand
_VALUE_PRESERVING = {"Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def input_kinds(model: onnx.ModelProto) -> dict[str, tuple[str, int, int]]:
    """{input: (numpy dtype name, low, exclusive high)} for every bool or integer graph input: the values
    `random_inputs` draws. An input that indexes a constant (a Gather's token ids, through Cast/Reshape/...) is
    drawn in [0, that axis's length); a bool in {0, 1}; any other integer input in {1, 2} (never a zero divisor
    in the calibration run)."""
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    kinds, origin = {}, {}
    for inp in model.graph.input:
        elem = inp.type.tensor_type.elem_type
        if inp.name not in inits and elem in HOST_TYPES and elem != onnx.TensorProto.FLOAT:
            kinds[inp.name] = (np.dtype(HOST_TYPES[elem]).name, 0 if elem == onnx.TensorProto.BOOL else 1, None)
            origin[inp.name] = inp.name
    for node in model.graph.node:
        if node.op_type in _VALUE_PRESERVING and node.input and node.input[0] in origin:
            origin[node.output[0]] = origin[node.input[0]]
        pos = _INDEX_OPERANDS.get(node.op_type)
        if pos is None or len(node.input) <= pos or node.input[pos] not in origin:
            continue
        data = node.input[0]
        if data in inits:
            dims = list(inits[data].dims)
        elif data in consts and consts[data].attribute[0].name == "value":
            dims = list(numpy_helper.to_array(consts[data].attribute[0].t).shape)
        else:
            dims = None
        if not dims:
            continue
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        name = origin[node.input[pos]]
        high = int(dims[axis % len(dims)])
        kinds[name] = (kinds[name][0], 0, high if kinds[name][2] is None else min(high, kinds[name][2]))
    for node in model.graph.node:  # int8/uint8 codes a DequantizeLinear reads: any code
        if node.op_type == "DequantizeLinear" and node.input[0] in kinds and kinds[node.input[0]][0] in ("int8", "uint8"):
            kinds[node.input[0]] = (kinds[node.input[0]][0], *((-128, 128) if kinds[node.input[0]][0] == "int8" else (0, 256)))
    return {k: (d, lo, hi if hi is not None else lo + 2) for k, (d, lo, hi) in kinds.items()}
