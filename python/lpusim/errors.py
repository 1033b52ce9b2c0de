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


class ModelError(LpusimError):
    """The model file itself is missing, truncated or malformed, or the given inputs do not fit it."""


__all__ = ["LpusimError", "AssemblyError", "ConfigError", "SimulationError", "CompileError", "ModelError"]
