"""Embedding lookups by MEM GATHER (lower/lookup.py, schedule/lookup.py): Gather along axis 0 of a constant table
with computed ids copies whole f32 rows byte for byte, so the outputs equal onnxruntime's exactly; simulated
cycles equal the prediction (assert_matches_onnxruntime), timing-only runs too."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
from lpusim.check.compare import run_onnxruntime
from onnx_cases import assert_matches_onnxruntime, typed_model

F, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(15)


def lookup_model(table, ids_shape, after="Identity"):
    """Gather(table, ids) then `after` (Identity: the lookup is the output; MatMul: its f16 copy feeds the MXM)."""
    v, h = table.shape
    out = list(ids_shape) + [h]
    if after == "MatMul":
        w = RNG.standard_normal((h, 5)).astype(np.float32)
        return typed_model([helper.make_node("Gather", ["t", "ids"], ["e"]),
                            helper.make_node("MatMul", ["e", "w"], ["y"])],
                           {"t": table, "w": w}, {"ids": (I64, list(ids_shape))}, {"y": (F, list(ids_shape) + [5])})
    return typed_model([helper.make_node("Gather", ["t", "ids"], ["g"]), helper.make_node(after, ["g"], ["y"])],
                       {"t": table}, {"ids": (I64, list(ids_shape))}, {"y": (F, out)})


def check_exact(m, ids):
    program, result, _ = assert_matches_onnxruntime(m, {"ids": ids})
    ref, _ = run_onnxruntime(m, {"ids": ids})
    np.testing.assert_array_equal(result.outputs["y"], ref["y"])  # bit for bit (the table's bytes copied)
    assert "GATHER" in program.assembly and result.busy["mxm"] == 0
    return program, result


@pytest.mark.parametrize("v, h", [(1, 8), (37, 24), (8192, 16), (8193, 16), (20000, 700)])
def test_lookup_ids_at_the_ends_repeated_and_negative(v, h):
    # one group, a group of exactly one slice's 8192 rows, one row past it, three groups of three column tiles
    table = RNG.standard_normal((v, h)).astype(np.float32)
    ids = RNG.integers(-v, v, (3, 9))
    ids[0, :6] = [0, v - 1, -1, -v, 0, v - 1]  # both ends, from the front and from the back, repeated
    ids[1, :] = ids[1, 0]  # one id nine times
    check_exact(lookup_model(table, (3, 9)), ids)


def test_lookup_group_boundaries_and_two_passes():
    # 41,000 rows: 6 groups of 8192 rows per tile, so two passes (at most 2 groups a hemisphere each), the second
    # ORing the first's partial result; every group's first and last row
    v = 41_000
    table = RNG.standard_normal((v, 12)).astype(np.float32)
    edges = sorted({e for k in range(6) for e in (8192 * k, min(v, 8192 * (k + 1)) - 1)})
    ids = np.array([edges + [-1, -v]], dtype=np.int64)
    program, _ = check_exact(lookup_model(table, ids.shape), ids)
    assert program.assembly.count("GATHER") == 6 * 4  # 6 groups x 4 byte planes


def test_lookup_special_values_are_copied_bit_for_bit():
    # -0.0, infinities, subnormals and a NaN payload: OR on the VXM keeps the bits where an f32 ADD would not
    table = np.array([[-0.0, np.inf, -np.inf, 1e-45], [np.float32(np.nan), 3.0, -0.0, 2.0 ** -130]],
                     dtype=np.float32)
    m = lookup_model(table, (1, 4))
    program = lpusim.compile(m)
    ids = np.array([[0, 1, 1, 0]], dtype=np.int64)
    result = program.run({"ids": ids})
    ref, _ = run_onnxruntime(m, {"ids": ids})
    assert result.outputs["y"].view(np.uint32).tolist() == ref["y"].view(np.uint32).tolist()


def test_lookup_out_of_range_ids_give_zero_rows():
    # onnxruntime refuses ids outside -V..V-1; the chip gives a zero row (the id column holds -1 for them)
    v = 10_000
    table = RNG.standard_normal((v, 8)).astype(np.float32) + 5.0
    program = lpusim.compile(lookup_model(table, (1, 6)))
    ids = np.array([[v, -v - 1, 3, 2 ** 20, -(2 ** 20), 9999]], dtype=np.int64)
    y = program.run({"ids": ids}).outputs["y"][0]
    assert not y[[0, 1, 3, 4]].any()
    np.testing.assert_array_equal(y[[2, 5]], table[[3, 9999]])


def test_lookup_feeding_the_mxm_gets_its_f16_copy():
    # the lookup's output read by a MatMul: the pass also writes the (scaled) f16 copy
    table = (RNG.standard_normal((300, 40)) * 1e5).astype(np.float32)  # beyond fp16's range: a scaled copy
    m = lookup_model(table, (2, 5), after="MatMul")
    ids = RNG.integers(0, 300, (2, 5))
    program, result, cmp = assert_matches_onnxruntime(m, {"ids": ids})
    assert "GATHER" in program.assembly and "CVT.f32.f16" in program.assembly


@pytest.mark.slow
def test_lookup_of_more_than_57344_rows_clamps_the_maps():
    # 60,000 rows: 8 groups, so an id of group 0 minus 8192 * 7 wraps into the slice: the maps are clamped
    v = 60_000
    table = RNG.standard_normal((v, 4)).astype(np.float32)
    ids = np.array([[0, 1, 8191, 57343, 57344, v - 1, -1, -v]], dtype=np.int64)
    program, _ = check_exact(lookup_model(table, ids.shape), ids)
    assert "MIN.i32" in program.assembly


def test_lookup_ids_from_a_computed_row_and_column():
    # ids computed on the chip: a [1, S] row (an SXM transpose to a column first) and an ArgMax column
    v = 9000
    table = RNG.standard_normal((v, 16)).astype(np.float32)
    m = typed_model([helper.make_node("Cast", ["x"], ["ids"], to=I64), helper.make_node("Gather", ["t", "ids"], ["y"])],
                    {"t": table}, {"x": (F, [1, 12])}, {"y": (F, [1, 12, 16])})
    x = np.array([[0, 8191, 8192, v - 1, -1, -v, 5, 5, 4000.7, -3.2, 8500, 1]], dtype=np.float32)
    program, result, _ = assert_matches_onnxruntime(m, {"x": x})
    ref, _ = run_onnxruntime(m, {"x": x})
    np.testing.assert_array_equal(result.outputs["y"], ref["y"])
    m = typed_model([helper.make_node("ArgMax", ["x"], ["i"], axis=-1), helper.make_node("Gather", ["t", "i"], ["g"]),
                     helper.make_node("Squeeze", ["g", "ax"], ["y"])],
                    {"t": table[:30], "ax": np.array([1])}, {"x": (F, [4, 30])}, {"y": (F, [4, 16])})
    x = RNG.standard_normal((4, 30)).astype(np.float16).astype(np.float32)
    program, result, _ = assert_matches_onnxruntime(m, {"x": x})
    ref, _ = run_onnxruntime(m, {"x": x})
    np.testing.assert_array_equal(result.outputs["y"], ref["y"])


def test_gathers_the_lookup_does_not_take_keep_the_one_hot_path():
    # computed data, or a Gather along the lanes: the one-hot matmul of lower/index.py (on the MXM)
    m = typed_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gather", ["r", "ids"], ["y"])],
                    {}, {"x": (F, [50, 8]), "ids": (I64, [1, 6])}, {"y": (F, [1, 6, 8])})
    program, result, _ = assert_matches_onnxruntime(m)
    assert "GATHER" not in program.assembly and result.busy["mxm"] > 0


@pytest.mark.slow
def test_lookup_table_too_large_for_f32_groups_is_stored_in_f16():
    # 50,000 x 650 (GPT-2's vocabulary, 3 column tiles): 21 groups of 4 slices in f32 are more than a chip keeps
    # free; in f16 (2 slices a group) it fits: the rows come back as the fp16-rounded table, converted exactly
    v = 50_000
    table = RNG.standard_normal((v, 650)).astype(np.float32)
    ids = np.array([[0, 8191, 8192, 40959, 40960, v - 1, -1, 7]], dtype=np.int64)
    m = lookup_model(table, ids.shape)
    program, result, _ = assert_matches_onnxruntime(m, {"ids": ids})
    assert "CVT.f16.f32" in program.assembly and program.assembly.count("GATHER") == 21 * 2
    want = table[np.where(ids < 0, ids + v, ids)].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(result.outputs["y"], want)


def test_lookup_program_agrees_with_the_reference_interpreter():
    """A compiled lookup (SUB.i32, PERMUTE, GATHER, OR.i32 and an f16 copy's CVT) gives the same cycles and bytes on
    the Rust core and on the Python reference interpreter (docs/isa.md is the contract)."""
    import json

    from lpusim import _lpusim
    from lpusim.reference import run as reference_run

    table = RNG.standard_normal((9000, 20)).astype(np.float32)
    m = lookup_model(table, (1, 5), after="MatMul")
    program = lpusim.compile(m)
    assert all(op in program.assembly for op in ("GATHER", "PERMUTE", "OR.i32", "SUB.i32", "CVT.f32.f16"))
    mem, dumps = program._mem_image({"ids": np.array([[0, 8999, -1, 8192, 8191]], dtype=np.int64)})
    stats, rust = _lpusim.simulate(program.chip.to_json(), program.assembly, mem, dumps, False)
    ref_stats, ref = reference_run(program.assembly, json.loads(program.chip.to_json()), mem, dumps)
    assert ref_stats["cycles"] == stats["cycles"] == program.predicted_cycles
    for a, b in zip(rust, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
