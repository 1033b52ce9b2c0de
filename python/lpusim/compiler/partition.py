"""Pipeline partitioning: the IR node list cut into consecutive stages, one per chip.

A stage is a run of consecutive IR nodes (after every pass, so fused chains never straddle a cut). Across the cut
between stage k and k+1 travel the *live* tensors: computed before the cut and read after it. The pipeline is a
chain: chip k receives every live tensor of cut k-1 from chip k-1 (the ones it does not read itself it forwards),
and sends every live tensor of cut k to chip k+1. A tensor travels only in the storage formats the later stages
read (f16 for matmul activations and computed weights, f32 for VXM sources), one 320-byte vector per row per byte
plane per column tile, one vector per `min_send_interval_cycles` on the link.

Stages are balanced by predicted cycles: each node's cost is how far it moves the single-chip schedule's frontier
(`node_costs`, from a real single-chip schedule), or, when the model does not fit one chip, a static estimate. The
cut positions minimise the longest stage (its nodes plus its outgoing transfer), subject to every stage fitting one
chip's SRAM; `fewest_chips` is the smallest number of stages that fit at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from lpusim.compiler import ir, schedule
from lpusim.compiler.layout import WIDTH, Store


@dataclass
class Stage:
    index: int
    nodes: list[ir.Node]
    receives: dict[str, list[str]] = field(default_factory=dict)  # tensor -> formats arriving from chip k-1
    sends: dict[str, list[str]] = field(default_factory=dict)  # tensor -> formats going to chip k+1
    inputs: list[str] = field(default_factory=list)  # IR graph inputs the host writes on this chip
    outputs: list[str] = field(default_factory=list)  # IR graph outputs computed on this chip
    cost: int = 0  # predicted cycles of its nodes (balance estimate)
    sram_bytes: int = 0


def needed_formats(graph: ir.Graph, node: ir.Node) -> dict[str, set[str]]:
    """Per tensor the node reads: the storage formats it reads it in."""
    need: dict[str, set[str]] = {}
    if node.kind == "transpose":
        need.setdefault(node.sources[0].tensor, set()).update(graph.tensors[node.output].formats)
        return need
    for v, w in node.terms:
        need.setdefault(v.tensor, set()).add("f16")
        if graph.tensors[w].kind == "value":
            need.setdefault(w, set()).add("f16")
    for v in node.sources:
        need.setdefault(v.tensor, set()).add("f32")
    return need


def live_after(graph: ir.Graph, cut: int) -> dict[str, list[str]]:
    """Tensors computed by nodes[:cut] that nodes[cut:] read, with the formats those nodes read them in."""
    produced = {n.output for n in graph.nodes[:cut]}
    live: dict[str, set[str]] = {}
    for node in graph.nodes[cut:]:
        for name, fmts in needed_formats(graph, node).items():
            if name in produced:
                live.setdefault(name, set()).update(fmts)
    return {name: sorted(f) for name, f in sorted(live.items())}


def vectors(graph: ir.Graph, live: dict[str, list[str]], lanes: int) -> int:
    """Link vectors a set of live tensors takes: rows x column tiles x byte planes."""
    total = 0
    for name, fmts in live.items():
        t = graph.tensors[name]
        total += t.rows * max(1, math.ceil(t.cols / lanes)) * sum(WIDTH[f] for f in fmts)
    return total


def static_cost(graph: ir.Graph, node: ir.Node, chip) -> int:
    """A rough cycle estimate of one node alone (used when no single-chip schedule exists)."""
    lanes = chip.lanes
    out = graph.tensors[node.output]
    tiles = max(1, math.ceil(out.cols / lanes))
    if node.kind == "matmul":
        k_tiles = max(1, math.ceil(graph.tensors[node.x].cols / lanes))
        work = len(node.terms) * k_tiles * tiles * out.rows * chip.cycles_per_vector("f16")
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


def stage_sram(graph: ir.Graph, nodes: list[ir.Node], received: dict[str, list[str]], chip) -> int:
    """SRAM a stage needs at its peak: its constants and inputs, what it receives, and its live activations."""
    lanes = chip.lanes

    def size(t, fmts):
        tiles = max(1, math.ceil(t.cols / lanes))
        return sum(tiles * Store.for_tensor(t, f).storage_rows * WIDTH[f] * lanes for f in fmts)

    used = set()
    for node in nodes:
        used.update(ir.node_inputs(node))
    static = sum(size(graph.tensors[n], graph.tensors[n].formats) for n in used
                 if graph.tensors[n].kind in ("const", "input"))
    static += sum(size(graph.tensors[n], f) for n, f in received.items())
    for w in {w for node in nodes for _, w in node.terms if graph.tensors[w].kind == "const"}:
        data = graph.tensors[w].data
        k, n = data.shape
        for kt in range(math.ceil(k / lanes)):
            for nt in range(math.ceil(n / lanes)):
                if data[kt * lanes:(kt + 1) * lanes, nt * lanes:(nt + 1) * lanes].any():
                    rows = min(k - kt * lanes, lanes)
                    static += schedule.WEIGHT_SLOTS * math.ceil(rows / schedule.WEIGHT_SLOTS) * 2 * lanes
    last_use = {}
    for i, node in enumerate(nodes):
        for name in ir.node_inputs(node):
            last_use[name] = i
    live, peak = 0, 0
    for i, node in enumerate(nodes):
        live += size(graph.tensors[node.output], graph.tensors[node.output].formats)
        peak = max(peak, live)
        for name in set(ir.node_inputs(node)):
            t = graph.tensors[name]
            if last_use[name] == i and t.kind == "value" and name not in graph.outputs and name not in received:
                live -= size(t, t.formats)
    return static + peak


class Partitioner:
    def __init__(self, graph: ir.Graph, chip, interval: int):
        self.graph = graph
        self.chip = chip
        self.interval = interval
        self.n = len(graph.nodes)
        self._fits: dict[tuple[int, int], int] = {}
        self._live: dict[int, dict[str, list[str]]] = {}

    def live(self, cut: int) -> dict[str, list[str]]:
        if cut not in self._live:
            self._live[cut] = live_after(self.graph, cut) if 0 < cut < self.n else {}
        return self._live[cut]

    def sram(self, i: int, j: int) -> int:
        """SRAM of the stage nodes[i:j]."""
        if (i, j) not in self._fits:
            self._fits[(i, j)] = stage_sram(self.graph, self.graph.nodes[i:j], self.live(i), self.chip)
        return self._fits[(i, j)]

    def fits(self, i: int, j: int) -> bool:
        return self.sram(i, j) <= self.chip.sram_bytes

    def fewest_chips(self) -> int | None:
        """The fewest consecutive stages that each fit one chip (greedy packing is optimal here); None if one
        node alone does not fit."""
        count, i = 0, 0
        while i < self.n:
            j = i + 1
            if not self.fits(i, j):
                return None
            while j < self.n and self.fits(i, j + 1):
                j += 1
            count += 1
            i = j
        return max(count, 1)

    def split(self, stages: int, costs: list[int], check_sram: bool = True) -> list[tuple[int, int]]:
        """Cuts into `stages` nonempty runs minimising the longest (cost + outgoing transfer), all fitting SRAM
        (`check_sram=False` when the whole model fits one chip, so every run of its nodes does)."""
        n = self.n
        prefix = [0]
        for c in costs:
            prefix.append(prefix[-1] + c)
        lanes = self.chip.lanes
        xfer = [vectors(self.graph, self.live(c), lanes) * self.interval if 0 < c < n else 0 for c in range(n + 1)]
        INF = float("inf")
        # best[s][j]: (longest stage, total transfer) for nodes[:j] in s stages; choice[s][j]: start of the last
        best = [[(INF, INF)] * (n + 1) for _ in range(stages + 1)]
        choice = [[0] * (n + 1) for _ in range(stages + 1)]
        best[0][0] = (0, 0)
        for s in range(1, stages + 1):
            for j in range(s, n - (stages - s) + 1):
                for i in range(s - 1, j):
                    prev = best[s - 1][i]
                    if prev[0] == INF:
                        continue
                    stage = prefix[j] - prefix[i] + xfer[j]
                    cand = (max(prev[0], stage), prev[1] + xfer[j])
                    if cand < best[s][j] and (not check_sram or self.fits(i, j)):
                        best[s][j] = cand
                        choice[s][j] = i
        if best[stages][n][0] == INF:
            return []
        bounds, j = [], n
        for s in range(stages, 0, -1):
            i = choice[s][j]
            bounds.append((i, j))
            j = i
        return bounds[::-1]

    def stages(self, bounds: list[tuple[int, int]], costs: list[int]) -> list[Stage]:
        g = self.graph
        out = []
        for k, (i, j) in enumerate(bounds):
            nodes = g.nodes[i:j]
            used = set()
            for node in nodes:
                used.update(ir.node_inputs(node))
            produced = {node.output for node in nodes}
            st = Stage(k, nodes, receives=self.live(i), sends=self.live(j),
                       inputs=[n for n in g.inputs if n in used],
                       outputs=[o for o in g.outputs if o in produced],
                       cost=sum(costs[i:j]), sram_bytes=self.sram(i, j))
            out.append(st)
        return out


__all__ = ["Stage", "Partitioner", "live_after", "needed_formats", "node_costs", "static_cost", "vectors"]
