"""`lpusim.compile`: one chip gives a `runtime.Program`, several a `multichip.MultiProgram`."""
from __future__ import annotations

import numbers

from lpusim.compiler.frontend.load import dynamic_inputs, given_shape, load_model
from lpusim.errors import CompileError
from lpusim.multichip.pipeline import compile_multichip
from lpusim.runtime.dynamic import DynamicProgram
from lpusim.runtime.program import compile_program


def compile(model, chips: int | str = 1, chip=None, precision: str = "fp16", shapes: dict | None = None,
            dump=None, progress: bool = False, calibration: dict | list | None = None, parallel: str = "auto",
            system=None):
    """Compile an ONNX model (path or ModelProto) to a static schedule for `chips` simulated chips.

    `chip` is a configuration name (`"tsp_v1"`), a JSON file path or dict; `precision="fp16"` runs float models
    through the fp16 MXM path with f32 accumulation (Groq's flow); `shapes` fixes dynamic input dimensions;
    `dump(name, text)` receives the IR after every pass; a model with dynamic dimensions that `shapes` leaves open
    gives a `runtime.dynamic.DynamicProgram`, compiled at each `run` for the arrays' shapes (one program per
    distinct set, cached); `calibration` (inputs by name, or a list of such runs: the
    largest magnitude over them; default: seeded random inputs) sets the power-of-two scales that keep large tensors
    inside fp16's range (compiler/frontend/calibrate.py).
    `chips=N` (or "auto": the fewest chips whose SRAM holds the model) with `parallel="pipeline"|"tensor"|"auto"`
    and an optional `system` configuration gives a `multichip.MultiProgram` (docs/multichip.md)."""
    if chips != "auto" and (isinstance(chips, bool) or not isinstance(chips, numbers.Integral)):
        raise CompileError(f"chips={chips!r}: a whole number of chips or 'auto'")
    if chips != "auto" and chips < 1:
        raise CompileError(f"chips={chips}: at least one chip is needed")
    model = load_model(model)

    def compile_for(shapes):
        if chips != 1 or system is not None:
            return compile_multichip(model, chips, chip, precision, shapes, dump, calibration, parallel, system)
        return compile_program(model, chip, precision, shapes, dump, progress, calibration)
    if dynamic_inputs(model, shapes):
        _check_given(model, shapes or {})
        return DynamicProgram(model, shapes, compile_for)
    return compile_for(shapes)


def _check_given(model, shapes: dict) -> None:
    """Given shapes are checked at `compile` even when the compile itself waits for a run's arrays, as
    frontend/load.resolve_input_shapes checks them when it does not."""
    inputs = {i.name: i for i in model.graph.input}
    unknown = sorted(n for n in shapes if n not in inputs)
    if unknown:
        raise CompileError(f"--shape names unknown input(s): {', '.join(unknown)}")
    for name, dims in shapes.items():
        given_shape(inputs[name], dims)
