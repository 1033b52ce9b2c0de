"""Decode attention's Softmax over long rows stacked across heads (lower/attention.py `stacked_softmax`): the heads'
[1, K] score rows (K >= STACK_MIN_LANES) become one [heads, K] Softmax, then each head's row is copied back out.
Softmax is row-wise and sees the same input magnitudes, so the outputs are bit-identical to the per-head lowering.

`lpusim.models.llama_decoder` with 8 query heads (1 key/value head), decode over a past of 400 keys, batch 1
(8 stacked rows) and batch 2 (16 rows: two stacked Softmaxes of 8, STACK_MAX_ROWS), fp16; short rows stay per head."""
from __future__ import annotations

import re

import numpy as np
import pytest

import lpusim
from lpusim.compiler import build_graph
from lpusim.compiler.lower import attention
from lpusim.models import llama_decoder

GQA = dict(layers=1, hidden=64, heads=8, ffn=128, vocab=256, kv_heads=1)  # head_dim 8


def inputs(past, batch, seed=5, d=8):
    rng = np.random.default_rng(seed)
    x = {"input_ids": rng.integers(0, 256, (batch, 1)).astype(np.int64),
         "attention_mask": np.ones((batch, past + 1), np.int64),
         "position_ids": np.full((batch, 1), past, np.int64)}
    for kind in ("key", "value"):
        x[f"past_key_values.0.{kind}"] = (2 * rng.standard_normal((batch, 1, past, d))).astype(np.float32)
    return x


def stacked_groups(graph) -> int:
    """How many stacked Softmaxes the probabilities Softmax became (their tensors: '<output>@stacked<group>..')."""
    return len({m.group(1) for n in graph.nodes if n.name == "layer0.probs"
                for m in [re.search(r"@stacked(\d*)[#.]", n.output)] if m})


def run(m, x):
    program = lpusim.compile(m, precision="fp16")
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    return program, result


@pytest.mark.parametrize("batch", [1, 2])
def test_stacked_softmax_bit_identical(batch, monkeypatch):
    past = 400
    m = llama_decoder(**GQA, seq=1, past=past, batch=batch)
    x = inputs(past, batch)
    _, g = build_graph(m, precision="fp16")
    assert stacked_groups(g) == batch  # 8 rows of 400 lanes per Softmax (STACK_MAX_ROWS): one group per element
    stacked_program, stacked = run(m, x)
    monkeypatch.setattr(attention, "STACK_MAX_ROWS", 0)
    _, g = build_graph(m, precision="fp16")
    assert stacked_groups(g) == 0
    per_head_program, per_head = run(m, x)
    assert set(stacked.outputs) == set(per_head.outputs)
    for k, want in per_head.outputs.items():
        np.testing.assert_array_equal(stacked.outputs[k], want, err_msg=k)
    assert stacked_program.predicted_cycles < per_head_program.predicted_cycles


def test_short_rows_not_stacked():
    """Rows shorter than STACK_MIN_LANES keep the per-head Softmax."""
    _, g = build_graph(llama_decoder(**GQA, seq=1, past=7, batch=1), precision="fp16")
    assert stacked_groups(g) == 0
