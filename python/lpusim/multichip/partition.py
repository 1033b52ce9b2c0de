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

A node too large for one chip on its own (VGG-19's first fully connected layer: 25088 x 4096 fp16 weights) is
split first (`split_oversized`): a matmul with constant weights and constant epilogue sources becomes `p` nodes,
part q computing a block of the output's column tiles from the same input (its slice of the weight columns and of
the epilogue constants); every consumer of that output (a matmul reading it as its activation) becomes `p` nodes
too, part q multiplying block q by its slice of the weight rows and adding the running partial sum (f32) of the
parts before it, the last part running the consumer's epilogue. The parts are ordinary IR nodes, interleaved
(block q, then its partial sum), so the stage cuts can fall between them: the input and the partial sum travel
down the pipeline like any other live tensor.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from lpusim.compiler import ir, passes
from lpusim.compiler.schedule import scheduler as schedule
from lpusim.compiler.schedule.storage import WIDTH, Store
from lpusim.errors import CompileError


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
        need.setdefault(v.tensor, set()).add("i8" if passes.is_int8(graph, node) else "f16")
        if graph.tensors[w].kind == "value":
            need.setdefault(w, set()).add("f16")
    for v in node.sources:
        need.setdefault(v.tensor, set()).add(passes.vxm_format(graph.tensors[v.tensor]))  # f32, or i32
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
        static += schedule.weight_bytes(graph.tensors[w].data, graph.tensors[w].dtype, lanes)
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
    """Cut search. Large graphs (more than `MAX_CUTS` nodes) consider only the `MAX_CUTS` cuts with the least
    traffic; `max_end(i)` scans forward once per start, so SRAM checks cost O(nodes) per candidate start."""

    MAX_CUTS = 400
    # A stage is filled to this share of the SRAM estimate: the allocator's placement constraints (slice groups,
    # banks, views kept apart) need room the byte count does not show.
    HEADROOM = 0.9

    def __init__(self, graph: ir.Graph, chip, interval: int):
        self.graph = graph
        self.chip = chip
        self.interval = interval
        self.n = len(graph.nodes)
        self._fits: dict[tuple[int, int], int] = {}
        self._live: dict[int, dict[str, list[str]]] = {}
        self._end: dict[int, int] = {}
        self.limits: dict[int, int] = {}  # start -> end the allocator is known to place (placement feedback)
        self.forbidden: set[int] = set()  # cut positions not allowed (a KV cache's reader and writer stay together)
        lanes = chip.lanes
        g = graph
        self.producer = {node.output: k for k, node in enumerate(g.nodes)}
        self.last_use: dict[str, int] = {}
        for k, node in enumerate(g.nodes):
            for name in ir.node_inputs(node):
                self.last_use[name] = k
        self._size: dict[str, int] = {}
        self.wbytes: dict[str, int] = {}
        for node in g.nodes:
            for _, w in node.terms:
                t = g.tensors[w]
                if t.kind == "const" and w not in self.wbytes:
                    k, n = t.data.shape
                    total = 0
                    for kt in range(math.ceil(k / lanes)):
                        for nt in range(math.ceil(n / lanes)):
                            if t.data[kt * lanes:(kt + 1) * lanes, nt * lanes:(nt + 1) * lanes].any():
                                rows = min(k - kt * lanes, lanes)
                                total += schedule.WEIGHT_SLOTS * math.ceil(rows / schedule.WEIGHT_SLOTS) * 2 * lanes
                    self.wbytes[w] = total
        # link vectors across every cut (formats: what any reader reads; exact live sets for the chosen cuts)
        diff = [0] * (self.n + 2)
        fmts: dict[str, set[str]] = {}
        for node in g.nodes:
            for name, f in needed_formats(g, node).items():
                fmts.setdefault(name, set()).update(f)
        for name, f in fmts.items():
            if name in self.producer:
                t = g.tensors[name]
                v = t.rows * max(1, math.ceil(t.cols / lanes)) * sum(WIDTH[x] for x in f)
                diff[self.producer[name] + 1] += v
                diff[self.last_use[name] + 1] -= v
        self.cut_vectors = [0] * (self.n + 1)
        acc = 0
        for c in range(self.n + 1):
            acc += diff[c]
            self.cut_vectors[c] = acc

    def size(self, name: str) -> int:
        if name not in self._size:
            t = self.graph.tensors[name]
            lanes = self.chip.lanes
            tiles = max(1, math.ceil(t.cols / lanes))
            self._size[name] = sum(tiles * Store.for_tensor(t, f).storage_rows * WIDTH[f] * lanes
                                   for f in t.formats)
        return self._size[name]

    def live(self, cut: int) -> dict[str, list[str]]:
        if cut not in self._live:
            self._live[cut] = live_after(self.graph, cut) if 0 < cut < self.n else {}
        return self._live[cut]

    def sram(self, i: int, j: int) -> int:
        """SRAM of the stage nodes[i:j]."""
        if (i, j) not in self._fits:
            self._fits[(i, j)] = stage_sram(self.graph, self.graph.nodes[i:j], self.live(i), self.chip)
        return self._fits[(i, j)]

    def max_end(self, i: int) -> int:
        """The largest j such that nodes[i:j] fit one chip (i if not even nodes[i] does)."""
        if i in self._end:
            return self._end[i]
        g, cap = self.graph, int(self.chip.sram_bytes * self.HEADROOM)
        static = stage_sram(g, [], self.live(i), self.chip)
        seen: set[str] = set()
        live = peak = 0
        end = self.n
        for k in range(i, self.n):
            node = g.nodes[k]
            for name in ir.node_inputs(node):
                t = g.tensors[name]
                if t.kind in ("const", "input") and name not in seen:
                    seen.add(name)
                    static += self.size(name) + self.wbytes.get(name, 0)
            live += self.size(node.output)
            peak = max(peak, live)
            if static + peak > cap:
                end = k
                break
            for name in set(ir.node_inputs(node)):
                t = g.tensors[name]
                if self.last_use[name] == k and t.kind == "value" and name not in g.outputs \
                        and self.producer.get(name, -1) >= i:
                    live -= self.size(name)
        end = min(end, self.limits.get(i, end))
        self._end[i] = end
        return end

    def limit(self, i: int, end: int) -> None:
        """The allocator could not place a stage starting at node i beyond node `end` (exclusive): stages from i
        end there at the latest (the byte estimate misses fragmentation: slice groups, banks, borders)."""
        self.limits[i] = min(end, self.limits.get(i, end))
        self._end.pop(i, None)

    def fits(self, i: int, j: int) -> bool:
        return j <= self.max_end(i)

    def fewest_chips(self) -> int | None:
        """The fewest consecutive stages that each fit one chip (greedy packing is optimal here); None if one
        node alone does not fit."""
        count, i = 0, 0
        while i < self.n:
            j = self.max_end(i)
            if j <= i:
                return None
            count += 1
            i = j
        return max(count, 1)

    def candidates(self, stages: int = 0) -> list[int]:
        """Cut positions the split considers (0 and n included): the `MAX_CUTS` (or twice the stages, if more)
        with the least traffic."""
        inner = [c for c in range(1, self.n) if c not in self.forbidden]
        keep = max(self.MAX_CUTS, 2 * stages)
        if len(inner) > keep:
            inner = sorted(sorted(inner, key=lambda c: (self.cut_vectors[c], c))[:keep])
        return [0] + inner + [self.n]

    def split(self, stages: int, costs: list[int], check_sram: bool = True) -> list[tuple[int, int]]:
        """Cuts into `stages` nonempty runs minimising the longest (cost + outgoing transfer), all fitting SRAM
        (`check_sram=False` when the whole model fits one chip, so every run of its nodes does)."""
        n = self.n
        prefix = [0]
        for c in costs:
            prefix.append(prefix[-1] + c)
        pos = self.candidates(stages)
        if check_sram:  # a greedy packing's cuts are always feasible: keep them among the candidates
            i = 0
            while i < n and self.max_end(i) > i:
                i = self.max_end(i)
                pos.append(i)
            pos = sorted(set(pos) - self.forbidden)
        m = len(pos)
        xfer = [self.cut_vectors[c] * self.interval if 0 < c < n else 0 for c in pos]
        if stages >= m:
            return []
        # best[s][b]: (longest stage, total transfer) for nodes[:pos[b]] in s stages, the lexicographic minimum over
        # the last stage's start a < b (the smallest such a on ties); one numpy pass over (a, b) per stage count
        P = np.array([prefix[c] for c in pos], dtype=np.float64)
        X = np.array(xfer, dtype=np.float64)
        stage_cost = P[None, :] - P[:, None] + X[None, :]  # [a, b]
        ok = np.triu(np.ones((m, m), dtype=bool), 1)          # a < b
        if check_sram:
            ends = np.array([self.max_end(i) if i < n else -1 for i in pos])
            ok &= np.array(pos)[None, :] <= ends[:, None]
        INF = np.inf
        best0 = np.full(m, INF)
        best1 = np.full(m, INF)
        best0[0] = best1[0] = 0.0
        choices = []
        for _ in range(stages):
            longest = np.where(ok & np.isfinite(best0)[:, None], np.maximum(best0[:, None], stage_cost), INF)
            lo = longest.min(axis=0)                                           # per b
            total = np.where(longest == lo[None, :], best1[:, None], INF)     # ties on the longest: least transfer
            tmin = total.min(axis=0)
            pick = np.argmax((longest == lo[None, :]) & (total == tmin[None, :]), axis=0)  # the smallest a
            new0 = lo.copy()
            new1 = np.where(np.isfinite(lo), tmin + X, INF)
            new0[0] = new1[0] = INF
            best0, best1 = new0, new1
            choices.append(pick)
        if not np.isfinite(best0[m - 1]):
            return []
        bounds, b = [], m - 1
        for s in range(stages, 0, -1):
            a = int(choices[s - 1][b])
            bounds.append((pos[a], pos[b]))
            b = a
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


