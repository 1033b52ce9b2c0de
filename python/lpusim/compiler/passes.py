"""IR -> IR passes: fuse VXM chains into their producers, then decide each tensor's storage formats.

Fusion keeps intermediate results on the streams instead of writing them to MEM and reading them back: a vector
node whose source is produced by a single-use vector or matmul node is merged into it (the merged chain runs on
the VXM as the matmul's epilogue). Legalisation then decides which formats each tensor is stored in: f16 where the
MXM reads it, f32 where the VXM reads it or the host reads it back.
"""
from __future__ import annotations

from lpusim.compiler.ir import Graph, Node, Step

# A chain may use at most this many ALUs before scheduling adds delays and conversions (the VXM has 16).
MAX_FUSED_STEPS = 10


def _remap(arg, src_map, producer_result):
    kind = arg[0]
    if kind == "src":
        return src_map[arg[1]]
    return arg


def _merge(producer: Node, consumer: Node, tensor: str) -> Node:
    """The consumer's chain appended to the producer's, with `tensor` (the producer's output) wired through."""
    sources = list(producer.sources)
    steps = [Step(s.op, list(s.args)) for s in producer.steps]
    if steps:
        result = ("step", len(steps) - 1)
    elif producer.kind == "matmul":
        result = ("acc",)
    else:  # a vector node always has steps (validated)
        raise AssertionError("vector node without steps")
    src_map = {}
    for i, name in enumerate(consumer.sources):
        if name == tensor:
            src_map[i] = result
        else:
            if name not in sources:
                sources.append(name)
            src_map[i] = ("src", sources.index(name))
    offset = len(steps)
    for s in consumer.steps:
        args = []
        for a in s.args:
            if a[0] == "step":
                args.append(("step", a[1] + offset))
            else:
                args.append(_remap(a, src_map, result))
        steps.append(Step(s.op, args))
    return Node(producer.kind, consumer.name, f"{producer.onnx_op}+{consumer.onnx_op}", consumer.output,
                sources=sources, steps=steps, x=producer.x, w=producer.w)


def fuse_chains(graph: Graph) -> Graph:
    changed = True
    while changed:
        changed = False
        producers = {n.output: n for n in graph.nodes}
        uses = graph.consumers()
        for consumer in graph.nodes:
            if consumer.kind != "vector":
                continue
            for name in consumer.sources:
                producer = producers.get(name)
                if producer is None or name in graph.outputs or len(uses[name]) != 1:
                    continue
                if consumer.sources.count(name) != 1:
                    continue
                if len(producer.steps) + len(consumer.steps) > MAX_FUSED_STEPS:
                    continue
                merged = _merge(producer, consumer, name)
                nodes = [n for n in graph.nodes if n is not producer]
                nodes[nodes.index(consumer)] = merged
                graph.nodes = nodes
                del graph.tensors[name]
                changed = True
                break
            if changed:
                break
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
    converted = {}
    for node in graph.nodes:
        for s in node.sources:
            graph.tensors[s].formats.add("f32")
        if node.kind == "matmul":
            x = graph.tensors[node.x]
            if x.kind == "input":
                if node.x not in converted:
                    name = f"{node.x}.f16"
                    graph.tensors[name] = type(x)(name, x.rows, x.cols, "value", x.shape, formats={"f16"})
                    new_nodes.append(Node("vector", node.name, "Cast(f16)", name, sources=[node.x],
                                          steps=[Step("COPY", [("src", 0)])]))
                    converted[node.x] = name
                node.x = converted[node.x]
            else:
                graph.tensors[node.x].formats.add("f16")
        new_nodes.append(node)
    graph.nodes = new_nodes
    return graph
