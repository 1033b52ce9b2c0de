"""Gather / GatherElements / GatherND beyond embedding lookups (lower/gather.py): constant indices along row axes (a
row-map view: exact copies), computed data with computed ids (one-hot on the VXM, contraction on the MXM),
GatherElements with computed indices (one-hot masks), GatherND with constant indices. Compiled, simulated, compared
with onnxruntime (assert_matches_onnxruntime), exactly where the path copies f32 values."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
from lpusim.check.compare import run_onnxruntime
from onnx_cases import assert_matches_onnxruntime, typed_model

F, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(11)


def rand(*shape):
    return RNG.uniform(-3, 3, shape).astype(np.float32)


def check(m, inputs, exact=False):
    program, result, cmp = assert_matches_onnxruntime(m, inputs)
    ref, _ = run_onnxruntime(m, inputs)
    for name, r in ref.items():
        assert result.outputs[name].shape == r.shape
        if exact:
            np.testing.assert_array_equal(result.outputs[name], r)
    return program, result, cmp


def const_gather(shape, ind, axis, out_shape):
    return typed_model([helper.make_node("Neg", ["x"], ["r"]), helper.make_node("Gather", ["r", "i"], ["y"], axis=axis)],
                       {"i": np.asarray(ind, np.int64)}, {"x": (F, list(shape))}, {"y": (F, list(out_shape))})


# ----- 1. constant indices along a row axis: a row-map view (exact) ----------------------------------------------------
@pytest.mark.parametrize("shape,ind,axis", [
    ((8, 16), [3, 1, 3], 0),  # repeats, any order
    ((400, 500), [-1, 0, 399, 5, 5, -400, 7, 6, 5, 4], 0),  # past 320 lanes, the ends, negative, a falling run
    ((2, 10, 33), [9, 0, 9, -1, 2, 4, 6], 1),  # a batch of matrices: each batch's rows
    ((4, 40), [[3, 0], [0, 3], [1, 1]], 0),  # 2-D indices: the index axes replace the gathered one
    ((1, 3, 4, 5), [3, 0, 0], 2),  # an NCHW image: pixels are rows (the store has no border here)
    ((6, 7), 4, 0),  # one index: the axis goes
    ((1, 9, 40), -1, 1),  # the last token of a sequence (an export's hidden[:, -1, :])
])
def test_gather_rows_constant_indices_is_exact(shape, ind, axis):
    out_shape = np.take(np.zeros(shape), np.asarray(ind), axis=axis).shape
    check(const_gather(shape, ind, axis, out_shape), {"x": rand(*shape)}, exact=True)


def test_gather_rows_reversed_across_segments():
    # 2100 rows span two MEM segments (layout.MAX_SEGMENT_ROWS): the falling run is cut at the segment edge
    ind = np.arange(2099, -1, -1)
    program, result, _ = check(const_gather((2100, 8), ind, 0, (2100, 8)), {"x": rand(2100, 8)}, exact=True)
    assert result.cycles < 3 * 2100  # one READ burst per run, not one per row


def test_gather_rows_after_a_conv_image_with_border():
    # the gathered image is read with a border by a convolution too: the row map reads the interior rows
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    m = typed_model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                     helper.make_node("Conv", ["c", "w2"], ["d"], pads=[1, 1, 1, 1]),
                     helper.make_node("Gather", ["c", "i"], ["g"], axis=3),
                     helper.make_node("Add", ["g", "one"], ["y"])],
                    {"w": w, "w2": RNG.standard_normal((2, 4, 3, 3)).astype(np.float32),
                     "i": np.array([4, 0, 2, 2]), "one": np.float32(1.0)},
                    {"x": (F, [1, 3, 5, 5])}, {"y": (F, [1, 4, 5, 4]), "d": (F, [1, 2, 5, 5])})
    check(m, {"x": rand(1, 3, 5, 5)})


def test_gather_rows_layout_change_is_a_clear_error():
    with pytest.raises(lpusim.CompileError, match="Gather node 'y'.*moves elements between rows and lanes"):
        lpusim.compile(const_gather((2, 3, 4, 5), 1, 0, (3, 4, 5)))  # image -> [C, H, W]: W on the lanes
    with pytest.raises(lpusim.CompileError, match="Gather node 'y'.*moves elements between rows and lanes"):
        lpusim.compile(const_gather((3, 4, 5), [[0, 1], [2, 2]], 0, (2, 2, 4, 5)))  # a 4-D result reads as NCHW


@pytest.mark.parametrize("shape,ind,axis", [
    ((3, 330), [[0, 329, -1], [5, 5, 0]], 1),  # index rows: a lane pattern per output row (masked selections)
    ((2, 5, 3, 4), [4, 0, 0, -1], 1),  # an NCHW image's channels
    ((6, 9), 8, 1),  # one lane of every row: a column becomes one row (one selection per source row)
])
def test_gather_lanes_constant_index_forms(shape, ind, axis):
    out_shape = np.take(np.zeros(shape), np.asarray(ind), axis=axis).shape
    x = rand(*shape).astype(np.float16).astype(np.float32)  # the selections pass the MXM: exact for fp16 values
    check(const_gather(shape, ind, axis, out_shape), {"x": x}, exact=True)


def test_gather_lanes_of_one_row_with_many_index_rows():
    # a 1-D computed table read at constant ids of a large shape (an expanded NegativeLogLikelihoodLoss's weights):
    # too many lane patterns for selections, so lane c broadcast on the MXM times the mask (ids == c), C passes
    ind = RNG.integers(-5, 5, (3, 6, 6, 5, 4))
    x = rand(5).astype(np.float16).astype(np.float32)
    check(const_gather((5,), ind, 0, ind.shape), {"x": x}, exact=True)


# ----- 2. computed data with computed ids: one-hot on the VXM, contraction on the MXM ----------------------------------
def ids_gather(shape, ishape, axis, out_shape):
    return typed_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("Gather", ["r", "ids"], ["y"], axis=axis)],
                       {}, {"x": (F, list(shape)), "ids": (I64, list(ishape))}, {"y": (F, list(out_shape))})


@pytest.mark.parametrize("v,h,ids", [
    (40, 24, [[0, 39, -1, -40, 7], [7, 7, 3, 20, 38]]),  # ends, negative, repeats
    (700, 400, [699, 0, 320, 319, -1, 321]),  # K tiles past 320 rows, output past 320 lanes
])
def test_gather_computed_data_computed_ids_rows(v, h, ids):
    ids = np.asarray(ids, np.int64)
    m = ids_gather((v, h), ids.shape, 0, ids.shape + (h,))
    x = rand(v, h).astype(np.float16).astype(np.float32)  # fp16-exact data: the one-hot selection is exact
    _, result, _ = check(m, {"x": x, "ids": ids}, exact=True)
    assert result.busy["mxm"] > 0
    # f32 data come back rounded to fp16 (relative 2^-11): inside onnxruntime's fp16 tolerance, not exact
    _, _, cmp = check(m, {"x": rand(v, h), "ids": ids})
    assert 0 < cmp["max_rel_error"] < 2e-3


def test_gather_computed_data_large_vocabulary_digits():
    ids = np.array([2499, 0, -1, 256, 255, 1024], np.int64)  # base-256 digits past 2048 (index_digits)
    check(ids_gather((2500, 8), ids.shape, 0, (6, 8)), {"x": rand(2500, 8), "ids": ids})


def test_gather_computed_data_ids_from_argmax():
    # ids computed on the chip (an ArgMax column) pick rows of a computed matrix
    m = typed_model([helper.make_node("ArgMax", ["s"], ["i"], axis=-1), helper.make_node("Relu", ["x"], ["r"]),
                     helper.make_node("Gather", ["r", "i"], ["y"], axis=0)],
                    {}, {"s": (F, [4, 30]), "x": (F, [30, 16])}, {"y": (F, [4, 1, 16])})
    s = RNG.standard_normal((4, 30)).astype(np.float16).astype(np.float32)
    check(m, {"s": s, "x": rand(30, 16).astype(np.float16).astype(np.float32)}, exact=True)


@pytest.mark.parametrize("shape,ids", [
    ((5, 400), [399, 0, -1, -400, 7, 7, 320]),  # lanes past 320, ends, negative, repeats
    ((2, 3, 40), list(range(39, -1, -1)) * 8 + [0] * 10),  # 330 ids: the result spans two lane tiles
])
def test_gather_computed_ids_along_lanes(shape, ids):
    ids = np.asarray(ids, np.int64)
    m = ids_gather(shape, ids.shape, len(shape) - 1, tuple(shape[:-1]) + ids.shape)
    x = rand(*shape).astype(np.float16).astype(np.float32)
    check(m, {"x": x, "ids": ids}, exact=True)
    check(m, {"x": rand(*shape), "ids": ids})


def test_gather_computed_ids_of_any_shape_from_one_row():
    ids = RNG.integers(-7, 7, (3, 1, 6, 6))  # an NCHW-shaped ids tensor: the result has its layout
    ids[0, 0, 0, :2] = [6, -7]
    x = rand(7).astype(np.float16).astype(np.float32)
    check(ids_gather((7,), ids.shape, 0, ids.shape), {"x": x, "ids": ids}, exact=True)


def test_gather_computed_ids_from_constant_data_along_lanes():
    # a constant [R, C] operand gathered along its lanes at computed ids: copied to the chip, then data @ onehot^T
    t = RNG.standard_normal((3, 50)).astype(np.float16).astype(np.float32)
    m = typed_model([helper.make_node("Gather", ["t", "ids"], ["y"], axis=1)], {"t": t},
                    {"ids": (I64, [6])}, {"y": (F, [3, 6])})
    check(m, {"ids": np.array([49, 0, -1, -50, 7, 7])}, exact=True)
    ge = typed_model([helper.make_node("GatherElements", ["t", "i"], ["y"], axis=0)], {"t": t},
                     {"i": (I64, [2, 50])}, {"y": (F, [2, 50])})
    check(ge, {"i": RNG.integers(-3, 3, (2, 50))}, exact=True)


@pytest.mark.parametrize("shape,ids,axis", [
    ((3, 40, 24), [39, 0, -1, 7, 7], 1),  # every matrix of a batch: its rows meet only its own one-hot columns
    ((4, 7, 33), [3, -4, 0], 0),  # whole matrices
    ((2, 8, 6, 5), [5, 0, -1, 2], 2),  # an NCHW image's rows
])
def test_gather_computed_ids_rows_of_batches(shape, ids, axis):
    ids = np.asarray(ids, np.int64)
    out_shape = np.take(np.zeros(shape), ids, axis=axis).shape
    x = rand(*shape).astype(np.float16).astype(np.float32)
    check(ids_gather(shape, ids.shape, axis, out_shape), {"x": x, "ids": ids}, exact=True)


def test_gather_computed_ids_from_a_computed_row():
    # ids computed as a [1, n] row (Cast of floats) go to a column through an SXM transpose, then pick rows
    m = typed_model([helper.make_node("Cast", ["s"], ["ids"], to=I64), helper.make_node("Relu", ["x"], ["r"]),
                     helper.make_node("Gather", ["r", "ids"], ["y"], axis=1)],
                    {}, {"s": (F, [1, 5]), "x": (F, [2, 30, 16])}, {"y": (F, [2, 1, 5, 16])})
    s = np.array([[29.7, 0.2, -1.5, 3.0, 12.9]], np.float32)  # Cast truncates: 29, 0, -1, 3, 12
    with pytest.raises(lpusim.CompileError, match="Gather node 'y'.*laid out differently"):
        lpusim.compile(m)  # [2, 1, 5, 16] would read as an NCHW image
    m = typed_model([helper.make_node("Cast", ["s"], ["ids"], to=I64), helper.make_node("Relu", ["x"], ["r"]),
                     helper.make_node("Gather", ["r", "ids"], ["y"], axis=0)],
                    {}, {"s": (F, [1, 5]), "x": (F, [30, 16])}, {"y": (F, [1, 5, 16])})
    check(m, {"s": s, "x": rand(30, 16).astype(np.float16).astype(np.float32)}, exact=True)


def test_gather_computed_ids_unsupported_forms_are_clear_errors():
    with pytest.raises(lpusim.CompileError, match="Gather node 'y'.*computed ids along axis 0.*laid out"):
        lpusim.compile(ids_gather((3, 4, 5), (2, 2), 0, (2, 2, 4, 5)))  # a 4-D result would read as an image
    with pytest.raises(lpusim.CompileError, match="Gather node 'y'.*one row of ids"):
        lpusim.compile(ids_gather((3, 5), (2, 2), 1, (3, 2, 2)))


# ----- 3. GatherElements with computed indices: one-hot masks ----------------------------------------------------------
def ge_model(shape, ishape, axis):
    return typed_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("GatherElements", ["r", "i"], ["y"], axis=axis)],
                       {}, {"x": (F, list(shape)), "i": (I64, list(ishape))}, {"y": (F, list(ishape))})


def test_gather_elements_computed_indices_along_lanes():
    shape, ishape = (6, 40), (6, 9)
    i = RNG.integers(-40, 40, ishape)
    i[0, :4] = [0, 39, -1, -40]
    x = rand(*shape).astype(np.float16).astype(np.float32)
    check(ge_model(shape, ishape, 1), {"x": x, "i": i}, exact=True)  # fp16-exact data through the MXM: exact
    check(ge_model(shape, ishape, 1), {"x": rand(*shape), "i": i})


def test_gather_elements_computed_indices_past_320_lanes():
    # 330 lanes: the broadcasts of lanes 320.. come from the second weight tile (330 masked passes)
    i = RNG.integers(-330, 330, (6, 20))
    i[0, :4] = [329, 0, -1, -330]
    x = rand(6, 330).astype(np.float16).astype(np.float32)
    check(ge_model((6, 330), (6, 20), 1), {"x": x, "i": i}, exact=True)


@pytest.mark.parametrize("shape,ishape,axis", [
    ((12, 340), (5, 340), 0), ((1, 12, 20), (1, 15, 20), 1),
    ((3, 5, 6), (3, 4, 6), 1),  # a batch of matrices: each pass reads row k of every matrix (a row map)
    ((2, 3, 4, 5), (2, 3, 4, 5), 2),  # an NCHW image along its height
])
def test_gather_elements_computed_indices_along_rows_is_exact(shape, ishape, axis):
    n = shape[axis]
    i = RNG.integers(-n, n, ishape)
    i.reshape(-1)[:4] = [0, n - 1, -1, -n]
    check(ge_model(shape, ishape, axis), {"x": rand(*shape), "i": i}, exact=True)


def test_gather_elements_computed_unsupported_forms():
    with pytest.raises(lpusim.CompileError, match="GatherElements node 'y'.*at most 512"):
        lpusim.compile(ge_model((600, 4), (600, 4), 0))


def test_gather_elements_constant_indices_batched_rows():
    # constant indices along a row axis of several matrices (an expanded NegativeLogLikelihoodLoss): the masked
    # passes of the computed form with the indices as a constant
    ind = RNG.integers(-5, 5, (3, 2, 7))
    m = typed_model([helper.make_node("Neg", ["x"], ["n"]),
                     helper.make_node("GatherElements", ["n", "i"], ["y"], axis=1)],
                    {"i": ind}, {"x": (F, [3, 5, 7])}, {"y": (F, [3, 2, 7])})
    check(m, {"x": rand(3, 5, 7)}, exact=True)


def test_gather_elements_constant_rows_any_order():
    # constant indices that pick one row for every lane, in any order: a row map (exact)
    ind = np.repeat(np.array([[4], [0], [4], [-1], [2]]), 6, axis=1)
    m = typed_model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("GatherElements", ["n", "i"], ["y"])],
                    {"i": ind}, {"x": (F, [5, 6])}, {"y": (F, [5, 6])})
    check(m, {"x": rand(5, 6)}, exact=True)


# ----- 4. GatherND with constant indices -------------------------------------------------------------------------------
def nd_model(shape, ind, out_shape, **attrs):
    return typed_model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("GatherND", ["n", "i"], ["y"], **attrs)],
                       {"i": np.asarray(ind, np.int64)}, {"x": (F, list(shape))}, {"y": (F, list(out_shape))})


@pytest.mark.parametrize("shape,ind,out_shape,attrs", [
    ((2, 5, 24), [[1, 4], [0, 0], [1, -1]], (3, 24), {}),  # (batch, token) pairs
    ((2, 5, 330), [[4], [2]], (2, 330), {"batch_dims": 1}),  # the last token of each sequence (an export's pick)
    ((3, 4, 6), [[1, 2]], (1, 6), {}),
    ((2, 6), [[[0, 1], [0, 3]]], (1, 2), {}),  # scalars of one row: the rows, then an MXM lane selection
    ((3, 400), [[0, 0], [2, 399], [1, 5], [2, -1]], (4,), {}),  # scalars of several rows: one selection per row
    ((2, 3, 5), [[[0, 4], [2, 2]], [[1, 4], [0, 2]]], (2, 2), {"batch_dims": 1}),  # per batch: rows then lanes
    ((3, 4), [[[0, 1], [2, 3]], [[2, 3], [0, 1]]], (2, 2), {}),  # lane patterns differ by row: masked selections
])
def test_gather_nd_constant_indices(shape, ind, out_shape, attrs):
    lanes_move = np.asarray(ind).shape[-1] + attrs.get("batch_dims", 0) == len(shape)  # through the MXM: fp16
    check(nd_model(shape, ind, out_shape, **attrs), {"x": rand(*shape)}, exact=not lanes_move)


def test_gather_nd_unsupported_forms():
    pick = [[k, k % 4] for k in range(70)]  # one element from each of 70 rows into one output row
    with pytest.raises(lpusim.CompileError, match="GatherND node 'y'.*70 MXM lane selections.*at most 64"):
        lpusim.compile(nd_model((70, 4), pick, (70,)))
    m = typed_model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("GatherND", ["n", "i"], ["y"])],
                    {}, {"x": (F, [4, 6]), "i": (I64, [2, 1])}, {"y": (F, [2, 6])})
    with pytest.raises(lpusim.CompileError, match="GatherND node 'y'.*computed indices"):
        lpusim.compile(m)