# ----- splitting one node larger than a chip ----------------------------------------------------------------
def _why_not_splittable(graph: ir.Graph, node: ir.Node) -> str | None:
    """Why `node` cannot be split by output columns (None if it can)."""
    if node.kind != "matmul":
        return f"it is a {node.kind} node, not a matmul"
    if passes.is_int8(graph, node):
        return "it is an int8 matmul"
    if any(graph.tensors[w].kind != "const" for _, w in node.terms):
        return "its weights are computed"
    if any(graph.tensors[v.tensor].kind != "const" for v in node.sources):
        return "its epilogue reads a computed tensor"
    if node.output in graph.outputs:
        return "its output is a graph output"
    for c in graph.nodes:
        if node.output not in ir.node_inputs(c):
            continue
        if c.kind != "matmul" or any(v.spatial for v, _ in c.terms) or c.x != node.output \
                or any(v.tensor == node.output for v in c.sources):
            return f"{c.onnx_op} node '{c.name}' reads its output other than as a matmul's activation"
        if any(graph.tensors[w].kind != "const" for _, w in c.terms) or passes.is_int8(graph, c):
            return f"{c.onnx_op} node '{c.name}' (its reader) has computed or int8 weights"
    return None


def _row_parts(graph: ir.Graph, tensors: dict, c: ir.Node, blocks: list[tuple[int, int]], part_names: list[str],
               lanes: int) -> list[ir.Node]:
    """`c` (a matmul reading the split tensor) as one node per column block of its activation: part q multiplies
    block q by weight rows [lo, hi) and adds the partial sum of the parts before it; the last runs c's epilogue.

    A leading `MUL(acc, imm)` (scale_fp16's exact power-of-two rescale) applies to every part's accumulator; the
    rest of the chain runs once, on the whole sum."""
    (view, w), = c.terms
    wt = graph.tensors[w]
    out = graph.tensors[c.output]
    steps = c.steps
    head: list[ir.Step] = []
    if steps and steps[0].op == "MUL" and steps[0].t == "f32" and steps[0].args[0] == ("acc",) \
            and steps[0].args[1][0] == "imm" and all(a != ("acc",) for s in steps[1:] for a in s.args):
        head = [ir.Step("MUL", list(steps[0].args))]
    rest = steps[len(head):]
    res = ("step", 0) if head else ("acc",)
    nodes, prev = [], None
    p = len(blocks)
    for q, (t0, t1) in enumerate(blocks):
        lo, hi = t0 * lanes, min(wt.rows, t1 * lanes)
        wname = f"{w}#rows{q}"
        tensors[wname] = dataclasses.replace(wt, name=wname, rows=hi - lo, shape=(hi - lo, wt.cols),
                                             data=wt.data[lo:hi], formats=set(wt.formats))
        terms = [(dataclasses.replace(view, tensor=part_names[q]), wname)]
        op = f"{c.onnx_op}(rows {q + 1}/{p})"
        if q < p - 1:
            name = f"{c.output}#ps{q}"
            tensors[name] = dataclasses.replace(out, name=name, formats={"f32"}, pad=0, pad_value=0.0, f16_exp=0,
                                                f16_saturate=False, kind="value")
            sources = [ir.View(prev)] if prev else []
            chain = [ir.Step(s.op, list(s.args), s.t) for s in head]
            if prev:
                chain.append(ir.Step("ADD", [res, ("src", 0)]))
            nodes.append(ir.Node("matmul", c.name, op, name, sources=sources, steps=chain, terms=terms,
                                 fusable=False))
            prev = name
            continue
        sources = list(c.sources) + [ir.View(prev)]
        chain = [ir.Step(s.op, list(s.args), s.t) for s in head] + [ir.Step("ADD", [res, ("src", len(sources) - 1)])]
        for s in rest:  # original step j is now step j + 1 (the ADD stands for the scaled accumulator)
            chain.append(ir.Step(s.op, [("step", a[1] + 1) if a[0] == "step" else ("step", len(head))
                                        if a[0] == "acc" else a for a in s.args], s.t))
        nodes.append(ir.Node("matmul", c.name, op, c.output, sources=sources, steps=chain, terms=terms,
                             fusable=c.fusable))
    return nodes


