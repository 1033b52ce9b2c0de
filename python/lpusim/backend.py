"""lpusim as an ONNX backend: `onnx.backend.base.Backend`, shaped like `onnxruntime.backend`.

    import lpusim.backend as backend
    rep = backend.prepare(model)              # check the model; compile now when every input shape is fixed
    outputs = rep.run([x])                    # simulate cycle by cycle: a list of arrays in graph output order
    rep.last_result.cycles                    # the RunResult of that run (cycles, latency, utilisation)
    outputs = backend.run_model(model, [x])   # prepare + run
    outputs = backend.run_node(node, [x])     # one node wrapped in a model, then prepare + run

Devices. The ONNX backend API names devices "CPU" and "CUDA" (onnx.backend.base.DeviceType). lpusim executes on
one simulated chip (the `chip` configuration, tsp_v1 by default), computed by the simulator on the host, and answers
to the device string "CPU" (also "CPU:0"); that is the default and the only device `supports_device` accepts.
"CUDA" and every other string are refused: there is no GPU path and no second chip.

Options (keyword arguments of `prepare`, `run_model`, `run_node`):
- `chip`: a chip configuration name, JSON path or dict (`lpusim.compile(chip=...)`); `precision`: "fp16" or "int8"
  (quantised with onnxruntime's quantize_static inside the compile).
- `shapes`: {input name: shape} fixing dynamic dimensions; without it a dynamic input is compiled for the shape of
  the first array given to `run` (one program per distinct input shapes, each compiled once).
- `constant_inputs`: names of graph inputs whose values are compiled into the program, as a TSP program holds its
  weights: `run` still takes them with the other inputs, and compiles once per distinct set of their values. The
  chip path needs MatMul/Gemm/Conv weights, BatchNormalization statistics, Clip bounds and shape operands to be
  constants; a model that passes them as graph inputs runs only with them named here.
- `calibration`: inputs by name for the compile-time fp16 range calibration (`lpusim.compile(calibration=...)`);
  seeded random inputs when absent.
- `rtol`, `atol`: accepted and ignored (the ONNX test runner forwards its comparison settings to `prepare`).

The chip computes in float32. Graph inputs may be float32, bool or integer tensors (int8..int64, uint8..uint64): the
host converts bool to 1.0/0.0 and integers to float32 exactly, and a value beyond 2^24 in magnitude (no exact float32
form) is a ModelError naming the input. Outputs may be float32, bool or integer tensors: a bool output (a comparison,
Not, And, ...) comes off the chip as 1.0/0.0 and is returned as a bool array, an integer output (ArgMax, a Cast to
int64) as whole float32 numbers returned in its integer type; any other value there is an LpusimError. Any other
element type (float16, double, string), or a value that is not a tensor, is a CompileError at `prepare` naming it
(inputs named in `constant_inputs` may have any type: they are folded on the host). A run-time array whose dtype is
not the declared one, or whose shape is not the compiled one, is a ModelError naming the input. Unsupported
ops and attributes are the compiler's CompileError naming node and op.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.base import Backend, BackendRep

from lpusim.compiler.frontend.load import load_model, read_model
from lpusim.compiler.lower.table import SUPPORTED_OPS
from lpusim.errors import CompileError, LpusimError, ModelError
from lpusim.runtime.program import Program, RunResult
from lpusim.api import compile as compile_model

DEVICES = ("CPU", "CPU:0")
_OPTIONS = {"chip", "precision", "shapes", "constant_inputs", "calibration"}
_RUNNER_OPTIONS = {"rtol", "atol"}  # the ONNX test runner forwards these to prepare(); they are not ours
# Element types with a chip path (frontend/load.HOST_TYPES): float32 as computed; bool from and to the chip's 1.0/0.0;
# integers as float32 whole numbers (exact up to 2^24), converted by the host both ways.
_IO_TYPES = (TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64, TensorProto.INT32, TensorProto.INT16,
             TensorProto.INT8, TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64)


def _type_name(elem: int) -> str:
    return TensorProto.DataType.Name(elem)


def _split_options(kwargs: dict) -> dict:
    unknown = set(kwargs) - _OPTIONS - _RUNNER_OPTIONS
    if unknown:
        raise TypeError(f"lpusim.backend: unknown option(s) {', '.join(sorted(unknown))} "
                        f"(options: {', '.join(sorted(_OPTIONS))})")
    return {k: v for k, v in kwargs.items() if k in _OPTIONS}


def _load(model, check: bool = False) -> onnx.ModelProto:
    """A ModelProto from a ModelProto, serialized bytes or a path; with `check`, passed through onnx.checker
    (lpusim's ModelError naming the problem)."""

    if isinstance(model, (str, os.PathLike)):
        return load_model(model) if check else read_model(model)
    if isinstance(model, bytes):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(model)
        except Exception as e:  # protobuf's DecodeError
            raise ModelError(f"the given bytes are not a serialized ONNX model: {e}") from None
        model = proto
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"cannot prepare a {type(model).__name__}: give an onnx.ModelProto, a path or serialized "
                         f"bytes")
    return load_model(model) if check else model


