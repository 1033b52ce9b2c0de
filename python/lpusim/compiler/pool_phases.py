"""split_pool_phases: a strided max pool over a convolution the host lays out as patches reads its input by phase.

A MaxPool of stride s reads its taps as strided views of one tensor Y; a MEM slice issues one READ a cycle, so
the taps of one stored tensor cannot stream together and passes.split_tap_chains runs one VXM pass per tap (9 for
a 3 x 3 pool), each writing a partial result. At the stem of a CNN (ResNet-50: a 7 x 7 stride-2 convolution on
host-made patches, then a 3 x 3 stride-2 max pool) those passes were the busiest node: 26.6K cycles for 3,136
output rows at int8. Their row chunks also queued one after another: the 112 x 112 input spread over one
hemisphere's slices and each partial over the other, so every other partial fitted only the four slices left.

When Y is made row by row from host patches (an im2col input, then nodes that each read the previous one's rows:
the matmul, its epilogue, BatchNormalization, Relu, the int8 (re)quantisation), the host can lay out the patches
of each phase (a, b) (Y's rows h = s*i + a, columns w = s*j + b: a convolution of stride s times the original
one) and the chain runs once per phase: the same rows, the same MXM and VXM work, into s*s tensors Y_ab. Each
pool tap reads one phase, shifted by a whole row or column (a stride-1 view with a border of -inf), so a VXM pass
can read one tap of every phase at once (different tensors, different slices): a 3 x 3 stride-2 pool takes 4
passes (Y_11 holds 4 of its 9 taps) instead of 9. Exact: every output is the max over the same values.
"""
from __future__ import annotations

import dataclasses

from lpusim.compiler.ir import Graph, Node, Step, Tensor, View

# Pools with fewer output rows keep their taps. Each pass saved is about one cycle per output row (the passes run
# one after another), each extra phase chain costs a node's fixed overheads (weight loads, pipeline latencies):
# measured (fp16, predicted cycles without -> with) ResNet-50's 3,136-row pool 374,352 -> 368,557 (int8 209,522 ->
# 197,941), mini_resnet(batch=2, size=48, width=32, blocks=3)'s 288-row pool 20,173 -> 22,372 (its stem 2,551 ->
# 6,219 cycles, the pool 2,947 -> 1,418), and a 4-chip pipeline of mini_resnet() 11,433 -> 13,102 (a stage cut
# after one phase's input conversion).
MIN_POOL_ROWS = 1024


def split_pool_phases(graph: Graph) -> Graph:
    for pool in [n for n in graph.nodes if _strided_max_pool(graph, n)]:
        if graph.tensors[pool.output].rows < MIN_POOL_ROWS:
            continue
        chain = _patch_chain(graph, pool.sources[0].tensor)
        if chain is not None:
            _split(graph, pool, *chain)
    return graph


def _strided_max_pool(graph: Graph, node: Node) -> bool:
    if node.kind != "vector" or "MaxPool" not in node.onnx_op or len(node.sources) < 2:
        return False
    v0 = node.sources[0]
    if any(not v.spatial or v.tensor != v0.tensor or (v.stride, v.dilation, v.pad_top, v.pad_left) !=
           (v0.stride, v0.dilation, v0.pad_top, v0.pad_left) for v in node.sources):
        return False
    chain_ok = node.steps[0].args == [("src", 0), ("src", 1)] and all(
        s.op == "MAX" and s.t == "f32" and s.args == [("step", j - 1), ("src", j + 1)]
        for j, s in enumerate(node.steps) if j) and node.steps[0].op == "MAX" and node.steps[0].t == "f32"
    return chain_ok and len(node.steps) == len(node.sources) - 1 and v0.stride > 1


def _patch_chain(graph: Graph, y: str):
    """(im2col input, nodes from it to y in order) when y is made row by row from host patches and nothing else
    reads the tensors on the way; else None."""
    producer = {n.output: n for n in graph.nodes}
    uses = graph.consumers()
    chain, name = [], y
    while True:
        if len({id(u) for u in uses[name]}) != 1:
            return None
        t = graph.tensors[name]
        if t.kind == "input":
            if t.im2col is None or t.geom is None or any(p < 0 for p in t.im2col[2]):
                return None
            chain.reverse()
            return name, chain
        node = producer.get(name)
        if node is None or name in graph.outputs or node.kind not in ("matmul", "vector"):
            return None
        rowwise = [v for v in node.sources if graph.tensors[v.tensor].kind != "const"]
        rowwise += [v for v, _ in node.terms]
        if any(v.spatial or v.rows is not None for v in rowwise) or len({v.tensor for v in rowwise}) != 1:
            return None
        if any(graph.tensors[v.tensor].rows != 1 for v in node.sources
               if graph.tensors[v.tensor].kind == "const"):
            return None  # per-row constants would need splitting too
        if any(graph.tensors[w].kind != "const" for _, w in node.terms):
            return None
        src = rowwise[0].tensor
        if graph.tensors[src].rows != t.rows:
            return None
        chain.append(node)
        name = src


