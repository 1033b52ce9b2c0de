"""Decoders with a KV cache (the Optimum layout, docs/llm.md): `lpusim.models.llama_decoder` graphs compiled,
simulated and compared with onnxruntime on every output (logits and present.N.key/.value).

* a decode step (seq 1 after a past of P): the past keys/values arrive as graph inputs [B, kv_heads, P, D], are
  read by the host as one part per (element, head) and Concat-ed with the new keys/values on the rows
  (lower/attention.py `value_parts`); present.N.* are graph outputs laid out from the parts (`heads_output`);
* prefill (past 0): the empty past tensors add nothing to the Concat (a zero dimension is a fixed one);
* Llama, Qwen2 (qkv_bias) and the dense Mixtral form (experts=4, top_k=2: Equal of the router probabilities and
  their ReduceMax, broadcast across the lanes exactly);
* int8 (precision="int8") of the same graphs: codes within the int8 rule, float outputs within the fp16 rule.
The HF exports with a cache (torch) are slow tests at the end."""
from __future__ import annotations

import numpy as np
import pytest

import lpusim
from lpusim.models import llama_decoder
from onnx_cases import assert_int8_decoder_matches, assert_matches_onnxruntime

LLAMA = dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256)


def decode_inputs(seq, past, batch=1, seed=1, layers=2, kv_heads=2, d=16, pad=0):
    """Token ids, a mask of ones (the first `pad` positions of element 1 masked), positions continuing the past,
    and past keys/values of the size a real cache holds."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, past + seq), np.int64)
    if batch > 1:
        mask[1, :pad] = 0
    x = {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64), "attention_mask": mask,
         "position_ids": np.tile(np.arange(past, past + seq), (batch, 1)).astype(np.int64)}
    for i in range(layers):
        for kind in ("key", "value"):
            x[f"past_key_values.{i}.{kind}"] = (2 * rng.standard_normal((batch, kv_heads, past, d))).astype(np.float32)
    return x


@pytest.mark.parametrize("form", [dict(), dict(qkv_bias=True), dict(experts=4, top_k=2), dict(kv_heads=4)],
                         ids=["llama", "qwen2", "mixtral", "mha"])
def test_decode_step_matches_onnxruntime(form):
    """seq 1 after a past of 7: logits and every present key/value within the fp16 rule."""
    kv = form.get("kv_heads", 2)
    m = llama_decoder(**{**LLAMA, **form}, seq=1, past=7)
    _, result, cmp = assert_matches_onnxruntime(m, decode_inputs(1, 7, kv_heads=kv))
    assert set(result.outputs) == {"logits"} | {f"present.{i}.{k}" for i in range(2) for k in ("key", "value")}
    assert result.outputs["present.1.value"].shape == (1, kv, 8, 16)
    assert cmp["max_rel_error"] < 1e-2, cmp


def test_decode_step_batch2_with_padding():
    """Batch 2, element 1 left-padded over its first 3 past positions; random past and mask too."""
    m = llama_decoder(**LLAMA, seq=1, past=5, batch=2, qkv_bias=True)
    assert_matches_onnxruntime(m, decode_inputs(1, 5, batch=2, pad=3))
    assert_matches_onnxruntime(m)  # random inputs (masks in {0, 1})


def test_present_past_part_is_the_input():
    """present[..., :P, :] is the past input exactly (a row copy, no fp16 rounding)."""
    m = llama_decoder(**LLAMA, seq=2, past=3)
    x = decode_inputs(2, 3)
    program = lpusim.compile(m)
    out = program.run(x).outputs
    for i in range(2):
        for kind in ("key", "value"):
            assert np.array_equal(out[f"present.{i}.{kind}"][:, :, :3], x[f"past_key_values.{i}.{kind}"])


@pytest.mark.parametrize("seq", [8, 1])
@pytest.mark.parametrize("form", [dict(), dict(experts=4, top_k=2)], ids=["llama", "mixtral"])
def test_prefill_with_empty_past(seq, form):
    """past 0: the past inputs have a zero dimension; their Concat is the new keys/values alone."""
    m = llama_decoder(**{**LLAMA, **form}, seq=seq, past=0)
    _, _, cmp = assert_matches_onnxruntime(m, decode_inputs(seq, 0))
    assert cmp["max_rel_error"] < 1e-2, cmp


def test_empty_tensor_read_by_another_op_is_a_clear_error():
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 0, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 0, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(lpusim.CompileError, match="Relu node 'r': input 'x' has the zero-size shape \\(1, 0, 4\\)"):
        lpusim.compile(m)


# ----- Hugging Face exports with a cache (torch; slow) ---------------------------------------------------------------

@pytest.mark.parametrize("form,seq,past,batch", [(dict(), 1, 7, 1), (dict(), 8, 0, 1), (dict(qkv_bias=True), 1, 5, 2),
                                                 (dict(experts=4, top_k=2), 2, 3, 1)],
                         ids=["llama-decode", "llama-prefill", "qwen2-batch2", "mixtral-chunk"])
def test_int8_matches_onnxruntime(form, seq, past, batch):
    """precision="int8": every output within the int8 rule against onnxruntime on the same quantised model (equal
    codes except one step on at most 1%). RMSNorm's ReduceMean (two fp16 passes, hi + lo), its x * 1/sqrt(...)
    (the (..., 1) operand broadcast exactly) and the rotary Concat/Slice (moved exactly) keep onnxruntime's f32;
    with any of them in one fp16 pass the logits were 2-3% off (a code off in layer 0, amplified in layer 1)."""
    m = llama_decoder(**{**LLAMA, **form}, seq=seq, past=past, batch=batch)
    assert_int8_decoder_matches(m)


@pytest.mark.slow
@pytest.mark.parametrize("past,seq", [(7, 1), (5, 3), (0, 6)], ids=["decode", "chunk", "prefill"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_hf_exports_with_a_cache_match_onnxruntime(tmp_path, kind, past, seq):
    """lpusim.llm.export's graphs (dynamic axes) at fixed shapes: the decode step, a chunk after a past, and
    prefill with an empty past; every output within the fp16 rule."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lpusim.llm.export import export_decoder
    path = str(tmp_path / f"{kind}.onnx")
    export_decoder(kind, path)
    x = decode_inputs(seq, past, kv_heads=4 if kind == "gpt2" else 2)
    _, result, cmp = assert_matches_onnxruntime(path, x, shapes={k: v.shape for k, v in x.items()}, calibration=x)
    assert cmp["max_rel_error"] < 1e-2, cmp
    assert result.outputs["present.0.key"].shape[2] == past + seq


