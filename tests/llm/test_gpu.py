"""The GPU baseline (lpusim.llm.gpu, `lpusim llm --compare`): the roofline by hand, its bounds, its configurations,
and the CLI's gpu block and errors."""
from __future__ import annotations

import json
from importlib import resources

import pytest

from lpusim.cli import main
from lpusim.errors import ConfigError
from lpusim.llm.gpu import Gpu, expert_fraction, format_comparison, gpu_decode
from lpusim.llm.shard import DecoderShape

# hidden 256, 4 layers, 8 heads over 2 key/value heads of 32, ffn 640, vocab 640 (the plan tests' model)
TINY = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 640, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 640, "max_position_embeddings": 256}
SMALL_PLAN = ["--precision", "fp16", "--context", "64", "--prompt", "8", "--new-tokens", "4", "--prefill-chunk", "8"]


def toy_gpu(**change) -> Gpu:
    """Round numbers, to compute the roofline by hand."""
    numbers = dict(hbm_bytes=1e9, hbm_bytes_per_s=1e9, bandwidth_utilisation=0.5, peak_flops_16bit=1e12,
                   peak_flops_8bit=2e12, eight_bit_format="int8", compute_utilisation=1.0, power_w=100,
                   nvlink_bytes_per_s=1e9, allreduce_base_s=1e-5, allreduce_step_s=1e-6, gpus_per_node=8,
                   memory_reserve=0.0)
    numbers.update(change)
    raw = {"name": "toy", **{k: {"value": v, "source": "a test"} for k, v in numbers.items()}}
    return Gpu.from_json(json.dumps(raw), "toy.json")


def test_roofline_by_hand():
    # installed weights: 4 layers x (attention 163,840 + MLP 491,520 + norms 512) + lm_head 163,840 + final norm
    # 256 = 2,787,584 parameters, 5,575,168 bytes at fp16; the cache: 2 x 4 layers x 2 heads x 64 x 32 x 2 B = 65,536
    r = gpu_decode(TINY, toy_gpu(), precision="fp16", context=64, gpus=2)
    assert (r["gpus"], r["tp"], r["pipeline_stages"], r["bound"]) == (2, 2, 1, "memory")
    assert r["bytes_per_step"] == 5_575_168 + 65_536
    assert r["breakdown_ms"]["weights"] == pytest.approx(5_575_168 / (2 * 1e9 * 0.5) * 1e3, abs=1e-4)
    assert r["breakdown_ms"]["kv_cache"] == pytest.approx(65_536 / 1e9 * 1e3, abs=1e-4)
    # FLOPs: 2 per weight + q.k and p.v: 4 x 4 layers x 8 heads x 32 x 64 positions = 262,144
    assert r["flops_per_step"] == 2 * 2_787_584 + 262_144
    # 8 all-reduces of [1, 256] bf16 over 2 GPUs: 10 us + 2 steps of 1 us + 2 / 2 x 512 B / 1 GB/s
    reduce_s = 8 * (1e-5 + 2e-6 + 512 / 1e9)
    assert r["breakdown_ms"]["all_reduce"] == pytest.approx(reduce_s * 1e3, abs=1e-4)
    step = 5_640_704 / 1e9 + reduce_s
    assert r["time_per_token_ms"] == pytest.approx(step * 1e3, abs=1e-3)
    assert r["tokens_per_s"] == pytest.approx(1 / step, rel=1e-3)
    assert r["j_per_token"] == pytest.approx(2 * 100 * step, rel=1e-3)


def test_fewest_gpus_that_hold_it():
    # 5.9 MB of weights: one GPU of 4 MB cannot, two can; at 1 MB per GPU it takes a second node of 8
    assert gpu_decode(TINY, toy_gpu(hbm_bytes=4e6), precision="fp16", context=64)["gpus"] == 2
    deep = gpu_decode(TINY, toy_gpu(hbm_bytes=0.5e6), precision="fp16", context=64)
    assert (deep["gpus"], deep["tp"], deep["pipeline_stages"]) == (16, 8, 2)
    with pytest.raises(ConfigError, match="needs"):
        gpu_decode(TINY, toy_gpu(hbm_bytes=4e6), precision="fp16", context=64, gpus=1)


def test_memory_bound_turns_compute_bound_as_the_batch_grows():
    slow = toy_gpu(peak_flops_16bit=1e11)
    runs = {b: gpu_decode(TINY, slow, precision="fp16", context=2, concurrency=b, gpus=1) for b in (1, 16, 1024)}
    assert [runs[b]["bound"] for b in (1, 16, 1024)] == ["memory", "memory", "compute"]
    assert runs[1]["tokens_per_s"] > runs[1024]["tokens_per_s"]  # each user waits for the whole batch
    assert runs[1]["throughput_tokens_per_s"] < runs[16]["throughput_tokens_per_s"] < \
        runs[1024]["throughput_tokens_per_s"]
    assert runs[1024]["j_per_token"] < runs[1]["j_per_token"]


