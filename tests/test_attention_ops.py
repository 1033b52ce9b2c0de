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
