"""Elementwise ops, lane moves (Concat, Slice, Split, channel shuffle), LRN: compiled, simulated, vs onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(11)


def unary(op, shape=(3, 40), **attrs):
    return make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {}, {"x": list(shape)})


def binary_const(op, c, shape=(3, 40)):
    return make_model([helper.make_node(op, ["x", "c"], ["y"])], {"c": np.asarray(c, np.float32)}, {"x": list(shape)})


def positive(op_nodes, inits=None, shape=(3, 40)):
    """x -> Abs -> +0.1 -> ops (for ops defined on positive inputs)."""
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Add", ["a", "eps"], ["p"])] + op_nodes
    return make_model(nodes, {"eps": np.float32(0.1), **(inits or {})}, {"x": list(shape)})


def image_model(nodes, inits, shape):
    return make_model(nodes, inits, {"x": list(shape)})


CASES = {
    "softplus": unary("Softplus"),
    "hardswish": unary("HardSwish"),
    "floor": unary("Floor"),
    "ceil": unary("Ceil"),
    "sqrt": positive([helper.make_node("Sqrt", ["p"], ["y"])]),
    "log": positive([helper.make_node("Log", ["p"], ["y"])]),
    "pow_2": binary_const("Pow", 2.0),
    "pow_3": binary_const("Pow", 3.0),
    "pow_1.7_positive": positive([helper.make_node("Pow", ["p", "e"], ["y"])], {"e": np.float32(1.7)}),
    "max_variadic": make_model([helper.make_node("Max", ["x", "c", "d"], ["y"])],
                               {"c": RNG.standard_normal(40).astype(np.float32), "d": np.float32(0.2)},
                               {"x": [3, 40]}),
    "where_from_compare": make_model([helper.make_node("Greater", ["x", "z"], ["m"]),
                                      helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
                                      helper.make_node("Where", ["m", "x", "n"], ["w"]),
                                      helper.make_node("Add", ["w", "mf"], ["y"])],
                                     {"z": np.float32(0.0), "n": np.float32(-3.0)}, {"x": [4, 33]}),
    "concat_lanes_3": make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["x"], ["n"]),
                                  helper.make_node("Concat", ["r", "n", "c"], ["y"], axis=-1)],
                                 {"c": RNG.standard_normal((5, 7)).astype(np.float32)}, {"x": [5, 30]}),
    "concat_image_channels": image_model([helper.make_node("Relu", ["x"], ["r"]),
                                          helper.make_node("Sigmoid", ["x"], ["s"]),
                                          helper.make_node("Concat", ["r", "s"], ["y"], axis=1)],
                                         {}, [1, 6, 4, 5]),
    "slice_lanes": make_model([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("Slice", ["r", "st", "en", "ax", "sp"], ["y"])],
                              {"st": np.array([3]), "en": np.array([40]), "ax": np.array([-1]), "sp": np.array([2])},
                              {"x": [4, 50]}),
    "slice_rows_token0": make_model([helper.make_node("Relu", ["x"], ["r"]),
                                     helper.make_node("Slice", ["r", "st", "en", "ax"], ["y"])],
                                    {"st": np.array([0]), "en": np.array([1]), "ax": np.array([1])},
                                    {"x": [2, 6, 24]}),
    "split_lanes": make_model([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("Split", ["r", "sz"], ["a", "b"], axis=1),
                               helper.make_node("Mul", ["a", "b"], ["y"])],
                              {"sz": np.array([20, 20])}, {"x": [3, 40]}),
    "lrn": image_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("LRN", ["r"], ["y"], size=5, alpha=1e-2, beta=0.75, bias=1.0)],
                       {}, [1, 16, 3, 3]),
    "channel_shuffle": image_model([helper.make_node("Relu", ["x"], ["r"]),
                                    helper.make_node("Reshape", ["r", "s5"], ["g"]),
                                    helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
                                    helper.make_node("Reshape", ["t", "s4"], ["y"])],
                                   {"s5": np.array([1, 3, 4, 5, 5]), "s4": np.array([1, 12, 5, 5])}, [1, 12, 5, 5]),
    "transpose_size1_axes": make_model([helper.make_node("Relu", ["x"], ["r"]),
                                        helper.make_node("Transpose", ["r"], ["y"], perm=[1, 0, 2])],
                                       {}, {"x": [1, 4, 9]}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime(name):
    assert_matches_onnxruntime(CASES[name])


def test_average_pool_pads_excluded_from_count():
    m = image_model([helper.make_node("Relu", ["x"], ["r"]),
                     helper.make_node("AveragePool", ["r"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      strides=[2, 2], count_include_pad=0)], {}, [1, 5, 7, 6])
    assert_matches_onnxruntime(m)


def test_softmax_opset9_flattening_image_channels():
    m = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {}, {"x": [1, 30, 1, 1]}, opset=9)
    assert_matches_onnxruntime(m)


def test_concat_past_one_lane_tile():
    # 200 + 200 channels: the first input's selection has no nonzero weights for output lanes 320..399
    m = image_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["x"], ["n"]),
                     helper.make_node("Concat", ["r", "n"], ["y"], axis=1)], {}, [1, 200, 2, 3])
    assert_matches_onnxruntime(m)


def test_gelu_tanh_approximation():
    assert_matches_onnxruntime(make_model([helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")], {},
                                          {"x": [3, 40]}, opset=20))


def test_average_pool_ceil_mode_overhang():
    m = image_model([helper.make_node("Relu", ["x"], ["r"]),
                     helper.make_node("AveragePool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                      ceil_mode=1)], {}, [1, 3, 4, 4])
    assert_matches_onnxruntime(m)


def test_clip_computed_bounds_and_training_dropout_are_compile_errors():
    m = make_model([helper.make_node("Clip", ["x", "lo"], ["y"], name="c")], {}, {"x": [3, 4], "lo": []})
    with pytest.raises(lpusim.CompileError, match="Clip node 'c'.*constants"):
        lpusim.compile(m)
    m = make_model([helper.make_node("Relu", ["x"], ["r"]),
                    helper.make_node("Dropout", ["r", "ratio", "t"], ["y"], name="d")],
                   {"ratio": np.float32(0.5), "t": np.array(True)}, {"x": [3, 4]})
    with pytest.raises(lpusim.CompileError, match="Dropout node 'd'.*training"):
        lpusim.compile(m)


def test_clip_expanded_with_scalar_input_bounds():
    # Clip as onnx's function body writes it: Less/Where with () bounds that are graph inputs
    nodes = [helper.make_node("Less", ["x", "lo"], ["a"]), helper.make_node("Where", ["a", "lo", "x"], ["t"]),
             helper.make_node("Less", ["hi", "t"], ["b"]), helper.make_node("Where", ["b", "hi", "t"], ["y"])]
    m = make_model(nodes, {}, {"x": [5], "lo": [], "hi": []})
    assert_matches_onnxruntime(m, inputs={"x": np.array([-3, -1, 0, 1, 3], np.float32),
                                          "lo": np.array(-1.5, np.float32), "hi": np.array(2.0, np.float32)})


MISC = {
    "pad_image": image_model([helper.make_node("Relu", ["x"], ["r"]),
                              helper.make_node("Pad", ["r", "p"], ["y"])],
                             {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1])}, [1, 3, 4, 5]),
    "expand_row": make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Expand", ["r", "s"], ["y"])],
                             {"s": np.array([4, 7])}, {"x": [1, 7]}),
    "expand_column": make_model([helper.make_node("Relu", ["x"], ["r"]),
                                 helper.make_node("Expand", ["r", "s"], ["y"])], {"s": np.array([3, 9])},
                                {"x": [3, 1]}),
    "tile_lanes": make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Tile", ["r", "t"], ["y"])],
                             {"t": np.array([1, 3])}, {"x": [2, 5]}),
    "gather_lanes": make_model([helper.make_node("Relu", ["x"], ["r"]),
                                helper.make_node("Gather", ["r", "i"], ["y"], axis=1)],
                               {"i": np.array([4, 0, 0, 2])}, {"x": [3, 6]}),
    "gather_token0": make_model([helper.make_node("Relu", ["x"], ["r"]),
                                 helper.make_node("Gather", ["r", "i"], ["y"], axis=1)],
                                {"i": np.array(0)}, {"x": [1, 5, 8]}),
    "einsum_qkt": make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["x"], ["n"]),
                              helper.make_node("Einsum", ["r", "n"], ["y"], equation="qd,kd->qk")], {},
                             {"x": [6, 4]}),
}


@pytest.mark.parametrize("name", sorted(MISC))
def test_misc_op_matches_onnxruntime(name):
    assert_matches_onnxruntime(MISC[name])


def test_long_where_chain_is_fused_only_as_far_as_the_vxm_holds_it():
    # Greater, five Wheres reading the same condition, Sub and IsNaN: fusing it all took 20 ALUs of 16 (the fusion
    # pass's estimate missed read copies and delay lines; it now counts them as the scheduler does).
    nodes = [helper.make_node("Greater", ["x", "z"], ["c"])]
    prev = "x"
    for i in range(5):
        nodes.append(helper.make_node("Where", ["c", prev, f"k{i}"], [f"w{i}"]))
        prev = f"w{i}"
    nodes += [helper.make_node("Sub", [prev, "x"], ["s"]), helper.make_node("IsNaN", ["s"], ["n"]),
              helper.make_node("Cast", ["n"], ["y"], to=TensorProto.FLOAT)]
    inits = {"z": np.float32(0.0), **{f"k{i}": np.float32(i + 1) for i in range(5)}}
    assert_matches_onnxruntime(make_model(nodes, inits, {"x": [4, 9]}))
    nodes[-1] = helper.make_node("Identity", ["s"], ["y"])
    assert_matches_onnxruntime(make_model(nodes[:-2] + [nodes[-1]], inits, {"x": [4, 9]}))


@pytest.mark.parametrize("inf", [-np.inf, np.inf])
def test_where_with_a_full_tensor_of_one_infinity(inf):
    """Where(x == max(x), ConstantOfShape(-inf), x), as a top-k by rounds of max writes it (export_decoder's dense
    Mixtral routing): the infinite branch is a full [4, 6] constant, not a scalar, and still never multiplied by
    0 (c * inf + (1 - c) * x gave NaN in every other lane)."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Equal", ["x", "m"], ["c"]), helper.make_node("Where", ["c", "k", "x"], ["y"])]
    m = make_model(nodes, {"k": np.full((4, 6), inf, np.float32)}, {"x": [4, 6]})
    _, result, _ = assert_matches_onnxruntime(m)
    assert not np.isnan(result.outputs["y"]).any()
