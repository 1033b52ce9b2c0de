"""A prepared model (`LpusimBackendRep`): per run, bind the parameter inputs (params.py), return the host-known
outputs (host.py), and simulate the rest on a program compiled once per distinct shapes and bound values
(cache.py)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.backend.base import BackendRep

from lpusim.api import compile as compile_model
from lpusim.backend.cache import key
from lpusim.backend.host import host_known, host_outputs
from lpusim.backend.params import ALWAYS, bind, parameter_uses, to_bind
from lpusim.errors import CompileError, LpusimError, ModelError, OutOfSram
from lpusim.runtime.cache import ProgramCache
from lpusim.runtime.program import RunResult

# Element types with a chip path (frontend/load.HOST_TYPES): float32 as computed; bool from and to the chip's 1.0/0.0;
# integers as float32 whole numbers (exact up to 2^24), converted by the host both ways.
IO_TYPES = (TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64, TensorProto.INT32, TensorProto.INT16,
            TensorProto.INT8, TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64)


def runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def type_problems(model: onnx.ModelProto, constant_inputs=()) -> list[str]:
    """Why the chip path cannot take this model's run-time inputs or outputs, one phrase per input or output that
    is not a float32, bool or integer tensor (empty when it can). Inputs the backend binds (`constant_inputs` and
    the parameters of params.py) are folded on the host, and outputs computed from them and constants only are
    evaluated on the host (host.py): any type."""
    names = [i.name for i in runtime_inputs(model)]
    bound = set(constant_inputs) | set(parameter_uses(model, names))
    known = host_known(model, [n for n in names if n not in bound])
    problems = []
    for kind, values in (("input", [i for i in runtime_inputs(model) if i.name not in bound]),
                         ("output", [o for o in model.graph.output if o.name not in known])):
        for v in values:
            if not v.type.HasField("tensor_type"):
                problems.append(f"{kind} '{v.name}' is a {v.type.WhichOneof('value') or 'value of no type'}, "
                                f"not a tensor")
            elif v.type.tensor_type.elem_type not in IO_TYPES:
                problems.append(f"{kind} '{v.name}' has element type "
                                f"{TensorProto.DataType.Name(v.type.tensor_type.elem_type)}")
    return problems


def fixed_shape(v: onnx.ValueInfoProto) -> tuple | None:
    if not v.type.tensor_type.HasField("shape"):
        return None
    dims = v.type.tensor_type.shape.dim
    if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return tuple(d.dim_value for d in dims)
    return None


def _without(calibration, names):
    """The calibration inputs minus the bound ones (no longer graph inputs of the compiled model)."""
    if isinstance(calibration, dict):
        return {k: v for k, v in calibration.items() if k not in names}
    return [_without(c, names) for c in calibration]


class LpusimBackendRep(BackendRep):
    """A prepared model: `run(inputs)` binds its parameter inputs, compiles once per distinct input shapes and
    bound values, and simulates cycle by cycle. `programs` holds the compiled Programs (a bounded LRU,
    `programs.compiles` counts compiles); `last_result` the last RunResult (None when every output was
    host-known)."""

    def __init__(self, model: onnx.ModelProto, options: dict):
        self.model = model
        self.chip = options.get("chip")
        # fp32 by default: an ONNX backend is judged against float32 (docs/conformance.md); a default-fp32 model
        # whose pieces do not fit one chip's SRAM runs at fp16 instead (one that fits is never downgraded)
        self.precision = options.get("precision", "fp32")
        self._fp16_if_too_large = "precision" not in options
        self.shapes = {k: tuple(v) for k, v in (options.get("shapes") or {}).items()}
        self.constant_inputs = tuple(options.get("constant_inputs") or ())
        self.calibration = options.get("calibration")
        self.inputs = runtime_inputs(model)
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in model.graph.output]
        self.output_types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
        unknown = [n for n in self.constant_inputs if n not in self.input_names]
        if unknown:
            raise ModelError(f"constant_inputs names no graph input: {', '.join(unknown)} "
                             f"(inputs: {', '.join(self.input_names)})")
        self.parameters = {**parameter_uses(model, self.input_names), **{n: ALWAYS for n in self.constant_inputs}}
        problems = type_problems(model, self.constant_inputs)
        if problems:
            raise CompileError("; ".join(problems) + ": the simulated chip computes in float32 (the fp16 MXM "
                               "path with fp32 on the VXM) and takes and returns float32, bool and integer "
                               "tensors; no other element type has a chip path yet")
        self.programs = ProgramCache()
        self._known: dict[frozenset, set] = {}
        self.last_result: RunResult | None = None
        fixed = {i.name: self.shapes.get(i.name, fixed_shape(i)) for i in self.inputs}
        chip = self._chip_outputs(())
        if not self.parameters and all(s is not None for s in fixed.values()) and chip:
            self._program(fixed, {}, chip)  # nothing waits for a run's values: compile now (errors at prepare)

    def _chip_outputs(self, bound, empty=()) -> list[str]:
        """The outputs to simulate when `bound` inputs are bound and `empty` ones have zero size: those not
        host-known."""
        bound = frozenset(bound) | frozenset(empty)
        if bound not in self._known:
            self._known[bound] = host_known(self.model, [n for n in self.input_names if n not in bound])
        return [o for o in self.output_names if o not in self._known[bound]]

    def _program(self, shapes: dict, values: dict, chip: list[str]):
        """The program for these shapes and bound values (`chip`: the outputs it computes, a function of both),
        from the cache or compiled now."""
        def compile_():
            model = bind(self.model, values)
            if len(chip) < len(self.output_names):  # the host-known outputs are not the chip's work
                kept = [o for o in model.graph.output if o.name in chip]
                del model.graph.output[:]
                model.graph.output.extend(kept)
            extra = {} if self.calibration is None else {"calibration": _without(self.calibration, set(values))}
            try:
                return compile_model(model, chip=self.chip, precision=self.precision, shapes=shapes, **extra)
            except CompileError as e:
                if not (self._fp16_if_too_large and self.precision == "fp32" and _too_large(e)):
                    raise
                return compile_model(model, chip=self.chip, precision="fp16", shapes=shapes, **extra)
        return self.programs.get_or_compile(key(shapes, values), compile_)

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
        returns the outputs in graph output order, in their declared types (host-known outputs as onnx's
        reference evaluator gives them). `timing_only=True` skips computing values."""
        timing_only = bool(kwargs.pop("timing_only", False))
        if kwargs:
            raise TypeError(f"LpusimBackendRep.run: unknown option(s) {', '.join(sorted(kwargs))} (timing_only)")
        feeds = self._feeds(inputs)
        values = {n: feeds[n] for n in to_bind(self.parameters, feeds)}
        shapes = {}
        for v in self.inputs:
            if v.name in values:
                continue
            a = feeds[v.name]
            want = np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
            if not isinstance(a, np.ndarray):
                raise ModelError(f"input '{v.name}' is a {type(a).__name__}; the chip takes a {want} array")
            if a.dtype != want:
                raise ModelError(f"input '{v.name}' is a {a.dtype} array; the model declares {want} (convert it "
                                 f"with .astype(np.{want}))")
            declared = self.shapes.get(v.name, fixed_shape(v))
            shapes[v.name] = declared if declared is not None else tuple(a.shape)
        empty = [n for n in shapes if 0 in feeds[n].shape]
        chip = self._chip_outputs(values, empty)
        outputs = {}
        self.last_result = None
        if chip:
            program = self._program(shapes, values, chip)
            result = program.run({n: a for n, a in feeds.items() if n not in values}, timing_only=timing_only)
            self.last_result = result
            if timing_only:
                return []
            outputs.update((n, self._typed(n, result.outputs[n])) for n in chip)
        elif timing_only:
            return []
        host = [o for o in self.output_names if o not in chip]
        if host:
            outputs.update(host_outputs(self.model, host, feeds))
        return [outputs[name] for name in self.output_names]

    def _typed(self, name: str, value: np.ndarray) -> np.ndarray:
        if self.output_types[name] != TensorProto.BOOL:
            return value
        bad = ~((value == 0.0) | (value == 1.0))
        if bad.any():
            raise LpusimError(f"output '{name}' is bool, but the chip produced {int(bad.sum())} value(s) other than "
                              f"1.0/0.0 (e.g. {value[bad].ravel()[0]!r})")
        return value == 1.0


def _too_large(error: CompileError) -> bool:
    """A compile that failed for want of one chip's SRAM (the estimate, or placement)."""
    return isinstance(error, OutOfSram) or "bytes of SRAM" in str(error)
