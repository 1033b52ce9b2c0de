"""lpusim's exception classes: one base, one class per stage.

The Rust core defines `LpusimError`, `AssemblyError`, `ConfigError` and `SimulationError` (raised from Rust with the
cycle, queue and instruction attached); the Python side adds `CompileError` and `ModelError`.
"""
from __future__ import annotations

from lpusim._lpusim import AssemblyError, ConfigError, LpusimError, SimulationError


class CompileError(LpusimError):
    """The model cannot be compiled for the chip: an unsupported op, an unresolved shape, too little SRAM.

    The message names the ONNX node and op type (or the tensor) and the sizes needed against the sizes available.
    """


class ScheduleNotFound(CompileError):
    """No cycle within the scheduler's search limit has the resources a job needs (a clash that never clears). The
    compiler retries with other store layouts before reporting it (compiler/__init__.py)."""


class OutOfSram(CompileError):
    """The allocator found no room for a store: the SRAM estimate fits, but placement (320-lane tiles, slice groups,
    banks) does not, even packed (schedule/packing.py). The compiler retries such a schedule with released blocks
    joined (compiler/__init__.py; its error's `cause` is the allocator's message), chips="auto" retries on 2
    chips, and the pipeline partitioner shortens the stage that failed (multichip/pipeline.py)."""


class ModelError(LpusimError):
    """The model file itself is missing, truncated or malformed, or the given inputs do not fit it."""


__all__ = ["LpusimError", "AssemblyError", "ConfigError", "SimulationError", "CompileError", "OutOfSram", "ModelError"]
