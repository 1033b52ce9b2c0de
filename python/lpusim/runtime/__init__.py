"""Running a compiled program: Program (one chip), ChipMemory (one chip's SRAM kept across runs) and the host-side
layout of inputs and outputs."""
from lpusim.runtime.memory import ChipMemory  # noqa: F401  (re-exported)