def _runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def type_problems(model: onnx.ModelProto, constant_inputs=()) -> list[str]:
    """Why the chip path cannot take this model's run-time inputs or outputs, one phrase per input or output that
    is not a float32, bool or integer tensor (empty when it can). Inputs named in `constant_inputs` are folded on
    the host: any type."""
    problems = []
    for kind, values, types in (
            ("input", [i for i in _runtime_inputs(model) if i.name not in constant_inputs], _IO_TYPES),
            ("output", list(model.graph.output), _IO_TYPES)):
        for v in values:
            if not v.type.HasField("tensor_type"):
                problems.append(f"{kind} '{v.name}' is a {v.type.WhichOneof('value') or 'value of no type'}, "
                                f"not a tensor")
            elif v.type.tensor_type.elem_type not in types:
                problems.append(f"{kind} '{v.name}' has element type "
                                f"{_type_name(v.type.tensor_type.elem_type)}")
    return problems


def _fixed_shape(v: onnx.ValueInfoProto) -> tuple | None:
    if not v.type.tensor_type.HasField("shape"):
        return None
    dims = v.type.tensor_type.shape.dim
    if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return tuple(d.dim_value for d in dims)
    return None


class LpusimBackendRep(BackendRep):
    """A prepared model: `run(inputs)` compiles it once per distinct input shapes (and constant-input values),
    then simulates it cycle by cycle. `programs` holds the compiled Programs; `last_result` the last RunResult."""

    def __init__(self, model: onnx.ModelProto, options: dict):
        self.model = model
        self.chip = options.get("chip")
        self.precision = options.get("precision", "fp16")
        self.shapes = {k: tuple(v) for k, v in (options.get("shapes") or {}).items()}
        self.constant_inputs = tuple(options.get("constant_inputs") or ())
        self.calibration = options.get("calibration")
        self.inputs = _runtime_inputs(model)
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in model.graph.output]
        self.output_types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
        unknown = [n for n in self.constant_inputs if n not in self.input_names]
        if unknown:
            raise ModelError(f"constant_inputs names no graph input: {', '.join(unknown)} "
                             f"(inputs: {', '.join(self.input_names)})")
        problems = type_problems(model, self.constant_inputs)
        if problems:
            raise CompileError("; ".join(problems) + ": the simulated chip computes in float32 (the fp16 MXM "
                               "path with fp32 on the VXM) and takes and returns float32, bool and integer "
                               "tensors; no other element type has a chip path yet")
        self.programs: dict[Any, Program] = {}
        self.last_result: RunResult | None = None
        fixed = {i.name: self.shapes.get(i.name, _fixed_shape(i)) for i in self.inputs}
        if not self.constant_inputs and all(s is not None for s in fixed.values()):
            self._program(fixed, {})  # everything is known: compile now, so unsupported ops surface at prepare

    def _program(self, shapes: dict, constants: dict) -> Program:
        digest = hashlib.sha256()
        for name in sorted(constants):
            a = np.ascontiguousarray(constants[name])
            digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            digest.update(a.tobytes())
        key = (tuple(sorted(shapes.items())), digest.hexdigest())
        if key not in self.programs:
            model = self.model
            if constants:
                model = onnx.ModelProto()
                model.CopyFrom(self.model)
                model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k)
                                               for k, v in constants.items())
            extra = {"calibration": self.calibration} if self.calibration is not None else {}
            self.programs[key] = compile_model(model, chip=self.chip, precision=self.precision, shapes=shapes, **extra)
        return self.programs[key]

    def _feeds(self, inputs) -> dict[str, np.ndarray]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        elif isinstance(inputs, (list, tuple)):
            if len(inputs) != len(self.input_names):
                raise ModelError(f"{len(inputs)} input(s) given, the model takes {len(self.input_names)}: "
                                 f"{', '.join(self.input_names)}")
            feeds = dict(zip(self.input_names, inputs))
        else:
            if len(self.input_names) != 1:
                raise ModelError(f"one array given, the model takes {len(self.input_names)} inputs: "
                                 f"{', '.join(self.input_names)}")
            feeds = {self.input_names[0]: inputs}
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise ModelError(f"inputs do not fit the model: missing {missing or 'none'}, unknown {extra or 'none'} "
                             f"(the model takes {', '.join(self.input_names)})")
        return {k: (np.asarray(v) if isinstance(v, (np.generic, np.ndarray, list, tuple, int, float)) else v)
                for k, v in feeds.items()}

    def run(self, inputs, **kwargs) -> list[np.ndarray]:
        """Simulate on `inputs` (a list in graph input order, a dict by name, or one array for a one-input model);
        returns the outputs in graph output order, in their declared types. `timing_only=True` skips computing
        values."""
        timing_only = bool(kwargs.pop("timing_only", False))
        if kwargs:
            raise TypeError(f"LpusimBackendRep.run: unknown option(s) {', '.join(sorted(kwargs))} (timing_only)")
        feeds = self._feeds(inputs)
        constants = {n: feeds.pop(n) for n in self.constant_inputs}
        shapes = {}
        for v in self.inputs:
            if v.name in constants:
                continue
            a = feeds[v.name]
            want = np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
            if not isinstance(a, np.ndarray):
                raise ModelError(f"input '{v.name}' is a {type(a).__name__}; the chip takes a {want} array")
            if a.dtype != want:
                raise ModelError(f"input '{v.name}' is a {a.dtype} array; the model declares {want} (convert it "
                                 f"with .astype(np.{want}))")
            declared = self.shapes.get(v.name, _fixed_shape(v))
            shapes[v.name] = declared if declared is not None else tuple(a.shape)
        program = self._program(shapes, constants)
        result = program.run(feeds, timing_only=timing_only)
        self.last_result = result
        if timing_only:
            return []
        return [self._typed(name, result.outputs[name]) for name in self.output_names]

    def _typed(self, name: str, value: np.ndarray) -> np.ndarray:
        if self.output_types[name] != TensorProto.BOOL:
            return value
        bad = ~((value == 0.0) | (value == 1.0))
        if bad.any():
            raise LpusimError(f"output '{name}' is bool, but the chip produced {int(bad.sum())} value(s) other than "
                              f"1.0/0.0 (e.g. {value[bad].ravel()[0]!r})")
        return value == 1.0


