"""split_pool_phases (compiler/pool_phases.py): a strided max pool over a convolution on host patches reads the
convolution's output by phase. Compared with onnxruntime (fp16 and int8) and checked that the pass applied."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpusim
from lpusim.check.compare import compare, run_onnxruntime
from lpusim.compiler import build_graph, pool_phases

RNG = np.random.default_rng(3)


def stem(x_shape, conv_kw, pool_kw, bn=True):
    cout, cin, k = 8, x_shape[1], conv_kw.pop("k")
    inits = {"w": (RNG.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32),
             "b": (RNG.standard_normal(cout) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **conv_kw)]
    last = "c"
    if bn:
        for name, v in (("s", 1.0 + 0.1 * RNG.standard_normal(cout)), ("o", 0.1 * RNG.standard_normal(cout)),
                        ("m", 0.1 * RNG.standard_normal(cout)), ("v", 1.0 + 0.1 * RNG.random(cout))):
            inits[name] = v.astype(np.float32)
        nodes.append(helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["n"]))
        last = "n"
    nodes += [helper.make_node("Relu", [last], ["r"]), helper.make_node("MaxPool", ["r"], ["y"], **pool_kw)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


CASES = {  # conv output 15 x 15 (phases of 8 and 7 rows), a ResNet stem's shape at small size
    "resnet_stem": ([1, 3, 30, 30], dict(k=7, strides=[2, 2], pads=[3, 3, 3, 3]),
                    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "pool2x2_batch2": ([2, 3, 9, 10], dict(k=3, pads=[1, 1, 1, 1]), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "pool3x3_ceil": ([1, 4, 13, 11], dict(k=3, pads=[1, 1, 1, 1]),
                     dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_phased_pool_matches_onnxruntime(name, precision, monkeypatch):
    monkeypatch.setattr(pool_phases, "MIN_POOL_ROWS", 0)  # small pools, so the test runs fast
    x_shape, conv_kw, pool_kw = CASES[name]
    m = stem(x_shape, dict(conv_kw), pool_kw)
    _, graph = build_graph(m, precision)
    ops = [n.onnx_op for n in graph.nodes if "MaxPool" in n.onnx_op]
    assert ops and all(op.startswith("MaxPool(phases)") for op in ops), ops
    x = {"x": RNG.standard_normal(x_shape).astype(np.float32)}
    program = lpusim.compile(m, precision=precision)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    if precision == "fp16":
        ref, _ = run_onnxruntime(m, x)
        cmp = compare(result.outputs, ref)
        assert cmp["outputs_match"], cmp
    else:  # the phased program against the one without the pass: the same values bit for bit
        import lpusim.compiler as compiler
        saved = list(compiler.PASSES)
        try:
            compiler.PASSES[:] = [p for p in saved if p[0] != "split_pool_phases"]
            plain = lpusim.compile(m, precision=precision).run(x)
        finally:
            compiler.PASSES[:] = saved
        for k in plain.outputs:
            np.testing.assert_array_equal(result.outputs[k], plain.outputs[k])


def test_small_pool_keeps_its_taps():
    """Below MIN_POOL_ROWS output rows the phase chains' overheads outweigh the passes saved."""
    x_shape, conv_kw, pool_kw = CASES["resnet_stem"]
    _, graph = build_graph(stem(x_shape, dict(conv_kw), pool_kw), "fp16")
    assert not any(n.onnx_op.startswith("MaxPool(phases)") for n in graph.nodes)


def test_pool_reading_a_computed_tensor_keeps_its_taps(monkeypatch):
    """A pool whose input is not made from host patches (the second pool of a network) is left alone."""
    monkeypatch.setattr(pool_phases, "MIN_POOL_ROWS", 0)
    x_shape, conv_kw, pool_kw = CASES["pool2x2_batch2"]
    m = stem(x_shape, dict(conv_kw), pool_kw)
    m.graph.node.insert(0, helper.make_node("Relu", ["x"], ["x0"]))
    m.graph.node[1].input[0] = "x0"
    _, graph = build_graph(m, "fp16")
    assert not any(n.onnx_op.startswith("MaxPool(phases)") for n in graph.nodes)
