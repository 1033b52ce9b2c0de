"""Tensor parallelism over N chips: `lpusim.compile(model, chips=N, parallel="tensor")`.

The plan (docs/multichip.md, "Tensor parallelism", has the long form):

* **Column splits.** A matmul with constant weights and epilogue sources and at least N output column tiles of
  320 is computed column-tile block by column-tile block: chip c computes tiles [c*T/N, (c+1)*T/N) of the output
  (its slice of the weights and epilogue constants; no reduction, the arithmetic is one chip's).
* **Row splits.** When every reader of a column-split output is a matmul reading it as its activation (constant
  fp16 weights), the readers are split by rows instead of all-gathering the output: chip c multiplies its own
  block by the matching weight rows, an f32 partial sum of the whole output (Megatron's column-then-row pairing).
  The partial sums are reduced over the links: the output's column tiles are dealt to *owner* chips, every chip
  sends each owner its partial of the owner's tiles, and the owner adds the N partials (a balanced tree, in chip
  order) and runs the reader's epilogue. The rounding differs from one chip's only in that the K sum is rounded to
  f32 per chip before the partials are added.
* **K over idle planes.** A chip's part with fewer output tiles than MXM planes has its K range split over the
  idle ones (f32 partial sums added in the last part's epilogue) when that shortens its weight chain enough.
* **Which plan.** `compile_multichip(tensor_rows=None)` compiles the plan with row splits and the one with column
  splits only and keeps the faster; `tensor_rows=False` is the exact plan (no row or K splits: outputs bit-identical
  to one chip).
* **Gathers.** A split output that later nodes read is sent, block by block, to the chips that run those nodes
  (all-gather), where the full tensor's store is the blocks' stores side by side; a split output that is a graph
  output and read by no node stays where its blocks are computed and the host concatenates them
  (`MultiProgram.output_blocks`).
* **Replicated nodes** run only on the chips that need their outputs: every chip for what feeds a split node, chip
  0 for the graph outputs.

Transfers are scheduled in lockstep (one scheduler thread per chip, meeting at each collective) but run without a
barrier: every chip's program cycles count from the common start, a SEND goes as soon as its tile is written, and
the RECV waits the lag that covers the link's worst latency and both chips' drift since their last realignment
(clocks.transfer_timing). The per-chip scheduler is compiler/schedule/tensor.py.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from lpusim.compiler import emit, ir, passes
from lpusim.compiler.schedule.c2c import barrier_issues, emit_stage
from lpusim.compiler.schedule.storage import WIDTH
from lpusim.compiler.schedule.tensor import Lockstep, TensorScheduler
from lpusim.errors import CompileError
from lpusim.multichip.partition import needed_formats
from lpusim.runtime.program import Program

F32_PLANES = 4  # a partial sum travels as f32: four byte planes per row and column tile
# a part's K range is split over idle planes only when that shortens its longest weight chain by this many tiles:
# each partial sum costs an accumulator read and a MEM round trip, and two planes of a hemisphere load at once only
# when their weight tiles sit in different slices
MIN_K_SAVED = 4


@dataclass
class Collective:
    """One exchange: every (from chip, to chip, {tensor: formats}) transfer, and per chip the full tensors it
    assembles afterwards from column blocks (full tensor, block tensors in column order, formats)."""

    kind: str  # "all-gather" | "reduce-scatter" | "gather"
    tensor: str
    sends: list = field(default_factory=list)
    joins: dict = field(default_factory=dict)


@dataclass
class TensorPlan:
    graphs: list  # per chip: its ir.Graph
    collectives: list  # in order
    at: list  # per chip: node index -> the collectives scheduled just before that node (len(nodes): at the end)
    keep: list  # per chip: the tensors it sends (never released)
    splits: list  # the report's description of every split
    output_blocks: dict  # ONNX output -> {"axis": a, "blocks": [[chip, block output name], ...]} (host concat)
    exact: bool  # no row split: every chip's arithmetic is one chip's (bit-identical outputs)


def _col_ok(graph: ir.Graph, node: ir.Node, n: int, lanes: int, readers: list) -> bool:
    if node.kind != "matmul":
        return False
    if any(graph.tensors[w].kind != "const" for _, w in node.terms):
        return False
    if any(graph.tensors[v.tensor].kind != "const" for v in node.sources):
        return False
    t = graph.tensors[node.output]
    if math.ceil(t.cols / lanes) < n:
        return False
    if node.output in graph.outputs:  # the host concatenates the blocks: an output nothing else reads
        return not readers and graph.outputs.count(node.output) == 1 and _host_axis(t) is not None
    return True


def split_nodes(graph: ir.Graph, n: int, lanes: int) -> dict[int, list[tuple[int, int]]]:
    """Node index -> per chip its [first, last) column tiles, for every matmul that can be split n ways."""
    consumers = graph.consumers()
    out = {}
    for i, node in enumerate(graph.nodes):
        if _col_ok(graph, node, n, lanes, consumers.get(node.output, [])):
            tiles = math.ceil(graph.tensors[node.output].cols / lanes)
            out[i] = [(c * tiles // n, (c + 1) * tiles // n) for c in range(n)]
    return out


def _host_axis(t: ir.Tensor) -> int | None:
    """The axis of the ONNX output the column tiles cut (the host concatenates blocks along it), or None."""
    shape = tuple(t.shape)
    if len(shape) == 4 and not t.flat_rows:
        return 1 if shape[1] == t.cols else None
    return len(shape) - 1 if shape and shape[-1] == t.cols else None


def _row_ok(graph: ir.Graph, reader: ir.Node, x: str) -> bool:
    """Whether `reader` can be split by rows of its weights along the column blocks of its activation `x`."""
    if reader.kind != "matmul" or len(reader.terms) != 1 or passes.is_int8(graph, reader):
        return False
    view, w = reader.terms[0]
    if view != ir.View(x) or graph.tensors[w].kind != "const" or graph.tensors[w].rows != graph.tensors[x].cols:
        return False
    return all(v.tensor != x and graph.tensors[v.tensor].kind == "const" for v in reader.sources)


def _block_tensor(tensors: dict, t: ir.Tensor, name: str, lo: int, hi: int, **changes) -> str:
    """Columns [lo, hi) of `t` as tensor `name` (its data sliced for a constant), added to `tensors`."""
    if name not in tensors:
        data = None if t.data is None else t.data[:, lo:hi]
        shape = tuple(t.shape)
        axis = _host_axis(t)
        if axis is not None:
            shape = shape[:axis] + (hi - lo,) + shape[axis + 1:]
        tensors[name] = dataclasses.replace(t, name=name, cols=hi - lo, data=data, shape=shape,
                                            formats=set(t.formats), **changes)
    return name


def _sliced_sources(graph: ir.Graph, tensors: dict, node: ir.Node, lo: int, hi: int, tag: str) -> list:
    """The node's epilogue sources for output columns [lo, hi): full-width constants sliced, others as they are."""
    out_cols = graph.tensors[node.output].cols
    res = []
    for v in node.sources:
        t = graph.tensors[v.tensor]
        if t.cols == out_cols:
            v = dataclasses.replace(v, tensor=_block_tensor(tensors, t, f"{v.tensor}#{tag}", lo, min(t.cols, hi)))
        res.append(v)
    return res


