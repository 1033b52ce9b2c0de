"""lpusim's reference interpreter: a small, slow, literal Python reading of docs/isa.md.

It is written independently of the Rust core so the two can be compared instruction by instruction
(tests/reference/test_differential.py): same values bit for bit, same cycle counts, same errors.
"""
from __future__ import annotations

from .asm import Program, ReferenceAssemblyError, assemble
from .config import TSP_V1, Floorplan
from .interp import ReferenceSimulationError, run

__all__ = ["run", "assemble", "Program", "TSP_V1", "Floorplan", "ReferenceSimulationError",
           "ReferenceAssemblyError"]
