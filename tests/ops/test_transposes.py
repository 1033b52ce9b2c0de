"""Transpose of computed tensors, any permutation (compiler/lower/transpose.py, schedule/sxm.py), against onnxruntime.

Row permutations (the lane axis stays) are VXM copies through a row-map view; a row axis moving onto the lanes is a
batched SXM/MEM transpose in blocks of at most 320 x 320 (sizes past 320 rows and lanes, 1 x N, N x 1); Reshapes
between an image and another layout and Gemm transA reuse it.
"""
import itertools

import numpy as np
import pytest
from onnx import helper
from onnx_cases import assert_matches_onnxruntime, make_model

import lpusim

R = np.random.default_rng(7)


def x_of(shape):
    return {"x": R.uniform(-3, 3, shape).astype(np.float32)}  # negative values included


def relu_transpose(shape, perm, after=(), inits=None, relu=True):
    """x -> Relu -> Transpose(perm) [-> the nodes `after`, reading "t"] -> y."""
    nodes = [helper.make_node("Relu", ["x"], ["r"])] if relu else []
    nodes.append(helper.make_node("Transpose", ["r" if relu else "x"], ["t" if after else "y"], perm=perm))
    return make_model(nodes + list(after), inits or {}, {"x": list(shape)})


def check(m, shape):
    return assert_matches_onnxruntime(m, x_of(shape))


def kinds(program):
    return [n.kind for n in program._graph.nodes]


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_every_permutation_of_3d(perm):
    check(relu_transpose((4, 6, 8), list(perm)), (4, 6, 8))


@pytest.mark.parametrize("shape", [(400, 500), (1, 1000), (1000, 1), (330, 7), (7, 330), (320, 320), (321, 1)])
def test_matrix_past_320(shape):
    program, _, _ = check(relu_transpose(shape, [1, 0]), shape)
    assert "transpose" in kinds(program) and "matmul" not in kinds(program)
    assert "GATHER" in program.assembly and "PERMUTE" in program.assembly


@pytest.mark.slow
def test_matrix_768x3072():
    check(relu_transpose((768, 3072), [1, 0]), (768, 3072))


@pytest.mark.parametrize("shape", [(2, 16, 32), (3, 330, 40), (2, 5, 400), (64, 16, 32)])
def test_batched(shape):
    check(relu_transpose(shape, [0, 2, 1]), shape)


@pytest.mark.parametrize("shape,perm", [((700, 2, 1), [0, 2, 1]), ((700, 1, 3), [0, 2, 1]),
                                        ((11, 40, 5, 7, 1), [1, 3, 4, 0, 2]), ((9, 70, 5), [0, 2, 1])])
def test_many_small_matrices_packed(shape, perm):
    """Up to 320 // M (and 320 // N) matrices share one SXM block (the gather map picks each one's rows)."""
    check(relu_transpose(shape, perm), shape)


def test_row_permutation_is_rows_only():
    """perm [1, 0, 2] keeps the lanes: one VXM copy through a row map, no SXM, no MXM."""
    program, _, _ = check(relu_transpose((4, 3, 9), [1, 0, 2]), (4, 3, 9))
    assert kinds(program) == ["vector", "vector"]  # Relu, then the row-map copy
    assert "GATHER" not in program.assembly and "ABC" not in program.assembly


def test_row_permutation_large():
    check(relu_transpose((64, 24, 700), [1, 0, 2]), (64, 24, 700))


def test_row_permutation_4d_keeps_channels():
    """[B, C, M, N] -> [B, C, N, M]: the channels are on the lanes (an NCHW image), so only rows move."""
    program, _, _ = check(relu_transpose((2, 3, 5, 7), [0, 1, 3, 2]), (2, 3, 5, 7))
    assert "transpose" not in kinds(program)


@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (0, 3, 2, 1), (3, 2, 1, 0), (2, 0, 3, 1), (1, 0, 2, 3), (0, 2, 3, 1)])
def test_4d(perm):
    check(relu_transpose((2, 3, 5, 7), list(perm)), (2, 3, 5, 7))


def test_5d():
    check(relu_transpose((2, 3, 4, 5, 6), [4, 1, 0, 3, 2]), (2, 3, 4, 5, 6))


def test_size_one_axes_only_are_a_view():
    program, _, _ = check(relu_transpose((1, 4, 9), [1, 0, 2]), (1, 4, 9))
    assert kinds(program) == ["vector"]


def test_of_a_graph_input():
    check(relu_transpose((40, 50), [1, 0], relu=False), (40, 50))


def test_feeds_matmul_past_320():
    w = R.standard_normal((400, 64)).astype(np.float32)
    check(relu_transpose((400, 500), [1, 0], [helper.make_node("MatMul", ["t", "w"], ["y"])], {"w": w}), (400, 500))


def test_batched_feeds_matmul():
    w = R.standard_normal((16, 8)).astype(np.float32)
    check(relu_transpose((2, 16, 32), [0, 2, 1], [helper.make_node("MatMul", ["t", "w"], ["y"])], {"w": w}),
          (2, 16, 32))


