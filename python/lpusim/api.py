"""`lpusim.compile`: one chip gives a `runtime.Program`, several a `multichip.MultiProgram`."""
from __future__ import annotations

import numbers

from lpusim.errors import CompileError
from lpusim.multichip.pipeline import compile_multichip
from lpusim.runtime.program import compile_program


def compile(model, chips: int | str = 1, chip=None, precision: str = "fp16", shapes: dict | None = None,
            dump=None, progress: bool = False, calibration: dict | list | None = None, parallel: str = "auto",
            system=None):
    """Compile an ONNX model (path or ModelProto) to a static schedule for `chips` simulated chips.

    `chip` is a configuration name (`"tsp_v1"`), a JSON file path or dict; `precision="fp16"` runs float models
    through the fp16 MXM path with f32 accumulation (Groq's flow); `shapes` fixes dynamic input dimensions;
    `dump(name, text)` receives the IR after every pass; `calibration` (inputs by name, or a list of such runs: the
    largest magnitude over them; default: seeded random inputs) sets the power-of-two scales that keep large tensors
    inside fp16's range (compiler/frontend/calibrate.py).
    `chips=N` (or "auto": the fewest chips whose SRAM holds the model) with `parallel="pipeline"|"tensor"|"auto"`
    and an optional `system` configuration gives a `multichip.MultiProgram` (docs/multichip.md)."""
    if chips != "auto" and (isinstance(chips, bool) or not isinstance(chips, numbers.Integral)):
        raise CompileError(f"chips={chips!r}: a whole number of chips or 'auto'")
    if chips != "auto" and chips < 1:
        raise CompileError(f"chips={chips}: at least one chip is needed")
    if chips != 1 or system is not None:
        return compile_multichip(model, chips, chip, precision, shapes, dump, calibration, parallel, system)
    return compile_program(model, chip, precision, shapes, dump, progress, calibration)
