"""Load and check an ONNX model, resolve its input shapes, and say what kind of values its non-float inputs hold.

The first stage of the compiler: everything here reads the ONNX graph only; nothing is lowered yet.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from lpusim.errors import CompileError, ModelError


def load_model(model) -> onnx.ModelProto:
    """An ONNX path or ModelProto -> a checked ModelProto; ModelError with the file name on any problem."""
    if isinstance(model, onnx.ModelProto):
        where = "the given ModelProto"
    else:
        where = os.fspath(model)
        if not os.path.exists(where):
            raise ModelError(f"{where}: no such file")
        if not os.path.isfile(where):  # a device such as /dev/zero would be read without end
            raise ModelError(f"{where}: not a regular file (an ONNX model is a file)")
        try:
            model = onnx.load(where)
        except Exception as e:  # protobuf raises DecodeError and friends
            raise ModelError(f"{where}: not a readable ONNX model (truncated or malformed?): {e}") from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{where}: invalid ONNX model: {first}") from None
    if not model.graph.output:
        raise ModelError(f"{where}: the graph has no outputs")
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise ModelError(f"{where}: the model is stamped with opset {opset.version}; the installed onnx knows "
                             f"opsets up to {newest}")
    return model


def attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


MAX_INPUT_ELEMENTS = 1 << 31  # float32 elements of one input (8 GiB): far past any system lpusim compiles for


def resolve_input_shapes(model: onnx.ModelProto, shapes: dict | None) -> dict[str, tuple]:
    """Concrete shape of every real graph input; CompileError naming the input when a dimension is unknown."""
    shapes = dict(shapes or {})
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if inp.name in shapes:
            dims = tuple(int(d) for d in shapes.pop(inp.name))
            if any(d < 0 for d in dims):
                raise CompileError(f"input '{inp.name}': shape {list(dims)} has a negative dimension")
            declared = [d.dim_value if d.HasField("dim_value") else None
                        for d in inp.type.tensor_type.shape.dim]
            if inp.type.tensor_type.HasField("shape") and (
                    len(declared) != len(dims) or any(w is not None and w != g for w, g in zip(declared, dims))):
                model_shape = [w if w is not None else "?" for w in declared]
                raise CompileError(f"input '{inp.name}': the shape given {list(dims)} contradicts the model's "
                                   f"{model_shape}")
            out[inp.name] = dims
            continue
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(d.dim_value)
            else:
                name = d.dim_param or "?"
                raise CompileError(f"input '{inp.name}': dimension '{name}' is not fixed; give it with "
                                   f"--shape {inp.name}=D0,D1,... (or shapes={{'{inp.name}': (...)}})")
        out[inp.name] = tuple(dims)
    for name, dims in out.items():
        elements = int(np.prod(dims, dtype=object))
        if elements > MAX_INPUT_ELEMENTS:
            raise CompileError(f"input '{name}': shape {list(dims)} has {elements:,} elements, more than the "
                               f"{MAX_INPUT_ELEMENTS:,} lpusim accepts for one input (the SRAM of an 8-chip node is "
                               f"{8 * 230_686_720:,} bytes)")
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
