"""Generation on the chip (lpusim.llm.generate, docs/llm.md section 3.5): prefill and decode programs sharing the
KV cache at fixed SRAM addresses, run on one ChipMemory, checked against onnxruntime's greedy decode with its own
cache. The builder's graphs need no torch; the Hugging Face exports are in the slow set."""
from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from lpusim.check.compare import compare
from lpusim.cli import main
from lpusim.errors import ModelError
from lpusim.llm.check import generation_report
from lpusim.llm.generate import compile_decoder
from lpusim.llm.reference import greedy_decode
from lpusim.models import llama_decoder

LLAMA = dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256)
FORMS = {"llama": dict(), "qwen2": dict(qkv_bias=True), "mixtral": dict(experts=4, top_k=2)}
PROMPT = np.random.default_rng(3).integers(0, 256, (1, 5))


def builder(form="llama", **kw):
    return partial(llama_decoder, **LLAMA, **FORMS[form], **kw)


@pytest.mark.parametrize("form", list(FORMS))
def test_generates_16_tokens_like_onnxruntime(form):
    """16 greedy tokens after a 5-token prompt: the tokens of onnxruntime's own decode, every step's logits
    within the fp16 rule, and every decode step the same cycles as the schedule predicts."""
    decoder = compile_decoder(builder(form), max_context=32, prefill_chunk=8)
    report = generation_report(decoder, PROMPT, 16)
    assert report["tokens_match"] and report["logits_match"] and report["ok"], report
    gen = decoder.generate(PROMPT, 16)
    assert gen.step_cycles == [decoder.decode.predicted_cycles] * 15
    assert gen.prefill_cycles == decoder.prefill.predicted_cycles and gen.prefill_runs == 1
    assert report["ttft_us"] == pytest.approx(gen.prefill_cycles / 900.0)
    assert report["tokens_per_s"] == pytest.approx(900e6 / gen.decode_cycles)


def test_int8_generation_equals_onnxruntime_on_the_quantised_model():
    """precision="int8": every program quantised with the decode step's scales, and the reference decode runs
    the same quantised graphs: the tokens are equal and the logits too (the int8 path is exact here)."""
    decoder = compile_decoder(builder(), max_context=32, prefill_chunk=8, precision="int8")
    report = generation_report(decoder, PROMPT, 16)
    assert report["tokens_match"] and report["logits_match"], report
    assert report["logits_max_abs_error"] < 1e-4


def test_cache_stays_on_chip_and_equals_the_reference_present():
    """The host writes no past after the first run: the decode runs read the cache the previous run left in SRAM.
    After generation the region holds the reference's present (cache rows of the tokens, oldest first, the window
    right-aligned)."""
    decoder = compile_decoder(builder(), max_context=24, prefill_chunk=8)
    assert set(decoder.decode._schedule.pinned) >= set(decoder.decode._graph.inputs[-4:])
    gen = decoder.generate(PROMPT, 6)
    ref_tokens, _ = greedy_decode(builder(), PROMPT, 6)
    assert np.array_equal(gen.tokens, ref_tokens)
    # the regions of both programs are the same MEM segments
    pre, dec = decoder.prefill.cache_tiles(), decoder.decode.cache_tiles()
    assert {k: [[(s.lo, s.hi, s.slice, s.addr) for s in segs] for segs in v] for k, v in pre.items()} == \
        {k: [[(s.lo, s.hi, s.slice, s.addr) for s in segs] for segs in v] for k, v in dec.items()}


def test_chunked_prefill_and_token_by_token_prefill_agree():
    """A 11-token prompt in chunks of 4 (3 runs, left-padded by 1) and through the decode step (prefill_chunk=1)
    give the reference's tokens; the chunked TTFT is the sum of its runs."""
    prompt = np.random.default_rng(5).integers(0, 256, (1, 11))
    ref_tokens, _ = greedy_decode(builder(), prompt, 8)
    chunked = compile_decoder(builder(), max_context=32, prefill_chunk=4)
    gen = chunked.generate(prompt, 8)
    assert gen.prefill_runs == 3 and gen.prefill_cycles == 3 * chunked.prefill.predicted_cycles
    assert np.array_equal(gen.tokens, ref_tokens)
    single = compile_decoder(builder(), max_context=32, prefill_chunk=1)
    assert single.prefill is None
    gen1 = single.generate(prompt, 8)
    assert gen1.prefill_runs == 11 and np.array_equal(gen1.tokens, ref_tokens)


def test_left_padded_batch_decodes_each_row_as_alone():
    """Batch 2, the second prompt left-padded by 2: each row's tokens are those of its prompt decoded alone."""
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 256, (2, 6))
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    decoder = compile_decoder(builder(batch=2), max_context=24, prefill_chunk=6, batch=2)
    gen = decoder.generate(ids, 8, attention_mask=mask)
    alone0, _ = greedy_decode(builder(), ids[:1], 8)
    alone1, _ = greedy_decode(builder(), ids[1:, 2:], 8)
    assert np.array_equal(gen.tokens[0], alone0[0]) and np.array_equal(gen.tokens[1], alone1[0])


