"""The compiler: ONNX -> IR -> fused IR -> storage formats -> static schedule -> assembly.

`PASSES` lists the passes in the order they run (Verilator style); `compile_model(..., dump=print)` shows the IR
after each one.
"""
from __future__ import annotations

import gc
import math

import numpy as np

from lpusim.chip import Chip
from lpusim.compiler import emit, fold_moves, fp32_split, ir, passes, pool_phases
from lpusim.compiler.frontend import calibrate, load
from lpusim.compiler.schedule import scheduler as schedule
from lpusim.compiler.schedule.storage import WIDTH, Store
from lpusim.compiler.lower import import_onnx
from lpusim.compiler.lower.quant import QUANT_OPS
from lpusim.compiler.frontend.quantize import quantize_model
from lpusim.errors import CompileError, OutOfSram, ScheduleNotFound

# int8: quantised with onnxruntime's quantize_static first (quantize.py); fp32: fp16 MXM operands split into
# pieces summed exactly (fp32_split.py)
PRECISIONS = ("fp16", "int8", "fp32")

# (name, function Graph -> Graph) in order; import runs before them and scheduling after.
PASSES = [
    ("split_pool_phases", pool_phases.split_pool_phases),
    ("split_tap_chains", passes.split_tap_chains),
    ("fuse_chains", passes.fuse_chains),
    ("fold_lane_moves", fold_moves.fold_lane_moves),
    ("split_operands", fp32_split.split_operands),
    ("assign_formats", passes.assign_formats),
    ("scale_fp16", passes.scale_fp16),
    ("split_weights", fp32_split.split_weights),
    ("mask_padding_lanes", passes.mask_padding_lanes),
    ("assign_borders", passes.assign_borders),
]


def sram_needed(graph: ir.Graph, chip: Chip) -> int:
    """Bytes of MEM the schedule needs at its peak, computed before scheduling so too-large models fail fast:
    weights, constants and inputs for the whole run, plus the most activation bytes alive at once (a tensor's
    space is reused after its last reader)."""
    lanes = chip.lanes

    def size(t):
        tiles = max(1, math.ceil(t.cols / lanes))
        return sum(tiles * Store.for_tensor(t, fmt).storage_rows * WIDTH[fmt] * lanes for fmt in t.formats)

    static = sum(size(t) for t in graph.tensors.values() if t.kind in ("const", "input"))
    for w in {w for node in graph.nodes for _, w in node.terms if graph.tensors[w].kind == "const"}:
        static += schedule.weight_bytes(graph.tensors[w].data, graph.tensors[w].dtype, lanes)
    last_use = {}
    for i, node in enumerate(graph.nodes):
        for name in ir.node_inputs(node):
            last_use[name] = i
    live, peak = 0, 0
    for i, node in enumerate(graph.nodes):
        live += size(graph.tensors[node.output])
        peak = max(peak, live)
        for name in set(ir.node_inputs(node)):
            t = graph.tensors[name]
            if last_use[name] == i and t.kind == "value" and name not in graph.outputs:
                live -= size(t)
    return static + peak


def build_graph(model, precision: str = "fp16", shapes=None, dump=None, calibration=None, fused_resize=True):
    """Load, quantise if asked (precision="int8"), calibrate, import and run PASSES: (proto, graph). Shared by the
    single-chip compile below and the multi-chip compiler (multichip/pipeline.py)."""
    if precision not in PRECISIONS:
        raise CompileError(f"precision '{precision}' is not supported yet (supported: {', '.join(PRECISIONS)})")
    proto = load.load_model(model)
    input_shapes = load.resolve_input_shapes(proto, shapes)
    if calibration is None:
        calibration = random_inputs(input_shapes, 0, load.input_kinds(proto))
    # several calibration runs (a list of input dicts): the largest magnitude of each tensor over all of them;
    # int8 quantisation calibrates on the first
    runs = calibration if isinstance(calibration, (list, tuple)) else [calibration]
    if precision == "int8" and not any(n.op_type in QUANT_OPS for n in proto.graph.node):
        proto = quantize_model(proto, {n: runs[0][n] for n in input_shapes})
    magnitudes = {}
    for run in runs:
        for name, value in calibrate.tensor_magnitudes(proto, run).items():
            magnitudes[name] = max(value, magnitudes.get(name, value))
    graph = import_onnx(proto, input_shapes, magnitudes, precision, fused_resize)
    if dump:
        dump("import", graph.dump())
    for name, run in PASSES:
        graph = run(graph)
        ir.validate(graph)
        if dump:
            dump(name, graph.dump())
    return proto, graph


