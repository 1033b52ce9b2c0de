"""`ChipMemory`: one chip's SRAM kept from one run to the next (prefill, then many decode steps, on one chip)."""
from __future__ import annotations

import numpy as np

from lpusim import _lpusim
from lpusim.chip import Chip


class ChipMemory:
    """The contents of one chip's MEM slices, kept across runs: `program.run(inputs, memory=m)`.

    What persists: only MEM (SRAM) contents, which is all a later program can address. Every run still starts at
    cycle 0 on a quiescent chip: stream registers, instruction queues, MXM weight buffers, installed weights and
    accumulators, VXM result registers and C2C buffers start fresh, as when a new program is loaded.

    A program's constant image (its weights, its `.init`s) is written into the memory once: `Program.run` does it
    the first time that program runs on this memory (or ahead, `Program.install_static`), and never again, so what
    later runs write over it stays (an LLM's KV cache; also anything a program overwrites). The exception: a
    program whose later tensors reuse its constants' space (the compiler frees a constant after its last reader,
    except in programs compiled with a KV cache) gets its image written again before every run. Each run's inputs are
    written into the memory before it starts and stay there; outputs are read from it after the run.

    A run that faults leaves the memory as it stood at the fault (every write committed before it; none after) and
    records the error in `fault`; later runs on it are refused until `clear_fault()` (keep the contents) or
    `clear()`. A timing-only run computes no values: it neither writes its inputs nor changes the contents, and its
    faults do not flag the memory.

    The memory is moved into each run and back, never copied; pages of SRAM are allocated as they are first
    written (`allocated_bytes`).
    """

    def __init__(self, chip: "Chip | str | dict | None" = None):
        self.chip = Chip.load(chip)
        self._handle = _lpusim.ChipMemory(self.chip.to_json())

    def read(self, slice: int, addr: int, n: int) -> np.ndarray:
        """`n` raw vectors of MEM slice `slice` (global index) from `addr`: uint8 (n, lanes)."""
        return self._handle.read(slice, addr, n)

    def write(self, slice: int, addr: int, data: np.ndarray) -> None:
        """Write raw vectors (uint8 (n, lanes)) into MEM slice `slice` (global index) from `addr`, between runs."""
        self._handle.write(slice, addr, np.asarray(data, dtype=np.uint8))

    @property
    def fault(self) -> "_lpusim.SimulationError | None":
        """The error of the run that faulted on this memory, or None."""
        return self._handle.fault

    def clear_fault(self) -> None:
        """Accept the contents a faulted run left, so runs are allowed again."""
        self._handle.clear_fault()

    def clear(self) -> None:
        """Back to all zeros: pages freed, no constant image installed, no fault."""
        self._handle.clear()

    @property
    def allocated_bytes(self) -> int:
        return self._handle.allocated_bytes


def memory_handle(memory) -> "_lpusim.ChipMemory":
    """The binding's memory of a `ChipMemory` (or the binding's own object, passed through)."""
    return getattr(memory, "_handle", memory)
