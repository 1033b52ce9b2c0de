"""The user-facing API: `lpusim.compile(model)` -> `Program`; `Program.run(inputs)` -> `RunResult`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lpusim import _lpusim
from lpusim.chip import Chip
from lpusim.compiler import compile_graph, emit, random_inputs
from lpusim.compiler.row_layout import from_rows, im2col, to_rows
from lpusim.runtime.host_layout import decode_output, host_input
from lpusim.runtime.memory import ChipMemory, memory_handle
from lpusim.compiler.schedule.storage import store_image
from lpusim.errors import ModelError



@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    cycles: int
    predicted_cycles: int
    latency_us: float
    instructions: int
    busy: dict[str, int]
    utilization: dict[str, float]
    wall_simulate_s: float
    timing_only: bool = False
    # energy events (docs/isa.md "Energy events"): the same functional and timing-only
    events: dict[str, int] = field(default_factory=dict)
    # CONFIG issues (superlane power masks): {"cycle", "queue", "mask"} each, in issue order
    configs: list[dict] = field(default_factory=list)


@dataclass
class Program:
    """A model compiled for one chip: the assembly, the constant SRAM image, where inputs and outputs live."""

    chip: Chip
    assembly: str
    predicted_cycles: int
    instructions: int
    sram_bytes: int
    input_shapes: dict[str, tuple]
    output_names: list[str]
    compile_s: float
    _graph: object = field(repr=False)
    _schedule: object = field(repr=False)
    _binary: bytes = field(repr=False, default=b"")
    # set when chips="auto" chose one chip (multichip/pipeline.py): the reason and the SRAM needed
    partition: dict | None = field(repr=False, default=None)

    @property
    def latency_us(self) -> float:
        return self.chip.seconds(self.predicted_cycles) * 1e6

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        return random_inputs(self.input_shapes, seed, self._graph.input_kinds)

    def _mem_image(self, inputs: dict[str, np.ndarray]):
        """The whole memory image (constants, then inputs) and the output dumps, as `_lpusim.simulate` takes them."""
        mem, dumps = self._input_image(inputs)
        return list(self._schedule.static_init) + mem, dumps

    def _loaded(self):
        """The program loaded into the simulator once (decoded, checked, its constant image referenced): every
        run reuses it, as an onnxruntime session is reused. Made on first use; not pickled."""
        handle = self.__dict__.get("_handle")
        if handle is None:
            handle = _lpusim.LoadedProgram(self.chip.to_json(), self._binary or self.assembly,
                                           list(self._schedule.static_init))
            self.__dict__["_handle"] = handle
        return handle

    def load(self) -> "Program":
        """Load the program into the simulator now rather than in the first `run` (for timing runs apart from
        loading, as an onnxruntime session is created before it runs)."""
        self._loaded()
        return self

    def install_static(self, memory: ChipMemory) -> "Program":
        """Write this program's constant image (weights, constants) into `memory` now; `run(..., memory=memory)`
        does it on its first run there otherwise. Installing again rewrites it (over what runs left there)."""
        self._loaded().install_static(memory_handle(memory))
        return self

    def cache_tiles(self) -> dict[str, list]:
        """ONNX output -> the MEM segments of its store, for the outputs kept at fixed addresses (KV-cache regions,
        compiler/schedule/kv_cache.py): what a later program of the same generation claims."""
        graph, sched = self._graph, self._schedule
        return {onnx: sched.outputs[ir].tiles for ir, onnx in zip(graph.outputs, graph.output_names)
                if ir in getattr(sched, "pinned", ())}

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_handle", None)
        return state

    def _input_image(self, inputs: dict[str, np.ndarray], images: bool = True, resident=(), wanted=None):
        """The inputs' memory image (inputs checked but no image made when not `images`: a timing-only run reads
        none) and the output dumps. `resident` inputs are already in the chip's memory: not written. `wanted`: the
        outputs read back (None: all)."""
        graph, sched = self._graph, self._schedule
        missing = [n for n in self.input_shapes if n not in inputs and n not in resident]
        if missing:
            raise ModelError(f"missing input(s): {', '.join(missing)} (the model takes "
                             f"{', '.join(f'{n}{list(s)}' for n, s in self.input_shapes.items())})")
        extra = [n for n in inputs if n not in self.input_shapes]
        if extra:
            raise ModelError(f"unknown input(s): {', '.join(extra)}")
        mem = []
        for ir_name, store in sched.inputs.items():
            t = graph.tensors[ir_name]
            if t.onnx_input in resident:
                continue
            array = np.asarray(inputs[t.onnx_input])
            if tuple(array.shape) != tuple(self.input_shapes[t.onnx_input]):
                raise ModelError(f"input '{t.onnx_input}' has shape {tuple(array.shape)}, the program was "
                                 f"compiled for {tuple(self.input_shapes[t.onnx_input])}")
            array = host_input(t.onnx_input, array, graph.input_kinds.get(t.onnx_input))
            if not images:
                continue
            if t.im2col is not None:
                kernel, strides, pads, dil, shape = t.im2col
                matrix = im2col(array.reshape(shape), kernel, strides, pads, dil)
            else:
                matrix = to_rows(array.reshape(t.shape), t.shape)
            storage = np.full((store.storage_rows, t.cols), t.pad_value, dtype=np.float32)
            storage[store.interior_rows()] = matrix
            mem.extend(store_image(store, storage, self.chip.lanes))
        dumps = []
        for ir_name, onnx_name in zip(graph.outputs, graph.output_names):
            if wanted is not None and onnx_name not in wanted:
                continue
            store = sched.outputs[ir_name]
            for segs in store.tiles:
                for seg in segs:
                    dumps.extend((seg.slice + b, seg.addr, seg.hi - seg.lo) for b in range(store.width))
        return mem, dumps

    def _decode_outputs(self, arrays, wanted=None) -> dict[str, np.ndarray]:
        graph, sched = self._graph, self._schedule
        lanes = self.chip.lanes
        out, i = {}, 0
        for ir_name, onnx_name in zip(graph.outputs, graph.output_names):
            if wanted is not None and onnx_name not in wanted:
                continue
            t = graph.tensors[ir_name]
            store = sched.outputs[ir_name]
            tiles = []
            for segs in store.tiles:
                storage = np.empty((store.storage_rows, lanes), dtype="<f4")
                for seg in segs:
                    planes = np.stack(arrays[i:i + store.width], axis=-1)  # rows, lanes, 4 bytes
                    i += store.width
                    storage[seg.lo:seg.hi] = np.ascontiguousarray(planes).view("<f4").reshape(seg.hi - seg.lo, lanes)
                tiles.append(storage[store.interior_rows()])
            matrix = np.concatenate(tiles, axis=1)[:, :t.cols]
            array = matrix.reshape(t.shape) if t.flat_rows else from_rows(matrix, t.shape)
            out[onnx_name] = decode_output(onnx_name, array.astype(np.float32),
                                           graph.output_types.get(onnx_name))
        return out

    def run(self, inputs: dict[str, np.ndarray] | None = None, *, seed: int = 0,
            timing_only: bool = False, memory: ChipMemory | None = None, resident=(),
            outputs=None) -> RunResult:
        """Simulate the program cycle by cycle on `inputs` (seeded random inputs when None).

        `memory`: None runs on a fresh chip. A `ChipMemory` runs on that chip's SRAM as earlier runs left it: the
        constant image is written only on this program's first (functional) run there (before every run when the
        program reuses its constants' space: `Schedule.constants_released`), the inputs are written into
        it, and it keeps what the run leaves (the `ChipMemory` docstring says what persists and after a fault).
        `resident`: input names that are already in `memory` where this program reads them (a KV cache an earlier
        run left, compiler/schedule/kv_cache.py): the host does not write them. `outputs`: the output names read
        back (None: all)."""
        if resident and memory is None:
            raise ModelError(f"resident input(s) {', '.join(sorted(resident))} need a ChipMemory (memory=)")
        if inputs is None:
            inputs = {k: v for k, v in self.random_inputs(seed).items() if k not in resident}
        mem, dumps = self._input_image(inputs, images=not timing_only, resident=set(resident),
                                       wanted=None if outputs is None else set(outputs))
        handle = self._loaded()
        if memory is None:
            start = time.perf_counter()
            stats, arrays = handle.run(mem, dumps, timing_only)
        else:
            target = memory_handle(memory)
            # a program whose tensors reuse its constants' space has its constant image written before every run
            if not timing_only and (self._schedule.constants_released or not handle.installed_in(target)):
                handle.install_static(target)
            start = time.perf_counter()
            stats, arrays = handle.run(mem, dumps, timing_only, memory=target)
        wall = time.perf_counter() - start
        outputs = {} if timing_only else self._decode_outputs(arrays, None if outputs is None else set(outputs))
        cycles = int(stats["cycles"])
        busy = {k: int(v) for k, v in stats["busy"].items()}
        return RunResult(outputs, cycles, self.predicted_cycles, self.chip.seconds(cycles) * 1e6,
                         int(stats["instructions"]), busy, utilization(self.chip, busy, cycles), wall, timing_only,
                         {k: int(v) for k, v in stats["events"].items()}, list(stats["configs"]))


def utilization(chip: Chip, busy: dict[str, int], cycles: int) -> dict[str, float]:
    """Busy fraction per unit kind: busy unit-cycles over (units of that kind x cycles)."""
    units = {"mem": chip.mem_slices * chip.mem_banks_per_slice, "vxm": chip.vxm_alus, "mxm": chip.mxm_planes,
             "sxm": 2 * chip.sxm_per_hemisphere_queues, "c2c": chip.c2c_links}
    if cycles <= 0:
        return {k: 0.0 for k in units}
    return {k: busy.get(k, 0) / (units[k] * cycles) for k in units}


def compile_program(model, chip=None, precision: str = "fp16", shapes: dict | None = None, dump=None,
                    progress: bool = False, calibration: dict | None = None, cache=None) -> Program:
    """Compile an ONNX model (path or ModelProto) for one chip (`lpusim.compile` with chips=1; see api.py).
    `cache`: KV-cache regions kept at fixed SRAM addresses across programs (compiler/schedule/kv_cache.py)."""
    cfg = Chip.load(chip)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(desc="schedule", unit="node", leave=False)

        def report(i, n, node):
            bar.total = n
            bar.n = i
            bar.set_postfix_str(node.onnx_op, refresh=True)
    start = time.perf_counter()
    try:
        proto, graph, sched, text = compile_graph(model, cfg, precision, shapes, dump, report if bar is not None else None,
                                                  calibration, cache)
    finally:
        if bar is not None:
            bar.close()
    binary = _lpusim.assemble(text)
    return Program(cfg, text, sched.predicted_cycles, emit.count_instructions(sched.issues), sched.sram_bytes,
                   dict(graph.onnx_inputs), list(graph.output_names), time.perf_counter() - start,
                   graph, sched, binary)
