"""Grouped-query attention without the repeat materialised (lower/attention.py `lower_heads_repeat`,
`head_weights`): transformers' repeat_kv (Unsqueeze, Expand, Reshape of the key/value heads) is a view, query head h
reads key/value part h // R of its element, and what a heads MatMul makes of that part (K^T on the SXM; at int8 its
fp16 residual, also transposed) is made once per key/value part, not once per query head.

`lpusim.models.llama_decoder` with 8 query heads and 1 or 2 key/value heads, decode (seq 1 after a past), prefill
(no past) and a chunk after a past, batch 1 and 2, fp16 (the fp16 rule) and int8 (the int8 rule on the same
quantised model, as tests/models/test_decoder_kv.py)."""
from __future__ import annotations

import numpy as np
import pytest

from lpusim.compiler import build_graph
from lpusim.models import llama_decoder
from onnx_cases import assert_int8_decoder_matches, assert_matches_onnxruntime

GQA = dict(layers=1, hidden=64, heads=8, ffn=128, vocab=256)  # head_dim 8


def inputs(seq, past, kv_heads, batch=1, seed=3, d=8):
    rng = np.random.default_rng(seed)
    x = {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64),
         "attention_mask": np.ones((batch, past + seq), np.int64),
         "position_ids": np.tile(np.arange(past, past + seq), (batch, 1)).astype(np.int64)}
    for kind in ("key", "value"):
        x[f"past_key_values.0.{kind}"] = (2 * rng.standard_normal((batch, kv_heads, past, d))).astype(np.float32)
    return x


def key_transposes(graph) -> list:
    """The SXM transposes feeding the scores MatMul (K^T, and at int8 the transposed residual of K)."""
    return [n for n in graph.nodes if n.kind == "transpose" and n.name == "layer0.scores"]


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("seq,past,batch", [(1, 7, 1), (4, 0, 1), (3, 5, 1), (1, 6, 2)],
                         ids=["decode", "prefill", "chunk", "decode-batch2"])
def test_gqa_fp16_matches_onnxruntime(kv_heads, seq, past, batch):
    m = llama_decoder(**GQA, kv_heads=kv_heads, seq=seq, past=past, batch=batch)
    _, result, cmp = assert_matches_onnxruntime(m, inputs(seq, past, kv_heads, batch))
    assert result.outputs["present.0.key"].shape == (batch, kv_heads, past + seq, 8)
    assert cmp["max_rel_error"] < 1e-2, cmp


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_one_key_transpose_per_key_value_part(kv_heads, precision):
    """B * kv_heads K^T transposes (twice that at int8: K's fp16 residual too), not B * heads; every MatMul with
    computed weights (scores and context, 2 * B * heads of them at fp16) loads one of 2 * B * kv_heads tensors
    (K^T and V of each key/value part; at int8 their residuals too)."""
    batch, heads = 2, GQA["heads"]
    _, g = build_graph(llama_decoder(**GQA, kv_heads=kv_heads, seq=2, past=3, batch=batch), precision=precision)
    per_part = 2 if precision == "int8" else 1
    assert len(key_transposes(g)) == batch * kv_heads * per_part
    # (a turned Softmax's sums load its exponentials: not a MatMul of the model, norms.turned_softmax)
    loads = [w for n in g.nodes if n.kind == "matmul" and n.onnx_op != "Softmax" for _, w in n.terms
             if g.tensors[w].kind == "value"]
    assert len(set(loads)) == 2 * batch * kv_heads * per_part
    if precision == "fp16":
        assert len(loads) == 2 * batch * heads



@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("seq,past", [(1, 7), (4, 0), (3, 5)], ids=["decode", "prefill", "chunk"])
def test_gqa_int8_matches_onnxruntime(kv_heads, seq, past):
    """Every output within the int8 rule: equal codes except one step on at most 1%."""
    m = llama_decoder(**GQA, kv_heads=kv_heads, seq=seq, past=past)
    assert_int8_decoder_matches(m)
