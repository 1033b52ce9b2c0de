"""Pipelines beyond one node (multichip/topology.py, multichip/compose.py, docs/multichip.md "Routes" and
"Composition"): systems of any size, routes that chain direct links node after node, n > 8 pipelines that run and
match onnxruntime, and a rack-scale decoder pipeline whose cycles composed from its distinct stages equal the
whole-system simulation, cycle for cycle."""
from __future__ import annotations

import re

import numpy as np
import pytest

import lpusim
from lpusim import CompileError
from lpusim.models import llama_decoder, llama_decoder_weights, mlp
from lpusim.multichip.compose import (compose, compose_pipeline, distinct_stages, hop_cycles, stage_timings)
from lpusim.multichip.pipeline import compile_multichip, pipeline_system
from lpusim.multichip.topology import (MAX_CHIPS, pipeline_route, route_links, sub_system, system_config,
                                       system_for_chips)

HIDDEN, HEADS, KV, FFN, VOCAB = 64, 4, 2, 128, 256


@pytest.mark.parametrize("n, chips, topology", [(8, 8, "node"), (5, 5, "node"), (9, 16, "dragonfly"),
                                                (64, 64, "dragonfly"), (72, 72, "rack"), (73, 144, "links"),
                                                (576, 576, "links")])
def test_system_for_chips_sizes(n, chips, topology):
    s = system_for_chips(n)
    assert s.chips == chips and s.config["topology"] == topology
    if topology == "links":  # the chosen layout: 7 local links and 2 intra-rack global ones on every chip;
        racks = chips // 72  # links 10-11: 144 inter-rack ports a rack, floor(144 / (racks - 1)) per rack pair
        ports = {}
        for lk in s.links:
            for c, link in ((lk["chip_a"], lk["link_a"]), (lk["chip_b"], lk["link_b"])):
                ports.setdefault(c, set()).add(link)
        assert all(set(range(7)) | {8, 9} <= ports[c] for c in range(chips))
        inter = sum(len(ports[c] & {10, 11}) for c in range(72))
        assert inter == (racks - 1) * (144 // (racks - 1))
        assert {lk["kind"] for lk in s.links if lk["link_a"] < 8} == {"local"}
        assert {lk["kind"] for lk in s.links if lk["link_a"] >= 8} == {"global"}


def test_system_limits():
    with pytest.raises(CompileError, match="145 racks"):
        system_config(MAX_CHIPS + 1)
    assert system_config(MAX_CHIPS)["chips"] == MAX_CHIPS
    with pytest.raises(CompileError, match="at least 1"):
        system_config(0)


@pytest.mark.parametrize("n", [3, 8, 9, 12, 16, 64, 72, 73, 200, 576])
def test_routes_chain_direct_links(n):
    s = system_for_chips(n)
    route = pipeline_route(s, n)
    assert len(route) == n and len(set(route)) == n and route == pipeline_route(s, n)
    kinds = [lk["kind"] for lk in route_links(s, route)]  # route_links raises if two chips are not linked
    # a node's 8 chips before the next: one global hop per node boundary, every other hop local
    assert kinds.count("global") == (n - 1) // 8
    assert all(kinds[k] == "global" for k in range(7, n - 1, 8))
    nodes = [c // 8 for c in route]  # a node's chips one after another: the node changes at the global hops only
    assert sum(a != b for a, b in zip(nodes, nodes[1:])) == (n - 1) // 8
    if n <= 72:
        assert nodes == sorted(nodes)  # within a rack, nodes in index order
    if n > 8:
        sub = sub_system(s, route)
        assert sub.chips == n and sub.info["tree_height"] <= 6
        assert [sub.link(k, k + 1) for k in range(n - 1)]  # chip k of the sub-system is route[k]


def test_route_on_all_racks():
    s = system_for_chips(MAX_CHIPS)
    route = pipeline_route(s, MAX_CHIPS)
    assert sorted(route) == list(range(MAX_CHIPS))
    assert [lk["kind"] for lk in route_links(s, route)].count("global") == MAX_CHIPS // 8 - 1


def test_twelve_chips_over_two_nodes_match_onnxruntime():
    from lpusim.check.compare import compare, run_onnxruntime

    model = mlp((64,) + (96,) * 13 + (10,), batch=2, seed=0)
    program = lpusim.compile(model, chips=12, parallel="pipeline")
    assert program.chips == 12 and len(program.partition["route"]) == 12
    assert program.partition["links"].count("global") == 1
    lags = {t["kind"]: t["lag"] for t in program.transfers}
    assert lags["global"] > lags["local"] + 400  # each hop's lag from its own link's latency bound (650 vs 217)
    x = program.random_inputs(0)
    result = program.run(x)
    assert result.cycles == result.predicted_cycles and result.chip_cycles == result.predicted_chip_cycles
    ref, _ = run_onnxruntime(model, x)
    assert compare(result.outputs, ref)["outputs_match"]
    single = lpusim.compile(model).run(x)
    assert all(np.array_equal(result.outputs[k], single.outputs[k]) for k in single.outputs)


def test_tensor_parallel_stays_in_a_node():
    with pytest.raises(CompileError, match="one 8-chip node"):
        lpusim.compile(mlp((64, 640, 10)), chips=9, parallel="tensor")


def _decoder(layers: int):
    """A decoder of identical layers: every layer has layer 0's weights, the residual branches' output projections
    scaled down so that the residual stream (hence every calibrated fp16 scale) is the same in every layer."""
    w = llama_decoder_weights(layers=layers, hidden=HIDDEN, heads=HEADS, kv_heads=KV, ffn=FFN, vocab=VOCAB)
    w = {k: w[re.sub(r"layers\.\d+\.", "layers.0.", k)] * (0.05 if ("o_proj" in k or "down_proj" in k) else 1)
         for k in w}
    return llama_decoder(layers=layers, hidden=HIDDEN, heads=HEADS, kv_heads=KV, ffn=FFN, vocab=VOCAB, seq=1,
                         past=4, weights=w)


def _layer_pipeline(layers: int):
    return compile_multichip(_decoder(layers), layers, cuts=[f"layer{k}." for k in range(1, layers)])


@pytest.fixture(scope="module")
def probe():
    """16 chips over two nodes: every distinct stage a route over nodes has (first, local -> local, local ->
    global, global -> local, last)."""
    return _layer_pipeline(16)


def test_probe_has_five_distinct_stages(probe):
    distinct = distinct_stages(stage_timings(probe))
    assert sorted(k[:3] for k in distinct) == sorted([("first", None, "local"), ("middle", "local", "local"),
                                                      ("middle", "local", "global"), ("middle", "global", "local"),
                                                      ("last", "local", None)])
    # composing the probe's own stages gives its own prediction
    c = compose(stage_timings(probe), probe.system)
    assert (c.cycles, c.chip_cycles) == probe.predict()


def test_hop_cycles_follow_the_compiled_lags(probe):
    chip = probe.chip
    for k, t in enumerate(probe.transfers):
        at, d = probe.barriers[k][-1]  # the send barrier: the chip realigns, then sends
        hop = hop_cycles(probe.system, t["kind"], t["vectors"], lead=t["first_send"] - (at + d))
        tail = chip.c2c_recv_latency + chip.num_positions + chip.mem_write_latency
        assert t["last_send"] - t["first_send"] == (t["vectors"] - 1) * probe.system.min_send_interval_cycles
        assert hop == (t["last_send"] - t["first_send"]) + t["lag"] + tail
    assert hop_cycles(probe.system, "global", 16) - hop_cycles(probe.system, "local", 16) == 433


def test_rack_decoder_composes_cycle_for_cycle(probe):
    """A 72-chip rack (9 nodes): 72 decoder layers, one per chip, compiled and simulated whole (timing only),
    against the composition of the 16-chip probe's distinct stages over the rack's route."""
    n = 72
    system, route = pipeline_system(n, probe.chip, None)
    assert system.info["tree_height"] <= 4 and len(route) == n
    composed = compose_pipeline(distinct_stages(stage_timings(probe)), system)
    whole = _layer_pipeline(n)
    assert whole.partition["links"].count("global") == 8
    result = whole.run(seed=0, timing_only=True)
    assert result.cycles == result.predicted_cycles and result.chip_cycles == result.predicted_chip_cycles
    assert composed.cycles == result.cycles
    assert composed.chip_cycles == result.chip_cycles
    # the composition needs the stage kinds it is given: without the global -> local stage it says which is missing
    partial = {k: v for k, v in distinct_stages(stage_timings(probe)).items() if k[1] != "global"}
    with pytest.raises(CompileError, match="no stage timing for stage 8"):
        compose_pipeline(partial, system)


def test_run_on_another_seed_keeps_the_programs_system():
    """A `system` dict given to MultiProgram.run overrides the program's own system, not the default node."""
    from lpusim.models import mlp
    from lpusim.multichip.pipeline import compile_multichip
    program = compile_multichip(mlp((64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64), seed=0), 10)
    result = program.run(seed=0, system={"seed": 7}, timing_only=True)
    assert result.cycles == result.predicted_cycles and len(result.chip_cycles) == 10