def _column_part(graph: ir.Graph, tensors: dict, node: ir.Node, c: int, t0: int, t1: int, lanes: int) -> ir.Node:
    """Node computing column tiles t0..t1 of `node` (new tensors added to `tensors`)."""
    lo, hi = t0 * lanes, min(graph.tensors[node.output].cols, t1 * lanes)
    tag = f"tp{c}"
    name = _block_tensor(tensors, graph.tensors[node.output], f"{node.output}#{tag}", lo, hi)
    terms = [(v, _block_tensor(tensors, graph.tensors[w], f"{w}#{tag}", lo, hi)) for v, w in node.terms]
    return dataclasses.replace(node, output=name, terms=terms, sources=_sliced_sources(graph, tensors, node, lo, hi,
                                                                                       tag))


def _row_part(graph: ir.Graph, tensors: dict, reader: ir.Node, x_part: str, c: int, k0: int, k1: int, o: int,
              lo: int, hi: int, n: int) -> ir.Node:
    """Chip c's partial sum of `reader`'s output columns [lo, hi) (owner o's block): its activation block (columns
    [k0, k1) of the split tensor) times those weight rows; the accumulator as f32, no epilogue."""
    (_, w), = reader.terms
    wt = graph.tensors[w]
    wname = f"{w}#r{c}b{o}"
    if wname not in tensors:
        data = wt.data[k0:k1, lo:hi]
        tensors[wname] = dataclasses.replace(wt, name=wname, rows=k1 - k0, cols=hi - lo, shape=data.shape,
                                             data=data, formats=set(wt.formats))
    out = graph.tensors[reader.output]
    name = f"{reader.output}#p{c}b{o}"
    tensors[name] = dataclasses.replace(out, name=name, cols=hi - lo, shape=(out.rows, hi - lo), formats={"f32"},
                                        pad=0, pad_value=0.0, f16_exp=0, f16_saturate=False, kind="value",
                                        flat_rows=False)
    return ir.Node("matmul", reader.name, f"{reader.onnx_op}(rows {c + 1}/{n}, block {o})", name,
                   terms=[(ir.View(x_part), wname)], fusable=False)


