"""Ops of the real-models issue's list that other files only reach through whole models or the ONNX backend suite
(whose expected outputs come from onnx's reference, not onnxruntime): each here against onnxruntime directly."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(23)
F = TensorProto.FLOAT


def _x(shape, low=-3.0, high=3.0):
    return {"x": RNG.uniform(low, high, shape).astype(np.float32)}


@pytest.mark.parametrize("op, attrs, low", [("Reciprocal", {}, 0.5), ("Erf", {}, -3.0),
                                            ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, -3.0)])
def test_unary(op, attrs, low):
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node(op, ["h"], ["y"], **attrs)],
                   {"w": np.eye(12, dtype=np.float32) * 1.5}, {"x": [5, 12]})
    assert_matches_onnxruntime(m, _x((5, 12), low, 3.0))


def test_min_of_three_with_a_row_broadcast():
    m = make_model([helper.make_node("Min", ["x", "b", "c"], ["y"])],
                   {"b": RNG.standard_normal((1, 16)).astype(np.float32), "c": np.float32(0.25)}, {"x": [6, 16]})
    assert_matches_onnxruntime(m, _x((6, 16)))


def test_equal_and_not_as_a_mask():
    # Equal of rounded values, Not of it, then back to float by Cast: 1.0/0.0 booleans on the VXM
    nodes = [helper.make_node("Floor", ["x"], ["f"]), helper.make_node("Equal", ["f", "k"], ["e"]),
             helper.make_node("Not", ["e"], ["n"]), helper.make_node("Cast", ["n"], ["c"], to=F),
             helper.make_node("Mul", ["x", "c"], ["y"])]
    m = make_model(nodes, {"k": np.float32(1.0)}, {"x": [4, 10]})
    x = _x((4, 10))
    assert_matches_onnxruntime(m, x)
    assert 0 < (np.floor(x["x"]) == 1.0).sum() < x["x"].size  # both branches of the mask are taken


def test_unsqueeze_then_squeeze_around_a_matmul():
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]), helper.make_node("MatMul", ["u", "w"], ["m"]),
             helper.make_node("Squeeze", ["m", "ax"], ["y"])]
    m = make_model(nodes, {"ax": np.array([0], dtype=np.int64), "w": RNG.standard_normal((8, 6)).astype(np.float32)},
                   {"x": [3, 8]})
    assert_matches_onnxruntime(m, _x((3, 8)))


def test_constant_of_shape_from_a_shape():
    # Shape is static, so ConstantOfShape folds to a constant the chip adds
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["c"],
                              value=helper.make_tensor("v", F, [1], [0.75])),
             helper.make_node("Add", ["x", "c"], ["y"])]
    m = make_model(nodes, {}, {"x": [4, 7]})
    assert_matches_onnxruntime(m, _x((4, 7)))