def test_input_feeds_matmul():
    w = R.standard_normal((24, 8)).astype(np.float32)
    check(relu_transpose((24, 40), [1, 0], [helper.make_node("MatMul", ["t", "w"], ["y"])], {"w": w}, relu=False),
          (24, 40))


def test_feeds_elementwise_and_is_an_output():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 1]),
             helper.make_node("Neg", ["t"], ["y"])]
    check(make_model(nodes, {}, {"x": [6, 40, 3]}, outputs=("y", "t")), (6, 40, 3))


def test_image_rows_with_borders():
    """A transposed image read by a convolution (its store has a border) from a convolution's output."""
    w = R.standard_normal((3, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1])]
    check(make_model(nodes, {"w": w}, {"x": [1, 3, 6, 5]}), (1, 3, 6, 5))


def test_image_source_with_border_moves_lanes():
    w, w2 = R.standard_normal((3, 3, 3, 3)).astype(np.float32), R.standard_normal((2, 5, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 3, 2, 1]),
             helper.make_node("Conv", ["r", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["t", "w2"], ["y"], pads=[1, 1, 1, 1])]
    check(make_model(nodes, {"w": w, "w2": w2}, {"x": [1, 3, 6, 5]}, outputs=("y", "c")), (1, 3, 6, 5))


def test_gemm_trans_a():
    w = R.standard_normal((30, 12)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gemm", ["r", "w"], ["y"], transA=1)]
    check(make_model(nodes, {"w": w}, {"x": [30, 20]}), (30, 20))


# ----- Reshape to and from an image (channels on the lanes): a batched transpose when the layouts differ ---------
def reshape(shape, target, then=()):
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Reshape", ["r", "s"], ["q" if then else "y"])] + list(then)
    return make_model(nodes, {"s": np.array(target)}, {"x": list(shape)})


@pytest.mark.parametrize("shape,target", [((2, 6, 4, 5), (2, 6, 20)), ((2, 6, 4, 5), (2, 24, 5)),
                                          ((2, 12, 5), (2, 3, 4, 5)), ((2, 6, 4, 5), (1, 6, 8, 5)),
                                          ((1, 6, 2, 3), (6, 6))])
def test_reshape_image_layouts(shape, target):
    check(reshape(shape, target), shape)


def test_vit_patches():
    """A conv-like image [1, C, H, W] -> [1, C, H*W] -> Transpose [0, 2, 1]: tokens by channels."""
    check(reshape((1, 12, 4, 5), (1, 12, 20), [helper.make_node("Transpose", ["q"], ["y"], perm=[0, 2, 1])]),
          (1, 12, 4, 5))


def test_depth_to_space_expanded():
    """DepthToSpace (DCR) as Reshape -> Transpose -> Reshape, the way ONNX defines it."""
    b, shape = 2, (1, 8, 2, 3)
    n, c, h, w = shape
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s6"], ["q"]),
             helper.make_node("Transpose", ["q"], ["t"], perm=[0, 3, 4, 1, 5, 2]),
             helper.make_node("Reshape", ["t", "s4"], ["y"])]
    m = make_model(nodes, {"s6": np.array([n, b, b, c // 4, h, w]), "s4": np.array([n, c // 4, h * b, w * b])},
                   {"x": list(shape)})
    check(m, shape)


def test_reshape_regrouping_lanes():
    m = reshape((1, 6, 4, 5), (1, 6, 4 * 5 // 2, 2), [])
    m2 = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["y"], name="rs")],
                    {"s": np.array([3, 14])}, {"x": [6, 7]})
    assert_matches_onnxruntime(m, x_of((1, 6, 4, 5)))  # image -> 4-D plain-like image: L = 2 divides 20
    assert_matches_onnxruntime(m2, x_of((6, 7)))  # [6, 7] -> [3, 14]: lanes regrouped by transposes (transpose.py)


def many_shapes(n, seed=0):
    rng = np.random.default_rng(seed)
    nodes, inputs = [], {}
    for i in range(n):
        inputs[f"x{i}"] = [int(rng.integers(20, 320)), int(rng.integers(20, 320))]
        nodes += [helper.make_node("Relu", [f"x{i}"], [f"r{i}"]),
                  helper.make_node("Transpose", [f"r{i}"], [f"y{i}"], perm=[1, 0])]
    return make_model(nodes, {}, inputs, outputs=tuple(f"y{i}" for i in range(n)))


def test_many_shapes_share_the_sxm_tables():
    """One rotation and one reflection table per hemisphere serve every transpose; gather maps per block shape."""
    assert_matches_onnxruntime(many_shapes(24))


def test_too_many_shapes_is_a_clear_error():
    with pytest.raises(lpusim.CompileError, match="SXM map tables of hemisphere [WE] fill the MEM slices kept for them: [1-9]"):
        lpusim.compile(many_shapes(80))
