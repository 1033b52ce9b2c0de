"""Index-valued ops (lower/index.py): ArgMax/ArgMin, Gather with computed ids, GatherElements, Resize (lower/resize.py),
Range, Cast to integers, bool/integer graph inputs: compiled, simulated, compared with onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
from lpusim.check.compare import run_onnxruntime
from onnx_cases import assert_matches_onnxruntime, make_model, typed_model

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RNG = np.random.default_rng(5)


def exact(m, inputs=None):
    """Simulate and require onnxruntime's values and dtypes exactly (indices, copies)."""
    program, result, _ = assert_matches_onnxruntime(m, inputs)
    ref, _ = run_onnxruntime(m, inputs if inputs is not None else program.random_inputs(0))
    for name, r in ref.items():  # bool outputs come back as 1.0/0.0 (lpusim.backend returns them as bool)
        assert result.outputs[name].dtype == (np.float32 if r.dtype == np.bool_ else r.dtype), name
        np.testing.assert_array_equal(result.outputs[name], r)
    return program, result


# ----- ArgMax / ArgMin ---------------------------------------------------------------------------------------------
def argmax_model(op, shape, out_shape, **attrs):
    return typed_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r"], ["y"], **attrs)], {},
                       {"x": (F, list(shape))}, {"y": (I64, list(out_shape))})


@pytest.mark.parametrize("op,last", [("ArgMax", 0), ("ArgMax", 1), ("ArgMin", 0), ("ArgMin", 1)])
def test_argmax_lanes_keepdims_ties(op, last):
    x = RNG.standard_normal((6, 40)).astype(np.float16).astype(np.float32)  # fp16 values: the MXM moves them exactly
    x[0] = 0.0  # Relu: a row of ties, the first (or last) index wins
    x[1, [3, 17, 30]] = 9.0  # a tie of maxima
    x[2, [5, 21]] = -9.0  # a tie of minima (Relu: all zeros there too)
    exact(argmax_model(op, (6, 40), (6, 1), axis=-1, keepdims=1, select_last_index=last), {"x": x})


def test_argmax_keepdims0_output_and_3d():
    x = RNG.standard_normal((2, 5, 33)).astype(np.float16).astype(np.float32)
    exact(argmax_model("ArgMax", (2, 5, 33), (2, 5), axis=2, keepdims=0), {"x": x})


def test_argmax_image_channels():
    x = RNG.standard_normal((1, 7, 3, 4)).astype(np.float16).astype(np.float32)
    exact(argmax_model("ArgMax", (1, 7, 3, 4), (1, 1, 3, 4), axis=1), {"x": x})


@pytest.mark.parametrize("op,shape,axis,keep,last", [
    ("ArgMax", (7, 40), 0, 1, 0), ("ArgMin", (7, 40), 0, 0, 1), ("ArgMax", (3, 5, 6), 1, 0, 0),
    ("ArgMax", (4, 3, 6), 0, 1, 1), ("ArgMin", (2, 9, 5), -2, 1, 0), ("ArgMax", (1, 5), 0, 1, 0),
])
def test_argmax_along_rows_is_exact(op, shape, axis, keep, last):
    # a halving tree on the VXM in float32: exact, ties included (no fp16 rounding on this path)
    x = RNG.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    flat[:2, :3] = 2.5  # ties along the axis
    flat[:, 4] = 0.0  # a column of ties (Relu keeps 0)
    out_shape = tuple(1 if i == axis % len(shape) else d for i, d in enumerate(shape)) if keep else \
        tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
    exact(argmax_model(op, shape, out_shape, axis=axis, keepdims=keep, select_last_index=last), {"x": x})


def test_argmax_of_a_graph_input_along_rows():
    m = typed_model([helper.make_node("ArgMax", ["x"], ["y"], axis=0)], {}, {"x": (F, [5, 8])}, {"y": (I64, [1, 8])})
    exact(m)


def test_argmax_image_spatial_axis_is_a_clear_error():
    with pytest.raises(lpusim.CompileError, match="ArgMax node 'y'.*axis 2"):
        lpusim.compile(argmax_model("ArgMax", (1, 3, 4, 4), (1, 3, 1, 4), axis=2))