def _reduction(graph: ir.Graph, tensors: dict, reader: ir.Node, partials: list[str], out_name: str, lo: int,
               hi: int, tag: str, alus: int) -> list[ir.Node]:
    """The owner's nodes adding the partial sums (a balanced tree over the chips in order) and running the reader's
    epilogue on the sum."""
    chain, level = [], [("src", k) for k in range(len(partials))]
    while len(level) > 1:  # a balanced tree of ADDs (pairs in chip order): log2(N) ALU latencies deep
        nxt = []
        for k in range(0, len(level) - 1, 2):
            chain.append(ir.Step("ADD", [level[k], level[k + 1]]))
            nxt.append(("step", len(chain) - 1))
        level = nxt + level[len(level) - len(level) % 2:]
    sources = [ir.View(p) for p in partials]
    extra = _sliced_sources(graph, tensors, reader, lo, hi, tag)
    op = f"{reader.onnx_op}(sum {tag})"
    if len(chain) + len(reader.steps) + 2 * len(extra) + 2 > alus:  # the sum first, on its own
        total = f"{reader.output}#sum{tag}"
        tensors[total] = dataclasses.replace(tensors[partials[0]], name=total)
        first = ir.Node("vector", reader.name, op, total, sources=sources, steps=chain, fusable=False)
        chain, sources, acc = [], [ir.View(total)], ("src", 0)
        nodes = [first]
    else:
        acc = ("step", len(chain) - 1)
        nodes = []
    base, shift = len(chain), len(sources)
    for s in reader.steps:
        chain.append(ir.Step(s.op, [acc if a[0] == "acc" else ("step", a[1] + base) if a[0] == "step" else
                                    ("src", a[1] + shift) if a[0] == "src" else a for a in s.args], s.t))
    if not reader.steps:
        if acc[0] == "src":
            chain.append(ir.Step("COPY", [acc]))
    nodes.append(ir.Node("vector", reader.name, op, out_name, sources=sources + extra, steps=chain,
                         fusable=False))
    return nodes


def _plane_split(tensors: dict, node: ir.Node, q: int, lanes: int) -> list[ir.Node]:
    """`node` (one term, constant fp16 weights) as q nodes over consecutive ranges of its K tiles, so q planes
    stream its weights at once: the first q-1 leave their accumulators as f32 partial sums (their weights keep only
    their K rows: the scheduler skips all-zero weight tiles), the last adds them to its own accumulator before the
    node's epilogue."""
    (view, w), = node.terms
    wt = tensors[w]
    ktiles = math.ceil(wt.rows / lanes)
    out = tensors[node.output]
    nodes, partials = [], []
    for j in range(q):
        lo, hi = j * ktiles // q * lanes, min(wt.rows, (j + 1) * ktiles // q * lanes)
        data = np.zeros_like(wt.data)
        data[lo:hi] = wt.data[lo:hi]
        wname = f"{w}#k{j}"
        tensors[wname] = dataclasses.replace(wt, name=wname, data=data, formats=set(wt.formats))
        if j < q - 1:
            name = f"{node.output}#k{j}"
            tensors[name] = dataclasses.replace(out, name=name, shape=(out.rows, out.cols), formats={"f32"}, pad=0,
                                                pad_value=0.0, f16_exp=0, f16_saturate=False, kind="value",
                                                flat_rows=False)
            nodes.append(ir.Node("matmul", node.name, f"{node.onnx_op}(K {j + 1}/{q})", name,
                                 terms=[(view, wname)], fusable=False))
            partials.append(name)
            continue
        first = len(node.sources)
        chain = [ir.Step("ADD", [("acc",), ("src", first)])]
        chain += [ir.Step("ADD", [("step", k - 1), ("src", first + k)]) for k in range(1, q - 1)]
        acc, base = ("step", len(chain) - 1), len(chain)
        for st in node.steps:
            chain.append(ir.Step(st.op, [acc if a[0] == "acc" else ("step", a[1] + base) if a[0] == "step" else a
                                         for a in st.args], st.t))
        nodes.append(dataclasses.replace(node, onnx_op=f"{node.onnx_op}(K {q}/{q})", terms=[(view, wname)],
                                         sources=list(node.sources) + [ir.View(p) for p in partials], steps=chain,
                                         fusable=False))
    return nodes


