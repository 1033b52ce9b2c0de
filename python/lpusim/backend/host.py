"""Outputs the host knows without the chip: those computed from constants, bound parameters and input shapes only
(Shape of an input, ConstantOfShape, a Constant, Size, ...). The backend returns them as ONNX defines them,
evaluated by onnx's reference evaluator, and simulates only the rest: a program with no chip work is refused by
the compiler, and such an output needs none.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.reference

# ops whose output depends on the shape of their (first) input, never its values: host-known for a run
_SHAPE_ONLY = {"Shape": (0,), "Size": (0,)}


def host_known(model: onnx.ModelProto, runtime_inputs) -> set[str]:
    """The value names computed from constants, bound inputs and shapes only: everything not reached from a
    run-time graph input (`runtime_inputs`) through an operand whose values matter. (The caller leaves zero-size
    inputs out of `runtime_inputs`: they have a shape and no values, so what is computed from them alone, a
    reduction over an empty set, is known from shapes too; the chip has no zero-size tensors.)"""
    dynamic = set(runtime_inputs)
    known = set()
    for init in model.graph.initializer:
        known.add(init.name)
    for node in model.graph.node:
        skip = _SHAPE_ONLY.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
        reads = [n for pos, n in enumerate(node.input) if n and pos not in skip]
        subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if subgraph or any(n in dynamic for n in reads):  # (a subgraph may read anything: treat it as dynamic)
            dynamic.update(o for o in node.output if o)
        else:
            known.update(o for o in node.output if o)
    return known - dynamic


def host_outputs(model: onnx.ModelProto, wanted: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The values of the host-known outputs `wanted`, by onnx's reference evaluator on the nodes they need (the
    inputs a Shape reads are among `feeds`)."""
    need, nodes = set(wanted), []
    for node in reversed(model.graph.node):
        if any(o in need for o in node.output):
            nodes.append(node)
            need.update(n for n in node.input if n)
    graph = model.graph
    inputs = [i for i in graph.input if i.name in need]
    sub = onnx.helper.make_graph(list(reversed(nodes)), "host", inputs,
                                 [o for o in graph.output if o.name in wanted],
                                 [t for t in graph.initializer if t.name in need])
    sub_model = onnx.helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version,
                                       functions=model.functions)
    values = onnx.reference.ReferenceEvaluator(sub_model).run(wanted, {i.name: feeds[i.name] for i in inputs
                                                                       if i.name in feeds})
    return {name: np.asarray(v) for name, v in zip(wanted, values)}