def test_argmax_feeds_a_gather_of_a_table():
    # a computed index column (ArgMax, keepdims) selects rows of a constant table: classifier -> label embedding
    table = RNG.standard_normal((30, 16)).astype(np.float32)
    m = typed_model([helper.make_node("ArgMax", ["x"], ["i"], axis=-1), helper.make_node("Gather", ["t", "i"], ["g"]),
                     helper.make_node("Squeeze", ["g", "ax"], ["y"])],
                    {"t": table, "ax": np.array([1])}, {"x": (F, [4, 30])}, {"y": (F, [4, 16])})
    x = RNG.standard_normal((4, 30)).astype(np.float16).astype(np.float32)
    program, result, _ = assert_matches_onnxruntime(m, {"x": x})
    ref, _ = run_onnxruntime(m, {"x": x})
    np.testing.assert_allclose(result.outputs["y"], ref["y"], rtol=1e-3)  # whole rows of the fp16 table


# ----- Gather with computed ids (embeddings) -------------------------------------------------------------------------
def embedding_model(v, h, ids_shape):
    table = RNG.standard_normal((v, h)).astype(np.float32)
    return typed_model([helper.make_node("Gather", ["t", "ids"], ["e"]), helper.make_node("Relu", ["e"], ["y"])],
                       {"t": table}, {"ids": (I64, list(ids_shape))}, {"y": (F, list(ids_shape) + [h])})


@pytest.mark.parametrize("v", [50, 3000])
def test_gather_token_ids(v):
    # an embedding lookup: MEM GATHER of whole f32 rows (lower/lookup.py), exact, no MXM (tests/ops/test_lookup.py)
    m = embedding_model(v, 24, (2, 7))
    program, result, cmp = assert_matches_onnxruntime(m)  # random ids in [0, v)
    assert program.random_inputs(0)["ids"].dtype == np.int64
    ids = RNG.integers(-v, v, (2, 7))  # negative ids count from the end
    ids[0, :3] = [0, v - 1, -v]
    program, result = exact(m, {"ids": ids})
    assert result.busy["mxm"] == 0 and "GATHER" in program.assembly


def test_gather_ids_from_a_computed_row():
    # float -> Cast(int64) truncates on the VXM; the [1, S] row of ids goes to a column through an SXM transpose
    v = 2500
    table = RNG.standard_normal((v, 8)).astype(np.float32)
    m = typed_model([helper.make_node("Cast", ["x"], ["ids"], to=I64), helper.make_node("Gather", ["t", "ids"], ["y"])],
                    {"t": table}, {"x": (F, [1, 12])}, {"y": (F, [1, 12, 8])})
    x = (RNG.uniform(-v, v, (1, 12))).astype(np.float32)
    program, result, cmp = assert_matches_onnxruntime(m, {"x": x})
    assert cmp["max_rel_error"] < 2e-3


def test_cast_to_int64_truncates():
    m = typed_model([helper.make_node("Mul", ["x", "k"], ["s"]), helper.make_node("Cast", ["s"], ["y"], to=I64)],
                    {"k": np.float32(7.0)}, {"x": (F, [3, 20])}, {"y": (I64, [3, 20])})
    exact(m)


def test_integer_and_bool_inputs():
    m = typed_model([helper.make_node("Cast", ["mask"], ["mf"], to=F), helper.make_node("Mul", ["x", "mf"], ["a"]),
                     helper.make_node("Where", ["keep", "a", "c"], ["y"])],
                    {"c": np.float32(-1.0)},
                    {"x": (F, [4, 9]), "mask": (TensorProto.INT32, [4, 9]), "keep": (B, [4, 9])},
                    {"y": (F, [4, 9])})
    program = lpusim.compile(m)
    inputs = program.random_inputs(3)
    assert inputs["mask"].dtype == np.int32 and inputs["keep"].dtype == np.bool_
    assert set(np.unique(inputs["mask"])) <= {1, 2}
    exact(m, inputs)
    with pytest.raises(lpusim.ModelError, match="input 'mask'.*16777217"):
        program.run(dict(inputs, mask=np.full((4, 9), 2 ** 24 + 1, np.int32)))
    with pytest.raises(lpusim.ModelError, match="input 'keep' is declared bool"):
        program.run(dict(inputs, keep=np.zeros((4, 9), np.float32)))


