"""IR -> IR passes: fuse VXM chains into their producers, decide storage formats, decide image borders.

Fusion keeps intermediate results on the streams instead of writing them to MEM and reading them back: a vector
node whose identity source is produced by a single-use vector or matmul node of the same row count is merged into
it (the merged chain runs on the VXM as the matmul's epilogue). Legalisation then decides which formats each tensor
is stored in (f16 where the MXM reads it, f32 where the VXM reads it or the host reads it back) and how wide a
border each image tensor needs for the spatial taps that read it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lpusim.chip import Chip
from lpusim.compiler.frontend.calibrate import scale_exponent
from lpusim.compiler.ir import Graph, Node, Step, Tensor, View, node_inputs, out_geom
from lpusim.compiler.vxm_chain import delay_table, place_delay_lines, with_read_copies
from lpusim.errors import CompileError

# A chain may use at most this many ALUs before scheduling adds delays and conversions (the VXM has 16).
MAX_FUSED_STEPS = 10


def _merge(producer: Node, consumer: Node, tensor: str) -> Node:
    """The consumer's chain appended to the producer's, with `tensor` (the producer's output) wired through."""
    sources = list(producer.sources)
    steps = [Step(s.op, list(s.args), s.t) for s in producer.steps]
    result = ("step", len(steps) - 1) if steps else ("acc",)
    src_map = {}
    for i, view in enumerate(consumer.sources):
        if view.tensor == tensor:
            src_map[i] = result
        else:
            if view not in sources:
                sources.append(view)
            src_map[i] = ("src", sources.index(view))
    offset = len(steps)
    for s in consumer.steps:
        args = []
        for a in s.args:
            if a[0] == "step":
                args.append(("step", a[1] + offset))
            elif a[0] == "src":
                args.append(src_map[a[1]])
            else:
                args.append(a)
        steps.append(Step(s.op, args, s.t))
    return Node(producer.kind, consumer.name, f"{producer.onnx_op}+{consumer.onnx_op}", consumer.output,
                sources=sources, steps=steps, terms=list(producer.terms), purpose=producer.purpose)


# What timing may still append to a fused chain (schedule.timed_chain) once formats are known: for an f16 copy, a
# power-of-two scale MUL, a saturating MAX and MIN, and the CVT (at most 4 steps, each reading the one before, so no
# delay lines); otherwise one CVT per extra format.
CHAIN_TAIL_ALUS = 4


def fits_vxm(steps: list[Step], tail: int = CHAIN_TAIL_ALUS) -> bool:
    """Whether the ALUs the scheduler will give this chain (vxm_chain: read copies and delay lines, at the default
    chip's latencies) plus the `tail` it may append fit the VXM (0 for a chain whose output only the VXM reads: it
    is stored in f32 alone). A chip with other latencies is still checked exactly by the scheduler, which names
    the node if its chain does not fit."""
    global _DEFAULT_TIMING
    if _DEFAULT_TIMING is None:
        chip = Chip.load()
        lat = chip.vxm_latency  # CVT included: the ALU latency, like every op without a latency field
        _DEFAULT_TIMING = (lat, delay_table(lat), chip.vxm_alus)
    lat, table, alus = _DEFAULT_TIMING
    placed, _, _ = place_delay_lines(with_read_copies(steps, lambda a: "f32"), lat, table)
    return len(placed) + tail <= alus


_DEFAULT_TIMING = None


def fuse_chains(graph: Graph) -> Graph:
    """Merge each vector node into the producer of one of its identity sources, in graph order, until none fits.

    One scan in graph order: after a merge the merged node (at the consumer's place) is examined again from its
    first source. That is the same as rescanning from the first node, since a merge changes nothing an earlier
    node's fusion depends on: the graph is in topological order, the removed producer's output had the consumer
    as its only reader, and a tensor whose read count the merge lowers is still read by the merged node."""
    producers = {n.output: n for n in graph.nodes}
    uses: dict[str, int] = {}
    for node in graph.nodes:
        for name in node_inputs(node):
            uses[name] = uses.get(name, 0) + 1
    outputs = set(graph.outputs)
    nodes = list(graph.nodes)
    position = {n.output: i for i, n in enumerate(nodes)}
    removed: set[int] = set()  # positions of producers merged into a later node
    i = 0
    while i < len(nodes):
        consumer = nodes[i]
        merged = None
        if consumer.kind == "vector":
            for view in consumer.sources:
                producer = producers.get(view.tensor)
                if producer is None or not producer.fusable or view.spatial or view.rows is not None \
                        or view.tile0 or view.tile is not None or view.tensor in outputs \
                        or uses[view.tensor] != 1:
                    continue
                merged = _fuse(graph, producer, consumer, view.tensor)
                if merged is not None:
                    break
        if merged is None:
            i += 1
            continue
        name = view.tensor
        producer = producers.pop(name)
        for n in node_inputs(producer) + node_inputs(consumer):
            uses[n] -= 1
        for n in node_inputs(merged):
            uses[n] = uses.get(n, 0) + 1
        del uses[name]
        producers[merged.output] = merged  # the consumer's output, now computed by the merged node
        removed.add(position.pop(name))
        nodes[i] = merged
        del graph.tensors[name]
    graph.nodes = [n for j, n in enumerate(nodes) if j not in removed]
    return graph


def _fuse(graph: Graph, producer: Node, consumer: Node, name: str) -> Node | None:
    """The merged node if `producer` (of `name`, read by `consumer` alone) may take `consumer`'s chain."""
    if [v.tensor for v in consumer.sources].count(name) != 1:
        return None
    if graph.tensors[name].rows != graph.tensors[consumer.output].rows:
        return None  # a broadcast row: computing it once is cheaper than once per consumer row
    if graph.tensors[name].geom != graph.tensors[consumer.output].geom and any(
            v.spatial for v in list(producer.sources) + [v for v, _ in producer.terms]):
        return None  # the producer's taps count pixels of its own output's geometry (Resize's strips)
    if len(producer.steps) + len(consumer.steps) > MAX_FUSED_STEPS:
        return None
    merged = _merge(producer, consumer, name)
    # fp32 graphs scale (nearly) every f16 copy (scale_fp16, tight): a matmul's chain gets the scale's MUL first
    scaled = graph.precision == "fp32" and merged.terms and not is_int8(graph, merged)
    if not fits_vxm(_prepend_scale(merged.steps, 2.0) if scaled else merged.steps):
        return None  # the delay lines of a long chain would need more ALUs than the VXM has
    read = [v.tensor for v in merged.sources] + sorted({v.tensor for v, _ in merged.terms})
    if len(read) != len(set(read)):
        return None  # one slice queue cannot stream two views of one tensor at once
    return merged


def split_tap_chains(graph: Graph) -> Graph:
    """A chain reading several taps of one tensor (a max pool) becomes one pass per tap.

    A MEM slice issues one READ a cycle, so the taps of one stored tensor cannot all stream at once; each pass
    combines the running result (another tensor, other slices) with one tap."""
    nodes = []
    for node in graph.nodes:
        tensors = [v.tensor for v in node.sources]
        if node.kind != "vector" or len(tensors) == len(set(tensors)):
            nodes.append(node)
            continue
        if any(s.op != "MAX" and s.op != "COPY" for s in node.steps) or len(set(tensors)) != 1:
            raise CompileError(f"{node.onnx_op} node '{node.name}': a chain reading one tensor twice is only "
                               f"supported for max pools")
        out = graph.tensors[node.output]
        prev = None
        for k, view in enumerate(node.sources):
            last = k == len(node.sources) - 1
            name = node.output if last else f"{node.output}.tap{k}"
            if not last:
                graph.tensors[name] = Tensor(name, out.rows, out.cols, "value", out.shape, geom=out.geom)
            if prev is None:
                nodes.append(Node("vector", node.name, f"{node.onnx_op}(tap {k})", name, sources=[view],
                                  steps=[Step("COPY", [("src", 0)])]))
            else:
                nodes.append(Node("vector", node.name, f"{node.onnx_op}(tap {k})", name, sources=[View(prev), view],
                                  steps=[Step("MAX", [("src", 0), ("src", 1)])]))
            prev = name
    graph.nodes = nodes
    return graph


def assign_formats(graph: Graph) -> Graph:
    """Storage formats per tensor; graph inputs the MXM reads get an on-chip f32 -> f16 conversion node."""
    for t in graph.tensors.values():
        t.formats = set()
    for name in graph.inputs:
        graph.tensors[name].formats.add("f32")  # the host writes inputs as f32
    for name in graph.outputs:
        graph.tensors[name].formats.add("f32")
    new_nodes = []
    converted: dict[str, str] = {}
    for node in graph.nodes:
        for v in node.sources:  # a transpose moves the copies its output needs (below); the VXM reads f32
            if node.kind != "transpose":  # (or i32: integer accumulations, lower/quant.py)
                graph.tensors[v.tensor].formats.add(vxm_format(graph.tensors[v.tensor]))
        for _, w in node.terms:  # computed weights (attention) load from their f16 copy
            if graph.tensors[w].kind == "value":
                graph.tensors[w].formats.add("f16")
        if node.kind == "matmul" and is_int8(graph, node):  # the int8 MXM path (lower/quant.py)
            if graph.tensors[node.x].kind == "input":
                raise CompileError(f"{node.onnx_op} node '{node.name}': an int8 matmul reads a graph input")
            graph.tensors[node.x].formats.add("i8")
        elif node.kind == "matmul":
            x = graph.tensors[node.x]
            if x.kind == "input":
                if node.x not in converted:
                    name = f"{node.x}.f16"
                    graph.tensors[name] = Tensor(name, x.rows, x.cols, "value", x.shape, formats={"f16"},
                                                 geom=x.geom, f16_saturate=x.f16_saturate)
                    new_nodes.append(Node("vector", node.name, "Cast(f16)", name, sources=[View(node.x)],
                                          steps=[Step("COPY", [("src", 0)])]))
                    converted[node.x] = name
                x_name = node.x  # (fp32 residual terms read values already)
                node.terms = [(dataclasses.replace(v, tensor=converted[x_name]) if v.tensor == x_name else v, w)
                              for v, w in node.terms]
            else:
                x.formats.add("f16")
            for v, _ in node.terms:  # precision="fp32": x's residual pieces (fp32_split.py)
                graph.tensors[v.tensor].formats.add("f16")
        new_nodes.append(node)
    graph.nodes = new_nodes
    for node in reversed(graph.nodes):  # a transpose moves bytes: its source is stored in its output's formats
        if node.kind == "transpose":
            graph.tensors[node.sources[0].tensor].formats |= graph.tensors[node.output].formats
    return graph


def vxm_format(t: Tensor) -> str:
    """The format the VXM reads a tensor in: i32 for integer accumulations, else f32."""
    return "i32" if t.dtype == "i32" else "f32"


def is_int8(graph: Graph, node: Node) -> bool:
    """A matmul on the int8 MXM path: its weights are int8 (LW.i8, ABC.i8, ACC.i32)."""
    return node.kind == "matmul" and any(graph.tensors[w].dtype == "i8" for _, w in node.terms)


def tap_extent(view: View, in_geom: tuple, out_geom: tuple) -> int:
    """The border an image tensor needs so `view` reads inside its storage for every output pixel."""
    _, h, w = in_geom
    _, ho, wo = out_geom
    first_h = view.dh * view.dilation - view.pad_top
    first_w = view.dw * view.dilation - view.pad_left
    last_h = (ho - 1) * view.stride + first_h
    last_w = (wo - 1) * view.stride + first_w
    return max(0, -first_h, -first_w, last_h - (h - 1), last_w - (w - 1))


def assign_borders(graph: Graph) -> Graph:
    """Border width and value of every image tensor read through spatial taps."""
    values: dict[str, set] = {}
    for node in graph.nodes:
        geom = out_geom(graph.tensors[node.output])
        views = [v for v, _ in node.terms] + list(node.sources)
        for v in views:
            if not v.spatial:
                continue
            t = graph.tensors[v.tensor]
            need = tap_extent(v, t.geom, geom)
            t.pad = max(t.pad, need)
            if need:
                values.setdefault(v.tensor, set()).add(_pad_value(node, v, t))
    for name, vals in values.items():
        if len(vals) > 1:
            raise CompileError(f"tensor '{name}' is read with zero padding (a convolution) and with -inf padding "
                               f"(a max pool); storing it twice is not supported yet")
        graph.tensors[name].pad_value = vals.pop()
    return graph


def _pad_value(node: Node, view: View, t: Tensor) -> float:
    return float("-inf") if "MaxPool" in node.onnx_op and view in node.sources else t.conv_pad


def scale_fp16(graph: Graph) -> Graph:
    """Power-of-two scales for fp16 copies and weights that would leave fp16's range (calibrate.py).

    A tensor's f16 copy holds value * 2^-k and a matmul's weights w * 2^-j; the matmul's epilogue starts by
    multiplying the f32 accumulator by 2^(k + j), which is exact, so results are unchanged wherever nothing
    overflowed before."""

    casts = {n.output: n for n in graph.nodes if n.onnx_op == "Cast(f16)"}
    tight = graph.precision == "fp32"  # residual pieces must stay normal fp16 numbers (fp32_split.py)

    def magnitude(name):
        t = graph.tensors[name]
        onnx_name = graph.origin.get(name)
        if onnx_name is None and graph.nodes:  # an input's on-chip f16 conversion holds the input itself
            conv = casts.get(name)
            if conv is not None:
                onnx_name = graph.origin.get(conv.sources[0].tensor)
        if name in graph.derived:  # e.g. a running maximum: as large as what it scans
            return graph.derived[name]
        if onnx_name is None:
            return 0.0
        return graph.magnitudes.get(onnx_name, 0.0) if t.kind != "const" else 0.0

    for name, t in graph.tensors.items():
        if "f16" in t.formats and t.kind == "value":
            t.f16_exp = scale_exponent(magnitude(name), tight)
    for node in graph.nodes:  # terms of several tensors sum in one accumulator: one scale for their activations
        if node.kind == "matmul" and len({v.tensor for v, _ in node.terms}) > 1 and not tight:  # (and weights)
            for names in ({v.tensor for v, _ in node.terms}, {w for _, w in node.terms}):
                top = max(graph.tensors[n].f16_exp for n in names)
                for n in names:
                    if graph.tensors[n].kind == "value":
                        graph.tensors[n].f16_exp = top
    for node in graph.nodes:  # a transpose moves the f16 bytes as they are: its output keeps the scale
        if node.kind == "transpose":
            graph.tensors[node.output].f16_exp = graph.tensors[node.sources[0].tensor].f16_exp
    for node in graph.nodes:
        if node.kind != "matmul" or is_int8(graph, node):  # int8 codes and weights need no scaling
            continue
        computed = [w for _, w in node.terms if graph.tensors[w].kind == "value"]
        if computed:
            # (fp32 graphs: residual pieces take their tensor's scale later, fp32_split.split_weights)
            scales = {graph.tensors[v.tensor].f16_exp + graph.tensors[w].f16_exp for v, w in node.terms} \
                if not tight else {graph.tensors[node.x].f16_exp + graph.tensors[computed[0]].f16_exp}
            if len(scales) != 1:
                raise CompileError(f"{node.onnx_op} node '{node.name}': its terms' fp16 copies are scaled "
                                   f"differently ({sorted(scales)}); one accumulator cannot undo both")
            k = scales.pop()
            if k:
                node.steps = _prepend_scale(node.steps, float(2.0 ** k))
            continue
        weights = {w for _, w in node.terms}
        exact = tight and all(fp16_exact(graph.tensors[w].data) for w in weights)  # 0/1 matrices: no w1 piece
        j = scale_exponent(max(_largest_magnitude(graph.tensors[w].data) for w in weights), tight and not exact)
        if j:
            renamed = {}
            for w in weights:  # a scaled copy per matmul: weights may be shared by matmuls of other scales
                t = graph.tensors[w]
                name = f"{w}.x2^{-j}"
                graph.tensors[name] = dataclasses.replace(t, name=name, data=(t.data * np.float32(2.0 ** -j)))
                renamed[w] = name
            node.terms = [(v, renamed[w]) for v, w in node.terms]
        k = graph.tensors[node.x].f16_exp + j
        if k:
            node.steps = _prepend_scale(node.steps, float(2.0 ** k))
    used = {w for node in graph.nodes for _, w in node.terms}
    for name in [n for n, t in graph.tensors.items() if t.kind == "const" and ".x2^" in n and n not in used]:
        del graph.tensors[name]
    return graph


def fp16_exact(data: np.ndarray) -> bool:
    """Whether fp16 holds every value of a constant exactly (precision="fp32" then needs no w1 piece of it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.array_equal(data.astype(np.float16).astype(np.float32), data))


def _largest_magnitude(data: np.ndarray) -> float:
    """max |x| over `data` (0.0 if empty), without an array of absolute values."""
    if data.dtype.kind != "f" or not data.size:
        return float(abs(data).max(initial=0.0))
    hi, lo = float(data.max()), float(data.min())
    if not (np.isfinite(hi) and np.isfinite(lo)):  # (a NaN makes both NaN)
        return float(abs(data).max(initial=0.0))
    return max(abs(hi), abs(lo))


def _prepend_scale(steps: list[Step], factor: float) -> list[Step]:
    """MUL(acc, factor) as step 0, every use of the accumulator reading it instead."""
    out = [Step("MUL", [("acc",), ("imm", factor)])]
    for s in steps:
        out.append(Step(s.op, [("step", 0) if a[0] == "acc" else ("step", a[1] + 1) if a[0] == "step" else a
                               for a in s.args], s.t))
    return out


# VXM operations that turn the zeros of a tensor's padding lanes (past its last column, up to the 320-lane tile)
# into inf or NaN: log(0), 1/0, 0/0, 1/sqrt(0).
_UNSAFE_ON_ZERO = {"LOG", "RCP", "DIV", "RSQRT"}
LANES = 320


def mask_padding_lanes(graph: Graph) -> Graph:
    """Clear the padding lanes of f16 copies that may hold inf or NaN there.

    The MXM multiplies all 320 lanes of an activation by the weight rows, the rows past the tensor's columns
    being zero; an inf or NaN in a padding lane makes the whole result NaN (inf * 0). A tensor whose chain (or a
    source) may leave inf/NaN in its padding lanes gets a last step `AND.i32` with a constant whose valid lanes
    are all ones and whose padding lanes are zero, which clears any bit pattern."""
    bad: set[str] = set()
    masks: dict[int, str] = {}
    for node in graph.nodes:
        out = graph.tensors[node.output]
        if node.kind == "transpose":
            continue
        if any(s.op in _UNSAFE_ON_ZERO for s in node.steps) or any(v.tensor in bad for v in node.sources):
            bad.add(node.output)
        if node.output not in bad or "f16" not in out.formats or out.cols % LANES == 0 or out.dtype != "f32":
            continue
        if out.cols not in masks:
            name = f"lanes{out.cols}"
            graph.tensors[name] = Tensor(name, 1, out.cols, "const", (1, out.cols),
                                         data=np.full((1, out.cols), -1.0, dtype=np.float32), formats={"i32"},
                                         dtype="i32")
            masks[out.cols] = name
        node.sources.append(View(masks[out.cols]))
        steps = node.steps or [Step("COPY", [("acc",)])]
        steps.append(Step("AND", [("step", len(steps) - 1), ("src", len(node.sources) - 1)], t="i32"))
        steps.append(Step("COPY", [("step", len(steps) - 1)]))  # the bits are an f32 again (not an integer)
        node.steps = steps
        bad.discard(node.output)
    return graph
