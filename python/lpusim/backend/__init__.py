"""lpusim as an ONNX backend: `onnx.backend.base.Backend`, shaped like `onnxruntime.backend`.

    import lpusim.backend as backend
    rep = backend.prepare(model)              # check the model; compile now if nothing waits for a run's values
    outputs = rep.run([x])                    # simulate cycle by cycle: a list of arrays in graph output order
    rep.last_result.cycles                    # the RunResult of that run (cycles, latency, utilisation)
    rep.programs, rep.programs.compiles       # the compiled programs (a bounded LRU) and how many compiles
    outputs = backend.run_model(model, [x])   # prepare + run
    outputs = backend.run_node(node, [x])     # one node wrapped in a model, then prepare + run

Devices. The ONNX backend API names devices "CPU" and "CUDA" (onnx.backend.base.DeviceType). lpusim executes on
one simulated chip (the `chip` configuration, tsp_v1 by default), computed by the simulator on the host, and answers
to the device string "CPU" (also "CPU:0"); that is the default and the only device `supports_device` accepts.
"CUDA" and every other string are refused: there is no GPU path and no second chip.

Run-time binding (params.py, cache.py). A TSP program is a static schedule with its parameters and weights compiled
in. Graph inputs that are parameters, decided by the consuming op and operand position (params.PARAMETERS: axes,
shapes, pads, repeats, split sizes, Slice's starts/ends/axes/steps, Resize's roi/scales/sizes, Clip bounds,
ConstantOfShape's shape, Range's operands, Dropout's ratio, small Gather/GatherND indices, MatMul/Gemm/Conv weights
and bias, normalisation statistics, the integer ops' scales and zero points, and integer inputs a parameter is
computed from), are read from each run's inputs and folded into the graph as initializers before compiling; the
compile therefore waits for the first `run`. One program is kept per distinct input shapes and bound values
(sha256 of their bytes), at most runtime/cache.MAX_PROGRAMS (16), least recently used out.

Host-known outputs (host.py). An output computed from constants, bound inputs and input shapes only (Shape, Size,
ConstantOfShape of a bound shape, a Constant, a reduction of a zero-size input) is evaluated by onnx's reference
evaluator and returned as ONNX defines it, in any element type; the chip simulates the other outputs (none: no
compile, no simulation, `last_result` None).

Options (keyword arguments of `prepare`, `run_model`, `run_node`):
- `chip`: a chip configuration name, JSON path or dict (`lpusim.compile(chip=...)`); `precision`: "fp32" (the
  default: ONNX's float32 accuracy, each MXM operand as fp16 pieces summed exactly, about 3x the MXM passes;
  quantised models keep their own float32 handling; when left at the default, a model whose fp32 program does not
  fit one chip's SRAM runs at fp16), "fp16" (faster, fp16 inputs to the MXM) or "int8"
  (quantised with onnxruntime's quantize_static inside the compile). docs/precision.md.
- `shapes`: {input name: shape} fixing dynamic dimensions; without it a dynamic input is compiled for the shape of
  the first array given to `run` (one program per distinct input shapes, each compiled once).
- `constant_inputs`: names of further graph inputs to bind like the parameters above (compiled in, one program per
  distinct set of their values): `run` still takes them with the other inputs.
- `calibration`: inputs by name for the compile-time fp16 range calibration (`lpusim.compile(calibration=...)`);
  seeded random inputs when absent.
- `rtol`, `atol`: accepted and ignored (the ONNX test runner forwards its comparison settings to `prepare`).

The chip computes in float32. Graph inputs may be float32, bool or integer tensors (int8..int64, uint8..uint64): the
host converts bool to 1.0/0.0 and integers to float32 exactly, and a value beyond 2^24 in magnitude (no exact float32
form) is a ModelError naming the input. Outputs may be float32, bool or integer tensors: a bool output (a comparison,
Not, And, ...) comes off the chip as 1.0/0.0 and is returned as a bool array, an integer output (ArgMax, a Cast to
int64) as whole float32 numbers returned in its integer type; any other value there is an LpusimError. Any other
element type (float16, double, string), or a value that is not a tensor, is a CompileError at `prepare` naming it
(bound inputs and host-known outputs may have any type: they never touch the chip). A run-time array whose dtype is
not the declared one, or whose shape is not the compiled one, is a ModelError naming the input. Unsupported
ops and attributes are the compiler's CompileError naming node and op.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend

from lpusim.backend.rep import LpusimBackendRep, type_problems
from lpusim.compiler.frontend.load import load_model, read_model
from lpusim.compiler.lower.table import SUPPORTED_OPS
from lpusim.errors import CompileError, ModelError

DEVICES = ("CPU", "CPU:0")
_OPTIONS = {"chip", "precision", "shapes", "constant_inputs", "calibration"}
_RUNNER_OPTIONS = {"rtol", "atol"}  # the ONNX test runner forwards these to prepare(); they are not ours


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
        """Check the model (`onnx.checker`) and its element types; compile it now when every input shape is fixed,
        no input is a parameter bound at run time (params.py) and some output needs the chip, else at the first
        `run`. Returns an LpusimBackendRep."""
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
