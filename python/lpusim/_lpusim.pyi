"""Type stubs for the Rust core (rust/src/python.rs). Hand-written; keep in step with the bindings."""
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

class LpusimError(Exception):
    """Base class of every lpusim error."""

class AssemblyError(LpusimError):
    """Bad assembly text or program binary."""
    line: int
    text: str
    message: str

class ConfigError(LpusimError):
    """Bad chip configuration."""
    field: str
    message: str

class SimulationError(LpusimError):
    """The run stopped: an illegal schedule, a busy unit, an out-of-range address, a cycle limit."""
    kind: str
    cycle: int
    queue: str
    index: int
    instruction: str
    message: str
    # Set by simulate_system (docs/system.md): the chip, and for a link fault the link, its other end and the
    # cycle the other chip was in at the same instant. Absent for single-chip runs.
    chip: int | None
    link: int | None
    peer_chip: int | None
    peer_link: int | None
    peer_cycle: int | None

# The stats dict of a run (`simulate`, `LoadedProgram.run`; each entry of a system result's "chips"): cycles,
# seconds, instructions, timing_only, per_queue_issues (a system chip's also sync_cycles, link_sends, drift_ppm, ...);
#   busy: {"mem", "vxm", "mxm", "sxm", "c2c", "icu"} unit-cycles of use;
#   events: {"mxm_int8_vectors", "mxm_fp16_vectors", "mxm_weight_vectors", "mem_read_vectors",
#            "mem_write_vectors", "stream_hops", "vxm_ops", "vxm_transcendental_ops", "sxm_ops", "c2c_vectors",
#            "instructions"}: the energy events (docs/isa.md "Energy events"), identical functional and timing-only;
#   configs: [{"cycle", "queue", "mask"}] every CONFIG issue (superlane power masks), in issue order;
#   dumps: [{"slice", "addr", "dtype", "values"}] the `.dump` directives (values None when timing-only).

def chip_config_json(name: str = "tsp_v1") -> str: ...
def validate_chip_config(json_text: str) -> str: ...
def assemble(text: str) -> bytes: ...
def disassemble(data: bytes) -> str: ...
def canonicalize(text: str) -> str: ...
def queue_names(config_json: str | None = None) -> list[str]: ...
def positions(config_json: str | None = None) -> dict[str, int]: ...
def simulate(
    config_json: str,
    program: str | bytes,
    mem_init: Sequence[tuple[int, int, npt.NDArray[np.uint8]]] = ...,
    dumps: Sequence[tuple[int, int, int]] = ...,
    timing_only: bool = False,
    max_cycles: int | None = None,
) -> tuple[dict[str, Any], list[npt.NDArray[np.uint8] | None]]: ...
class LoadedProgram:
    """A program loaded once (decoded, checked, its static memory image referenced); `run` only writes the inputs,
    resets the chip and runs. Errors as `simulate`'s (the constructor raises the load errors)."""
    def __init__(
        self,
        config_json: str,
        program: str | bytes,
        static_init: Sequence[tuple[int, int, npt.NDArray[np.uint8]]] = ...,
    ) -> None: ...
    def run(
        self,
        mem_init: Sequence[tuple[int, int, npt.NDArray[np.uint8]]] = ...,
        dumps: Sequence[tuple[int, int, int]] = ...,
        timing_only: bool = False,
        max_cycles: int | None = None,
        memory: ChipMemory | None = None,
    ) -> tuple[dict[str, Any], list[npt.NDArray[np.uint8] | None]]:
        """memory None: a fresh chip with the static image. A ChipMemory: its contents instead (no static image
        written; mem_init written into it; it keeps what the run leaves, or as it stood at a fault, flagged; a
        timing-only run leaves it unchanged)."""
    def install_static(self, memory: ChipMemory) -> None:
        """Write the `.init`s and static_init arrays into `memory` (copied once)."""
    def installed_in(self, memory: ChipMemory) -> bool: ...

class ChipMemory:
    """One chip's MEM contents kept across runs. Only MEM persists: queues, streams, MXM weights and accumulators,
    VXM registers and C2C buffers start fresh every run, at cycle 0. Runs and installs are refused while `fault`
    is set."""
    def __init__(self, config_json: str | None = None) -> None: ...
    @property
    def config_json(self) -> str: ...
    def read(self, slice: int, addr: int, n: int) -> npt.NDArray[np.uint8]: ...
    def write(self, slice: int, addr: int, data: npt.NDArray[np.uint8]) -> None: ...
    @property
    def fault(self) -> SimulationError | None: ...
    def clear_fault(self) -> None: ...
    def clear(self) -> None: ...
    @property
    def allocated_bytes(self) -> int: ...

def describe_system(system_json: str) -> dict[str, Any]: ...
def simulate_system(
    system_json: str,
    programs: Sequence[str | bytes | None],
    mem_inits: Sequence[Sequence[tuple[int, int, npt.NDArray[np.uint8]]]] = ...,
    dumps: Sequence[Sequence[tuple[int, int, int]]] = ...,
    timing_only: bool = False,
    threads: int = 0,
    max_cycles: int | None = None,
    memories: Sequence[ChipMemory | None] | None = None,
) -> tuple[dict[str, Any], list[list[npt.NDArray[np.uint8] | None]]]:
    """memories None: fresh chips. Else one ChipMemory (or the Python wrapper, or None: a fresh chip) per chip
    (another count: SimulationError): chip i runs on its contents, its `.init`s and mem_inits[i] written into it
    every run; it keeps what the run leaves and dumps[i] are read from it. A faulted run flags every memory of the
    run; a timing-only run changes none. The same memory twice: SimulationError."""

class LoadedSystem:
    """A system's programs loaded once (decoded, checked, HACs aligned), each chip's static image referenced: the
    system analogue of LoadedProgram. Errors as simulate_system's (the constructor raises the load errors)."""
    def __init__(
        self,
        system_json: str,
        programs: Sequence[str | bytes | None],
        static_inits: Sequence[Sequence[tuple[int, int, npt.NDArray[np.uint8]]]] = ...,
    ) -> None: ...
    @property
    def chips(self) -> int: ...
    def run(
        self,
        mem_inits: Sequence[Sequence[tuple[int, int, npt.NDArray[np.uint8]]]] = ...,
        dumps: Sequence[Sequence[tuple[int, int, int]]] = ...,
        timing_only: bool = False,
        threads: int = 0,
        max_cycles: int | None = None,
        memories: Sequence[ChipMemory | None] | None = None,
    ) -> tuple[dict[str, Any], list[list[npt.NDArray[np.uint8] | None]]]:
        """memories as for simulate_system, except that a chip on a memory gets no constant image written (no
        `.init`s, no static_inits: install_static does that once), only mem_inits[i]."""
    def install_static(self, chip: int, memory: ChipMemory) -> None:
        """Write chip `chip`'s `.init`s and static_inits into `memory` (copied once)."""
    def installed_in(self, chip: int, memory: ChipMemory) -> bool: ...
