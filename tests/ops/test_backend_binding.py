"""lpusim.backend binds parameter inputs at run time (backend/params.py), caches one program per distinct bound
values (backend/cache.py), and returns host-known outputs without simulating (backend/host.py)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
import lpusim.backend
from lpusim.runtime.cache import ProgramCache

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _x(*shape):
    return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 7 - 3) / 4  # exact in fp16


def test_resize_scales_input():
    m = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
               [_vi("x", F32, [1, 1, 2, 3]), _vi("scales", F32, [4])], [_vi("y", F32, [1, 1, 4, 6])])
    x, scales = _x(1, 1, 2, 3), np.array([1, 1, 2, 2], np.float32)
    (y,) = lpusim.backend.run_model(m, [x, scales])
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(2, axis=3))


def test_reduce_sum_axes_input():
    m = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
               [_vi("x", F32, [3, 4]), _vi("axes", I64, [1])], [_vi("y", F32, ["m"])])
    x = _x(3, 4)
    rep = lpusim.backend.prepare(m)
    assert not rep.programs  # the axes are a run's value: compiled at the first run
    for axis in (1, 0):
        (y,) = rep.run([x, np.array([axis], np.int64)])
        np.testing.assert_allclose(y, x.sum(axis=axis), rtol=1e-6)


def test_clip_bounds_inputs():
    m = _model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
               [_vi("x", F32, [2, 4]), _vi("lo", F32, []), _vi("hi", F32, [])], [_vi("y", F32, [2, 4])])
    x = _x(2, 4)
    (y,) = lpusim.backend.run_model(m, [x, np.float32(-0.5), np.float32(0.25)])
    np.testing.assert_array_equal(y, np.clip(x, -0.5, 0.25))


def test_clip_bounds_computed_on_the_chip_are_refused():
    """A bound computed from a float input (not a parameter by the table) stays chip work, which Clip refuses."""
    m = _model([helper.make_node("Neg", ["lo"], ["nlo"]), helper.make_node("Clip", ["x", "nlo"], ["y"])],
               [_vi("x", F32, [3]), _vi("lo", F32, [])], [_vi("y", F32, [3])])
    with pytest.raises(lpusim.CompileError, match="Clip"):
        lpusim.backend.run_model(m, [_x(3), np.float32(1.0)])


def test_gemm_b_input():
    m = _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=0.5)],
               [_vi("a", F32, [2, 3]), _vi("b", F32, [4, 3]), _vi("c", F32, [4])], [_vi("y", F32, [2, 4])])
    a, b, c = _x(2, 3), _x(4, 3), np.array([0.25, -0.5, 1, 0], np.float32)
    (y,) = lpusim.backend.run_model(m, [a, b, c])
    np.testing.assert_allclose(y, 0.5 * a @ b.T + c, rtol=1e-3, atol=1e-3)


def test_shape_output_is_returned_without_simulating():
    m = _model([helper.make_node("Shape", ["x"], ["s"], start=1), helper.make_node("Relu", ["x"], ["r"])],
               [_vi("x", F32, [2, 3, 5])], [_vi("s", I64, [2]), _vi("r", F32, [2, 3, 5])])
    x = _x(2, 3, 5)
    rep = lpusim.backend.prepare(m)
    s, r = rep.run([x])
    assert s.dtype == np.int64
    np.testing.assert_array_equal(s, [3, 5])
    np.testing.assert_array_equal(r, np.maximum(x, 0))
    only = _model([helper.make_node("Shape", ["x"], ["s"])], [_vi("x", F32, ["n", 3])], [_vi("s", I64, [2])])
    rep = lpusim.backend.prepare(only)
    np.testing.assert_array_equal(rep.run([_x(4, 3)])[0], [4, 3])
    assert not rep.programs and rep.last_result is None  # nothing for the chip: nothing compiled or simulated


def test_integer_input_computing_a_parameter_is_bound():
    """The pads of Pad computed from an integer input (an expanded function's form) are bound too."""
    two = helper.make_tensor("two", I64, [], [2])
    m = _model([helper.make_node("Constant", [], ["k"], value=two), helper.make_node("Mul", ["p", "k"], ["pads"]),
                helper.make_node("Pad", ["x", "pads"], ["y"])],
               [_vi("x", F32, [2, 3]), _vi("p", I64, [4])], [_vi("y", F32, [2, 5])])
    x = _x(2, 3)
    (y,) = lpusim.backend.run_model(m, [x, np.array([0, 1, 0, 0], np.int64)])
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (2, 0))))


def test_reduction_of_an_empty_input_is_host_known():
    m = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
               [_vi("x", F32, ["n", 0, 4]), _vi("axes", I64, [1])], [_vi("y", F32, ["n", 1, 4])])
    (y,) = lpusim.backend.run_model(m, [np.zeros((2, 0, 4), np.float32), np.array([1], np.int64)])
    np.testing.assert_array_equal(y, np.zeros((2, 1, 4), np.float32))


def test_one_program_per_distinct_parameter_values():
    m = _model([helper.make_node("Reshape", ["x", "shape"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
               [_vi("x", F32, [2, 6]), _vi("shape", I64, [2])], [_vi("z", F32, ["a", "b"])])
    x = _x(2, 6)
    rep = lpusim.backend.prepare(m)
    for shape in ((3, 4), (3, 4)):
        np.testing.assert_array_equal(rep.run([x, np.array(shape, np.int64)])[0], np.maximum(x, 0).reshape(shape))
    assert rep.programs.compiles == 1 and len(rep.programs) == 1  # the same values: compiled once
    np.testing.assert_array_equal(rep.run([x, np.array((4, 3), np.int64)])[0], np.maximum(x, 0).reshape(4, 3))
    assert rep.programs.compiles == 2 and len(rep.programs) == 2  # other values: compiled again
    rep.run([x, np.array((3, 4), np.int64)])
    assert rep.programs.compiles == 2  # still cached


def test_program_cache_is_a_bounded_lru():
    cache = ProgramCache(limit=2)
    for k in ("a", "b", "a", "c"):  # "a" is used again before "c" arrives: "b" is the least recent
        cache.get_or_compile(k, lambda k=k: k.upper())
    assert list(cache) == ["a", "c"] and cache.compiles == 3