def dq_step(q, output: str) -> float:
    """The quantisation step of an output of an export quantised with precision="int8": the scale of the
    DequantizeLinear whose floats it holds (back through the views, and a present's Concat to its new rows)."""
    from onnx import numpy_helper
    producer = {o: n for n in q.graph.node for o in n.output}
    node = producer[output]
    while node.op_type != "DequantizeLinear":
        node = producer[node.input[-1] if node.op_type == "Concat" else node.input[0]]
    return float(next(numpy_helper.to_array(i) for i in q.graph.initializer if i.name == node.input[1]))


@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lpusim.llm.export import export_decoder
    path = str(tmp_path_factory.mktemp("gpt2") / "gpt2.onnx")
    export_decoder("gpt2", path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("batch,seq", [(1, 1), (1, 5), (2, 1), (2, 3)],
                         ids=["decode", "chunk", "decode-batch2", "chunk-batch2"])
def test_hf_gpt2_int8_matches_onnxruntime(gpt2_export, batch, seq):
    """GPT-2's export at precision="int8", the quantised graph `lpusim generate` runs (llm.programs.decoder_source,
    a window of 32), seeds 0-2: every output within the int8 rule (measured: equal). Two lowerings of GPT-2's graph
    used to leave it: its merged attention heads (also read by Shape nodes, so concatenated as floats) had each
    part's fp16 residual added twice (logits up to 3% of their largest value off at batch 1), and its gelu_new's
    Tanh was the VXM's correctly rounded TANH, not MLAS's kernel (lower/mlas.py), which at batch 2 gives layer 1 two
    input codes a Tanh code apart (decode, seed 0: 6.8% of the logits a step off)."""
    from lpusim.check.compare import run_onnxruntime
    from lpusim.compiler import random_inputs
    from lpusim.compiler.frontend.load import input_kinds
    from lpusim.llm.programs import decoder_source, program_shapes
    source = decoder_source(gpt2_export, "int8", 32, batch)
    q = source.reference
    shapes = program_shapes(source.layout, batch, seq, 32)
    program = lpusim.compile(q, precision="int8", shapes=shapes)
    for seed in range(3):
        x = random_inputs(shapes, seed, input_kinds(q))
        x["attention_mask"] = np.ones_like(x["attention_mask"])
        result = program.run(x)
        assert result.cycles == program.predicted_cycles
        ref, _ = run_onnxruntime(q, x)
        for k, want in ref.items():
            steps = np.abs(result.outputs[k].astype(np.float64) - want) / dq_step(q, k)
            assert steps.max() <= 1.001 and (steps > 1e-3).mean() <= 0.01, (seed, k, steps.max(), (steps > 1e-3).mean())