def test_a_mixture_reads_only_its_routed_experts():
    shape = DecoderShape.from_config("mixtral-8x7b")
    assert expert_fraction(shape, 1) == pytest.approx(2 / 8)
    assert expert_fraction(shape, 64) == pytest.approx(1, abs=1e-6)
    one = gpu_decode("mixtral-8x7b", "h100", precision="int8", context=2048)
    assert one["bytes_per_step"] < 0.35 * 46.7e9  # 2 of 8 experts' weights, not 46.7 GB


def test_the_h100_utilisation_reproduces_its_measurement():
    # NVIDIA NIM, Llama-3.3-70B FP8 on 2 x H100 (TP2), 5000 tokens in / 500 out: 18.58 ms per token; 500 in / 2000
    # out: 18.91 ms (docs/llm.md section 5.2). The first fixed the utilisation; the second is a check.
    at_5k = gpu_decode("llama-3-70b", "h100", precision="int8", context=5250, gpus=2)
    assert at_5k["time_per_token_ms"] == pytest.approx(18.58, rel=0.01)
    at_1k = gpu_decode("llama-3-70b", "h100", precision="int8", context=1500, gpus=2)
    assert at_1k["time_per_token_ms"] == pytest.approx(18.91, rel=0.05)
    assert at_1k["weight_format"] == "fp8" and gpu_decode("llama-2-7b", "a100")["weight_format"] == "int8"


def test_configurations_ship_with_the_package_and_name_their_sources():
    files = sorted(p.name for p in (resources.files("lpusim.llm") / "gpus").iterdir() if p.name.endswith(".json"))
    assert files == ["a100_sxm.json", "h100_sxm.json"]
    for name in files:
        gpu = Gpu.from_json((resources.files("lpusim.llm") / "gpus" / name).read_text(encoding="utf-8"), name)
        assert all(source.strip() for source in gpu.sources.values()) and len(gpu.sources) == 13
    h100, a100 = Gpu.load("h100"), Gpu.load("a100")
    assert (h100.hbm_bytes_per_s, h100.peak_flops_16bit, h100.power_w) == (3.35e12, 989e12, 700)
    assert (a100.hbm_bytes_per_s, a100.peak_flops_16bit, a100.power_w) == (2.039e12, 312e12, 400)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "one JSON object"),
    ('{"hbm_bytes": {"value": 8e10}}', "field 'hbm_bytes' must be"),
    (json.dumps({k: {"value": -1, "source": "s"} for k in ("hbm_bytes",)}), "must be"),
])
def test_bad_gpu_files_exit_2_with_one_line(tmp_path, capsys, text, message):
    bad = tmp_path / "gpu.json"
    bad.write_text(text)
    assert main(["llm", "llama-2-7b", "--compare", str(bad)]) == 2  # before any plan is compiled
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_field_values_are_named():
    for change, message in ((dict(bandwidth_utilisation=1.5), "between 0"), (dict(power_w=0), "positive"),
                            (dict(eight_bit_format="fp4"), "fp8 or int8"), (dict(memory_reserve=1), "memory_reserve"),
                            (dict(gpus_per_node=2.5), "whole number"), (dict(hbm_bytes="80GB"), "a number")):
        with pytest.raises(ConfigError, match=message):
            toy_gpu(**change)
    with pytest.raises(ConfigError, match="not a built-in GPU"):
        Gpu.load("h200")


def test_compare_adds_the_gpu_block(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    assert main(["llm", str(config), *SMALL_PLAN, "--compare", "h100", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    g = r["gpu"]
    for field in ("gpus", "tokens_per_s", "throughput_tokens_per_s", "j_per_token", "time_per_token_ms", "bound"):
        assert field in g, field
    assert set(g["breakdown_ms"]) == {"weights", "kv_cache", "compute", "all_reduce"}
    assert (g["precision"], g["context"], g["concurrency"], g["gpus"]) == ("fp16", 64, 1, 1)
    assert main(["llm", str(config), *SMALL_PLAN, "--compare", "a100"]) == 0
    text = capsys.readouterr().out
    assert "a100_sxm (model)" in text and "n/a" not in text  # the plan's energy model gives the LPU J/token
    assert r["energy"]["j_per_token"] > 0


def test_the_lpu_energy_is_shown_when_the_plan_has_it():
    plan = {"tokens_per_s": 100.0, "throughput_tokens_per_s": 100.0, "concurrency": 1, "chips": 576,
            "energy": {"j_per_token": 12.5}}
    plan["gpu"] = gpu_decode("llama-2-70b", "h100", precision="int8", context=4096)
    text = format_comparison(plan)
    assert "12.5 " in text and "576" in text and "n/a" not in text