def test_unsupported_element_type_and_gather_forms():
    m = typed_model([helper.make_node("Cast", ["x"], ["y"], to=F)], {}, {"x": (TensorProto.STRING, [2])},
                    {"y": (F, [2])})
    with pytest.raises(lpusim.CompileError, match="input 'x': element type STRING"):
        lpusim.compile(m)
    m = typed_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gather", ["r", "ids"], ["y"], axis=1)],
                    {}, {"x": (F, [4, 9]), "ids": (I64, [2, 2])}, {"y": (F, [4, 2, 2])})
    with pytest.raises(lpusim.CompileError, match="Gather node 'y'.*computed ids along the lanes.*one row of ids"):
        lpusim.compile(m)  # (one row of computed ids along the lanes works: tests/ops/test_gathers.py)


# ----- GatherElements -------------------------------------------------------------------------------------------------
def test_gather_elements_lanes_row_patterns():
    ind = np.array([[3, 0, 0, 7], [1, 1, 2, 2], [3, 0, 0, 7], [-1, 5, 4, 6]])
    m = make_model([helper.make_node("Neg", ["x"], ["n"]),
                    helper.make_node("GatherElements", ["n", "i"], ["y"], axis=1)],
                   {"i": ind}, {"x": [4, 8]})
    exact(m, {"x": RNG.standard_normal((4, 8)).astype(np.float16).astype(np.float32)})


def test_gather_elements_rows_and_errors():
    ind = np.repeat(np.array([[0], [2], [4]]), 6, axis=1)
    m = make_model([helper.make_node("Neg", ["x"], ["n"]),
                    helper.make_node("GatherElements", ["n", "i"], ["y"], axis=0)],
                   {"i": ind}, {"x": [5, 6]})
    exact(m)
    mixed = make_model([helper.make_node("Neg", ["x"], ["n"]),
                        helper.make_node("GatherElements", ["n", "i"], ["y"], axis=0)],
                       {"i": np.array([[0, 1, 2], [1, 0, -1], [2, 2, 0], [0, 0, 0]])}, {"x": [3, 3]})
    exact(mixed)  # onnx's test_gather_elements_1 form: each lane its own row
    batched = make_model([helper.make_node("Neg", ["x"], ["n"]),
                          helper.make_node("GatherElements", ["n", "i"], ["y"], axis=1)],
                         {"i": np.array([[[0, 1], [1, 0]], [[1, 1], [0, 0]]])}, {"x": [2, 2, 2]})
    exact(batched)  # several matrices: masked row passes (lower/gather.py)
    computed = typed_model([helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1)], {},
                           {"x": (F, [2, 3]), "i": (I64, [2, 1])}, {"y": (F, [2, 1])})
    assert_matches_onnxruntime(computed)  # computed indices: one-hot masks (tests/ops/test_gathers.py)
    with pytest.raises(lpusim.CompileError, match="GatherElements node 'y'.*indices of shape"):
        lpusim.compile(typed_model([helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1)], {},
                                   {"x": (F, [2, 3]), "i": (I64, [1, 1])}, {"y": (F, [1, 1])}))


# ----- Resize ---------------------------------------------------------------------------------------------------------
def resize_model(shape, scales, then_conv=False, **attrs):
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Resize", ["r", "", "s"], ["q" if then_conv else "y"], mode="nearest", **attrs)]
    inits = {"s": np.array(scales, np.float32)}
    if then_conv:
        nodes.append(helper.make_node("Conv", ["q", "w"], ["y"], pads=[1, 1, 1, 1]))
        inits["w"] = RNG.standard_normal((4, shape[1], 3, 3)).astype(np.float32)
    return make_model(nodes, inits, {"x": list(shape)})


