"""Decoder LLMs with a KV cache (docs/llm.md): the Optimum layout, onnxruntime's greedy decode with the model's own
cache against recomputation without it, and the logit gap at a divergence.

The default cases use the torch-free builder `lpusim.models.llama_decoder` (static shapes, one graph per step
shape). The slow cases export Hugging Face Llama, Qwen2, GPT-2 and Mixtral with random weights; they need torch and
transformers (not test dependencies) and are skipped without them."""
import functools
import sys
from collections import Counter

import numpy as np
import onnx
import pytest

from lpusim import models
from lpusim.errors import LpusimError, ModelError
from lpusim.llm.layout import decoder_layout
from lpusim.llm.reference import (LogitGap, greedy_decode, reference_logit_gap, teacher_forced_logits,
                                  uncached_logits)

PROMPT = np.array([[17, 200, 3, 45, 99, 128]], np.int64)


def test_builder_has_the_optimum_layout():
    model = models.llama_decoder(layers=3, seq=4, past=5, batch=2)
    layout = decoder_layout(model)
    assert (layout.layers, layout.kv_heads, layout.head_dim, layout.vocab) == (3, 2, 16, 256)
    assert (layout.batch, layout.seq, layout.past) == (2, 4, 5)
    assert [v.name for v in model.graph.input] == layout.input_names()
    assert [v.name for v in model.graph.output] == layout.output_names()
    present = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output}
    assert present["present.2.value"] == [2, 2, 9, 16]
    assert present["logits"] == [2, 4, 256]


def test_layout_names_the_first_difference():
    model = models.llama_decoder(seq=1, past=2)
    model.graph.output[1].name = "present_key_0"
    with pytest.raises(ModelError, match="outputs .* are not the KV-cache layout"):
        decoder_layout(model)
    model = models.llama_decoder(seq=1, past=2)
    model.graph.output[2].type.tensor_type.shape.dim[2].dim_value = 2
    with pytest.raises(ModelError, match=r"present.0.value has shape \[1, 2, 2, 16\]"):
        decoder_layout(model)


@pytest.mark.parametrize("options", [{}, {"qkv_bias": True}, {"experts": 4}], ids=["llama", "qwen2_bias", "moe"])
def test_cached_decode_equals_recomputation(options):
    builder = functools.partial(models.llama_decoder, seed=1, **options)
    tokens, logits = greedy_decode(builder, PROMPT, 6)
    assert tokens.shape == (1, 6) and logits.shape == (6, 1, 256)
    assert (tokens[0] == logits[:, 0].argmax(-1)).all()
    assert len(set(tokens[0].tolist())) > 2, "a decode stuck on one token would not exercise the cache"
    np.testing.assert_array_equal(teacher_forced_logits(builder, PROMPT, tokens), logits)
    np.testing.assert_allclose(uncached_logits(builder, PROMPT, tokens), logits, rtol=0, atol=1e-4)


def test_builder_mixture_of_experts_is_static():
    """The dense form: no TopK and no Gather of expert weights, only the embedding's Gather by token ids."""
    model = models.llama_decoder(seq=1, past=3, experts=4, top_k=2)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["TopK"] == 0 and ops["Gather"] == 1
    assert ops["ReduceMax"] == 2 * 2 and ops["MatMul"] == 2 * (4 + 2 + 1 + 4 * 3) + 1


def test_left_padding_changes_nothing_but_positions():
    builder = functools.partial(models.llama_decoder, batch=2)
    prompts = np.stack([PROMPT[0], np.r_[0, 0, PROMPT[0, 2:]]])
    mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], np.int64)
    tokens, logits = greedy_decode(builder, prompts, 4, attention_mask=mask)
    alone_tokens, alone_logits = greedy_decode(models.llama_decoder, PROMPT[:, 2:], 4)
    np.testing.assert_array_equal(tokens[1], alone_tokens[0])
    np.testing.assert_allclose(logits[:, 1], alone_logits[:, 0], rtol=0, atol=1e-5)


def test_teacher_forcing_feeds_the_given_tokens():
    tokens, logits = greedy_decode(models.llama_decoder, PROMPT, 4)
    forced = tokens.copy()
    forced[0, 1] = (forced[0, 1] + 1) % 256
    forced_logits = teacher_forced_logits(models.llama_decoder, PROMPT, forced)
    np.testing.assert_array_equal(forced_logits[:2], logits[:2])
    assert np.abs(forced_logits[2] - logits[2]).max() > 1e-3


def test_reference_logit_gap_at_the_first_divergence():
    logits = np.zeros((3, 2, 5), np.float32)
    logits[1, 1, [2, 4]] = [3.0, 2.75]
    reference = np.array([[0, 0, 0], [0, 2, 1]])
    assert reference_logit_gap(logits, reference, reference) is None
    got = np.array([[0, 0, 3], [0, 4, 4]])
    assert reference_logit_gap(logits, reference, got) == LogitGap(step=1, row=1, reference_token=2, token=4,
                                                                    gap=0.25)


