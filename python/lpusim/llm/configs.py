"""The published decoder configurations by name, and what a configuration weighs: parameters, weight bytes and KV-cache
bytes at a precision and context (the first step of a rack-scale plan: how many chips hold it).

`BUILT_IN` holds the fields of each model's Hugging Face `config.json` that fix its size (transformers' names), so
`lpusim.llm.export.decoder_config("llama-2-7b")` builds the model with random weights (never downloaded) and
`model_size("llama-2-70b", ...)` sizes it without building it. Any Hugging Face config of these families (Llama,
Mistral, Mixtral, Qwen2, GPT-2) sizes the same way: `model_size` reads the same fields from a dict or config.json.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from lpusim.errors import ModelError
from lpusim.files import read_json

_LLAMA2 = dict(model_type="llama", vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
               rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu")
_LLAMA3 = dict(model_type="llama", vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
               rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu")

BUILT_IN: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(_LLAMA2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32),
    "llama-2-13b": dict(_LLAMA2, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40),
    "llama-2-70b": dict(_LLAMA2, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8),
    "llama-3-8b": dict(_LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8),
    "llama-3-70b": dict(_LLAMA3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8),
    # Llama 3.2 1B (a draft for the 70B: the same tokenizer); its rope scaling for 128K positions is not modelled
    "llama-3.2-1b": dict(_LLAMA3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                         max_position_embeddings=131072),
    "mixtral-8x7b": dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6,
                         tie_word_embeddings=False, num_local_experts=8, num_experts_per_tok=2,
                         hidden_act="silu"),
}

BYTES = {"int8": 1, "fp16": 2, "fp32": 4}
MAX_CONFIG_BYTES = 1 << 20  # a Hugging Face config.json is a few kB: a larger file is refused unread


@dataclass(frozen=True)
class ModelSize:
    """What a decoder weighs. `parameters` counts every weight (the embedding table once, lm_head unless tied);
    `installed_parameters` those a decode step streams through the MXM (all but the embedding table, a Gather;
    every expert of a mixture, as the dense form computes them all)."""

    parameters: int
    installed_parameters: int
    weights_bytes: int
    kv_cache_bytes: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    def chips_to_hold(self, sram_bytes: int) -> int:
        """The fewest chips whose SRAM holds the weights and the cache (no activations, no padding: a floor)."""
        return math.ceil((self.weights_bytes + self.kv_cache_bytes) / sram_bytes)


def config_fields(config: str | os.PathLike | dict | Any) -> dict[str, Any]:
    """A configuration's fields: a built-in name, a config.json path, a dict, or a transformers config object."""
    if isinstance(config, (str, os.PathLike)) and str(config) in BUILT_IN:
        return dict(BUILT_IN[str(config)])
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.lexists(path):
            raise ModelError(f"{path}: not a built-in model ({', '.join(BUILT_IN)}) and not a config.json file")
        fields = read_json(path, "a config.json", ModelError, MAX_CONFIG_BYTES)  # bounded, regular files only
        if not isinstance(fields, dict):
            raise ModelError(f"{path}: a config.json holds one JSON object")
        return fields
    if isinstance(config, dict):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise ModelError(f"a decoder configuration is a built-in name, a config.json path or a dict (got {config!r})")


def first_field(fields: dict, *names: str, default=None):
    for name in names:
        if fields.get(name) is not None:
            return fields[name]
    if default is not None:
        return default
    raise ModelError(f"the configuration has none of {', '.join(names)}")


def model_size(config, precision: str = "int8", context: int = 4096, batch: int = 1) -> ModelSize:
    """Parameters and bytes of a Llama / Mistral / Mixtral / Qwen2 / GPT-2 configuration at `precision` (weights
    and KV cache in it), with a cache of `context` positions for `batch` sequences."""
    if precision not in BYTES:
        raise ModelError(f"precision '{precision}': one of {', '.join(BYTES)}")
    f = config_fields(config)
    kind = f.get("model_type")
    if kind == "gpt2":
        hidden, layers, heads = f["n_embd"], f["n_layer"], f["n_head"]
        ffn = f.get("n_inner") or 4 * hidden
        vocab, positions = f["vocab_size"], f.get("n_positions", 1024)
        kv_heads, head_dim = heads, hidden // heads
        per_layer = (hidden * 3 * hidden + 3 * hidden) + (hidden * hidden + hidden) + (hidden * ffn + ffn) + \
            (ffn * hidden + hidden) + 4 * hidden  # c_attn, c_proj, c_fc, mlp c_proj, two LayerNorms
        embeddings = vocab * hidden + positions * hidden
        params = embeddings + layers * per_layer + 2 * hidden  # lm_head tied to wte; ln_f
        installed = params - embeddings
    elif kind in ("llama", "mistral", "mixtral", "qwen2"):
        hidden, layers = f["hidden_size"], f["num_hidden_layers"]
        heads = f["num_attention_heads"]
        kv_heads = first_field(f, "num_key_value_heads", default=heads)
        head_dim = first_field(f, "head_dim", default=hidden // heads)
        ffn, vocab = f["intermediate_size"], f["vocab_size"]
        attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
        if kind == "qwen2":  # q, k, v biases
            attention += heads * head_dim + 2 * kv_heads * head_dim
        experts = f.get("num_local_experts") or 0
        mlp = 3 * hidden * ffn * max(experts, 1) + (experts * hidden if experts else 0)  # the router
        per_layer = attention + mlp + 2 * hidden
        tied = bool(f.get("tie_word_embeddings", False))
        params = vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden
        installed = params - (0 if tied else vocab * hidden)  # a tied table is also the lm_head's weights
    else:
        raise ModelError(f"model_type '{kind}': sizing knows llama, mistral, mixtral, qwen2 and gpt2")
    kv = 2 * layers * batch * kv_heads * context * head_dim * BYTES[precision]
    return ModelSize(params, installed, params * BYTES[precision], kv, layers, heads, kv_heads, head_dim)
