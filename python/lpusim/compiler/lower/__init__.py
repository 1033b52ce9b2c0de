"""ONNX -> IR: load and check the model, resolve shapes, fold constants, lower each node to matmul/vector nodes.

Everything that depends on constants alone is folded on the host (numpy, float32). Everything else becomes chip
work; an op with no chip lowering yet is a CompileError naming the node and its op type.

`import_onnx` is the entry point. The lowering's state is one `state.LowerState`; dispatch.py routes each node
(int8 forms, views, then table.py: op type -> lowering function); one module per op family (elementwise, matmul,
conv_pool, spatial_nd, reduce, norms, shape_ops, transpose, gather, index, resize, attention, quant*) over shared
helpers (lanes.py: lane primitives, rows.py: row moves, fold.py: host-side folding).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from lpusim.compiler.frontend.load import HOST_TYPES, resolve_input_shapes
from lpusim.compiler.ir import Graph, Node, Step, View, node_inputs
from lpusim.compiler.lower.attention import heads_output
from lpusim.compiler.lower.attention_lanes import materialize_heads
from lpusim.compiler.lower.attention_masks import flatrows_output
from lpusim.compiler.lower.dispatch import lower
from lpusim.compiler.lower.state import LowerState
from lpusim.errors import CompileError


def run(lw: LowerState) -> None:
    g = lw.model.graph
    for init in g.initializer:
        lw.consts[init.name] = numpy_helper.to_array(init)
    for name, shape in lw.input_shapes.items():
        lw.inputs.append(lw.add_tensor(name, shape, "input", onnx_input=name))
        lw.values[name] = (name, shape)
    for node in g.node:
        lw.lower(node)


def finish(lw: LowerState) -> Graph:
    outputs, names = [], []
    for o in lw.model.graph.output:
        if o.name in lw.consts:
            raise CompileError(f"output '{o.name}' is a constant; nothing to run on the chip")
        if o.name not in lw.values and o.name in lw.heads:  # a decoder's present keys/values
            materialize_heads(lw, o.name)  # (a lane split's parts, attention_lanes.py)
            before = len(lw.nodes)
            heads_output(lw, o.name)
            # its nodes go right after the last node they read, not after the whole graph: a layer's present is
            # then written within the layer (a pipeline cut after the layer keeps its KV cache on one chip)
            added = lw.nodes[before:]
            del lw.nodes[before:]
            for node in added:
                made = {n.output: i for i, n in enumerate(lw.nodes)}
                lw.nodes.insert(max((made[t] + 1 for t in node_inputs(node) if t in made), default=0), node)
        if o.name not in lw.values and o.name in lw.flatrows:  # a matrix Reshaped to a column: never moved yet
            flatrows_output(lw, o.name)
        if o.name not in lw.values:
            raise CompileError(f"output '{o.name}' is not produced by any node")
        ir_name, shape = lw.q_state.get("outputs", {}).get(o.name) or lw.values[o.name]  # int8/uint8 codes
        # a view of an input, or the tensor of an earlier output (a view of it in another shape, a reduction of
        # one element): the chip copies it, so that each output has its own tensor and shape
        if lw.tensors[ir_name].kind == "input" or ir_name in outputs:
            copy = lw.add_tensor(lw.fresh(o.name), shape, "value")
            lw.nodes.append(Node("vector", o.name, "Identity", copy, sources=[View(ir_name)],
                                 steps=[Step("COPY", [("src", 0)])]))
            ir_name = copy
        lw.tensors[ir_name].shape = tuple(shape)
        outputs.append(ir_name)
        names.append(o.name)
    used = {name for node in lw.nodes for name in node_inputs(node)}
    inputs = [name for name in lw.inputs if name in used]  # e.g. an image read only as host patches
    origin = {ir_name: onnx_name for onnx_name, (ir_name, _) in lw.values.items()}
    return Graph(lw.tensors, lw.nodes, inputs, outputs, names, dict(lw.input_shapes), origin,
                 derived=lw.derived)


def import_onnx(model: onnx.ModelProto, shapes: dict | None = None, magnitudes: dict | None = None,
                precision: str = "fp16", fused_resize: bool = True) -> Graph:
    """`magnitudes` (calibrate.py): max |value| per ONNX tensor, for the lowerings and the fp16 scales.
    `precision="fp32"`: the graph's fp16 MXM operands are split into pieces by the fp32_split passes; a quantised
    model keeps its own float32 handling (`precise_sums`) and is marked fp16."""
    lowering = LowerState(model, resolve_input_shapes(model, shapes), magnitudes or {}, lower)
    lowering.fp32 = precision == "fp32" and not lowering.precise_sums
    lowering.fused_resize = fused_resize
    run(lowering)
    graph = finish(lowering)
    graph.precision = "fp32" if lowering.fp32 else "fp16"
    graph.quantized = lowering.precise_sums
    graph.magnitudes = dict(magnitudes or {})
    # bool/integer inputs (converted on the host, `host_input`) and integer outputs (`decode_output`)
    graph.input_kinds = {k: v for k, v in lowering.kinds.items() if k in graph.onnx_inputs}
    graph.output_types = {}
    for o in model.graph.output:
        elem = o.type.tensor_type.elem_type
        if elem in HOST_TYPES and elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL):
            graph.output_types[o.name] = np.dtype(HOST_TYPES[elem])
    return graph