def split_columns(graph: ir.Graph, index: int, parts: int, lanes: int) -> ir.Graph:
    """A new graph with node `index` split into `parts` column blocks (whole 320-lane tiles) and every reader of
    its output split by rows with a running partial sum (module docstring). The input graph is unchanged."""
    node = graph.nodes[index]
    why = _why_not_splittable(graph, node)
    if why:
        raise CompileError(f"{node.onnx_op} node '{node.name}' needs more SRAM than one chip has and cannot be "
                           f"split by output columns: {why}")
    out = graph.tensors[node.output]
    tiles = math.ceil(out.cols / lanes)
    if not 2 <= parts <= tiles:
        raise CompileError(f"{node.onnx_op} node '{node.name}': {parts} column blocks of a {tiles}-tile output")
    blocks = [(q * tiles // parts, (q + 1) * tiles // parts) for q in range(parts)]
    tensors = dict(graph.tensors)
    names, split = [], []
    for q, (t0, t1) in enumerate(blocks):
        lo, hi = t0 * lanes, min(out.cols, t1 * lanes)

        def sliced(name: str) -> str:
            t = graph.tensors[name]
            new = f"{name}#cols{q}"
            if new not in tensors:
                data = t.data[:, lo:min(t.cols, t1 * lanes)]
                tensors[new] = dataclasses.replace(t, name=new, cols=data.shape[1], shape=data.shape, data=data,
                                                   formats=set(t.formats))
            return new

        name = f"{node.output}#cols{q}"
        tensors[name] = dataclasses.replace(out, name=name, cols=hi - lo, shape=(out.rows, hi - lo),
                                            formats=set(out.formats))
        names.append(name)
        split.append(dataclasses.replace(
            node, output=name, onnx_op=f"{node.onnx_op}(cols {q + 1}/{parts})", fusable=False,
            terms=[(v, sliced(w)) for v, w in node.terms], sources=[dataclasses.replace(v, tensor=sliced(v.tensor))
                                                                   for v in node.sources]))
    readers = [c for c in graph.nodes if node.output in ir.node_inputs(c)]
    rows = {c.output: _row_parts(graph, tensors, c, blocks, names, lanes) for c in readers}
    before = {n.output for n in graph.nodes[:index]} | set(graph.inputs)
    interleave = all(graph.tensors[t].kind == "const" or t in before
                     for c in readers for t in ir.node_inputs(c) if t != node.output)
    nodes = []
    for i, n in enumerate(graph.nodes):
        if i == index:
            for q in range(parts):
                nodes.append(split[q])
                if interleave:
                    nodes += [rows[c.output][q] for c in readers]
        elif n.output in rows:
            if not interleave:
                nodes += rows[n.output]
        else:
            nodes.append(n)
    used = {name for n in nodes for name in ir.node_inputs(n)} | {n.output for n in nodes} | set(graph.inputs)
    tensors = {k: t for k, t in tensors.items() if k in used}
    new = ir.Graph(tensors, nodes, list(graph.inputs), list(graph.outputs), list(graph.output_names),
                   dict(graph.onnx_inputs), graph.origin, graph.magnitudes, graph.derived)
    ir.validate(new)
    return new


def split_oversized(graph: ir.Graph, chip, interval: int) -> tuple[ir.Graph, list[dict]]:
    """Split every node that no chip can hold alone (`split_columns`) into the fewest column blocks that each fit
    (with their partial sums): the graph the pipeline is cut from, and what was split."""
    lanes = chip.lanes
    done: list[dict] = []
    while True:
        part = Partitioner(graph, chip, interval)
        big = next((i for i in range(part.n) if part.max_end(i) <= i), None)
        if big is None:
            return graph, done
        node = graph.nodes[big]
        why = _why_not_splittable(graph, node)
        if why:
            raise CompileError(f"{node.onnx_op} node '{node.name}' alone needs more SRAM than one {chip.name} chip "
                               f"has ({chip.sram_bytes:,} bytes) and cannot be split by output columns: {why}")
        tiles = math.ceil(graph.tensors[node.output].cols / lanes)
        cap = int(chip.sram_bytes * Partitioner.HEADROOM)
        weights = sum(part.wbytes.get(w, 0) for _, w in node.terms)
        first = max(2, math.ceil(weights / cap))
        for parts in range(first, tiles + 1):
            new = split_columns(graph, big, parts, lanes)
            trial = Partitioner(new, chip, interval)
            old = {id(n) for n in graph.nodes}
            if all(trial.max_end(i) > i for i, n in enumerate(new.nodes) if id(n) not in old):
                break
        else:
            raise CompileError(f"{node.onnx_op} node '{node.name}' does not fit one {chip.name} chip even split "
                               f"into {tiles} column blocks of {lanes}")
        done.append({"node": node.name, "onnx_op": node.onnx_op, "tensor": node.output, "parts": parts,
                     "column_tiles": [[q * tiles // parts, (q + 1) * tiles // parts] for q in range(parts)],
                     "weight_bytes": weights,
                     "row_split_readers": [c.output for c in graph.nodes if node.output in ir.node_inputs(c)]})
        graph = new


__all__ = ["Stage", "Partitioner", "split_columns", "split_oversized", "live_after", "needed_formats", "vectors"]
