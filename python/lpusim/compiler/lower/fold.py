"""Host-side constant folding: an ONNX node whose inputs are all constants is evaluated by the ONNX project's
reference evaluator (exact ONNX semantics), or onnxruntime where the evaluator has gaps.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.reference  # the ONNX project's own evaluator: exact ONNX semantics for folding
from onnx import numpy_helper

from lpusim.errors import CompileError


def fold(lw, node, op, a, xs):
    """The value of `node` (op type `op`, attributes `a`) on the constant inputs `xs` (None where absent)."""
    return fold_outputs(lw, node, op, a, xs)[0]


def fold_outputs(lw, node, op, a, xs) -> list:
    """The values of all of `node`'s outputs (Unique's four, TopK's two), as `fold`."""
    renamed = onnx.helper.make_node(op, [f"c{i}" if x is not None else "" for i, x in enumerate(xs)],
                                    list(node.output), domain=node.domain, **a)
    graph = onnx.helper.make_graph([renamed], "fold", [], [onnx.helper.make_tensor_value_info(
        o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
        initializer=[numpy_helper.from_array(np.asarray(x), f"c{i}") for i, x in enumerate(xs) if x is not None])
    opset = [o for o in lw.model.opset_import if o.domain in ("", "ai.onnx")]
    model = onnx.helper.make_model(graph, opset_imports=opset)
    try:
        evaluator = onnx.reference.ReferenceEvaluator(model)
        return [np.asarray(v) for v in evaluator.run(None, {})]
    except Exception as e:
        first = e
    try:  # the reference evaluator has gaps (GatherElements with a longer data axis): onnxruntime
        import onnxruntime as ort  # (deferred: a heavy import, only for the reference evaluator's gaps)
        feeds = {f"c{i}": np.asarray(x) for i, x in enumerate(xs) if x is not None}
        inputs = [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                  for k, v in feeds.items()]
        typed = onnx.helper.make_model(onnx.helper.make_graph([renamed], "fold", inputs, []),
                                       opset_imports=opset)
        typed.ir_version = min(typed.ir_version, 10)
        typed = onnx.shape_inference.infer_shapes(typed, strict_mode=True)
        infos = {vi.name: vi for vi in typed.graph.value_info}
        names = [o for o in node.output if o in infos]
        typed.graph.output.extend(infos[o] for o in names)
        session = ort.InferenceSession(typed.SerializeToString(), providers=["CPUExecutionProvider"])
        got = dict(zip(names, session.run(names, feeds)))
        if node.output[0] not in got:
            raise RuntimeError(f"no type for '{node.output[0]}'")
        return [np.asarray(got[o]) if o in got else None for o in node.output]
    except Exception:
        raise CompileError(f"{lw.where(node)}: folding constant {op} failed: {first}") from None