def test_teacher_forcing_feeds_the_given_tokens():
    """feed=: step t is fed feed[t-1]; with random tokens the chip's logits still match onnxruntime's fed alike."""
    from lpusim.llm.reference import teacher_forced_logits
    decoder = compile_decoder(builder(), max_context=16, prefill_chunk=5)
    forced = np.random.default_rng(1).integers(0, 256, (1, 6))
    gen = decoder.generate(PROMPT, 6, feed=forced)
    want = teacher_forced_logits(builder(), PROMPT, forced)
    assert compare({"l": gen.logits}, {"l": want})["outputs_match"]


def test_generates_on_a_pipeline_of_chips_with_the_cache_on_each():
    """chips=2: the decode step as a pipeline, each layer on one chip with its cache region (the cut never parts a
    layer's past from its present); one ChipMemory per chip; the prompt runs through the decode step. Tokens and
    logits as onnxruntime's; every step the predicted system cycles."""
    decoder = compile_decoder(builder(), max_context=32, prefill_chunk=8, chips=2)
    assert decoder.chips == 2 and decoder.prefill is None
    stages = decoder.decode.stages
    assert [sorted(s.cache_tiles()) for s in stages] == [["present.0.key", "present.0.value"],
                                                          ["present.1.key", "present.1.value"]]
    report = generation_report(decoder, PROMPT, 12)
    assert report["tokens_match"] and report["logits_match"] and report["chips"] == 2, report
    gen = decoder.generate(PROMPT, 4)
    assert gen.step_cycles == [decoder.decode.predicted_cycles] * 3 and gen.prefill_runs == 5


def test_errors_name_the_numbers():
    decoder = compile_decoder(builder(), max_context=8, prefill_chunk=4)
    with pytest.raises(ModelError, match="need 10 cache rows; the programs were compiled for --max-context 8"):
        decoder.generate(np.zeros((1, 4), np.int64), 7)
    with pytest.raises(ModelError, match="token ids must lie in 0..255"):
        decoder.generate(np.array([[1, 256]]), 2)
    with pytest.raises(ModelError, match="prefill-chunk 8: expected 1..7"):
        compile_decoder(builder(), max_context=8, prefill_chunk=8)
    with pytest.raises(ModelError, match="batch 1; the prompt has 2 rows"):
        decoder.generate(np.zeros((2, 3), np.int64), 2)


@pytest.mark.parametrize("argv,message", [
    (["--new-tokens", "4"], "give the prompt with --prompt-ids"),
    (["--prompt-ids", "1,x"], "--prompt-ids 1,x: expected token ids"),
    (["--prompt-ids", "1,2", "--chips", "0"], "--chips 0: at least one chip is needed"),
    (["--prompt-ids", "1,2", "--chips", "0x"], "--chips 0x: expected a number"),
    (["--prompt-ids", "1,2", "--chips", "2", "--precision", "int8"], "--precision int8 runs on one chip only"),
    (["--prompt-ids", "1,2,3", "--new-tokens", "20", "--max-context", "8"], "need 22 cache rows; --max-context is 8"),
])
def test_cli_user_errors_exit_2(tmp_path, capsys, argv, message):
    assert main(["generate", str(tmp_path / "missing.onnx"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_cli_rejects_a_static_graph(tmp_path, capsys):
    import onnx
    path = tmp_path / "static.onnx"
    onnx.save(llama_decoder(**LLAMA, seq=1, past=3), str(path))
    assert main(["generate", str(path), "--prompt-ids", "1,2"]) == 2
    assert "generation needs the dynamic axes" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("kind,precision", [(k, p) for k in ("llama", "qwen2", "mixtral", "gpt2")
                                            for p in ("fp16", "int8")])
def test_cli_generates_with_hf_exports(tmp_path, capsys, kind, precision):
    """`lpusim generate` on the tiny Hugging Face exports (Mixtral's experts in the dense form, export_decoder(...,
    moe="dense")): 16 tokens, exit 0 (logits within the rule; tokens equal or first apart at a near tie)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lpusim.llm.export import export_decoder
    path = str(tmp_path / f"{kind}.onnx")
    export_decoder(kind, path, moe="dense")
    status = main(["generate", path, "--prompt-ids", "5,17,99,3,42", "--new-tokens", "16", "--precision",
                   precision, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    assert len(report["tokens"][0]) == 16 and report["logits_match"]



@pytest.mark.slow
def test_dense_mixtral_export_decodes_as_transformers_gathered_form(tmp_path):
    """export_decoder(moe="dense") computes every expert and weights it by its routing weight: onnxruntime's greedy
    decode of it equals that of the gathered (TopK + Gather) export, logits within 1e-5."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lpusim.llm.export import export_decoder
    dense, gathered = str(tmp_path / "dense.onnx"), str(tmp_path / "gathered.onnx")
    export_decoder("mixtral", dense, moe="dense")
    export_decoder("mixtral", gathered)
    a, la = greedy_decode(dense, PROMPT, 12)
    b, lb = greedy_decode(gathered, PROMPT, 12)
    assert np.array_equal(a, b) and np.abs(la - lb).max() < 1e-5