def random_inputs(input_shapes: dict, seed: int = 0, kinds: dict | None = None) -> dict:
    """Seeded standard-normal float32 inputs: the default calibration and `Program.random_inputs`. `kinds`
    (frontend/load.input_kinds): bool and integer inputs, drawn uniformly in [low, high) (token ids below the table's
    length, bools in {0, 1}, other integers in {1, 2})."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in input_shapes.items():
        if kinds and name in kinds:
            dtype, low, high = kinds[name]
            out[name] = rng.integers(low, high, size=shape).astype(dtype)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _schedule(chip: Chip, graph, progress, cache):
    """The schedule: short segments first (more jobs read at once), then the long ones, then long segments with
    released blocks joined whenever none fits (fewer fresh bytes). Short segments fragment SRAM, and spread a
    KV-cache region over so many slices that a Concat writing into it found no cycle (Llama 2 70B's attention part
    at tp 8 over 2,047 cached positions): OutOfSram or ScheduleNotFound moves on to the next. OutOfSram when none
    places."""
    for rows in schedule.SPREAD_SEGMENT_ROWS + (schedule.MAX_SEGMENT_ROWS,):
        try:
            return schedule.Scheduler(chip, graph, progress, cache=cache, segment_rows=rows).run()
        except (OutOfSram, ScheduleNotFound):
            pass
    return schedule.Scheduler(chip, graph, progress, join_released=True, cache=cache).run()


def compile_graph(model, chip: Chip, precision: str = "fp16", shapes=None, dump=None, progress=None,
                  calibration=None, cache=None):
    """ONNX -> (proto, graph, schedule, assembly) for one chip. `cache`: KV-cache regions kept in SRAM across
    programs (schedule/kv_cache.py)."""
    proto, graph = build_graph(model, precision, shapes, dump, calibration)
    need = sram_needed(graph, chip)
    if need > chip.sram_bytes:
        raise CompileError(f"the model needs {need:,} bytes of SRAM and one {chip.name} chip has "
                           f"{chip.sram_bytes:,}: it would take {math.ceil(need / chip.sram_bytes)} chips "
                           f"(chips='auto' or --chips auto splits a model into a pipeline)")
    collecting = gc.isenabled()
    gc.disable()  # the scheduler builds many long-lived objects and no garbage cycles to speak of: skip the scans
    try:
        try:
            sched = _schedule(chip, graph, progress, cache)
        except OutOfSram:
            if not any("Resize" in n.onnx_op.split("+") and sum(
                    v.rows is not None and graph.tensors[v.tensor].kind == "value" for v in n.sources) > 1
                       for n in graph.nodes):
                raise
            # a fused Resize pass streams four sources, and its output is placed apart from all of them: one pass
            # per tap instead (lower/resize.py `_resize_fused`)
            proto, graph = build_graph(model, precision, shapes, dump, calibration, fused_resize=False)
            sched = _schedule(chip, graph, progress, cache)
    except OutOfSram as e:
        # the estimate fits, but placement (320-lane tiles, slice groups, banks) found no room: say so plainly
        err = OutOfSram(f"the model does not fit one {chip.name} chip: estimated {need:,} bytes of "
                        f"{chip.sram_bytes:,}, but placement ran {e}; it would take at least "
                        f"{max(2, math.ceil(need / chip.sram_bytes))} chips")
        err.cause = str(e)  # the allocator's own words, for chips="auto"'s reason (multichip/pipeline.py)
        raise err from None
    finally:
        if collecting:
            gc.enable()
    text = emit.emit_assembly(sched.issues, header=f"lpusim program for {chip.name}; predicted cycles "
                              f"{sched.predicted_cycles}")
    if dump:
        dump("schedule", text)
    return proto, graph, sched, text
