"""Convolution, pooling, batch norm and residual sums: compiled, simulated, compared with onnxruntime (fp16 path)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpusim
from lpusim.check.compare import compare, run_onnxruntime

RNG = np.random.default_rng(0)


def weights(*shape, scale=None):
    a = RNG.standard_normal(shape).astype(np.float32)
    return (a * (scale if scale is not None else 1 / np.sqrt(np.prod(shape[1:])))).astype(np.float32)


def model(nodes, inits, x_shape, opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def conv(inp, out, w, **kw):
    return helper.make_node("Conv", [inp, w] + ([kw.pop("bias")] if "bias" in kw else []), [out], name=out, **kw)


CASES = {
    "conv3x3_pad1_bias": (model([conv("x", "y", "w", bias="b", pads=[1, 1, 1, 1])],
                                {"w": weights(8, 3, 3, 3), "b": weights(8, scale=0.1)}, [1, 3, 10, 12])),
    "conv7x7_stride2": (model([conv("x", "y", "w", pads=[3, 3, 3, 3], strides=[2, 2])],
                              {"w": weights(16, 3, 7, 7)}, [1, 3, 20, 20])),
    "conv_asymmetric_pads_dilation": (model([conv("x", "y", "w", pads=[2, 0, 1, 2], dilations=[2, 2])],
                                            {"w": weights(5, 4, 3, 3)}, [1, 4, 9, 11])),
    "conv_same_upper": (model([conv("x", "y", "w", auto_pad="SAME_UPPER", strides=[2, 2])],
                              {"w": weights(6, 2, 3, 3)}, [1, 2, 9, 8])),
    "depthwise_batch2": (model([conv("x", "y", "w", pads=[1, 1, 1, 1], group=8)],
                               {"w": weights(8, 1, 3, 3)}, [2, 8, 9, 9])),
    "grouped": (model([conv("x", "y", "w", group=2)], {"w": weights(6, 2, 1, 1)}, [1, 4, 5, 5])),
    "conv_wide_channels": (model([conv("x", "y", "w", pads=[1, 1, 1, 1])],
                                 {"w": weights(330, 340, 3, 3)}, [1, 340, 4, 4])),
    "maxpool3x3_s2": (model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                              strides=[2, 2])], {}, [1, 5, 11, 11])),
    "maxpool_ceil": (model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                                             ceil_mode=1)], {}, [1, 3, 7, 7])),
    "avgpool_include_pad": (model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                                    pads=[1, 1, 1, 1], count_include_pad=1)], {}, [1, 4, 6, 6])),
    "global_average_pool": (model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], {}, [2, 7, 5, 6])),
    "global_max_pool": (model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], {}, [1, 7, 3, 4])),
    "conv_bn_relu_conv_sum": (model([
        conv("x", "c", "w", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        conv("r", "c2", "w2"),
        helper.make_node("Sum", ["c2", "r"], ["y"])],
        {"w": weights(6, 4, 3, 3), "w2": weights(6, 6, 1, 1), "s": np.abs(weights(6, scale=1)) + 0.5,
         "bb": weights(6, scale=0.1), "m": weights(6, scale=0.1), "v": np.abs(weights(6, scale=1)) + 0.5},
        [1, 4, 8, 8])),
    "conv_clip_relu6": (model([conv("x", "c", "w", pads=[1, 1, 1, 1]),
                               helper.make_node("Clip", ["c", "lo", "hi"], ["y"])],
                              {"w": weights(4, 3, 3, 3), "lo": np.float32(0.0), "hi": np.float32(0.5)},
                              [1, 3, 6, 6])),
    "flatten_into_gemm": (model([conv("x", "c", "w"), helper.make_node("Flatten", ["c"], ["f"]),
                                 helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)],
                                {"w": weights(5, 3, 1, 1), "fw": weights(10, 80), "fb": weights(10, scale=0.1)},
                                [2, 3, 4, 4])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cnn_op_matches_onnxruntime(name):
    m = CASES[name]
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    x = {"x": RNG.standard_normal(shape).astype(np.float32)}
    program = lpusim.compile(m)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    ref, _ = run_onnxruntime(m, x)
    cmp = compare(result.outputs, ref)
    assert cmp["outputs_match"], cmp


@pytest.mark.parametrize("kw", [dict(), dict(blocks=3), dict(batch=2, size=48, width=32, blocks=3),
                                dict(blocks=4, size=64, width=24)], ids=str)
def test_mini_resnet_matches_onnxruntime(kw):
    """Whole networks: stem, max pool, bottlenecks with projection shortcuts, pooling, classifier. Deep enough
    that tensors' SRAM is reused after their last reader (a bug there shows up as wrong values)."""
    from lpusim.models import mini_resnet

    m = mini_resnet(**kw)
    program = lpusim.compile(m)
    x = program.random_inputs(1)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    ref, _ = run_onnxruntime(m, x)
    cmp = compare(result.outputs, ref)
    assert cmp["outputs_match"], cmp
