"""Helpers the op tests share: build a one-graph ONNX model, compile, simulate, compare with onnxruntime."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lpusim
from lpusim.check.compare import compare, run_onnxruntime


def make_model(nodes, inits, inputs, opset=17, outputs=("y",)):
    """`inputs`: {name: shape} (float32); `inits`: {name: array}; outputs are float32 of inferred shape."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def assert_matches_onnxruntime(m, inputs=None, seed=0, **compile_kw):
    """Compile and simulate `m`; the cycles must equal the prediction and the outputs match onnxruntime."""
    program = lpusim.compile(m, **compile_kw)
    x = inputs if inputs is not None else program.random_inputs(seed)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    ref, _ = run_onnxruntime(m, x)
    cmp = compare(result.outputs, ref)
    assert cmp["outputs_match"], cmp
    timing = program.run(x, timing_only=True)
    assert timing.cycles == result.cycles
    return program, result, cmp