class LpusimBackend(Backend):
    """The ONNX backend API over lpusim: compile to a static schedule for one simulated chip, simulate it."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """True for "CPU" (and "CPU:0"): lpusim's one simulated chip. Every other device string is False."""
        return str(device).upper() in DEVICES

    @classmethod
    def is_compatible(cls, model, device: str | None = "CPU", **kwargs) -> bool:
        """A quick static check, necessary but not sufficient: the device is supported, every node's op is one the
        compiler lowers (`SUPPORTED_OPS`), and every run-time input and every output is a float32, bool or integer
        tensor. A model that passes can still be refused at compile time for an attribute or operand form not
        supported yet."""
        if device is not None and not cls.supports_device(device):
            return False
        options = _split_options(kwargs)
        try:
            model = _load(model)
        except (ModelError, OSError):
            return False
        ops = set(SUPPORTED_OPS)
        if any(n.domain not in ("", "ai.onnx") or n.op_type not in ops for n in model.graph.node):
            return False
        return not type_problems(model, tuple(options.get("constant_inputs") or ()))

    @classmethod
    def prepare(cls, model, device: str | None = "CPU", **kwargs) -> LpusimBackendRep:
        """Check the model (`onnx.checker`) and its element types; compile it now when every input shape is fixed
        and no input is bound with `constant_inputs`, else at the first `run`. Returns an LpusimBackendRep."""
        if isinstance(model, LpusimBackendRep):
            return model
        if device is not None and not cls.supports_device(device):
            raise CompileError(f"device '{device}' is not available: lpusim runs one simulated chip, addressed as "
                               f"device 'CPU'")
        options = _split_options(kwargs)
        return LpusimBackendRep(_load(model, check=True), options)

    @classmethod
    def run_model(cls, model, inputs, device: str | None = "CPU", **kwargs) -> list[np.ndarray]:
        """prepare(model, device, **kwargs).run(inputs)."""
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs, device: str | None = "CPU", outputs_info=None,
                 **kwargs) -> list[np.ndarray]:
        """Run one node: wrap it in a model whose inputs take the given arrays' shapes and types (float32 runs on
        the chip; inputs named in `constant_inputs` are compiled in), then prepare and run it. `outputs_info`, a
        list of (dtype, shape) per output, declares the outputs (onnx's shape inference when absent). `opset_version`
        selects the default-domain opset (the installed onnx's latest when absent)."""
        opset = kwargs.pop("opset_version", None)
        names = [n for n in node.input if n]
        if isinstance(inputs, dict):
            arrays = {n: np.asarray(inputs[n]) for n in names}
        else:
            if len(inputs) != len(names):
                raise ModelError(f"{node.op_type} node: {len(inputs)} input(s) given for {len(names)} named inputs")
            arrays = {n: np.asarray(a) for n, a in zip(names, inputs)}
        graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                        for n, a in arrays.items()]
        outs = []
        for i, name in enumerate(node.output):
            if not name:
                continue
            if outputs_info is not None and i < len(outputs_info):
                dtype, shape = outputs_info[i]
                outs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                          shape))
            else:
                outs.append(helper.make_empty_tensor_value_info(name))  # filled in by shape inference below
        graph = helper.make_graph([node], f"{node.op_type}_node", graph_inputs, outs)
        opsets = [helper.make_opsetid("", opset if opset is not None else onnx.defs.onnx_opset_version())]
        model = helper.make_model(graph, opset_imports=opsets)
        if outputs_info is None or len(outputs_info) < len(outs):
            try:  # the output shapes (and types) from onnx's shape inference
                model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
            except Exception as e:
                raise ModelError(f"{node.op_type} node: onnx shape inference failed on the given inputs: "
                                 f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        return cls.prepare(model, device, **kwargs).run(arrays)


is_compatible = LpusimBackend.is_compatible
prepare = LpusimBackend.prepare
run_model = LpusimBackend.run_model
run = LpusimBackend.run_model
run_node = LpusimBackend.run_node
supports_device = LpusimBackend.supports_device

__all__ = ["LpusimBackend", "LpusimBackendRep", "DEVICES", "is_compatible", "prepare", "run_model", "run",
           "run_node", "supports_device", "type_problems"]
