"""Matmuls of two computed matrices: the SXM/MEM transpose (skew, gather, unskew) and computed MXM weights."""
import numpy as np
import pytest
from onnx import helper

from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(21)


def w(*shape):
    return (RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


@pytest.mark.parametrize("s,d", [(8, 4), (128, 64), (320, 320), (37, 300)])
def test_transpose_of_computed_matrix(s, d):
    m = make_model([helper.make_node("MatMul", ["x", "wq"], ["q"]),
                    helper.make_node("Transpose", ["q"], ["y"], perm=[1, 0])], {"wq": w(d, d)}, {"x": [s, d]})
    assert_matches_onnxruntime(m)


def test_scores_q_kt_and_probs_v():
    s, d = 16, 8
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
             helper.make_node("MatMul", ["q", "kt"], ["sc"]), helper.make_node("Softmax", ["sc"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    m = make_model(nodes, {"wq": w(d, d), "wk": w(d, d), "wv": w(d, d)}, {"x": [s, d]})
    assert_matches_onnxruntime(m)


@pytest.mark.parametrize("kw", [dict(layers=1, hidden=32, heads=2, seq=8), dict(layers=2, hidden=64, heads=4, seq=16)])
def test_bert_encoder_matches_onnxruntime(kw):
    from lpusim.models import bert_encoder
    program, result, cmp = assert_matches_onnxruntime(bert_encoder(**kw))


def masked_attention(mask: np.ndarray, s: int, hidden: int = 16, heads: int = 2):
    """Q/K/V projections, heads split by Reshape + Transpose, K^T in two Transposes, scores / sqrt(d) + `mask`
    ([B, 1, 1, S], constant), Softmax on axis 3, P @ V, heads merged: the graph torch.onnx.export writes."""
    b_, d = mask.shape[0], hidden // heads
    inits = {"wq": w(hidden, hidden), "wk": w(hidden, hidden), "wv": w(hidden, hidden),
             "split": np.array([b_, s, heads, d]), "merge": np.array([b_, s, hidden]), "mask": mask,
             "scale": np.float32(np.sqrt(d))}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"])]
    for t in "qkv":
        nodes.append(helper.make_node("Reshape", [t, "split"], [f"{t}4"]))
    nodes += [helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k4"], ["kt0"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["kt0"], ["kt"], perm=[0, 1, 3, 2]),  # K^T in two steps
              helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qt", "kt"], ["sc"]), helper.make_node("Div", ["sc", "scale"], ["sd"]),
              helper.make_node("Add", ["sd", "mask"], ["sm"]), helper.make_node("Softmax", ["sm"], ["p"], axis=3),
              helper.make_node("MatMul", ["p", "vt"], ["c"]),
              helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ct", "merge"], ["y"])]
    return make_model(nodes, inits, {"x": [b_, s, hidden]})


def test_heads_with_additive_mask_and_scale():
    s = 8
    mask = np.zeros((1, 1, 1, s), np.float32)
    mask[..., -3:] = -10000.0  # padding positions
    assert_matches_onnxruntime(masked_attention(mask, s))


def test_attention_heads_as_a_graph_output_are_laid_out():
    """Heads are kept as parts; a graph output that is still split into heads ([B, heads, S, D], as a decoder's
    present keys are) is stacked and laid out as the ONNX tensor (attention.heads_output)."""
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("Reshape", ["q", "split"], ["q4"]),
             helper.make_node("Transpose", ["q4"], ["y"], perm=[0, 2, 1, 3], name="t")]
    m = make_model(nodes, {"wq": w(16, 16), "split": np.array([2, 4, 2, 8])}, {"x": [2, 4, 16]})
    assert_matches_onnxruntime(m)


def test_merged_heads_in_a_quantised_model_keep_f32():
    """In a quantised model (precise_sums) merged heads that are not only quantised (here also a graph output, as
    GPT-2's are also read by Shape nodes) are concatenated as floats: each part moves exactly (three fp16 pieces,
    shape_ops.lower_concat). The merge used to add each part's fp16 residual once more on top of that, 2^-12 of the
    value off, which moved a code of GPT-2's attention output at int8."""
    from onnx import numpy_helper
    s, heads, d = 8, 4, 16
    inits = {"split": np.array([1, s, heads, d]), "merge": np.array([1, s, heads * d]), "k": np.float32(1.5),
             "qs": np.float32(0.05), "qz": np.uint8(128), "two": np.float32(2.0)}
    nodes = [helper.make_node("Mul", ["x", "two"], ["a"]), helper.make_node("Reshape", ["a", "split"], ["x4"]),
             helper.make_node("Transpose", ["x4"], ["xt"], perm=[0, 2, 1, 3]),
             helper.make_node("Mul", ["xt", "k"], ["h"]),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["ht", "merge"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "qs", "qz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "qs", "qz"], ["z"])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", 1, [1, s, heads * d])],
                              [helper.make_tensor_value_info("y", 1, [1, s, heads * d]),
                               helper.make_tensor_value_info("z", 1, [1, s, heads * d])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    import lpusim
    x = {"x": RNG.standard_normal((1, s, heads * d)).astype(np.float32)}
    out = lpusim.compile(m).run(x).outputs
    want = 3.0 * x["x"]  # the heads split at ~22 bits (their fp16 copy and residual), merged exactly
    assert np.abs(out["y"] - want).max() <= 2.0 ** -20 * np.abs(want).max()
