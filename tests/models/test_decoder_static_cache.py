"""The static-cache decoder of docs/llm.md section 3.1 (`llama_decoder(static_cache=C)`): past and present are
both [B, kv_heads, C, head_dim]; the new keys/values are written to cache rows position_ids by
Where(Equal(arange(C), position), new, cache); attention runs over all C rows, the mask hiding unwritten rows and
later positions.

* onnxruntime: a greedy decode with the static form (prefill at rows 0..S-1, then one token per step, present fed
  back as past) gives the tokens and logits of `lpusim.llm.reference.greedy_decode` on the dynamic (Optimum) form
  of the same weights, and its cache rows 0..t equal the dynamic present;
* the chip: the decode step and a prefill chunk against onnxruntime on every output, fp16 and int8."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest

import lpusim
from lpusim.llm.reference import _session, greedy_decode
from lpusim.models import llama_decoder
from onnx_cases import assert_matches_onnxruntime

LLAMA = dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256)
FORMS = [dict(), dict(qkv_bias=True), dict(experts=4, top_k=2)]
IDS = ["llama", "qwen2", "mixtral"]


def static_greedy(form, cache_rows, prompt, new_tokens, lengths=None):
    """Greedy decode with the static form in onnxruntime. `prompt` [B, S] is padded on the right to `lengths`.
    Returns tokens [B, new_tokens], logits [new_tokens, B, vocab] and the cache each token was chosen after."""
    batch, seq = prompt.shape
    lengths = np.full(batch, seq) if lengths is None else np.asarray(lengths)
    prefill = _session(llama_decoder(**LLAMA, **form, seq=seq, batch=batch, static_cache=cache_rows))
    step = _session(llama_decoder(**LLAMA, **form, seq=1, batch=batch, static_cache=cache_rows))
    names = [o.name for o in prefill.get_outputs()]
    cache = {n.replace("present", "past_key_values"): np.zeros((batch, 2, cache_rows, 16), np.float32)
             for n in names[1:]}
    mask = (np.arange(cache_rows)[None] < lengths[:, None]).astype(np.int64)
    out = dict(zip(names, prefill.run(names, {"input_ids": prompt, "attention_mask": mask, **cache,
                                              "position_ids": np.tile(np.arange(seq), (batch, 1))})))
    logits = out["logits"][np.arange(batch), lengths - 1]
    tokens, all_logits, caches, t = [], [], [], lengths.copy()
    for s in range(new_tokens):
        all_logits.append(logits)
        tokens.append(np.argmax(logits, -1))
        cache = {n.replace("present", "past_key_values"): out[n] for n in names[1:]}
        caches.append(cache)
        if s + 1 == new_tokens:
            break
        mask = (np.arange(cache_rows)[None] <= t[:, None]).astype(np.int64)
        out = dict(zip(names, step.run(names, {"input_ids": tokens[-1][:, None], "attention_mask": mask, **cache,
                                               "position_ids": t[:, None].astype(np.int64)})))
        logits, t = out["logits"][:, 0], t + 1
    return np.stack(tokens, 1), np.stack(all_logits), caches


@pytest.mark.parametrize("form", FORMS, ids=IDS)
def test_static_greedy_decode_equals_dynamic_reference(form):
    """10 greedy steps after a 5-token prompt, cache of 16 rows: the same tokens, logits within 1e-5, and cache
    rows 0..t equal to the dynamic form's present (rows after t are still zero)."""
    prompt = np.random.default_rng(3).integers(0, 256, (1, 5)).astype(np.int64)
    dynamic = partial(llama_decoder, **LLAMA, **form)
    tokens, logits = greedy_decode(dynamic, prompt, 10)
    got_tokens, got_logits, caches = static_greedy(form, 16, prompt, 10)
    assert np.array_equal(tokens, got_tokens)
    assert np.abs(logits - got_logits).max() < 1e-5
    # the dynamic present after the prompt and steps 0..n-1 of the decode: recompute it with teacher forcing
    for n in (0, 4, 9):
        ids = np.concatenate([prompt, tokens[:, :n]], axis=1)
        m = llama_decoder(**LLAMA, **form, seq=ids.shape[1], past=0)
        sess = _session(m)
        names = [o.name for o in sess.get_outputs()]
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None],
                 **{f"past_key_values.{i}.{k}": np.zeros((1, 2, 0, 16), np.float32)
                    for i in range(2) for k in ("key", "value")}}
        present = dict(zip(names, sess.run(names, feeds)))
        t = ids.shape[1]
        for name in names[1:]:
            static = caches[n][name.replace("present", "past_key_values")]
            assert np.abs(static[:, :, :t] - present[name]).max() < 1e-5, (n, name)
            assert not static[:, :, t:].any()


