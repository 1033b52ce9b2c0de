"""Cycle costs of IR nodes: a static estimate of one node alone, and each node's share of a single-chip schedule.

The pipeline partitioner balances stages by them (multichip/partition.py); the stage scheduler uses the static
estimate to place realignment barriers ahead of long nodes (schedule/c2c.py).
"""
from __future__ import annotations

import math

from lpusim.compiler import ir, passes
from lpusim.compiler.schedule import scheduler as schedule


def static_cost(graph: ir.Graph, node: ir.Node, chip) -> int:
    """A rough cycle estimate of one node alone (used when no single-chip schedule exists)."""
    lanes = chip.lanes
    out = graph.tensors[node.output]
    tiles = max(1, math.ceil(out.cols / lanes))
    if node.kind == "matmul":
        passes_ = sum(max(1, math.ceil(ir.view_cols(graph.tensors[v.tensor], v) / lanes))
                      * (tiles if node.out_tiles is None else 1) for v, _ in node.terms)
        work = passes_ * out.rows * chip.cycles_per_vector("i8" if passes.is_int8(graph, node) else "f16")
        return max(1, work // max(1, chip.mxm_planes)) + 60
    return out.rows * tiles + 30


def node_costs(graph: ir.Graph, chip) -> list[int] | None:
    """Per node, the cycles it adds to the single-chip schedule's frontier (None if one chip cannot hold it)."""
    frontier = [0]
    costs: list[int] = []
    state = {"seen": 0, "last": -1}

    def progress(i, n, node):
        issues = sched.res.issues
        last = state["last"]
        for iss in issues[state["seen"]:]:
            last = max(last, iss.last_effect)
        state["seen"], state["last"] = len(issues), last
        if i > 0:
            costs.append(max(0, last + 1 - frontier[0]))
            frontier[0] = max(frontier[0], last + 1)

    try:
        sched = schedule.Scheduler(chip, graph, progress)
        result = sched.run()
    except Exception:  # noqa: BLE001 - too large, or any scheduling failure: fall back to the estimate
        return None
    costs.append(max(0, result.predicted_cycles - frontier[0]))
    return [max(1, c) for c in costs]
