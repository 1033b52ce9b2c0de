"""Tensor parallelism over N chips: `lpusim.compile(model, chips=N, parallel="tensor")`.

Every chip runs the whole graph, except that each *split* matmul (constant weights, at least N column tiles of
320, epilogue sources all constants, not a graph output) is computed column-tile block by column-tile block: chip c
computes tiles [c*T/N, (c+1)*T/N) of the output (its own slice of the weights and epilogue constants: no
reduction, so the arithmetic is unchanged and outputs are bit-identical to one chip). Right after a split node the
chips all-gather: each sends its block to every other chip over their direct link and receives the others' blocks;
the full tensor's store is then the blocks' stores side by side (a column tile is a column tile wherever it came
from). Everything else runs replicated.

The all-gather is a common barrier: the chips are scheduled in lockstep (one thread per chip, meeting in the
scheduler's between-node hook), all stop at B = the latest chip's frontier, realign with `RUNTIME_DESKEW`, send
(one vector per `min_send_interval_cycles` per link, all links at once), and receive at each send cycle plus a
lag covering the link's worst latency and both chips' drift since B (plus up to one send interval, so the RECVs
fall between the same link's SENDs: the link queue issues them one by one). Cycle prediction, results and the
drift rules are those of the pipeline (pipeline.py, clocks.py, docs/multichip.md). The per-chip scheduler with
the all-gather is compiler/schedule/tensor.py.
"""
from __future__ import annotations

import dataclasses
import math
import threading

from lpusim.compiler import ir
from lpusim.multichip.partition import needed_formats
from lpusim.compiler.schedule.c2c import barrier_issues, emit_stage
from lpusim.compiler.schedule.tensor import Lockstep, TensorScheduler
from lpusim.compiler import emit
from lpusim.errors import CompileError
from lpusim.runtime.program import Program


def split_nodes(graph: ir.Graph, n: int, lanes: int) -> dict[int, list[tuple[int, int]]]:
    """Node index -> per chip its [first, last) column tiles, for every matmul that can be split n ways."""
    out = {}
    for i, node in enumerate(graph.nodes):
        if node.kind != "matmul" or node.output in graph.outputs:
            continue
        if any(graph.tensors[w].kind != "const" for _, w in node.terms):
            continue
        if any(graph.tensors[v.tensor].kind != "const" for v in node.sources):
            continue
        tiles = math.ceil(graph.tensors[node.output].cols / lanes)
        if tiles < n:
            continue
        out[i] = [(c * tiles // n, (c + 1) * tiles // n) for c in range(n)]
    return out


def _part(graph: ir.Graph, tensors: dict, node: ir.Node, c: int, t0: int, t1: int, lanes: int) -> ir.Node:
    """Node computing column tiles t0..t1 of `node` (new tensors added to `tensors`)."""
    lo = t0 * lanes

    def sliced(name: str) -> str:
        t = graph.tensors[name]
        new = f"{name}#tp{c}"
        if new not in tensors:
            data = t.data[:, lo:t1 * lanes]
            tensors[new] = dataclasses.replace(t, name=new, cols=data.shape[1], data=data,
                                               formats=set(t.formats))
        return new

    out = graph.tensors[node.output]
    name = f"{node.output}#tp{c}"
    tensors[name] = dataclasses.replace(out, name=name, cols=min(out.cols, t1 * lanes) - lo,
                                        formats=set(out.formats))
    terms = [(v, sliced(w)) for v, w in node.terms]
    sources = [dataclasses.replace(v, tensor=sliced(v.tensor)) if graph.tensors[v.tensor].cols == out.cols else v
               for v in node.sources]
    return dataclasses.replace(node, output=name, terms=terms, sources=sources)


def stage_program(chip, sched, result, what: str, graph, onnx_inputs: dict, output_names: list):
    """One chip's Program from its stage schedule (pipeline stage or tensor-parallel part): the predicted cycles
    (last effect, plus the superlane stagger), the assembly with its RUNTIME_DESKEW barriers, the instruction
    count. Returns (program, last effect cycle)."""
    issues = sched.res.issues
    last_effect = max((iss.last_effect for iss in issues), default=-1)
    predicted = last_effect + 1 + chip.superlanes - 1
    text = emit_stage(issues, sched.barriers, header=f"lpusim {what} for {chip.name}; program cycles {predicted}; "
                      f"barriers {sched.barriers}")
    result.predicted_cycles = predicted
    prog = Program(chip, text, predicted, emit.count_instructions(issues) + barrier_issues(issues, sched.barriers),
                   sched.sram.bytes_used, onnx_inputs, output_names, 0.0, graph, result)
    return prog, last_effect


def compile_tensor(graph: ir.Graph, n: int, chip, system, interval: int, ctx_base: dict):
    """Per chip: (Program, barriers, last effect), plus the exchanges' log. `graph` is the fp16 IR after every
    pass; `ctx_base` holds rel, max_free, lag(info, f_send, f_recv_before_lag) and check_buffer(...)."""
    lanes = chip.lanes
    split = split_nodes(graph, n, lanes)
    if not split:
        raise CompileError(f"parallel='tensor': no matmul has {n} or more output column tiles of {lanes} to split "
                           f"(and is not a graph output); use parallel='pipeline'")
    tensors = dict(graph.tensors)
    graphs, parts = [], [dict() for _ in range(n)]
    later_needs = {}
    for i in split:
        full = graph.nodes[i].output
        need = set()
        for node in graph.nodes[i + 1:]:
            need |= needed_formats(graph, node).get(full, set())
        later_needs[i] = sorted(need)
    for c in range(n):
        nodes = []
        for i, node in enumerate(graph.nodes):
            if i in split:
                t0, t1 = split[i][c]
                part = _part(graph, tensors, node, c, t0, t1, lanes)
                nodes.append(part)
                parts[c][part.output] = (node.output, later_needs[i], split[i])
            else:
                nodes.append(node)
        graphs.append(ir.Graph(tensors, nodes, graph.inputs, graph.outputs, graph.output_names, graph.onnx_inputs,
                               graph.origin, graph.magnitudes, graph.derived))
        graphs[-1].input_kinds = graph.input_kinds  # bool/integer inputs, as on one chip
    sync = Lockstep(n)
    ctx = dict(ctx_base, interval=interval, system=system)
    results: list = [None] * n
    errors: list = []
    log: list = []

    def work(c):
        try:
            sched = TensorScheduler(chip, graphs[c], c, n, parts[c], ctx, sync)
            sched.transfer_log = log
            if any(node.kind == "transpose" for node in graphs[c].nodes):
                sched.reserve_sxm_slices()
            result = sched.run()
            results[c] = (sched, result)
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)
            sync.barrier.abort()

    threads = [threading.Thread(target=work, args=(c,)) for c in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    programs, barriers, last_effects = [], [], []
    for c, (sched, result) in enumerate(results):
        prog, last_effect = stage_program(chip, sched, result, f"tensor-parallel chip {c} of {n}", graphs[c],
                                          dict(graph.onnx_inputs), list(graph.output_names) if c == 0 else [])
        programs.append(prog)
        barriers.append(list(sched.barriers))
        last_effects.append(last_effect)
    splits = [{"node": graph.nodes[i].name, "tensor": graph.nodes[i].output, "tiles": split[i]} for i in split]
    order = {graph.nodes[i].output: k for k, i in enumerate(split)}
    log.sort(key=lambda e: (order[e["after"]], e["chip"]))
    return programs, barriers, last_effects, splits, log


__all__ = ["compile_tensor", "split_nodes", "stage_program"]
