"""Softmax/LogSoftmax over the lanes turned into rows (lower/norms.py `turned_softmax`): the rows turned on the SXM, the
exact float32 row maximum by a VXM tree, the sums of the exponentials by one MXM vector, turned back. Compared with
onnxruntime (cycles equal to the prediction) on inputs whose maximum must be subtracted exactly: offsets far past
fp16's precision (1e4, 1e6, 1e30, where exp without the shift overflows and an fp16 shift would be off by far more
than the spread of the row), a finite mask far below every score, images (axis 1), rows past 320 lanes of the
turned tensor, and the rule that picks the route."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lpusim.check.compare import run_onnxruntime
from lpusim.compiler import build_graph
from lpusim.compiler.lower.norms import turned_pays
from lpusim.models import bert_encoder
from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(11)


def softmax_model(op, shape, axis=-1):
    return make_model([helper.make_node(op, ["x"], ["y"], axis=axis)], {}, {"x": list(shape)})


def turned(m, x) -> bool:
    """Whether the model's Softmax goes the turned route: transposes on the SXM, no lane rotations."""
    _, g = build_graph(m, precision="fp16", calibration=x)
    return any(n.onnx_op in ("Softmax", "LogSoftmax") and n.kind == "transpose" for n in g.nodes)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("offset", [1e4, 1e6, 1e30])
@pytest.mark.parametrize("shape", [(64, 128), (3, 40, 96)])
def test_large_offsets_match_onnxruntime(op, offset, shape):
    """Scores near +-offset spread over a few units: the result depends on the differences only, which fp16 (and
    any shift off by more than a unit) would lose; the exact float32 maximum keeps them. (At 1e30 the spread is
    below float32's spacing: the top scores tie and share the row.)"""
    x = (RNG.choice([-1.0, 1.0], shape) * offset + RNG.uniform(-6.0, 6.0, shape)).astype(np.float32)
    x[..., 0] = offset + 1.0  # every row has a score near the top
    m = softmax_model(op, shape)
    _, result, _ = assert_matches_onnxruntime(m, {"x": x}, calibration={"x": x})
    assert turned(m, {"x": x})
    ref, _ = run_onnxruntime(m, {"x": x})
    # only the fp16 exponentials the MXM sums are rounded
    np.testing.assert_allclose(result.outputs["y"], ref["y"], rtol=2e-3, atol=1e-5 if op == "Softmax" else 2e-3)


def test_far_finite_mask_rows_are_uniform():
    """A finite mask far below every score (transformers' finfo(float32).min): masked entries exp to 0 and a row
    masked everywhere is uniform, as onnxruntime's is."""
    shape = (32, 64)
    x = RNG.uniform(-4.0, 4.0, shape).astype(np.float32)
    x[:, 40:] += np.finfo(np.float32).min
    x[5] = np.finfo(np.float32).min
    m = softmax_model("Softmax", shape)
    _, result, _ = assert_matches_onnxruntime(m, {"x": x}, calibration={"x": x})
    assert turned(m, {"x": x})
    np.testing.assert_allclose(result.outputs["y"][5], 1.0 / 64, rtol=1e-6)


@pytest.mark.parametrize("op, shape, axis", [("Softmax", (2, 24, 5, 7), 1), ("LogSoftmax", (400, 64), -1),
                                             ("Softmax", (1, 700, 20), -1), ("Softmax", (1, 320), -1)])
def test_images_and_many_rows_match_onnxruntime(op, shape, axis):
    """An image's channels (axis 1: the rows are its pixels), and more than 320 rows (the turned tensor's rows span
    several lane tiles); a single row of 320 lanes stays on the rotation tree."""
    m = softmax_model(op, shape, axis)
    x = {"x": RNG.uniform(-30.0, 30.0, shape).astype(np.float32)}
    assert_matches_onnxruntime(m, x, calibration=x)
    assert turned(m, x) == (shape != (1, 320))


def test_route_rule():
    """The measured rule (norms.py, TURN_LANES_PER_ROW / TURN_FREE_LANES): turned for BERT's heads ([128, 128]) and
    short rows, not for a few long rows, never past 320 lanes."""
    assert turned_pays(128, 128) and turned_pays(1, 48) and turned_pays(44, 320)
    assert not turned_pays(1, 128) and not turned_pays(40, 320) and not turned_pays(4096, 321)


def test_bert_softmax_has_no_lane_rotations():
    """An encoder's attention Softmax ([seq, seq] per head) turned: MXM work only for its sums, one vector per head."""
    m = bert_encoder(layers=1, hidden=64, heads=4, seq=32)
    assert_matches_onnxruntime(m)
    _, g = build_graph(m, precision="fp16")
    soft = [n for n in g.nodes if n.onnx_op == "Softmax"]
    assert {n.kind for n in soft} == {"transpose", "vector", "matmul"}
    assert all(g.tensors[n.output].rows == 1 for n in soft if n.kind == "matmul")
