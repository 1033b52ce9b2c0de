"""Hugging Face decoders with random weights, exported to ONNX with a KV cache in the Optimum layout.

One graph serves prefill (past length 0) and decode (past length P, one new token): batch, sequence, past and
total lengths are dynamic axes. torch and transformers are imported only when an export is asked for (they are not
dependencies of lpusim: `pip install lpusim[llm]`). Nothing is downloaded: a model is built from its config.

How it is exported (docs/llm.md section 1): `torch.onnx.export(dynamo=False)` traces a wrapper that turns the flat
past tensors into a `DynamicCache`, calls the model with explicit `attention_mask` and `position_ids`, and returns
the logits and the cache's tensors. Attention is `eager` (the sdpa path needs aten::diff, which the TorchScript
exporter rejects); Mixtral's experts are `batched_mm` (transformers' default loops over the experts the trace
input happened to route to, so the traced graph would hard-code that routing).
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

import onnx

from lpusim.errors import LpusimError, ModelError
from lpusim.llm.configs import BUILT_IN
from lpusim.llm.layout import DecoderLayout, decoder_layout, past_names, present_names


class MissingDependency(LpusimError):
    """An optional package (torch, transformers) that this function needs is not installed."""


# Tiny configurations of each architecture the issue names: 2 layers, hidden 64, 4 query heads, 2 KV heads
# (grouped-query attention where the architecture has it), vocabulary 256. Small enough to export in seconds and
# to fit one chip many times over; large enough that every head, group and expert is exercised.
# initializer_range 0.2 instead of transformers' 0.02: at 0.02 the logits have a standard deviation of 0.16, the
# median top-1/top-2 gap is 0.03 and the tiny GPT-2 repeats one token forever; at 0.2 (std 1.6, median gap 0.3,
# 10-16 distinct tokens in 16 greedy steps) a greedy decode is a meaningful check instead of a run of near-ties.
PRESETS: dict[str, dict[str, Any]] = {
    "llama": dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.2),
    "qwen2": dict(model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.2),
    # GPT-2's default bos/eos id 50256 lies outside a 256-token vocabulary (transformers warns); 0 does not.
    "gpt2": dict(model_type="gpt2", vocab_size=256, n_embd=64, n_inner=128, n_layer=2, n_head=4,
                 n_positions=256, bos_token_id=0, eos_token_id=0, initializer_range=0.2),
    "mixtral": dict(model_type="mixtral", vocab_size=256, hidden_size=64, intermediate_size=128,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=256, rms_norm_eps=1e-6, num_local_experts=4, num_experts_per_tok=2,
                    tie_word_embeddings=False, initializer_range=0.2),
}


def _require(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingDependency(f"exporting a Hugging Face decoder needs {name}, which is not installed "
                                f"(pip install 'lpusim[llm]')") from None


def decoder_config(config_or_name: Any):
    """A transformers config from a preset name (`PRESETS`), a published model's name (`configs.BUILT_IN`:
    llama-2-7b, ..., mixtral-8x7b; random weights, never downloaded), a config.json path, a dict with
    `model_type`, or a config object (returned as is)."""
    transformers = _require("transformers")
    source = config_or_name
    if isinstance(source, (str, os.PathLike)) and str(source) in PRESETS:
        source = dict(PRESETS[str(source)])
    elif isinstance(source, (str, os.PathLike)) and str(source) in BUILT_IN:
        source = dict(BUILT_IN[str(source)])
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.lexists(path):
            raise ModelError(f"{config_or_name}: neither a preset ({', '.join(PRESETS)}), a built-in model "
                             f"({', '.join(BUILT_IN)}) nor a config.json file")
        from lpusim.files import read_json
        from lpusim.llm.configs import MAX_CONFIG_BYTES

        source = read_json(path, "a config.json", ModelError, MAX_CONFIG_BYTES)  # bounded, regular files only
    if isinstance(source, dict):
        fields = dict(source)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ModelError("decoder config: the dict has no model_type (llama, qwen2, gpt2, mixtral)")
        try:
            config_class = transformers.AutoConfig.for_model(model_type).__class__
        except ValueError:
            raise ModelError(f"decoder config: unknown model_type {model_type!r}") from None
        return config_class(**fields)
    if isinstance(source, transformers.PretrainedConfig):
        return source
    raise ModelError(f"decoder config: expected a preset name, config.json path, dict or transformers config, "
                     f"got {type(config_or_name).__name__}")


def _layers_and_kv_heads(config) -> tuple[int, int, int]:
    text = config.get_text_config(decoder=True)
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return layers, kv_heads, head_dim


def random_decoder(config_or_name: Any, *, seed: int = 0, weights: dict | None = None):
    """The causal-LM module of a config with random weights from `seed`, in eval mode, set up for export:
    eager attention, and for mixtures of experts the batched form whose routing is data in the graph.
    `weights` (numpy arrays by transformers' parameter names, e.g. `lpusim.models.llama_decoder_weights`)
    replaces every parameter; a missing or extra name is a ModelError."""
    torch = _require("torch")
    transformers = _require("transformers")
    config = decoder_config(config_or_name)
    config._attn_implementation = "eager"
    if hasattr(config, "num_local_experts"):
        config._experts_implementation = "batched_mm"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    if weights is not None:
        state = {name: torch.from_numpy(value) for name, value in weights.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Buffers such as rotary inv_freq are computed from the config, not weights.
        missing = [m for m in missing if m in dict(model.named_parameters())]
        if missing or unexpected:
            raise ModelError(f"decoder weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def dense_experts(model) -> int:
    """Give every Mixtral-style sparse MoE block of `model` the dense forward a static schedule runs (docs/llm.md
    section 3.2): every expert computes every token and is weighted by its routing weight, which is 0 unless the
    expert is among the top-k router probabilities (found by k rounds of max, so the graph has no TopK and no
    Gather of expert weights). The same function as transformers' forward except at exact ties of router
    probabilities, where TopK keeps the lower index and this keeps both. Returns the blocks changed."""
    torch = _require("torch")
    F = torch.nn.functional

    def forward(self, hidden_states):
        batch, seq, hidden = hidden_states.shape
        x = hidden_states.reshape(-1, hidden)
        probs = F.softmax(F.linear(x, self.gate.weight).float(), dim=-1)
        remaining, chosen = probs, torch.zeros_like(probs, dtype=torch.bool)
        for _ in range(self.top_k):
            hit = remaining == remaining.max(dim=-1, keepdim=True).values
            chosen = chosen | hit
            remaining = torch.where(hit, torch.full_like(remaining, float("-inf")), remaining)
        routes = torch.where(chosen, probs, torch.zeros_like(probs))
        routes = routes / routes.sum(dim=-1, keepdim=True)
        experts, out = self.experts, torch.zeros_like(x)
        for e in range(experts.num_experts):
            gate, up = F.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(experts.act_fn(gate) * up, experts.down_proj[e])
            out = out + y * routes[:, e:e + 1].to(y.dtype)
        return out.reshape(batch, seq, hidden)

    changed = 0
    for module in model.modules():
        if hasattr(module, "gate") and hasattr(module, "experts") and hasattr(module.experts, "gate_up_proj"):
            module.forward = forward.__get__(module)
            changed += 1
    return changed


def _cache_wrapper(model, layers: int):
    """A module with the flat Optimum signature around a transformers causal LM."""
    torch = _require("torch")
    transformers = _require("transformers")

    class KvCacheDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = transformers.DynamicCache(
                ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)], config=self.model.config)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return KvCacheDecoder().eval()


def export_decoder(config_or_name: Any, path: str | os.PathLike, *, seed: int = 0, weights: dict | None = None,
                   opset: int = 17, trace_past: int = 3, trace_seq: int = 2, moe: str = "gather") -> DecoderLayout:
    """Write a decoder with random weights (from `seed`, or `weights` as in `random_decoder`) to `path` as ONNX in
    the Optimum KV-cache layout and return its checked layout.

    The trace runs with a past of `trace_past` and `trace_seq` new tokens; both are dynamic axes in the graph, so
    the file serves prefill (past 0) and decode (seq 1) alike. Lengths of 0 or 1 are avoided in the trace because
    the tracer would specialise on them.

    `moe`: a mixture of experts as transformers computes it ("gather": TopK, then a Gather of the chosen experts'
    weights, which no static schedule runs) or in the dense form of `dense_experts` ("dense": what the chip runs)."""
    torch = _require("torch")
    if moe not in ("gather", "dense"):
        raise ModelError(f"moe='{moe}': expected 'gather' or 'dense'")
    model = random_decoder(config_or_name, seed=seed, weights=weights)
    if moe == "dense":
        dense_experts(model)
    layers, kv_heads, head_dim = _layers_and_kv_heads(model.config)
    wrapper = _cache_wrapper(model, layers)
    vocab = model.config.get_text_config(decoder=True).vocab_size
    batch = 2
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, trace_seq), generator=generator)
    attention_mask = torch.ones(batch, trace_past + trace_seq, dtype=torch.int64)
    position_ids = torch.arange(trace_past, trace_past + trace_seq).expand(batch, -1).contiguous()
    past = [torch.randn(batch, kv_heads, trace_past, head_dim, generator=generator) for _ in range(2 * layers)]
    layout = DecoderLayout(layers, kv_heads, head_dim, vocab, "batch", "sequence_length", "past_sequence_length")
    axes = {"input_ids": {0: "batch", 1: "sequence_length"},
            "attention_mask": {0: "batch", 1: "total_sequence_length"},
            "position_ids": {0: "batch", 1: "sequence_length"},
            "logits": {0: "batch", 1: "sequence_length"}}
    for i in range(layers):
        for name in past_names(i):
            axes[name] = {0: "batch", 2: "past_sequence_length"}
        for name in present_names(i):
            axes[name] = {0: "batch", 2: "total_sequence_length"}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python bool it freezes (shape checks in the mask code): expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (input_ids, attention_mask, position_ids, *past), os.fspath(path),
                          dynamo=False, opset_version=opset, input_names=layout.input_names(),
                          output_names=layout.output_names(), dynamic_axes=axes)
    exported = onnx.load(os.fspath(path))
    onnx.checker.check_model(exported)
    return decoder_layout(exported)
