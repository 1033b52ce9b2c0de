"""lpusim: a cycle-level simulator of Groq-style LPUs (Tensor Streaming Processors).

Compile an ONNX model to a static schedule, execute it cycle by cycle on the simulated chip, and check the outputs
against onnxruntime. See README.md for the architecture and docs/isa.md for the instruction set.
"""
from __future__ import annotations

from lpusim._lpusim import (  # noqa: F401  (re-exported)
    AssemblyError,
    ConfigError,
    LpusimError,
    SimulationError,
    assemble,
    disassemble,
)

__version__ = "0.1.0"