def test_export_without_transformers_is_one_clear_error(monkeypatch):
    from lpusim.llm.export import MissingDependency, decoder_config
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependency, match=r"needs transformers, which is not installed") as info:
        decoder_config("llama")
    assert isinstance(info.value, LpusimError)


# --- Hugging Face exports (slow; torch and transformers) ---------------------------------------------------------

ARCHITECTURES = ["llama", "qwen2", "gpt2", "mixtral"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lpusim.llm.export import export_decoder
    folder = tmp_path_factory.mktemp("llm")
    cache = {}

    def get(arch):
        if arch not in cache:
            path = folder / f"{arch}.onnx"
            cache[arch] = (path, export_decoder(arch, path, seed=0))
        return cache[arch]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_export_has_the_optimum_layout_with_dynamic_lengths(arch, exported):
    path, layout = exported(arch)
    assert layout.layers == 2 and layout.head_dim == 16 and layout.vocab == 256
    assert layout.kv_heads == (4 if arch == "gpt2" else 2)
    assert isinstance(layout.seq, str) and isinstance(layout.past, str) and isinstance(layout.batch, str)
    model = onnx.load(str(path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert dims["past_key_values.1.key"] == ["batch", layout.kv_heads, "past_sequence_length", 16]
    assert dims["present.1.key"] == ["batch", layout.kv_heads, "total_sequence_length", 16]
    assert dims["attention_mask"] == ["batch", "total_sequence_length"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_export_cached_decode_equals_recomputation_and_torch(arch, exported):
    import torch

    from lpusim.llm.export import random_decoder
    path, _ = exported(arch)
    prompts = np.array([[5, 77, 190, 3, 250], [0, 0, 31, 8, 64]], np.int64)
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], np.int64)
    tokens, logits = greedy_decode(path, prompts, 8, attention_mask=mask)
    np.testing.assert_allclose(uncached_logits(path, prompts, tokens, attention_mask=mask), logits, rtol=0,
                               atol=1e-4)
    # The graph recomputes transformers' own forward pass (no cache) of the same random weights.
    with torch.no_grad():
        full = torch.from_numpy(np.concatenate([prompts, tokens], axis=1))
        full_mask = torch.from_numpy(np.concatenate([mask, np.ones_like(tokens)], axis=1))
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        torch_logits = random_decoder(arch, seed=0)(input_ids=full, attention_mask=full_mask,
                                                    position_ids=positions).logits.numpy()
    np.testing.assert_allclose(torch_logits[:, prompts.shape[1] - 1:-1].transpose(1, 0, 2), logits, rtol=0,
                               atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("arch,options", [("llama", {}), ("qwen2", {"qkv_bias": True}),
                                          ("mixtral", {"experts": 4, "rope_theta": 1e6})])
def test_builder_equals_the_export_of_the_same_weights(arch, options, tmp_path):
    """Llama and Qwen2 come out bit-identical in onnxruntime today (the tolerance leaves room for onnxruntime
    fusing the two graphs differently); the builder's dense mixture of experts sums the experts in another order
    than the export's TopK form, so Mixtral agrees to rounding. (Mixtral's default rope_theta is 1e6, Llama's
    1e4.)"""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lpusim.llm.export import export_decoder
    weights = models.llama_decoder_weights(seed=3, qkv_bias=options.get("qkv_bias", False),
                                           experts=options.get("experts", 0))
    export_decoder(arch, tmp_path / "model.onnx", weights=weights)
    builder = functools.partial(models.llama_decoder, weights=weights, batch=2, **options)
    prompts = np.array([[5, 77, 190, 3, 250, 9], [0, 0, 31, 8, 64, 100]], np.int64)
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], np.int64)
    tokens, logits = greedy_decode(tmp_path / "model.onnx", prompts, 10, attention_mask=mask)
    built_tokens, built_logits = greedy_decode(builder, prompts, 10, attention_mask=mask)
    np.testing.assert_array_equal(built_tokens, tokens)
    np.testing.assert_allclose(built_logits, logits, rtol=0, atol=1e-5 if arch != "mixtral" else 1e-4)


@pytest.mark.slow
def test_mixtral_export_routes_by_data(exported):
    """What docs/llm.md says a static schedule must handle: TopK over the router, then the chosen experts'
    weights gathered by the computed indices."""
    path, _ = exported("mixtral")
    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["TopK"] == 2
    expert_tables = {i.name for i in model.graph.initializer if "experts" in i.name}
    gathered = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in expert_tables]
    assert len(gathered) == 4 and all(n.input[1] not in expert_tables for n in gathered)
