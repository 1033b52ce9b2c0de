"""The compiler: ONNX -> IR -> fused IR -> storage formats -> static schedule -> assembly.

`PASSES` lists the passes in the order they run (Verilator style); `compile_model(..., dump=print)` shows the IR
after each one.
"""
from __future__ import annotations

import math

from lpusim.chip import Chip
from lpusim.compiler import emit, importer, ir, passes, schedule
from lpusim.compiler.layout import WIDTH, Store
from lpusim.errors import CompileError

PRECISIONS = ("fp16",)

# (name, function Graph -> Graph) in order; import runs before them and scheduling after.
PASSES = [
    ("split_tap_chains", passes.split_tap_chains),
    ("fuse_chains", passes.fuse_chains),
    ("assign_formats", passes.assign_formats),
    ("assign_borders", passes.assign_borders),
]


def sram_needed(graph: ir.Graph, chip: Chip) -> int:
    """Bytes of MEM the schedule will place, computed before scheduling so too-large models fail fast."""
    lanes = chip.lanes
    total = 0
    for t in graph.tensors.values():
        tiles = max(1, math.ceil(t.cols / lanes))
        for fmt in t.formats:
            total += tiles * Store.for_tensor(t, fmt).storage_rows * WIDTH[fmt] * lanes
    weights = {w for node in graph.nodes for _, w in node.terms}
    for w in weights:  # upper bound: all-zero tiles of grouped convolutions are not stored
        k, n = graph.tensors[w].data.shape
        slots = schedule.WEIGHT_SLOTS
        total += math.ceil(n / lanes) * math.ceil(k / lanes) * slots * math.ceil(min(k, lanes) / slots) * 2 * lanes
    return total


def compile_graph(model, chip: Chip, precision: str = "fp16", shapes=None, dump=None, progress=None):
    if precision not in PRECISIONS:
        raise CompileError(f"precision '{precision}' is not supported yet (supported: {', '.join(PRECISIONS)})")
    proto = importer.load_model(model)
    graph = importer.import_onnx(proto, shapes)
    if dump:
        dump("import", graph.dump())
    for name, run in PASSES:
        graph = run(graph)
        ir.validate(graph)
        if dump:
            dump(name, graph.dump())
    need = sram_needed(graph, chip)
    if need > chip.sram_bytes:
        raise CompileError(f"the model needs {need:,} bytes of SRAM and one {chip.name} chip has "
                           f"{chip.sram_bytes:,}: it would take {math.ceil(need / chip.sram_bytes)} chips "
                           f"(multi-chip partitioning is not supported yet)")
    sched = schedule.Scheduler(chip, graph, progress).run()
    text = emit.emit_assembly(sched.issues, header=f"lpusim program for {chip.name}; predicted cycles "
                              f"{sched.predicted_cycles}")
    if dump:
        dump("schedule", text)
    return proto, graph, sched, text
