"""Reductions over row axes, mixed row and lane axes, all axes (lower/reduce.py): halving trees on the VXM, lanes
turned into rows on the SXM, keepdims=0 results that belong on lanes; against onnxruntime."""
import numpy as np
import pytest
from onnx import helper

import lpusim
from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(31)
N = helper.make_node


def _x(shape, low=-3.0, high=3.0):
    return {"x": RNG.uniform(low, high, shape).astype(np.float32)}


def one(op, shape, opset=17, axes=None, **attrs):
    """`op` over `axes`: an attribute before opset 18 (13 for ReduceSum), an input from then on."""
    inits, inputs = {}, ["x"]
    if axes is not None and (opset >= 18 or (op == "ReduceSum" and opset >= 13)):
        inits["ax"] = np.array(axes, dtype=np.int64)
        inputs.append("ax")
    elif axes is not None:
        attrs["axes"] = axes
    return make_model([N(op, inputs, ["y"], **attrs)], inits, {"x": shape}, opset=opset)


CASES = {
    # row axes of matrices and 3-D tensors (odd counts, more than 320 lanes, axes as input and as attribute)
    "sum_axis0_64x128_opset18": (one("ReduceSum", [64, 128], 18, [0]), [64, 128]),
    "mean_axis1_1x16x32": (one("ReduceMean", [1, 16, 32], 17, [1]), [1, 16, 32]),
    "max_axis0_odd_7x5": (one("ReduceMax", [7, 5], 17, [0]), [7, 5]),
    "min_axis0_3x400_lanes": (one("ReduceMin", [3, 400], 17, [0]), [3, 400]),
    "sum_axis0_3d_inner_rows": (one("ReduceSum", [5, 6, 7], 13, [0]), [5, 6, 7]),
    "mean_axis_neg2_keepdims0": (one("ReduceMean", [3, 9, 11], 18, [-2], keepdims=0), [3, 9, 11]),
    "max_axes01_of_4d_not_image": (one("ReduceMax", [2, 3, 5, 6, 7], 17, [1, 3]), [2, 3, 5, 6, 7]),
    # images: H, W, H and W (GlobalAveragePool-like), N, and the rows N and H together
    "mean_hw_nchw": (one("ReduceMean", [2, 8, 5, 7], 17, [2, 3]), [2, 8, 5, 7]),
    "mean_hw_nchw_keepdims0": (one("ReduceMean", [2, 8, 5, 7], 17, [2, 3], keepdims=0), [2, 8, 5, 7]),
    "max_w_nchw": (one("ReduceMax", [2, 4, 3, 5], 17, [3]), [2, 4, 3, 5]),
    "min_h_nchw": (one("ReduceMin", [2, 4, 3, 5], 17, [2]), [2, 4, 3, 5]),
    "max_n_nchw": (one("ReduceMax", [3, 4, 2, 5], 17, [0]), [3, 4, 2, 5]),
    "sum_nh_nchw": (one("ReduceSum", [5, 6, 7, 9], 11, [0, 2]), [5, 6, 7, 9]),
    "sum_nhw_nchw": (one("ReduceSum", [2, 4, 3, 5], 11, [0, 2, 3]), [2, 4, 3, 5]),
    # rows and lanes together, all axes
    "mean_rows_and_lanes": (one("ReduceMean", [6, 9, 20], 17, [1, 2]), [6, 9, 20]),
    "sum_all_keepdims1": (one("ReduceSum", [3, 4, 10], 13), [3, 4, 10]),
    "max_all_keepdims0": (one("ReduceMax", [3, 4, 10], 17, keepdims=0), [3, 4, 10]),
    "min_all_wide_lanes": (one("ReduceMin", [2, 3, 700], 17), [2, 3, 700]),
    "max_lanes_300_rows": (one("ReduceMax", [300, 20], 17, [1]), [300, 20]),
    "min_channels_nchw": (one("ReduceMin", [2, 12, 3, 4], 17, [1]), [2, 12, 3, 4]),
    # the other reductions on top of the same trees
    "l2_axis0": (one("ReduceL2", [10, 12], 17, [0]), [10, 12]),
    "sum_square_axis1_3d": (one("ReduceSumSquare", [4, 10, 12], 17, [1]), [4, 10, 12]),
    "l1_all": (one("ReduceL1", [4, 10, 12], 17), [4, 10, 12]),
    "l2_lanes_opset18": (one("ReduceL2", [5, 40], 18, [1]), [5, 40]),
    "log_sum_exp_axis0": (one("ReduceLogSumExp", [10, 12], 17, [0]), [10, 12]),
    "log_sum_exp_rows_and_lanes": (one("ReduceLogSumExp", [3, 4, 9], 18, [0, 2]), [3, 4, 9]),
    "prod_axis0": (one("ReduceProd", [5, 12], 17, [0]), [5, 12]),
    "prod_all_keepdims0": (one("ReduceProd", [3, 4, 10], 17, keepdims=0), [3, 4, 10]),
    "prod_lanes_keepdims1": (one("ReduceProd", [6, 7], 17, [1]), [6, 7]),
    "prod_channels_nchw": (one("ReduceProd", [2, 5, 3, 2], 18, [1]), [2, 5, 3, 2]),
    # size-1 axes and empty axes
    "max_size1_axes_keepdims0": (one("ReduceMax", [1, 5, 1], 17, [0, 2], keepdims=0), [1, 5, 1]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reduction_matches_onnxruntime(name):
    m, shape = CASES[name]
    assert_matches_onnxruntime(m, _x(shape))


def test_noop_with_empty_axes():
    m = make_model([N("ReduceSum", ["x", "ax"], ["y"], noop_with_empty_axes=1)], {"ax": np.array([], np.int64)},
                   {"x": [4, 5]}, opset=18)
    assert_matches_onnxruntime(m, _x((4, 5)))


def test_row_sums_accumulate_in_float32():
    # 1000 rows summed in float32 on the VXM: far closer than the fp16 inputs of an MXM sum (~1e-4 of the largest)
    m = one("ReduceSum", [1000, 40], 13, [0])
    _, _, cmp = assert_matches_onnxruntime(m, _x((1000, 40)))
    assert cmp["max_rel_error"] < 1e-5, cmp


def test_row_and_lane_extremes_are_exact():
    for op in ("ReduceMax", "ReduceMin"):
        for axes, shape in (([0], [9, 33]), ([1], [9, 33]), (None, [4, 5, 6])):
            _, _, cmp = assert_matches_onnxruntime(one(op, shape, 17, axes), _x(shape))
            assert cmp["max_abs_error"] == 0.0, (op, axes, cmp)


# ----- computed inputs: a geometry given to a fresh tensor, copies where another reader needs its own ------------
def test_reductions_of_a_computed_tensor():
    nodes = [N("Relu", ["x"], ["r"]), N("ReduceMax", ["r"], ["a"], axes=[0]), N("ReduceMin", ["r"], ["b"], axes=[1]),
             N("ReduceMean", ["r"], ["c"], axes=[2]), N("ReduceSum", ["r"], ["d"], axes=[0, 1], keepdims=0)]
    m = make_model(nodes, {}, {"x": [6, 7, 8]}, opset=11, outputs=("a", "b", "c", "d"))
    assert_matches_onnxruntime(m, _x((6, 7, 8)))


def test_reduce_after_a_row_slice():
    m = make_model([N("Slice", ["x", "s", "e", "ax"], ["r"]), N("ReduceMax", ["r"], ["y"], axes=[0])],
                   {"s": np.array([1]), "e": np.array([9]), "ax": np.array([1])}, {"x": [2, 10, 16]})
    assert_matches_onnxruntime(m, _x((2, 10, 16)))


def test_reduce_a_tensor_that_a_slice_reads_too():
    # r is read by a Slice too, which lays its rows out as (batch, rows, 1): the reduction does not give r a
    # geometry of its own (its rows are copied for the tree)
    nodes = [N("Relu", ["x"], ["r"]), N("ReduceSum", ["r", "ax"], ["s"]), N("Slice", ["r", "b", "e", "sax"], ["y"])]
    m = make_model(nodes, {"ax": np.array([0]), "b": np.array([2]), "e": np.array([7]), "sax": np.array([1])},
                   {"x": [2, 10, 16]}, outputs=("s", "y"))
    assert_matches_onnxruntime(m, _x((2, 10, 16)))


@pytest.mark.parametrize("axes, keepdims", [([2], 1), ([2, 3], 1), ([0, 2, 3], 0), ([3], 1)])
def test_reduce_a_convolution_then_use_it(axes, keepdims):
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [N("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), N("ReduceMean", ["c"], ["m"], axes=axes,
                                                                 keepdims=keepdims), N("Relu", ["m"], ["y"])]
    assert_matches_onnxruntime(make_model(nodes, {"w": w}, {"x": [2, 3, 6, 5]}), _x((2, 3, 6, 5)))


def test_global_mean_then_a_convolution():
    w, w2 = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32), RNG.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [N("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), N("ReduceMean", ["c"], ["m"], axes=[2, 3]),
             N("Conv", ["m", "w2"], ["y"])]
    assert_matches_onnxruntime(make_model(nodes, {"w": w, "w2": w2}, {"x": [2, 3, 6, 5]}), _x((2, 3, 6, 5)))


# ----- keepdims=0 results read by another node ---------------------------------------------------------------------
@pytest.mark.parametrize("op, shape, axes, opset", [
    ("ReduceMax", [4, 16], [1], 17), ("ReduceSum", [1, 12, 16], [2], 18), ("ReduceMean", [7, 33], [-1], 18),
    ("ReduceMin", [300, 20], [1], 17), ("ReduceL2", [1, 9, 30], [2], 17), ("ReduceProd", [6, 5], [1], 17),
    ("ReduceSum", [4, 400], [1], 13), ("ReduceMax", [5, 400], [1], 17), ("ReduceMean", [2, 3, 20], [0, 2], 18)])
def test_keepdims0_result_moves_onto_lanes(op, shape, axes, opset):
    # [4, 16] over axis 1 -> [4]: the 4 results are read as one row of 4 lanes
    inits, inputs, attrs = {}, ["x"], {"keepdims": 0}
    if opset >= 18 or (op == "ReduceSum" and opset >= 13):
        inits["ax"], inputs = np.array(axes, np.int64), ["x", "ax"]
    else:
        attrs["axes"] = axes
    m = make_model([N(op, inputs, ["r"], **attrs), N("Neg", ["r"], ["y"])], inits, {"x": shape}, opset=opset)
    x = _x(shape, 0.5, 1.5) if op == "ReduceProd" else _x(shape)
    assert_matches_onnxruntime(m, x)


def test_keepdims0_rows_feed_a_matmul():
    m = make_model([N("ReduceMean", ["x"], ["r"], axes=[1], keepdims=0), N("MatMul", ["r", "w"], ["y"])],
                   {"w": RNG.standard_normal((24, 5)).astype(np.float32)}, {"x": [3, 17, 24]})
    assert_matches_onnxruntime(m, _x((3, 17, 24)))


def test_keepdims0_image_rows_turn_into_lanes():
    # (1, C, H, W) over H -> (1, C, W): W rows of C lanes on the chip, C rows of W lanes for the next node
    m = make_model([N("ReduceMean", ["x"], ["r"], axes=[2], keepdims=0), N("Relu", ["r"], ["y"])], {},
                   {"x": [1, 6, 3, 5]})
    assert_matches_onnxruntime(m, _x((1, 6, 3, 5)))


def test_two_reductions_of_one_input_share_its_row_view():
    nodes = [N("ReduceMax", ["x"], ["a"], axes=[0]), N("ReduceMin", ["x"], ["b"], axes=[0])]
    m = make_model(nodes, {}, {"x": [9, 20]}, outputs=("a", "b"))
    program, _, _ = assert_matches_onnxruntime(m, _x((9, 20)))
    assert len(program._graph.inputs) == 1  # one host layout of x in the tree's geometry, read by both trees


def test_keepdims0_output_in_another_layout_is_read_back_by_the_host():
    m = one("ReduceSum", [3, 12, 16], 13, [2], keepdims=0)  # (36, 1) on the chip, [3, 12] for the host
    assert_matches_onnxruntime(m, _x((3, 12, 16)))


@pytest.mark.parametrize("op, shape, attrs", [
    ("ReduceMax", [3, 12, 16], {"axes": [2]}),  # 36 results in a column -> 3 rows of 12 lanes (a batched turn)
    ("ReduceMax", [3, 4, 2, 5], {"axes": [0]}),  # an image's (h, w) rows of c lanes -> rows (c, h) of w lanes
    ("ReduceMin", [1, 4, 3, 4], {"axes": [1]}),  # an image over its channels -> 3 rows of 4 lanes
    ("ReduceSum", [2, 2, 2, 2], {"axes": [2]}),  # the same counts of rows and lanes, the values in another order
    ("ReduceMax", [400, 20], {"axes": [1]}),  # 400 results onto the lanes of one row (two column tiles)
    ("ReduceMean", [4, 1, 5, 384], {"axes": [0, 2]}),  # 384 rows of 1 lane -> 1 row of 384 lanes
])
def test_keepdims0_results_in_other_layouts_read_by_another_node(op, shape, attrs):
    inits, inputs = {}, ["x"]
    if op == "ReduceSum":
        inits["ax"], inputs = np.array(attrs.pop("axes"), np.int64), ["x", "ax"]
    m = make_model([N(op, inputs, ["r"], keepdims=0, **attrs), N("Relu", ["r"], ["y"])], inits, {"x": shape})
    assert_matches_onnxruntime(m, _x(shape))


def test_product_over_many_lanes():
    m = one("ReduceProd", [3, 400], 17, [1])
    assert_matches_onnxruntime(m, _x((3, 400), 0.99, 1.01))


def test_wide_lane_extremes_of_few_rows_keep_the_rotation_tree():
    # [4, 700]: the MXM's rotation tree is cheaper than turning 700 lanes into rows (fp16-rounded values, within
    # the tolerance); [300, 700] is turned (exact)
    _, _, cmp = assert_matches_onnxruntime(one("ReduceMax", [4, 700], 17, [1]), _x((4, 700)))
    assert cmp["max_abs_error"] > 0.0
    _, _, cmp = assert_matches_onnxruntime(one("ReduceMax", [300, 700], 17, [1]), _x((300, 700)))
    assert cmp["max_abs_error"] == 0.0


# ----- what is still refused, with the reason ----------------------------------------------------------------------
def test_zero_size_input_is_a_clear_error():
    m = one("ReduceL2", [2, 0, 4], 17, [1])
    with pytest.raises(lpusim.CompileError, match="ReduceL2 node 'y'.*zero-size shape \\(2, 0, 4\\)"):
        lpusim.compile(m, shapes={"x": (2, 0, 4)}, calibration={"x": np.zeros((2, 0, 4), np.float32)})


def test_computed_axes_are_a_clear_error():
    from onnx import TensorProto
    g = helper.make_graph([N("Cast", ["k"], ["ax"], to=TensorProto.INT64), N("ReduceSum", ["x", "ax"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("k", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    with pytest.raises(lpusim.CompileError, match="ReduceSum node 'y'.*computed axes"):
        lpusim.compile(m, calibration={"x": np.ones((2, 3), np.float32), "k": np.ones(1, np.float32)})


def test_log_sum_exp_of_large_values_is_a_clear_error():
    x = _x((4, 6), -200.0, 200.0)
    with pytest.raises(lpusim.CompileError, match="ReduceLogSumExp node 'y'.*without shifting"):
        lpusim.compile(one("ReduceLogSumExp", [4, 6], 17, [0]), calibration=x)


# ----- global pools on the same trees ------------------------------------------------------------------------------
@pytest.mark.parametrize("op, shape", [("GlobalMaxPool", [2, 6, 7, 7]), ("GlobalAveragePool", [1, 400, 5, 3]),
                                       ("GlobalAveragePool", [2, 5, 9]), ("GlobalMaxPool", [2, 5, 9]),
                                       ("GlobalAveragePool", [1, 3, 2, 4, 5]), ("GlobalMaxPool", [1, 3, 2, 4, 5])])
def test_global_pools(op, shape):
    # a GlobalMaxPool over 7x7 = 49 pixels (more than the 16 taps a max pool chain holds); 1-D and 3-D images
    m = make_model([N(op, ["x"], ["p"]), N("Relu", ["p"], ["y"])], {}, {"x": shape})
    _, _, cmp = assert_matches_onnxruntime(m, _x(shape))
    if op == "GlobalMaxPool":
        assert cmp["max_abs_error"] == 0.0
