"""`lpusim.compile` of a model with dynamic dimensions and no `shapes` fixing them: a `DynamicProgram`, compiled on
each `run` for the shapes of the arrays given.

A TSP program is a static schedule: every shape is compiled in. So the compile waits for the arrays: `run(inputs)`
takes each input's shape from its array (a shape given to `compile(shapes=...)` wins, as `--shape` does over
`--inputs`), checks it against the model's fixed dimensions (a contradiction is a ModelError naming the input, the
dimension, the model's value and the array's) and against the other inputs sharing a dimension name, then runs the
program compiled for that set of shapes. One program is kept per distinct set of input shapes, at most
runtime/cache.MAX_PROGRAMS (16), least recently used out; `programs` is that cache (`programs.compiles` counts
compiles).
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.compiler.frontend.load import declared_dims, dynamic_inputs, not_fixed, shape_contradiction
from lpusim.errors import ModelError
from lpusim.runtime.cache import ProgramCache


class DynamicProgram:
    """A model whose dynamic dimensions are fixed by each run's arrays (module docstring). `compile_fn(shapes)`
    compiles it for {input: shape} (one chip or several, as `lpusim.compile` was asked); `shapes` are those given
    to `compile`. `run` returns what the compiled program's `run` returns; `last_program` is the program of the
    last run (its assembly, predicted cycles, SRAM use), `program_for(inputs)` the one for given arrays."""

    def __init__(self, model: onnx.ModelProto, shapes: dict | None, compile_fn):
        inits = {i.name for i in model.graph.initializer}
        self._inputs = {i.name: i for i in model.graph.input if i.name not in inits}
        self._model = model
        self._given = {k: tuple(v) for k, v in (shapes or {}).items()}
        self._compile_fn = compile_fn
        self.dynamic_inputs = dynamic_inputs(model, self._given)
        # the model's shapes, the given ones in their place: an int per fixed dimension, a name per dynamic one
        self.input_shapes = {n: self._given.get(n, tuple(declared_dims(i))) for n, i in self._inputs.items()}
        self.output_names = [o.name for o in model.graph.output]
        self.programs = ProgramCache()
        self.last_program = None

    def shapes_of(self, inputs: dict) -> dict[str, tuple]:
        """Every input's shape for these arrays: given to `compile`, else the array's; ModelError for an array that
        contradicts the model or another input on a named dimension, or a dynamic input with no array."""
        shapes, named = {}, {}
        for name, inp in self._inputs.items():
            if name in self._given:
                dims, what = self._given[name], "given"
            elif name in inputs:
                dims, what = tuple(int(d) for d in np.shape(inputs[name])), "in the array"
                problem = shape_contradiction(inp, dims, what)
                if problem:
                    raise ModelError(f"input '{name}': the array given has shape {dims}, the model's is "
                                     f"{declared_dims(inp)}: {problem}")
            elif name in self.dynamic_inputs:
                raise ModelError(f"input '{name}' {list(self.input_shapes[name])} has dynamic dimensions and no "
                                 f"array was given for it (give one, or fix its shape with compile(shapes=))")
            else:
                continue  # a fixed-shape input left out: the compiled program names it
            for i, d in enumerate(declared_dims(inp)):
                if isinstance(d, str) and d != "?":
                    first = named.setdefault(d, (name, i, dims[i]))
                    if first[2] != dims[i]:
                        raise ModelError(f"input '{name}': dimension {i} ('{d}') is {dims[i]} {what}, but '{d}' "
                                         f"is {first[2]} in input '{first[0]}' (dimension {first[1]})")
            shapes[name] = dims
        return shapes

    def program_for(self, inputs: dict):
        """The program compiled for these arrays' shapes (from the cache, or compiled now)."""
        shapes = self.shapes_of(inputs)
        return self.programs.get_or_compile(tuple(sorted(shapes.items())), lambda: self._compile_fn(shapes))

    def need_shapes(self):
        """Raise the compiler's CompileError naming the first dimension no shape fixes: for whatever needs a
        compiled program before any arrays are given (random inputs, `lpusim compile`)."""
        name = self.dynamic_inputs[0]
        raise not_fixed(name, next(d for d in self.input_shapes[name] if isinstance(d, str)))

    def random_inputs(self, seed: int = 0):
        """No shapes to draw random inputs for: `need_shapes`'s error."""
        self.need_shapes()

    def run(self, inputs: dict | None = None, **kwargs):
        """Compile for the arrays' shapes (once per distinct set) and run: `Program.run` (or `MultiProgram.run`)
        with the same keyword arguments. Without inputs there are no shapes: the compiler's CompileError naming
        the first dimension that is not fixed."""
        if inputs is None:
            self.need_shapes()
        self.last_program = self.program_for(inputs)
        return self.last_program.run(inputs, **kwargs)