def _phase_patches(t: Tensor, s: int, a: int, b: int, rows: int, cols: int):
    """The im2col spec of phase (a, b) of input t: the same kernel at s times its stride, its first window
    moved down a and right b of t's output positions; None when that needs a negative (cropping) pad."""
    kernel, strides, pads, dil, shape = t.im2col
    size_h, size_w = shape[2], shape[3]
    top, left = pads[0] - a * strides[0], pads[1] - b * strides[1]
    st = (strides[0] * s, strides[1] * s)
    bottom = (rows - 1) * st[0] + dil[0] * (kernel[0] - 1) + 1 - size_h - top
    right = (cols - 1) * st[1] + dil[1] * (kernel[1] - 1) + 1 - size_w - left
    if min(top, left, bottom, right) < 0:
        return None
    return (tuple(kernel), st, (top, left, bottom, right), tuple(dil), tuple(shape))


def _split(graph: Graph, pool: Node, patches: str, chain: list[Node]) -> None:
    v0 = pool.sources[0]
    s, d = v0.stride, v0.dilation
    y = graph.tensors[v0.tensor]
    n, h, w = y.geom
    p = graph.tensors[patches]
    phases = [(a, b) for a in range(s) for b in range(s)]
    size = {(a, b): (-(-(h - a) // s), -(-(w - b) // s)) for a, b in phases}
    specs = {ab: _phase_patches(p, s, *ab, *size[ab]) for ab in phases}
    if any(spec is None or min(size[ab]) < 1 for ab, spec in specs.items()):
        return
    # each tap (dh, dw) reads phase ((dh*d - pad_top) mod s, ...) shifted by whole rows and columns
    taps = []
    for v in pool.sources:
        off_h, off_w = v.dh * d - v.pad_top, v.dw * d - v.pad_left
        a, b = off_h % s, off_w % s
        taps.append(((a, b), (off_h - a) // s, (off_w - b) // s))
    used = sorted({ab for ab, _, _ in taps})
    border_h = max(0, -min(q for _, q, _ in taps))
    border_w = max(0, -min(q for _, _, q in taps))

    def clone(name: str, ab, kind=None, **extra) -> str:
        t = graph.tensors[name]
        rows, cols = size[ab]
        new = f"{name}.ph{ab[0]}{ab[1]}"
        shape = (n, t.shape[1], rows, cols) if len(t.shape) == 4 else t.shape
        graph.tensors[new] = dataclasses.replace(t, name=new, rows=n * rows * cols, shape=shape,
                                                 geom=(n, rows, cols), formats=set(), **extra)
        mag = graph.derived.get(name, graph.magnitudes.get(graph.origin.get(name, ""), None))
        if mag is not None:
            graph.derived[new] = mag
        return new

    renamed = {}
    new_nodes = []
    for ab in used:
        ren = {patches: clone(patches, ab, im2col=specs[ab])}
        graph.inputs.append(ren[patches])
        for node in chain:
            ren[node.output] = clone(node.output, ab)
            new_nodes.append(dataclasses.replace(
                node, output=ren[node.output],
                sources=[dataclasses.replace(v, tensor=ren.get(v.tensor, v.tensor)) for v in node.sources],
                terms=[(dataclasses.replace(v, tensor=ren[v.tensor]), wt) for v, wt in node.terms]))
        renamed[ab] = ren[v0.tensor]
    # passes: the k-th tap of every phase at once, the running max first
    per_phase = {ab: [(qh, qw) for t_ab, qh, qw in taps if t_ab == ab] for ab in used}
    out = graph.tensors[pool.output]
    prev = None
    passes = max(len(v) for v in per_phase.values())
    for k in range(passes):
        sources = [View(prev)] if prev is not None else []
        for ab in used:
            if k < len(per_phase[ab]):
                qh, qw = per_phase[ab][k]
                sources.append(View(renamed[ab], dh=qh + border_h, dw=qw + border_w, pad_top=border_h,
                                    pad_left=border_w, spatial=True))
        steps = [Step("COPY", [("src", 0)])] if len(sources) == 1 else [Step("MAX", [("src", 0), ("src", 1)])]
        for j in range(2, len(sources)):
            steps.append(Step("MAX", [("step", len(steps) - 1), ("src", j)]))
        name = pool.output if k == passes - 1 else f"{pool.output}.phase{k}"
        if k < passes - 1:
            graph.tensors[name] = Tensor(name, out.rows, out.cols, "value", out.shape, geom=out.geom,
                                         dtype=out.dtype)
            mag = graph.derived.get(pool.output, graph.magnitudes.get(graph.origin.get(pool.output, ""), None))
            if mag is not None:
                graph.derived[name] = mag
        new_nodes.append(Node("vector", pool.name, f"{pool.onnx_op.split('(')[0]}(phases)", name,
                              sources=sources, steps=steps))
        prev = name
    # the chain and the pool give way to their phased copies, where the pool was
    gone = {id(x) for x in chain} | {id(pool)}
    at = graph.nodes.index(pool)
    graph.nodes = [x for x in graph.nodes[:at] if id(x) not in gone] + new_nodes + \
        [x for x in graph.nodes[at + 1:] if id(x) not in gone]
    graph.inputs.remove(patches)
    for name in [patches] + [x.output for x in chain]:
        del graph.tensors[name]
        graph.derived.pop(name, None)
        graph.origin.pop(name, None)
