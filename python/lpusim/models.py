"""Small models built in code (no downloads): the demo MLP and the random shapes the tests sweep."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp(sizes=(784, 300, 10), batch: int = 1, seed: int = 0, activation: str = "Relu", use_gemm: bool = True,
        opset: int = 17) -> onnx.ModelProto:
    """A multi-layer perceptron `sizes[0] -> ... -> sizes[-1]` with `activation` between layers.

    Weights are Kaiming-scaled normal values from `seed`, so activations stay O(1) through the layers. With
    `use_gemm` each layer is one Gemm (as torch exports nn.Linear); otherwise MatMul followed by Add."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((k, n)) * np.sqrt(2.0 / k)).astype(np.float32)
        b = (rng.standard_normal(n) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        y = f"fc{i}"
        if use_gemm:
            nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [y], name=f"fc{i}"))
        else:
            nodes.append(helper.make_node("MatMul", [x, f"fc{i}.weight"], [y + ".mm"], name=f"fc{i}.matmul"))
            nodes.append(helper.make_node("Add", [y + ".mm", f"fc{i}.bias"], [y], name=f"fc{i}.add"))
        x = y
        if i < len(sizes) - 2 and activation:
            nodes.append(helper.make_node(activation, [x], [f"act{i}"], name=f"act{i}"))
            x = f"act{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [batch, sizes[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lpusim")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
