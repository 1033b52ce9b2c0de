"""The rack-scale planner (lpusim.llm.plan, `lpusim llm`): layouts, the composed numbers, and its errors."""
from __future__ import annotations

import json

import pytest

from lpusim.cli import main
from lpusim.errors import ModelError
from lpusim.llm.pieces import PartDoesNotFit
from lpusim.llm.plan import Planner, plan_llm
from lpusim.llm.shard import DecoderShape, ShardWidths, attention_part, mlp_part
from lpusim.multichip.topology import shortest_path, system_for_chips

# A small Llama with grouped-query attention: 8 query heads over 2 key/value heads.
TINY = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 640, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 640, "max_position_embeddings": 256}
SMALL = dict(context=64, prompt=8, new_tokens=4, prefill_chunk=8)

FIELDS = ("chips", "tp", "pp", "racks", "precision", "weights_bytes", "kv_cache_bytes", "sram_used_fraction",
          "ttft_ms", "per_token_us", "tokens_per_s", "throughput_tokens_per_s", "link_utilization",
          "cycle_breakdown", "simulated", "wall_s")


@pytest.fixture(scope="module")
def planner():
    return Planner(TINY, precision="fp16", **SMALL)


def test_widths_follow_megatron():
    shape = DecoderShape.from_config("llama-2-70b")
    w = ShardWidths.of(shape, 8)
    assert (w.heads, w.kv_heads, w.ffn, w.vocab) == (8, 1, 3584, 4000)
    with pytest.raises(ModelError, match="does not divide the 64 attention heads"):
        ShardWidths.of(shape, 3)


def test_parts_are_the_shares_of_a_layer():
    shape = DecoderShape.from_config(TINY)
    a = attention_part(shape, 2, seq=1, past=15)
    sizes = {i.name: tuple(i.dims) for i in a.graph.initializer if i.name.endswith(".weight") and len(i.dims) == 2}
    assert sizes["q.weight"] == (256, 4 * 32) and sizes["k.weight"] == (256, 32) and sizes["o.weight"] == (128, 256)
    m = mlp_part(shape, 2, seq=1)
    sizes = {i.name: tuple(i.dims) for i in m.graph.initializer if len(i.dims) == 2}
    assert sizes["mlp.gate.weight"] == (256, 320) and sizes["mlp.down.weight"] == (320, 256)
    half = mlp_part(shape, 2, seq=1, groups=2)  # a dense MLP in two column groups: half the columns each
    sizes = {i.name: tuple(i.dims) for i in half.graph.initializer if len(i.dims) == 2}
    assert sizes["mlp.gate.weight"] == (256, 160) and sizes["mlp.down.weight"] == (160, 256)


def test_auto_plan_fields_and_sums(planner):
    r = planner.plan("auto")
    for field in FIELDS:
        assert field in r, field
    assert r["simulated"] is True and r["chips"] == r["tp"] * r["pp"] == 1  # the tiny model fits one chip
    assert sum(r["cycle_breakdown"].values()) == r["per_token_cycles"]
    assert r["tokens_per_s"] == pytest.approx(1e6 / r["per_token_us"], rel=1e-3)
    assert 0 < r["sram_used_fraction"] <= 1


def test_given_layout_pipelines_and_tensor_groups(planner):
    r = planner.plan(8, tp=2)  # 4 groups of 2 chips, one layer (two parts) each
    assert (r["tp"], r["pp"], r["parts_per_group"]) == (2, 4, [[2, 4]])
    odd = planner.plan(10, tp=2)  # 5 groups: layers cannot spread evenly, parts can (a cut inside a layer)
    assert sum(n * count for n, count in odd["parts_per_group"]) == 8 and odd["pp"] == 5
    b = r["cycle_breakdown"]
    assert b["c2c"] > 0 and b["weight_installs"] > 0 and b["compute"] > 0
    assert r["link_utilization"]["fraction"] > 0
    # more sequences in flight raise the throughput up to the pipeline's beat, never the one-user speed
    busy = Planner(TINY, precision="fp16", concurrency=4, **SMALL)
    busy.pieces = planner.pieces
    r4 = busy.plan(8, tp=2)
    assert r4["per_token_cycles"] == r["per_token_cycles"]
    assert r["throughput_tokens_per_s"] < r4["throughput_tokens_per_s"] <= 4 * r["tokens_per_s"] * 1.0001


