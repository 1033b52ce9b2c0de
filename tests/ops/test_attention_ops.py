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