def test_right_padded_batch_equals_each_row_alone():
    """Batch 2, prompts of 5 and 3 tokens right-padded to 5: each row decodes as it does alone (the pads'
    cache rows are masked, then overwritten by the decode)."""
    rng = np.random.default_rng(4)
    prompt = rng.integers(0, 256, (2, 5)).astype(np.int64)
    tokens, logits, _ = static_greedy({}, 16, prompt, 6, lengths=[5, 3])
    for row, length in enumerate((5, 3)):
        want_tokens, want_logits = greedy_decode(partial(llama_decoder, **LLAMA), prompt[row:row + 1, :length], 6)
        assert np.array_equal(tokens[row:row + 1], want_tokens)
        assert np.abs(logits[:, row] - want_logits[:, 0]).max() < 1e-5


def chip_inputs(seq, cache_rows, start, batch=1, seed=1):
    """New tokens at positions start..start+seq-1 after a cache written at rows 0..start-1 (zeros after)."""
    rng = np.random.default_rng(seed)
    x = {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64),
         "attention_mask": np.tile(np.arange(cache_rows) < start + seq, (batch, 1)).astype(np.int64),
         "position_ids": np.tile(np.arange(start, start + seq), (batch, 1)).astype(np.int64)}
    for i in range(2):
        for kind in ("key", "value"):
            cache = (2 * rng.standard_normal((batch, 2, cache_rows, 16))).astype(np.float32)
            cache[:, :, start:] = 0
            x[f"past_key_values.{i}.{kind}"] = cache
    return x


@pytest.mark.parametrize("form", FORMS, ids=IDS)
def test_decode_step_on_chip(form):
    """seq 1 at position 7 of a 16-row cache: every output within the fp16 rule; the rows not written are the
    past exactly (a Where copy)."""
    m = llama_decoder(**LLAMA, **form, seq=1, static_cache=16)
    x = chip_inputs(1, 16, 7)
    _, result, cmp = assert_matches_onnxruntime(m, x)
    assert cmp["max_rel_error"] < 1e-2, cmp
    for i in range(2):
        for kind in ("key", "value"):
            got, past = result.outputs[f"present.{i}.{kind}"], x[f"past_key_values.{i}.{kind}"]
            assert got.shape == (1, 2, 16, 16)
            assert np.array_equal(np.delete(got, 7, axis=2), np.delete(past, 7, axis=2))


@pytest.mark.parametrize("seq,start,batch", [(8, 0, 1), (3, 5, 2)], ids=["prefill", "chunk-batch2"])
def test_prefill_and_chunk_on_chip(seq, start, batch):
    m = llama_decoder(**LLAMA, seq=seq, batch=batch, static_cache=16)
    _, _, cmp = assert_matches_onnxruntime(m, chip_inputs(seq, 16, start, batch))
    assert cmp["max_rel_error"] < 1e-2, cmp


@pytest.mark.parametrize("form,seq,start", [(dict(), 1, 7), (dict(), 8, 0), (dict(qkv_bias=True), 1, 5),
                                            (dict(experts=4, top_k=2), 1, 7)],
                         ids=["llama-decode", "llama-prefill", "qwen2-decode", "mixtral-decode"])
def test_int8_equals_onnxruntime(form, seq, start):
    """precision="int8": every output equal to onnxruntime's on the same quantised model."""
    from lpusim.check.compare import run_onnxruntime
    from lpusim.compiler.frontend.quantize import quantize_model
    m = llama_decoder(**LLAMA, **form, seq=seq, static_cache=16)
    x = chip_inputs(seq, 16, start)
    program = lpusim.compile(m, precision="int8", calibration=x)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    ref, _ = run_onnxruntime(quantize_model(m, x), x)
    for k, want in ref.items():
        assert np.array_equal(result.outputs[k], want), (k, np.abs(result.outputs[k] - want).max())


def test_static_cache_arguments():
    with pytest.raises(ValueError, match="takes no past"):
        llama_decoder(**LLAMA, seq=1, past=3, static_cache=16)
    with pytest.raises(ValueError, match="does not fit"):
        llama_decoder(**LLAMA, seq=17, static_cache=16)