def test_pieces_are_compiled_once(planner):
    before = len(planner.pieces.found)
    planner.plan(8, tp=2)
    assert len(planner.pieces.found) == before


def test_install_cycles_counts_weight_loads(planner):
    piece = planner.pieces.part("mlp", 1, 1)
    assert 0 < piece.install_cycles <= piece.cycles


def test_layout_errors(planner):
    with pytest.raises(ModelError, match="--tp 3"):
        planner.plan(6, tp=3)
    with pytest.raises(ModelError, match="--pp 3 does not divide --chips 8"):
        planner.plan(8, pp=3)
    with pytest.raises(ModelError, match="a tensor-parallel group is 1, 2, 4 or 8"):
        planner.plan(16, tp=16)


def test_too_few_chips_names_the_sizes():
    big = dict(TINY, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, vocab_size=4096)
    with pytest.raises(ModelError, match=r"cannot hold it: it takes at least \d+ chips"):
        plan_llm(big, chips=1, precision="fp16", **SMALL)


def test_bad_flags():
    with pytest.raises(ModelError, match="--context"):
        Planner(TINY, context=0)
    with pytest.raises(ModelError, match="exceed --context 16"):
        Planner(TINY, context=16, prompt=12, new_tokens=8)
    with pytest.raises(ModelError, match="model_type 'bert'"):
        Planner({"model_type": "bert"})


def test_shortest_path_in_a_rack():
    system = system_for_chips(72)
    assert shortest_path(system, 0, 1) == ["local"]
    assert 1 <= len(shortest_path(system, 0, 71)) <= 3


