"""Image borders past the first 320-lane column tile hold their pad value (-inf for max pools, the zero point's
code for int8 convolutions: tests/ops/test_int8.py), not 0."""
import numpy as np
from onnx import TensorProto, helper

import lpusim
from lpusim.check.compare import run_onnxruntime


def test_max_pool_of_negative_values_past_one_lane_tile():
    """A padded MaxPool of a computed 384-channel tensor of negative values: the border must read -inf in the
    second column tile too (it read 0 there, so border outputs of channels 320.. came out 0)."""
    nodes = [helper.make_node("Neg", ["input"], ["n"]),
             helper.make_node("MaxPool", ["n"], ["out"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "mp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 384, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 384, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    program = lpusim.compile(model)
    x = {"input": np.abs(np.random.default_rng(0).standard_normal((1, 384, 8, 8))).astype(np.float32) + 1}
    result = program.run(x)
    ref, _ = run_onnxruntime(model, x)
    np.testing.assert_array_equal(result.outputs["out"], ref["out"])  # a max selects an input (f32 on the VXM): exact
