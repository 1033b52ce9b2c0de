"""`lpusim sweep` (lpusim.sweep) and the pieces' disk cache (lpusim.llm.piece_cache): rows, error rows, files,
cache hits and misses, atomic entries, and the process pool against a local Ray cluster (slow)."""
from __future__ import annotations

import csv
import json
import os
import sys
import time

import pytest

from lpusim.cli import main
from lpusim.llm import piece_cache
from lpusim.llm.piece_cache import PieceCache
from lpusim.llm.pieces import PartDoesNotFit
from lpusim.llm.plan import Planner, plan_llm
from lpusim.sweep.plots import pareto, plot_sweep
from lpusim.sweep.run import RUN_COLUMNS, plan_row, run_sweep
from lpusim.sweep.spec import SweepSpec
from lpusim.sweep.table import results

# A small Llama with grouped-query attention (as tests/models/test_llm_plan.py): one part compiles in tenths of a second.
TINY = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 640, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 640, "max_position_embeddings": 256}
# context 16 cannot hold a prompt of 8 and 12 new tokens: those points are error rows
GRID = {"model": TINY, "chips": [1, 8], "precision": "fp16", "context": [16, 64], "prompt": 8, "new_tokens": 12}


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("pieces", "wall_s", "compile_s")}


@pytest.fixture(scope="module")
def cold_and_warm(tmp_path_factory):
    cache = tmp_path_factory.mktemp("pieces")
    spec = SweepSpec.from_dict(GRID)
    cold = run_sweep(spec, workers=1, cache_dir=cache)
    warm = run_sweep(spec, workers=1, cache_dir=cache)
    return cache, cold, warm


def test_rows_in_point_order_with_error_rows(cold_and_warm):
    _, rows, _ = cold_and_warm
    assert [r["point"] for r in rows] == [0, 1, 2, 3]
    assert [(r["chips_asked"], r["context"]) for r in rows] == [(1, 16), (1, 64), (8, 16), (8, 64)]
    for r in rows[0::2]:
        assert "exceed --context 16" in r["error"] and "tokens_per_s" not in r
    one, eight = rows[1], rows[3]
    assert one["error"] == "" and eight["error"] == ""
    assert (one["chips"], eight["chips"]) == (1, 8) and eight["tp"] * eight["pp"] == 8
    assert one["tokens_per_s"] > 0 and one["cycle_breakdown.compute"] > 0 and "link_utilization.fraction" in one
    # the row's numbers are plan_llm's own
    direct = plan_llm(TINY, chips=8, precision="fp16", context=64, prompt=8, new_tokens=12)
    assert eight["per_token_cycles"] == direct["per_token_cycles"] and eight["ttft_ms"] == direct["ttft_ms"]


def test_warm_cache_compiles_nothing(cold_and_warm):
    _, cold, warm = cold_and_warm
    assert results(cold) == results(warm)
    assert sum(r["cache_misses"] for r in cold) > 0 and sum(r.get("compile_s", 0) for r in cold) > 0
    assert all(r["cache_misses"] == 0 for r in warm) and sum(r["cache_hits"] for r in warm) > 0
    assert all(r.get("compile_s", 0) == 0 for r in warm)


