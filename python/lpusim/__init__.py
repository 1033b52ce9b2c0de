"""lpusim: a cycle-level simulator of Groq-style LPUs (Tensor Streaming Processors).

Compile an ONNX model to a static schedule, execute it cycle by cycle on the simulated chip, and check the outputs
against onnxruntime. See README.md for the architecture and docs/isa.md for the instruction set.

    import lpusim
    program = lpusim.compile("mlp.onnx")          # static schedule for one tsp_v1 chip
    result = program.run({"input": x})            # cycle-by-cycle simulation
    result.outputs, result.cycles, result.latency_us

    decoder = lpusim.compile_decoder("llama.onnx", max_context=64)   # an Optimum KV-cache export (docs/llm.md)
    out = decoder.generate([[5, 17, 99]], new_tokens=16)            # KV cache kept in SRAM between steps
    out.tokens, out.prefill_cycles, out.decode_cycles
"""
from __future__ import annotations

from lpusim._lpusim import assemble, disassemble  # noqa: F401  (re-exported)
from lpusim.chip import Chip
from lpusim.errors import (
    AssemblyError,
    CompileError,
    ConfigError,
    LpusimError,
    ModelError,
    SimulationError,
)
from lpusim.api import compile
from lpusim.runtime.memory import ChipMemory
from lpusim.runtime.program import Program, RunResult
from lpusim.check.segments import SegmentResult, check_segments
from lpusim.llm.generate import Decoder, Generation, compile_decoder

__version__ = "0.1.0"

__all__ = ["compile", "compile_decoder", "Decoder", "Generation", "ChipMemory", "check_segments", "SegmentResult", "Program", "RunResult", "Chip", "assemble", "disassemble", "LpusimError",
           "AssemblyError", "CompileError", "ConfigError", "ModelError", "SimulationError"]
