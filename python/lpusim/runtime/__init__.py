"""Running a compiled program: Program (one chip) and the host-side layout of inputs and outputs."""