def test_code_or_chip_change_misses(cold_and_warm, monkeypatch):
    cache = cold_and_warm[0]
    planner = Planner(TINY, precision="fp16", context=64, prompt=8, new_tokens=12)
    store = PieceCache(cache)
    key = ("part", "mlp", 1, 1, 0, 1)
    assert store.load(planner.pieces, key) is not None
    monkeypatch.setattr(piece_cache, "code_hash", lambda: "another version of lpusim")
    assert store.load(planner.pieces, key) is None
    monkeypatch.undo()
    other = Planner(TINY, precision="fp16", context=64, prompt=8, new_tokens=12,
                    chip=dict(planner.chip.config, clock_hz=planner.chip.config["clock_hz"] // 2))
    assert store.load(other.pieces, key) is None
    assert store.load(Planner(TINY, precision="int8", context=64, prompt=8, new_tokens=12).pieces, key) is None


def test_stored_decode_program_recompiled_for_a_new_prefill(tmp_path):
    """A prompt of 4 has a prefill chunk of 4 over the same decode step: the decode piece is a hit, its program
    is not in memory, and the chunk still claims its cache addresses."""
    store = PieceCache(tmp_path)
    plan_llm(TINY, chips=1, precision="fp16", context=64, prompt=8, new_tokens=4, store=store)
    hits = store.hits
    shorter = plan_llm(TINY, chips=1, precision="fp16", context=64, prompt=4, new_tokens=4, store=store)
    assert store.hits > hits
    assert strip(shorter) == strip(plan_llm(TINY, chips=1, precision="fp16", context=64, prompt=4, new_tokens=4))


def test_entries_are_whole_or_remeasured(tmp_path, monkeypatch):
    store = PieceCache(tmp_path)
    planner = Planner(TINY, precision="fp16", context=64, prompt=8, new_tokens=4)
    planner.pieces.store = store
    piece = planner.pieces.part("embed", 1, 1)
    key = ("part", "embed", 1, 1, 0, 1)
    path = store.path(piece_cache.key_material(planner.pieces, key))
    assert path.exists() and not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    assert store.load(planner.pieces, key) == piece.__class__(**dict(piece.__dict__, compile_s=0.0))
    # a writer that dies before the rename leaves the old entry and no temporary file
    def dies(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(OSError):
        store.save(planner.pieces, key, piece)
    monkeypatch.undo()
    assert store.load(planner.pieces, key) is not None and len(list(path.parent.iterdir())) == 1
    # a truncated entry is a miss, measured again and rewritten
    path.write_text(path.read_text()[:40])
    misses = store.misses
    fresh = Planner(TINY, precision="fp16", context=64, prompt=8, new_tokens=4)
    fresh.pieces.store = store
    assert fresh.pieces.part("embed", 1, 1).cycles == piece.cycles and store.misses == misses + 1
    assert json.loads(path.read_text())["piece"]["cycles"] == piece.cycles


def test_a_part_that_does_not_fit_is_stored(tmp_path):
    store = PieceCache(tmp_path)
    pieces = Planner(TINY, precision="fp16", context=64, prompt=8, new_tokens=4).pieces
    key = ("part", "mlp", 1, 1, 0, 1)
    store.save_failure(pieces, key, "the MLP part does not fit one chip: 300 MB of 230 MB")
    with pytest.raises(PartDoesNotFit, match="300 MB"):
        store.load(pieces, key)
    assert store.hits == 1


def test_plan_columns_are_flattened_generically():
    row = plan_row({"model": "x", "chips": 8, "pieces": [{}, {}], "parts_per_group": [[2, 4]],
                    "energy": {"j_per_token": 0.5, "power_w": {"chips": 100.0}}})
    assert row == {"chips": 8, "pieces": 2, "parts_per_group": "[[2,4]]", "energy.j_per_token": 0.5,
                   "energy.power_w.chips": 100.0}


def test_energy_plot_when_plans_carry_energy(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"point": i, "model": "m", "precision": "int8", "concurrency": c, "chips": 8, "error": "",
             "tokens_per_s": 100.0 / c ** 0.1, "throughput_tokens_per_s": 100.0 * c ** 0.9,
             "energy.j_per_token": 2.0 / c} for i, c in enumerate((1, 2, 4))]
    names = {p.name for p in plot_sweep(rows, tmp_path)}
    assert names == {"tokens_per_s_vs_chips.png", "j_per_token_vs_concurrency.png", "frontier.png"}
    assert "j_per_token_vs_concurrency.png" not in {p.name for p in plot_sweep(
        [{k: v for k, v in r.items() if not k.startswith("energy")} for r in rows], tmp_path / "none")}


def test_pareto_front():
    points = [(1, 10), (2, 9), (2, 5), (4, 4), (3, 3)]
    assert pareto(points) == [0, 1, 3]


def test_cli_writes_files_and_rejects_bad_axes(tmp_path, capsys, cold_and_warm):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    argv = ["sweep", str(config), "--chips", "1,8", "--precision", "fp16", "--context", "16,64", "--prompt", "8",
            "--new-tokens", "12", "--workers", "1", "--cache", str(cold_and_warm[0]), "--out", str(out)]
    assert main(argv + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert results(rows) == [dict(r, model=str(config)) for r in results(cold_and_warm[1])]
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and table[1]["tokens_per_s"] == str(rows[1]["tokens_per_s"])
    assert list(table[0])[-len(RUN_COLUMNS):] == list(RUN_COLUMNS)
    assert (out / "frontier.png").exists() and (out / "tokens_per_s_vs_chips.png").exists()
    if "pyarrow" in sys.modules or _importable("pyarrow"):
        import pyarrow.parquet as pq
        assert pq.read_table(out / "sweep.parquet").num_rows == 4
    for bad, words in ((["--chips", "0"], "--chips 0: at least 1"), (["--precision", "fp8"], "--precision fp8"),
                       (["--tp", "3"], "--tp 3"), (["--concurrency", "x"], "--concurrency x"),
                       (["--chip", str(tmp_path / "no_chip.json")], "no such chip configuration"),
                       (["--workers", "0", "--no-cache"], "--workers 0")):
        assert main(["sweep", "llama-2-7b", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert main(["sweep", str(tmp_path / "missing.json")]) == 2
    assert "not a built-in model" in capsys.readouterr().err


def test_ray_missing_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["sweep", "llama-2-7b", "--ray", "local", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'lpusim[ray]'" in err[0]


def test_help_names_ray_as_an_extra(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "pip install 'lpusim[ray]'" in capsys.readouterr().out


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# 5 layouts x 2 tp x 2 precisions x 3 concurrencies: 60 points, those of tp 4 on 1 or 2 chips error rows
BIG_GRID = {"model": TINY, "chips": [1, 2, 4, 8, "auto"], "tp": ["auto", 4], "precision": ["int8", "fp16"],
            "context": 64, "concurrency": [1, 4, 16], "prompt": 8, "new_tokens": 12}


@pytest.mark.slow
def test_process_pool_and_ray_agree(tmp_path):
    ray = pytest.importorskip("ray")
    spec = SweepSpec.from_dict(BIG_GRID)
    assert len(spec.points()) >= 50
    times = {}
    start = time.perf_counter()
    pool = run_sweep(spec, workers=2, cache_dir=tmp_path / "pool")
    times["pool, cold cache"] = time.perf_counter() - start
    start = time.perf_counter()
    warm = run_sweep(spec, workers=2, cache_dir=tmp_path / "pool")
    times["pool, warm cache"] = time.perf_counter() - start
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        on_ray = run_sweep(spec, ray_address="local", cache_dir=tmp_path / "ray")  # its own cache: measured anew
        times["ray, cold cache"] = time.perf_counter() - start
    finally:
        ray.shutdown()
    print({k: round(v, 1) for k, v in times.items()})
    assert results(pool) == results(on_ray) == results(warm)
    assert all(r["cache_misses"] == 0 for r in warm)
    errors = [r for r in pool if r["error"]]
    assert errors and len(errors) < len(pool) and all(r["tp_asked"] == 4 and r["chips_asked"] in (1, 2)
                                                      for r in errors)
