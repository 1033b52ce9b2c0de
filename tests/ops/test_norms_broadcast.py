"""lower/norms.py against onnxruntime: Softmax/LogSoftmax/LayerNormalization over any axes (and LayerNorm's Mean and
InvStdDev), broadcasts of computed operands, Reshapes that regroup lanes, Pow with computed or per-element
exponents, one-input Max/Min. Row-axis normalisations are float32 VXM work and are held to rtol 1e-5 besides."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from lpusim.check.compare import run_onnxruntime
from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(41)


def _x(shape, low=-3.0, high=3.0, name="x"):
    return {name: RNG.uniform(low, high, shape).astype(np.float32)}


def _strict(m, x, rtol=1e-5, atol=1e-6):
    """The usual check, then every output within rtol of onnxruntime (float32 paths: no fp16 on the way)."""
    program, result, _ = assert_matches_onnxruntime(m, x)
    ref, _ = run_onnxruntime(m, x)
    for name, r in ref.items():
        np.testing.assert_allclose(result.outputs[name], r, rtol=rtol, atol=atol)
    return program, result


@pytest.mark.parametrize("op, shape, axis", [
    ("Softmax", (5, 7), 0), ("Softmax", (3, 17, 9), 1), ("LogSoftmax", (3, 4, 330), 0),
    ("LogSoftmax", (4, 9, 5), -2), ("Softmax", (2, 3, 5, 6), 2), ("LogSoftmax", (2, 3, 5, 6), 3),
    ("Softmax", (2, 3, 5, 7), 0)])
def test_softmax_over_a_row_axis(op, shape, axis):
    m = make_model([helper.make_node(op, ["x"], ["y"], axis=axis)], {}, {"x": list(shape)})
    _, result = _strict(m, _x(shape, -6.0, 6.0))
    assert result.busy["mxm"] == 0  # row trees and VXM chains only


def test_softmax_over_a_row_axis_of_large_values():
    # a row maximum of exact float32 values: exp never overflows even at |x| ~ 1e4
    m = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], {}, {"x": [6, 11]})
    _strict(m, _x((6, 11), -1e4, 1e4), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("op, shape, axis", [("Softmax", (2, 3, 4, 5), 1), ("LogSoftmax", (3, 4, 6), 1),
                                             ("Softmax", (2, 3, 4, 5), 2)])
def test_opset11_softmax_flattens_axes(op, shape, axis):
    m = make_model([helper.make_node(op, ["x"], ["y"], axis=axis)], {}, {"x": list(shape)}, opset=11)
    assert_matches_onnxruntime(m, _x(shape))


@pytest.mark.parametrize("shape, axis", [((6, 10), 0), ((3, 5, 330), 1), ((2, 4, 5, 6), 2), ((2, 4, 5, 6), -1),
                                         ((2, 4, 5, 6), 0), ((3, 7, 9), -2)])
def test_layernorm_over_any_axes(shape, axis):
    norm = shape[axis % len(shape):]
    inits = {"s": RNG.uniform(0.5, 1.5, norm).astype(np.float32), "b": RNG.standard_normal(norm).astype(np.float32)}
    m = make_model([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=axis, epsilon=1e-3)],
                   inits, {"x": list(shape)})
    assert_matches_onnxruntime(m, _x(shape, -4.0, 2.0))


def test_layernorm_over_row_axes_is_float32():
    # [N, C, H, W] over H, W: row trees only, no MXM
    m = make_model([helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=2)],
                   {"s": RNG.uniform(0.5, 1.5, (7, 5)).astype(np.float32)}, {"x": [2, 3, 7, 5]})
    _strict(m, _x((2, 3, 7, 5), -4.0, 2.0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, axis", [((4, 330), -1), ((3, 5, 6), 1), ((2, 3, 4, 5), 2), ((2, 3, 4, 5), 1)])
def test_layernorm_mean_and_inv_std_dev(shape, axis):
    scale = {"s": RNG.uniform(0.5, 1.5, shape[axis % len(shape):]).astype(np.float32)}
    m = make_model([helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean", "inv"], axis=axis)], scale,
                   {"x": list(shape)}, outputs=("y", "mean", "inv"))
    assert_matches_onnxruntime(m, _x(shape, -2.0, 5.0))


@pytest.mark.parametrize("shape, axes, op", [((3, 4, 5), [1], "ReduceMax"), ((3, 7, 330), [2], "ReduceMean"),
                                              ((2, 3, 4, 5), [3], "ReduceMean"), ((2, 3, 4, 5), [0, 2], "ReduceMax"),
                                              ((5, 3, 9), [0, 1, 2], "ReduceMin")])
def test_computed_operand_broadcast(shape, axes, op):
    # x - reduce(x) with keepdims: the (..., 1) or fewer-rows operand meets x elementwise
    nodes = [helper.make_node(op, ["x"], ["r"], axes=axes, keepdims=1), helper.make_node("Sub", ["x", "r"], ["y"])]
    m = make_model(nodes, {}, {"x": list(shape)}, opset=17)
    assert_matches_onnxruntime(m, _x(shape))


def test_scalar_computed_operand():
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Mul", ["x", "s"], ["y"])]
    m = make_model(nodes, {}, {"x": [4, 6]})
    assert_matches_onnxruntime(m, _x((4, 6)))


def test_expand_and_lower_rank_operand_of_an_image():
    # Expand of a computed (3, 1) to (2, 3, 6); a computed (6,) against an NCHW image (its lanes become rows)
    nodes = [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Expand", ["r", "shape"], ["y"]),
             helper.make_node("Neg", ["v"], ["n"]), helper.make_node("Mul", ["img", "n"], ["z"])]
    m = make_model(nodes, {"shape": np.array([2, 3, 6], dtype=np.int64)}, {"a": [3, 1], "v": [6], "img": [3, 4, 5, 6]},
                   outputs=("y", "z"))
    x = {**_x((3, 1), name="a"), **_x((6,), name="v"), **_x((3, 4, 5, 6), name="img")}
    assert_matches_onnxruntime(m, x)


@pytest.mark.parametrize("shape, new", [((2, 15), (6, 5)), ((4, 330), (12, 110)), ((1, 120), (2, 3, 4, 5)),
                                        ((2, 3, 4, 5), (3, 40))])
def test_reshape_that_regroups_lanes(shape, new):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["t"]),
             helper.make_node("Neg", ["t"], ["y"])]
    m = make_model(nodes, {"s": np.array(new, dtype=np.int64)}, {"x": list(shape)})
    _strict(m, _x(shape), rtol=0, atol=0)  # SXM moves: bit exact


def test_pow_computed_exponents_negative_bases():
    # integer exponents of negative bases (signs), non-integer ones (NaN), 0^0 = 1, 0^-1 = inf
    a = RNG.uniform(-3, 3, (5, 12)).astype(np.float32)
    b = RNG.integers(-3, 4, (5, 12)).astype(np.float32)
    b[0, :6] += 0.5
    a[1, :3] = 0.0
    b[1, :3] = [0.0, 2.0, -1.0]
    nodes = [helper.make_node("Identity", ["b"], ["e"]), helper.make_node("Pow", ["a", "e"], ["y"])]
    m = make_model(nodes, {}, {"a": [5, 12], "b": [5, 12]})
    _strict(m, {"a": a, "b": b}, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("exp", [np.float32(5.0), np.float32(-2.0), np.float32(1.5),
                                 np.array([1.0, 2.0, 3.0, -1.0, 0.0, 2.5, 4.0], np.float32)])
def test_pow_constant_exponents(exp):
    m = make_model([helper.make_node("Pow", ["x", "p"], ["y"])], {"p": exp}, {"x": [3, 7]})
    _strict(m, _x((3, 7), -2.0, 2.0), rtol=2e-6, atol=1e-6)


def test_pow_integer_typed():
    m = make_model([helper.make_node("Pow", ["x", "p"], ["y"])], {}, {"x": [4, 5], "p": [4, 5]})
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.INT32
    x = {"x": RNG.integers(-5, 6, (4, 5)).astype(np.int32), "p": RNG.integers(0, 6, (4, 5)).astype(np.int32)}
    program, result, _ = assert_matches_onnxruntime(m, x)
    ref, _ = run_onnxruntime(m, x)
    np.testing.assert_array_equal(result.outputs["y"], ref["y"])


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_one_input_max_min(op):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r"], ["y"])]
    m = make_model(nodes, {}, {"x": [3, 9]})
    assert_matches_onnxruntime(m, _x((3, 9)))


@pytest.mark.parametrize("op, shape, axis", [("Softmax", (1, 5), 0), ("LogSoftmax", (4, 1, 3), 1)])
def test_softmax_over_a_size_one_axis(op, shape, axis):
    m = make_model([helper.make_node(op, ["x"], ["y"], axis=axis)], {}, {"x": list(shape)})
    _strict(m, _x(shape))


def test_flattened_softmax_of_huge_values_is_a_clear_error():
    # opset 11 over axes 1.. including the lanes: the lane maximum is an fp16 tree, too coarse a shift past 4096
    import lpusim
    m = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1, name="sm")], {}, {"x": [3, 4, 6]}, opset=11)
    with pytest.raises(lpusim.CompileError, match="Softmax node 'sm'.*lane maximum is found in fp16"):
        lpusim.compile(m, calibration=_x((3, 4, 6), -1e5, 1e5))


def test_group_normalization_as_exported():
    # GroupNormalization's expansion on an NCHW image: Reshape to [N, G, C/G*H*W] (576 lanes: regrouped by SXM
    # transposes), mean and variance over the lanes, (N, G, 1) broadcast back, Reshape to the image, affine
    n, c, h, w, g = 2, 8, 12, 12, 2
    nodes = [helper.make_node("Neg", ["x"], ["xn"]), helper.make_node("Reshape", ["xn", "s3"], ["x3"]),
             helper.make_node("ReduceMean", ["x3"], ["mu"], axes=[2], keepdims=1),
             helper.make_node("Sub", ["x3", "mu"], ["d"]), helper.make_node("Mul", ["d", "d"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], axes=[2], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["nrm"]), helper.make_node("Reshape", ["nrm", "s4"], ["img"]),
             helper.make_node("Mul", ["img", "gamma"], ["sc"]), helper.make_node("Add", ["sc", "beta"], ["y"])]
    inits = {"s3": np.array([n, g, -1], np.int64), "s4": np.array([n, c, h, w], np.int64),
             "eps": np.float32(1e-5), "gamma": RNG.uniform(0.5, 1.5, (1, c, 1, 1)).astype(np.float32),
             "beta": RNG.standard_normal((1, c, 1, 1)).astype(np.float32)}
    m = make_model(nodes, inits, {"x": [n, c, h, w]})
    assert_matches_onnxruntime(m, _x((n, c, h, w), -2.0, 4.0))
