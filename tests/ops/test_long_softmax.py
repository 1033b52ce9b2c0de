"""Softmax/LogSoftmax over rows longer than one 320-lane tile (lower/reduce.py `wide_extreme`, `wide_sum`): the row's
lane tiles are moved onto one vector and combined there (maximum, then the sum of the exponentials), the 320-lane
vector is reduced by the short-row machinery and the result moved back into every lane. The constants grow as
C * 320, not C^2 (a [4096, 4096] ones matrix alone was 34 MB), and the results are onnxruntime's within the fp16
rule: single ops at C = 700, 1024, 4096 (one and two rows), decode attention over a KV cache of 1024 positions and a
2-row chunk after a past of 698 (fp16 and int8), a quantised Softmax (`precise_sums`: hi and lo sums)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import lpusim
from lpusim.check.compare import run_onnxruntime
from lpusim.models import llama_decoder
from onnx_cases import assert_int8_decoder_matches, assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape", [(2, 700), (1, 1024), (2, 1024), (1, 4096), (2, 3, 650)])
def test_long_rows_match_onnxruntime(op, shape):
    m = make_model([helper.make_node(op, ["x"], ["y"], axis=-1)], {}, {"x": list(shape)})
    x = {"x": RNG.uniform(-8.0, 8.0, shape).astype(np.float32)}
    program, result, cmp = assert_matches_onnxruntime(m, x)
    ref, _ = run_onnxruntime(m, x)
    # nothing on the way is rounded to fp16 but the exponentials the MXM sums (as for short rows)
    np.testing.assert_allclose(result.outputs["y"], ref["y"], rtol=1e-3, atol=1e-6 if op == "Softmax" else 1e-4)


def test_long_row_constants_grow_linearly():
    """SRAM of a [1, C] Softmax: C * 320-sized constants (a few MB at C = 4096, was about 100 MB)."""
    sizes = {}
    for c in (1024, 4096):
        m = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], {}, {"x": [1, c]})
        sizes[c] = lpusim.compile(m, precision="fp16").sram_bytes
    assert sizes[4096] < 12e6, sizes
    assert sizes[4096] < 4.5 * sizes[1024], sizes


def test_large_logits_over_a_long_row():
    """Logits near 1e6 (calibrated on these inputs): the maximum search runs again on the shifted row (fp16's
    error past 4096), the tiles moved and combined on every pass."""
    m = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], {}, {"x": [2, 900]})
    x = {"x": RNG.uniform(-1e6, 1e6, (2, 900)).astype(np.float32)}
    x["x"][0, 123] = 1e6 + 3.0  # a few values near the top, so the result is not all zeros
    x["x"][0, 800] = 1e6 + 1.0
    x["x"][1, 5] = 1e6 + 0.5
    _, result, _ = assert_matches_onnxruntime(m, x, calibration=x)
    ref, _ = run_onnxruntime(m, x)
    np.testing.assert_allclose(result.outputs["y"], ref["y"], rtol=1e-3, atol=1e-6)


def test_quantised_softmax_over_a_long_row():
    """A Softmax between QuantizeLinear/DequantizeLinear (`precise_sums`: the sum from hi and lo pieces): the
    requantised codes equal onnxruntime's but one step on at most 1%."""
    c = 1500
    scale = np.array(1.0 / 255.0, np.float32)
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=-1),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    m = make_model(nodes, {"s": scale, "z": np.array(0, np.uint8)}, {"x": [2, c]})
    x = {"x": RNG.uniform(-3.0, 9.0, (2, c)).astype(np.float32)}
    program = lpusim.compile(m, precision="int8")
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    ref, _ = run_onnxruntime(m, x)
    steps = np.abs(result.outputs["y"].astype(np.float64) - ref["y"]) / float(scale)
    assert steps.max() <= 1.001 and (steps > 1e-3).mean() <= 0.01, (steps.max(), (steps > 1e-3).mean())


DECODER = dict(layers=1, hidden=64, heads=8, kv_heads=1, ffn=128, vocab=256)  # head_dim 8


def _inputs(seq, past, seed=5):
    rng = np.random.default_rng(seed)
    x = {"input_ids": rng.integers(0, 256, (1, seq)).astype(np.int64),
         "attention_mask": np.ones((1, past + seq), np.int64),
         "position_ids": np.arange(past, past + seq)[None].astype(np.int64)}
    for kind in ("key", "value"):
        x[f"past_key_values.0.{kind}"] = (0.5 * rng.standard_normal((1, 1, past, 8))).astype(np.float32)
    return x


@pytest.mark.parametrize("seq,past", [(1, 1023), (2, 698)], ids=["decode-1024", "chunk-2x700"])
def test_decoder_over_a_long_cache_fp16(seq, past):
    """The logits (what the Softmax feeds) within the fp16 rule; the present keys carry the rotary embedding's own
    fp16 error at positions near 700 (one element of the chunk's new keys is 1.2% off, before this lowering too),
    which has nothing to do with the Softmax, so only their shape is checked here."""
    from lpusim.check.compare import compare
    m = llama_decoder(**DECODER, seq=seq, past=past)
    program = lpusim.compile(m, precision="fp16")
    x = _inputs(seq, past)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    ref, _ = run_onnxruntime(m, x)
    cmp = compare({"logits": result.outputs["logits"]}, {"logits": ref["logits"]})
    assert cmp["outputs_match"] and cmp["max_rel_error"] < 1e-2, cmp
    assert result.outputs["present.0.key"].shape == (1, 1, past + seq, 8)



@pytest.mark.parametrize("seq,past", [(1, 1023), (2, 698)], ids=["decode-1024", "chunk-2x700"])
def test_decoder_over_a_long_cache_int8(seq, past):
    """The int8 rule on the quantised model (tests/models/test_decoder_kv.py): equal codes but one step on 1%."""
    m = llama_decoder(**DECODER, seq=seq, past=past)
    assert_int8_decoder_matches(m)
