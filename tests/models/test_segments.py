"""Segment-by-segment checking (lpusim/check/segments.py) and the int8/uint8 graph inputs and outputs it relies on."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpusim
from lpusim.check.compare import run_onnxruntime
from lpusim.models import bert_encoder, mlp
from lpusim.check.segments import ONE_STEP_FRACTION, SegmentResult, _compare_segment, check_segments, find_cuts, split

RNG = np.random.default_rng(5)


def qdq_matmul(kind: int, rows=8, k=48, n=40):
    """Codes in, codes out: DequantizeLinear(x) @ DequantizeLinear(w) -> QuantizeLinear, x and y of type `kind`."""
    zero = (lambda v: np.uint8(v)) if kind == TensorProto.UINT8 else (lambda v: np.int8(v - 128))
    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w", "sw"], ["wf"]),
             helper.make_node("MatMul", ["xf", "wf"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"])]
    inits = [numpy_helper.from_array(np.float32(0.02), "sx"), numpy_helper.from_array(zero(131), "zx"),
             numpy_helper.from_array(RNG.integers(-127, 128, (k, n)).astype(np.int8), "w"),
             numpy_helper.from_array(np.float32(0.01), "sw"), numpy_helper.from_array(np.float32(0.15), "sy"),
             numpy_helper.from_array(zero(120), "zy")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", kind, [rows, k])],
                          [helper.make_tensor_value_info("yq", kind, [rows, n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("kind", [TensorProto.UINT8, TensorProto.INT8], ids=["uint8", "int8"])
def test_code_inputs_and_outputs_match_onnxruntime(kind):
    """An int8/uint8 graph input read by DequantizeLinear and a QuantizeLinear graph output: random inputs cover
    the whole code range, and every output code equals onnxruntime's (the output has the ONNX type)."""
    m = qdq_matmul(kind)
    program = lpusim.compile(m)
    x = program.random_inputs(0)
    dtype = np.uint8 if kind == TensorProto.UINT8 else np.int8
    assert x["x"].dtype == dtype and int(x["x"].min()) == np.iinfo(dtype).min and \
        int(x["x"].max()) == np.iinfo(dtype).max
    result = program.run(x)
    ref, _ = run_onnxruntime(m, x)
    assert result.outputs["yq"].dtype == dtype
    np.testing.assert_array_equal(result.outputs["yq"], ref["yq"])
    assert len(np.unique(ref["yq"])) > 50  # the codes are spread, not saturated


def test_int8_encoder_splits_at_every_layernorm_and_residual_sum():
    """Post-LN encoder at int8: four cuts per layer (two residual sums, two LayerNorms), the last segment ends at
    the float output; every segment matches, from onnxruntime's codes at its start."""
    model = bert_encoder(layers=2, hidden=64, heads=4, seq=16)
    results = check_segments(model, precision="int8")
    assert len(results) == 8
    assert all(r.match for r in results), [r.reason for r in results if not r.match]
    assert all(r.codes > 0 for r in results[:-1]) and results[-1].codes == 0  # the last output is float
    assert results[-1].max_rel_error < 1e-6
    assert sum(r.codes_off for r in results) <= ONE_STEP_FRACTION * sum(r.codes for r in results)
    # each segment's inputs are the codes the previous one ended with
    for a, b in zip(results, results[1:]):
        assert set(b.inputs) <= set(a.outputs)


def test_segments_of_a_float_model_at_given_cuts():
    """fp16: no QuantizeLinear, so no cut is found; cuts named by hand split an MLP between its layers."""
    model = mlp((64, 96, 80, 10), batch=4, seed=1)
    assert find_cuts(model) == []
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    results = check_segments(model, cuts=relus)
    assert len(results) == len(relus) + 1 and all(r.match for r in results)
    assert [r.outputs for r in results[:-1]] == [[c] for c in relus]


def test_a_cut_that_does_not_separate_is_a_clear_error():
    model = bert_encoder(layers=1, hidden=64, heads=4, seq=16)
    q_input = next(n.output[0] for n in model.graph.node if n.op_type == "MatMul")  # a residual path bypasses it
    with pytest.raises(lpusim.CompileError, match=f"cut '{q_input}': a path from the graph inputs"):
        split(model, [q_input])
    with pytest.raises(lpusim.CompileError, match="cut 'nope': no node of the model produces"):
        split(model, ["nope"])


def test_the_segment_rule_fails_on_codes_two_steps_off_or_too_many_one_step_off():
    ref = {"q": np.arange(200, dtype=np.uint8)}
    for sim, ok in [(ref["q"].copy(), True), (ref["q"] + np.r_[1, np.zeros(199)].astype(np.uint8), True),
                    (ref["q"] + np.r_[2, np.zeros(199)].astype(np.uint8), False),
                    (ref["q"] + np.r_[np.ones(3), np.zeros(197)].astype(np.uint8), False)]:
        r = SegmentResult(0, [], ["q"], False, 0)
        _compare_segment({"q": sim}, ref, r)
        assert r.match is ok, (r.codes_off, r.max_code_diff, r.reason)
        assert ok or "codes differ" in r.reason


def test_cli_segments_json(tmp_path):
    path = tmp_path / "enc.onnx"
    onnx.save(bert_encoder(layers=1, hidden=64, heads=4, seq=16), path)
    proc = subprocess.run([sys.executable, "-m", "lpusim.cli", "segments", str(path), "--precision", "int8",
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["segments"] == 4 and report["all_match"] and len(report["per_segment"]) == 4
    assert report["codes"] > 0 and report["cycles"] == sum(s["cycles"] for s in report["per_segment"])
    proc = subprocess.run([sys.executable, "-m", "lpusim.cli", "segments", str(path), "--cut", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "cut 'nope'" in proc.stderr and "Traceback" not in proc.stderr