def test_cli_json_and_errors(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    assert main(["llm", str(config), "--precision", "fp16", "--context", "64", "--prompt", "8", "--new-tokens", "4",
                 "--chips", "2", "--tp", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["chips"] == 2 and r["tp"] == 2 and r["pp"] == 1
    assert main(["llm", str(config), "--tp", "3", "--chips", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tp 3" in err[0]
    assert main(["llm", str(tmp_path / "missing.json")]) == 2
    assert "not a built-in model" in capsys.readouterr().err


FAMILIES = {
    "qwen2": dict(TINY, model_type="qwen2", num_key_value_heads=4, tie_word_embeddings=True),
    "mistral": dict(TINY, model_type="mistral", sliding_window=4096, head_dim=32),
    "mixtral": dict(TINY, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "gpt2": {"model_type": "gpt2", "n_embd": 256, "n_layer": 2, "n_head": 8, "vocab_size": 640, "n_positions": 256},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hugging_face_families_plan(family, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(FAMILIES[family]))
    r = plan_llm(str(config), chips=2, tp=2, precision="int8", **SMALL)
    assert r["chips"] == 2 and r["per_token_cycles"] > 0 and r["ttft_ms"] > 0
    assert r["family"] == ("gpt2" if family == "gpt2" else "llama")


def test_experts_split_over_parts_when_they_do_not_fit_together():
    # a chip of 1024 words per slice (28.8 MB): 4 experts of 6144 columns (9.4 MB each at fp16) do not fit it
    # together, 2 do: each layer's MLP goes in 2 parts, on groups of their own
    from lpusim.chip import Chip
    base = Chip.load(None).config
    small = dict(base, mem_words=1024, sram_bytes=base["mem_slices"] * 1024 * base["lanes"])
    moe = dict(TINY, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, intermediate_size=6144,
               num_hidden_layers=2)
    planner = Planner(moe, precision="fp16", chip=small, **SMALL)
    assert planner.mlp_groups(1) == 2
    r = planner.plan("auto", tp=1)
    assert r["parts_per_layer"] == 3 and sum(n * count for n, count in r["parts_per_group"]) == 6
    assert r["sram_used_fraction"] <= 1


@pytest.mark.parametrize("change,message", [
    (dict(hidden_size="wide"), "not a number"), (dict(num_attention_heads=0), "heads is 0"),
    (dict(num_key_value_heads=3), "not a multiple"), (dict(model_type="mixtral", num_local_experts=4), "between 1"),
    (dict(vocab_size=None), "no vocab_size")])
def test_bad_config_json_is_one_line(tmp_path, capsys, change, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({k: v for k, v in {**TINY, **change}.items() if v is not None}))
    assert main(["llm", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_huge_config_json_is_not_read(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(" " * (2 << 20) + "{}")
    assert main(["llm", str(config)]) == 2
    assert "2,097,154 bytes; a config.json of more than 1,048,576 bytes is not read" in capsys.readouterr().err


def test_cli_reuses_the_disk_cache(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    args = ["llm", str(config), "--precision", "fp16", "--context", "64", "--prompt", "8", "--new-tokens", "4",
            "--chips", "2", "--json", "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    cold = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    warm = json.loads(capsys.readouterr().out)
    assert cold["compile_s"] > 0 and warm["compile_s"] == 0  # every piece came from the cache
    for k in ("per_token_cycles", "ttft_cycles", "cycle_breakdown", "energy", "chips", "tp", "pp"):
        assert warm[k] == cold[k], k
    assert main(args[:-2] + ["--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out)["compile_s"] > 0


def test_an_unwritable_cache_warns_and_plans(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.warns(UserWarning, match="cannot be written"):
        assert main(["llm", str(config), "--precision", "fp16", "--context", "64", "--prompt", "8",
                     "--new-tokens", "4", "--chips", "1", "--json", "--cache", str(blocked / "cache")]) == 0
    assert json.loads(capsys.readouterr().out)["per_token_cycles"] > 0


def test_embedding_rows_split_over_groups_when_its_block_does_not_fit_a_chip():
    # a chip of 1024 words per slice (28.8 MB): a 64,000-token table's column block does not fit one chip whole (the
    # attention and MLP parts do): its rows go over the first groups, chained to group 0
    from lpusim.chip import Chip
    base = Chip.load(None).config
    small = dict(base, mem_words=1024, sram_bytes=base["mem_slices"] * 1024 * base["lanes"])
    wide = dict(TINY, vocab_size=64000, num_hidden_layers=2)
    planner = Planner(wide, precision="fp16", chip=small, **SMALL)
    r = planner.plan("auto", tp=2)
    blocks = r["embedding_row_blocks"]
    assert blocks >= 2 and r["pp"] >= blocks and r["sram_used_fraction"] <= 1
    assert f"embed part (tp 2, 1 token, 1/{blocks} of it)" in [p["name"] for p in r["pieces"]]
    try:  # the fewest blocks: one fewer does not fit a chip
        fewer = planner.pieces.part("embed", 2, 1, groups=blocks - 1).sram_bytes > small["sram_bytes"]
    except PartDoesNotFit:
        fewer = True
    assert fewer
    # the chain step is on the token's path: group 1 sends its partial block to group 0 before group 0 starts
    layout = planner.choose("auto", 2, None)
    system, route = planner.placed(layout.chips)
    one = planner.pass_cycles(layout, system, route, 1, planner.context - 1)
    hop = planner.embed_hop(layout, system, route, 1, 1)[1]
    embed = planner.pieces.part("embed", 2, 1, groups=blocks)
    alone = planner.group_cycles(layout, 1, 1, planner.context - 1)
    assert one["groups"][1]["c2c"] == alone["c2c"] + hop.cycles - hop.sync_cycles
    assert alone["compute"] + alone["weight_installs"] >= embed.cycles
    assert planner.entry_chip(layout, route) == route[(blocks - 1) * layout.tp]  # the chain's start


def test_embedding_row_block_matches_onnxruntime():
    """A row block looks up only the ids inside it (the others give 0) and adds the partial sum it is handed."""
    import numpy as np

    import lpusim
    from lpusim.check.compare import compare, run_onnxruntime
    from lpusim.llm.shard import embed_part

    shape = DecoderShape.from_config(TINY)
    model = embed_part(shape, 2, seq=5, row_blocks=3)
    program = lpusim.compile(model, precision="fp16")
    start = -(-shape.vocab // 3)
    feeds = {"input_ids": np.array([[0, start - 1, start, 2 * start - 1, shape.vocab - 1]], np.int64),
             "block_start": np.array(start, np.int64),
             "partial": np.random.default_rng(0).standard_normal((1, 5, shape.hidden // 2)).astype(np.float32)}
    result = program.run(feeds)
    assert result.cycles == program.predicted_cycles
    ref = run_onnxruntime(model, feeds)[0]
    assert compare(result.outputs, ref)["outputs_match"]
    np.testing.assert_array_equal(result.outputs["block"][0, [0, 1, 4]], feeds["partial"][0, [0, 1, 4]])