def _jobs(tensors: dict, node: ir.Node, lanes: int, acc_rows: int) -> int:
    """The plane jobs of a matmul: output column tiles times accumulator row chunks (one plane each)."""
    out = tensors[node.output]
    chunk = min(out.rows, acc_rows // 2) if out.rows > 1 else 1
    return math.ceil(out.cols / lanes) * math.ceil(out.rows / chunk)


def _k_tiles(tensors: dict, node: ir.Node, lanes: int) -> int:
    """K tiles of a one-term matmul with constant fp16 weights (0: not one)."""
    if node.kind != "matmul" or len(node.terms) != 1:
        return 0
    wt = tensors[node.terms[0][1]]
    return 0 if wt.kind != "const" or wt.dtype == "i8" else math.ceil(wt.rows / lanes)


def _owners(tiles: int, n: int, dest: set, rows: int, interval: int, lag: int,
            planes: int) -> list[tuple[int, int, int]]:
    """(owner chip, first tile, end tile) of a row-split output's reduction. With one destination chip, all tiles
    go to it when that costs less link time than a reduce-scatter (f32 partials) and the second hop to it (the
    `planes` byte planes later nodes read)."""
    m = min(tiles, n)
    if len(dest) == 1:
        d = next(iter(dest))
        direct = tiles * F32_PLANES * rows * interval
        scatter = math.ceil(tiles / m) * (F32_PLANES + planes) * rows * interval + lag
        if direct <= scatter:
            return [(d, 0, tiles)]
        order = [d] + [c for c in range(n) if c != d]
    else:
        order = sorted(dest) + [c for c in range(n) if c not in dest]
    return [(order[q], q * tiles // m, (q + 1) * tiles // m) for q in range(m)]


def plan_tensor(graph: ir.Graph, n: int, lanes: int, interval: int, lag: int, alus: int,
                rows: bool = True, planes: int = 4, acc_rows: int = 1024, kplanes: bool = True) -> TensorPlan:
    """Split `graph` over n chips (module docstring): every chip's graph, the collectives and where they go."""
    nodes = graph.nodes
    consumers = graph.consumers()
    col = split_nodes(graph, n, lanes)
    row_of: dict[int, int] = {}  # reader index -> the column-split node it pairs with
    for i in sorted(col):
        if i in row_of:
            continue
        out = nodes[i].output
        readers = [j for j, nd in enumerate(nodes) if out in ir.node_inputs(nd)]
        if rows and readers and all(j not in row_of and _row_ok(graph, nodes[j], out) for j in readers):
            for j in readers:
                row_of[j] = i
    for j in row_of:
        col.pop(j, None)
    if not col:
        raise CompileError(f"parallel='tensor': no matmul has {n} or more output column tiles of {lanes} to split "
                           f"(and is not a graph output others read); use parallel='pipeline'")
    host = {nodes[i].output for i in col if nodes[i].output in graph.outputs}
    host |= {nodes[j].output for j in row_of if graph.outputs.count(nodes[j].output) == 1
             and not consumers.get(nodes[j].output) and _host_axis(graph.tensors[nodes[j].output]) is not None}
    # which chips need which tensors: backwards from the outputs (chip 0's) and the split nodes (every chip's)
    need = [set() for _ in range(n)]
    need[0] |= set(graph.outputs) - host
    run_on: dict[int, list[int]] = {}
    dest: dict[int, set] = {}
    for j in reversed(range(len(nodes))):
        node = nodes[j]
        if j in col or j in row_of:
            dest[j] = {c for c in range(n) if node.output in need[c]}
            if j in col:
                for c in range(n):
                    need[c] |= set(ir.node_inputs(node))
        else:
            run_on[j] = [c for c in range(n) if node.output in need[c]]
            for c in run_on[j]:
                need[c] |= set(ir.node_inputs(node))
    later: dict[str, list[str]] = {}
    for j in list(col) + list(row_of):
        fmts = set()
        for nd in nodes[j + 1:]:
            fmts |= needed_formats(graph, nd).get(nodes[j].output, set())
        if nodes[j].output in graph.outputs and nodes[j].output not in host:
            fmts.add("f32")
        later[nodes[j].output] = sorted(fmts)

    tensors = dict(graph.tensors)
    lists: list[list] = [[] for _ in range(n)]
    at: list[dict] = [{} for _ in range(n)]
    keep: list[set] = [set() for _ in range(n)]
    outputs: list[dict] = [{} for _ in range(n)]  # per chip: IR output -> its ONNX name
    onnx_name = dict(zip(graph.outputs, graph.output_names))
    collectives: list[Collective] = []
    splits: list[dict] = []
    output_blocks: dict = {}
    parts: dict[int, list[str]] = {}  # column-split node -> per chip its part's output
    group: dict[str, int] = {}  # split part -> the node it is a part of
    exact = not row_of

    def collective(col_: Collective) -> None:
        if not col_.sends and not col_.joins:
            return
        for c in range(n):
            at[c].setdefault(len(lists[c]), []).append(len(collectives))
        for src, _, items in col_.sends:
            keep[src].update(items)
        collectives.append(col_)

    for o in graph.outputs:
        if o in set(graph.inputs):
            outputs[0][o] = onnx_name[o]
    for j, node in enumerate(nodes):
        out = graph.tensors[node.output]
        if j in col:
            blocks = col[j]
            parts[j] = []
            for c, (t0, t1) in enumerate(blocks):
                part = _column_part(graph, tensors, node, c, t0, t1, lanes)
                group[part.output] = j
                lists[c].append(part)
                parts[j].append(part.output)
            entry = {"node": node.name, "tensor": node.output, "split": "columns", "tiles": blocks}
            if node.output in host:
                axis = _host_axis(out)
                output_blocks[onnx_name[node.output]] = {
                    "axis": axis, "blocks": [[c, f"{onnx_name[node.output]}#tp{c}"] for c in range(n)]}
                for c in range(n):
                    outputs[c][parts[j][c]] = f"{onnx_name[node.output]}#tp{c}"
                entry["gather"] = "host"
            elif any(row_of.get(r) == j for r in row_of):
                entry["gather"] = "none (row-split readers)"
            else:
                d = sorted(dest[j])
                fmts = later[node.output]
                ag = Collective("all-gather", node.output)
                for c in range(n):
                    for q in d:
                        if q != c:
                            ag.sends.append((c, q, {parts[j][c]: fmts}))
                for q in d:
                    ag.joins[q] = [(node.output, list(parts[j]), fmts)]
                collective(ag)
                entry["gather"] = f"all-gather to chips {d}"
            splits.append(entry)
        elif j in row_of:
            i = row_of[j]
            a_blocks = col[i]
            k_cols = graph.tensors[nodes[i].output].cols
            tiles = math.ceil(out.cols / lanes)
            d = dest[j]
            owners = _owners(tiles, n, d, out.rows, interval, lag,
                             sum(WIDTH[f] for f in later[node.output]))
            single = len(owners) == 1
            rs = Collective("reduce-scatter" if not single else "reduce", node.output)
            names = {}  # (chip, owner) -> partial tensor
            for c in range(n):
                k0, k1 = a_blocks[c][0] * lanes, min(k_cols, a_blocks[c][1] * lanes)
                order = [ow for ow in owners if ow[0] != c] + [ow for ow in owners if ow[0] == c]
                for o, t0, t1 in order:
                    lo, hi = t0 * lanes, min(out.cols, t1 * lanes)
                    part = _row_part(graph, tensors, node, parts[i][c], c, k0, k1, o, lo, hi, n)
                    group[part.output] = j
                    lists[c].append(part)
                    names[(c, o)] = part.output
                    if o != c:
                        rs.sends.append((c, o, {part.output: ["f32"]}))
            collective(rs)
            block_names = []
            for o, t0, t1 in owners:
                lo, hi = t0 * lanes, min(out.cols, t1 * lanes)
                bname = node.output if single else _block_tensor(tensors, out, f"{node.output}#blk{o}", lo, hi)
                block_names.append(bname)
                lists[o] += _reduction(graph, tensors, node, [names[(c, o)] for c in range(n)], bname, lo, hi,
                                       f"blk{o}", alus)
            entry = {"node": node.name, "tensor": node.output, "split": "rows", "pairs_with": nodes[i].name,
                     "rows": [[t0 * lanes, min(k_cols, t1 * lanes)] for t0, t1 in a_blocks],
                     "owners": [list(ow) for ow in owners], "destinations": sorted(d)}
            if node.output in host:
                output_blocks[onnx_name[node.output]] = {
                    "axis": _host_axis(out), "blocks": [[o, f"{onnx_name[node.output]}#blk{o}"] for o, _, _ in owners]}
                for (o, _, _), bname in zip(owners, block_names):
                    outputs[o][bname] = f"{onnx_name[node.output]}#blk{o}"
            elif single:
                if node.output in graph.outputs:
                    outputs[owners[0][0]][node.output] = onnx_name[node.output]
            else:
                fmts = later[node.output]
                ag = Collective("gather", node.output)
                for (o, _, _), bname in zip(owners, block_names):
                    for q in sorted(d):
                        if q != o:
                            ag.sends.append((o, q, {bname: fmts}))
                for q in sorted(d):
                    ag.joins[q] = [(node.output, block_names, fmts)]
                collective(ag)
            splits.append(entry)
        else:
            for c in run_on[j]:
                lists[c].append(node)
    for o in graph.outputs:
        if o not in host and o not in outputs[0]:
            outputs[0][o] = onnx_name[o]
    if kplanes:  # the arithmetic may differ from one chip's: split parts that leave planes idle by K too
        for c in range(n):
            jobs: dict = {}  # the parts one split node puts on a chip run side by side: their plane jobs
            for nd in lists[c]:
                if nd.output in group:
                    jobs[group[nd.output]] = jobs.get(group[nd.output], 0) + _jobs(tensors, nd, lanes, acc_rows)
            new_list, shift = [], {}
            for k, nd in enumerate(lists[c]):
                shift[k] = len(new_list)
                q = 1
                if nd.output in group:
                    kt = _k_tiles(tensors, nd, lanes)
                    q = min(kt, planes // jobs[group[nd.output]])
                    if kt - math.ceil(kt / max(q, 1)) < MIN_K_SAVED:  # too short a chain to pay for the partials
                        q = 1
                new_list += _plane_split(tensors, nd, q, lanes) if q > 1 else [nd]
            shift[len(lists[c])] = len(new_list)
            at[c] = {shift[k]: v for k, v in at[c].items()}
            lists[c] = new_list
            exact = exact and len(new_list) == len(shift) - 1
    order = {o: k for k, o in enumerate(graph.outputs)}
    graphs = []
    for c in range(n):
        outs = sorted(outputs[c], key=lambda o: (order.get(o, len(order)), o))
        g = ir.Graph(tensors, lists[c], list(graph.inputs), outs, [outputs[c][o] for o in outs],
                     dict(graph.onnx_inputs), graph.origin, graph.magnitudes, graph.derived)
        g.input_kinds = graph.input_kinds  # bool/integer inputs, as on one chip
        g.output_types = graph.output_types
        graphs.append(g)
    return TensorPlan(graphs, collectives, at, keep, splits, output_blocks, exact=exact)


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


def compile_tensor(graph: ir.Graph, n: int, chip, system, interval: int, ctx_base: dict, rows: bool = True,
                   kplanes: bool = True):
    """Per chip: (Program, barriers, last effect), the splits, the exchanges' log, the host-concatenated output
    blocks and whether the arithmetic is one chip's. `graph` is the fp16 IR after every pass; `ctx_base` holds
    rel, max_free, lag(info, f_send, f_recv_before_lag) and check_buffer(...)."""
    lag = ctx_base["lag"](system.links[0], 0, 0) if system.links else 0
    plan = plan_tensor(graph, n, chip.lanes, interval, lag, chip.vxm_alus, rows, len(chip.plane_names),
                       chip.mxm_acc_rows, kplanes)
    sync = Lockstep(n)
    ctx = dict(ctx_base, interval=interval, system=system)
    log: list = []

    def make(c):
        sched = TensorScheduler(chip, plan.graphs[c], c, n, plan, ctx, sync)
        sched.transfer_log = log
        return sched

    results = sync.run(make)
    programs, barriers, last_effects = [], [], []
    for c, (sched, result) in enumerate(results):
        g = plan.graphs[c]
        prog, last_effect = stage_program(chip, sched, result, f"tensor-parallel chip {c} of {n}", g,
                                          dict(graph.onnx_inputs), list(g.output_names))
        programs.append(prog)
        barriers.append(list(sched.barriers))
        last_effects.append(last_effect)
    log.sort(key=lambda e: (e["collective"], e["chip"]))
    return programs, barriers, last_effects, plan, log


__all__ = ["compile_tensor", "plan_tensor", "split_nodes", "stage_program", "Collective", "TensorPlan"]
