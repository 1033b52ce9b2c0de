"""The published decoder configurations and their size (lpusim.llm.configs): parameter counts equal the models'
published counts, and (with torch) transformers' own count of the same configurations."""
from __future__ import annotations

import json

import pytest

from lpusim.errors import ModelError
from lpusim.llm.configs import BUILT_IN, model_size

# The parameter counts Hugging Face lists for each model (every weight, embeddings and lm_head included).
PUBLISHED = {"llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192,
             "llama-3-8b": 8_030_261_248, "llama-3-70b": 70_553_706_496, "llama-3.2-1b": 1_235_814_400,
             "mixtral-8x7b": 46_702_792_704}


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_parameter_counts_are_the_published_ones(name):
    size = model_size(name, "fp16", context=4096)
    assert size.parameters == PUBLISHED[name]
    assert size.weights_bytes == 2 * PUBLISHED[name]


def test_kv_cache_and_chips():
    """Llama 2 70B: 80 layers, 8 KV heads of 128: 2 x 80 x 8 x 128 = 163,840 values a position; int8 at 4,096
    positions is 640 MiB. Weights and cache need 302 chips of 230,686,720 bytes (Groq used about 576)."""
    size = model_size("llama-2-70b", "int8", context=4096)
    assert size.kv_cache_bytes == 163_840 * 4096
    assert size.chips_to_hold(230_686_720) == 302
    assert size.installed_parameters == PUBLISHED["llama-2-70b"] - 32000 * 8192  # all but the embedding table


def test_config_json_and_errors(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(BUILT_IN["llama-3-8b"]))
    assert model_size(str(path)).parameters == PUBLISHED["llama-3-8b"]
    with pytest.raises(ModelError, match="not a built-in model"):
        model_size("llama-9-1t")
    with pytest.raises(ModelError, match="model_type 'bert'"):
        model_size({"model_type": "bert"})
    with pytest.raises(ModelError, match="precision 'fp8'"):
        model_size("llama-2-7b", "fp8")


@pytest.mark.parametrize("preset", ["llama", "qwen2", "gpt2", "mixtral"])
def test_sizes_equal_transformers_counts(preset):
    """The tiny export presets built by transformers (random weights): its parameter count equals model_size's."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lpusim.llm.export import PRESETS, random_decoder
    model = random_decoder(preset)
    assert model_size(PRESETS[preset]).parameters == sum(p.numel() for p in model.parameters())