@pytest.mark.parametrize("shape,scales,attrs", [
    ((1, 3, 4, 5), [1, 1, 2, 2], {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
    ((2, 5, 3, 4), [1, 1, 3, 2], {}),  # half_pixel, round_prefer_floor (the defaults)
    ((1, 4, 3, 6), [1, 1, 2, 1], {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
])
def test_resize_nearest_upsampling_is_exact(shape, scales, attrs):
    exact(resize_model(shape, scales, **attrs))


@pytest.mark.parametrize("shape,scales,attrs", [
    ((1, 3, 4, 6), [1, 1, 0.5, 0.5], {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
    ((2, 2, 6, 9), [1, 1, 1 / 3, 1 / 3], {}),  # half_pixel: the middle pixel of each 3x3 block
    ((1, 2, 2, 4), [1, 1, 0.6, 0.6], {}),  # onnx's test_resize_downsample_scales_nearest: 1x2 of 2x4
])
def test_resize_nearest_downsampling_is_a_strided_view(shape, scales, attrs):
    exact(resize_model(shape, scales, **attrs))


def test_resize_then_conv():
    program, result, cmp = assert_matches_onnxruntime(resize_model((1, 3, 4, 4), [1, 1, 2, 2], then_conv=True,
                                                                   coordinate_transformation_mode="asymmetric",
                                                                   nearest_mode="floor"))
    assert cmp["max_rel_error"] < 1e-2


def test_resize_sizes_input():
    m = make_model([helper.make_node("Relu", ["x"], ["r"]),
                    helper.make_node("Resize", ["r", "", "", "sz"], ["y"], mode="nearest")],
                   {"sz": np.array([1, 2, 6, 8], np.int64)}, {"x": [1, 2, 3, 4]})
    exact(m)


@pytest.mark.parametrize("scales,attrs", [
    ([1, 1, 2, 2], {"coordinate_transformation_mode": "half_pixel", "nearest_mode": "floor"}),
    ([1, 1, 1.5, 1.5], {}),
    ([1, 1, 0.75, 0.75], {}),
])
def test_resize_any_nearest_map_is_exact(scales, attrs):
    """Maps that were refused before lower/resize.py (more forms: tests/ops/test_resize.py)."""
    exact(resize_model((1, 2, 4, 4), scales, **attrs))


# ----- Range ----------------------------------------------------------------------------------------------------------
def test_range_from_a_shape_folds():
    # positions 0..S-1 from Shape(x): folded on the host, added on the chip
    m = make_model([helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Gather", ["sh", "one"], ["n"]),
                    helper.make_node("Range", ["zero", "n", "step"], ["pos"]),
                    helper.make_node("Cast", ["pos"], ["pf"], to=F), helper.make_node("Add", ["x", "pf"], ["y"])],
                   {"one": np.array(1), "zero": np.array(0), "step": np.array(1)}, {"x": [3, 11]})
    exact(m, {"x": RNG.standard_normal((3, 11)).astype(np.float32)})


def test_range_of_computed_values_is_a_clear_error():
    m = typed_model([helper.make_node("Relu", ["x"], ["n"]), helper.make_node("Range", ["z", "n", "o"], ["y"])],
                    {"z": np.float32(0), "o": np.float32(1)}, {"x": (F, [])}, {"y": (F, [None])})
    with pytest.raises(lpusim.CompileError, match="Range node 'y'.*computed input.* n"):
        lpusim.compile(m)


def test_flatten_to_a_column_and_back_is_an_sxm_transpose():
    # an exported attention mask's path: Flatten(axis=rank) of a [1, S] row, a full Gather of its rows, back to a row
    m = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["c"], axis=2),
                    helper.make_node("Gather", ["c", "pos"], ["g"], axis=0),
                    helper.make_node("Reshape", ["g", "row"], ["t"]), helper.make_node("Mul", ["t", "k"], ["y"])],
                   {"pos": np.arange(12).reshape(1, 12), "row": np.array([1, 12]),
                    "k": RNG.standard_normal((1, 12)).astype(np.float32)}, {"x": [1, 12]})
    program, result, cmp = assert_matches_onnxruntime(m)
    assert cmp["max_rel_error"] < 2e-3


def test_integer_div_truncates():
    i32 = TensorProto.INT32
    m = typed_model([helper.make_node("Div", ["a", "b"], ["y"])], {}, {"a": (i32, [2, 5]), "b": (i32, [2, 5])},
                    {"y": (i32, [2, 5])})
    a = np.array([[7, -7, 9, -1, 0], [100, -100, 5, 6, -9]], np.int32)
    b = np.array([[2, 2, -4, 3, 5], [7, 7, 5, -6, 2]], np.int32)
    exact(m, {"a": a, "b": b})


# ----- a computed attention mask (int64 input) and the -inf / IsNaN forms transformers exports ---------------------
def masked_attention_model(s=8, hidden=16, heads=2):
    d = hidden // heads
    rng = np.random.default_rng(3)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
    inits = {"wq": w(hidden, hidden), "wk": w(hidden, hidden), "wv": w(hidden, hidden),
             "split": np.array([1, s, heads, d]), "merge": np.array([1, s, hidden]),
             "row4": np.array([1, 1, 1, s]), "full": np.array([1, 1, s, s]), "zero": np.array([0.0], np.float32),
             "ninf": np.array([-np.inf], np.float32), "scale": np.float32(np.sqrt(d)),
             "alltrue": np.ones((1, 1, s, 1), np.bool_)}
    nodes = [helper.make_node("Cast", ["m"], ["mb"], to=B), helper.make_node("Reshape", ["mb", "row4"], ["m4"]),
             helper.make_node("And", ["alltrue", "m4"], ["ma"]), helper.make_node("Expand", ["ma", "full"], ["me"]),
             helper.make_node("Where", ["me", "zero", "ninf"], ["madd"])]
    nodes += [helper.make_node("MatMul", ["x", f"w{t}"], [t]) for t in "qkv"]
    nodes += [helper.make_node("Reshape", [t, "split"], [f"{t}4"]) for t in "qkv"]
    nodes += [helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qt", "kt"], ["sc"]), helper.make_node("Div", ["sc", "scale"], ["sd"]),
              helper.make_node("Add", ["sd", "madd"], ["sm"]), helper.make_node("Softmax", ["sm"], ["p0"], axis=-1),
              helper.make_node("IsNaN", ["p0"], ["nan"]), helper.make_node("Where", ["nan", "zero", "p0"], ["p"]),
              helper.make_node("MatMul", ["p", "vt"], ["c"]),
              helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ct", "merge"], ["y"])]
    return typed_model(nodes, inits, {"x": (F, [1, s, hidden]), "m": (I64, [1, s])}, {"y": (F, [1, s, hidden])})


def test_computed_attention_mask_row():
    # the mask stays one [1, S] row (lower_index.lower_maskrow); Where(m, 0, -inf) is 0 + log(m); IsNaN is x != x
    m = masked_attention_model()
    x = RNG.standard_normal((1, 8, 16)).astype(np.float32)
    for mask in ([1] * 8, [1] * 5 + [0] * 3, [0, 1, 1, 0, 1, 1, 1, 0]):
        program, result, cmp = assert_matches_onnxruntime(m, {"x": x, "m": np.array([mask], np.int64)})
        assert cmp["max_rel_error"] < 1e-2


def test_where_with_an_infinite_branch_and_isnan():
    m = typed_model([helper.make_node("Greater", ["x", "z"], ["c"]),
                     helper.make_node("Where", ["c", "x", "ninf"], ["a"]),
                     helper.make_node("Where", ["c", "pinf", "x"], ["b"]), helper.make_node("Sub", ["a", "b"], ["d"]),
                     helper.make_node("IsNaN", ["d"], ["y"])],
                    {"z": np.float32(0.0), "ninf": np.float32(-np.inf), "pinf": np.float32(np.inf)},
                    {"x": (F, [3, 10])}, {"a": (F, [3, 10]), "b": (F, [3, 10]), "y": (B, [3, 10])})
    program, result = exact(m)  # a - b is x - inf or -inf - x: never NaN unless 0 * inf crept in
    assert not result.outputs["y"].any() and np.isinf(result.outputs["a"]).any() and np.isinf(result.outputs["b"]).any()
    nan = [helper.make_node("Log", ["x"], ["l"]), helper.make_node("IsNaN", ["l"], ["y"])]
    program, result = exact(typed_model(nan, {}, {"x": (F, [2, 9])}, {"y": (B, [2, 9])}))
    assert result.outputs["y"].any()  # log of negative values
