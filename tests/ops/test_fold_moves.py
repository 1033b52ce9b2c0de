"""fold_lane_moves (compiler/fold_moves.py): constant matmuls composed with the 0/1 lane moves next to them.

Each case is compiled with and without the pass: with it, the moves are gone, the MXM streams fewer vectors, the
outputs are bit-identical to those of the unfolded program (the MXM rounds each column's exact sum once either
way) and match onnxruntime, and the cycles equal the prediction."""
import numpy as np
import pytest
from onnx import helper

import lpusim
from lpusim import compiler
from lpusim.check.explain import explain
from lpusim.compiler import build_graph
from lpusim.compiler.lower import attention_lanes
from lpusim.models import bert_encoder
from lpusim.check.compare import compare, run_onnxruntime
from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(5)


def w(*shape):
    return (RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def mxm_vectors(program) -> int:
    return sum(row["vectors"] for row in explain(program)["mxm_work_by_purpose"].values())


def purposes(program) -> set:
    return {n.purpose for n in program._graph.nodes if n.kind == "matmul"}


def unfolded(monkeypatch, model, **kw):
    """The program compiled without fold_lane_moves."""
    with monkeypatch.context() as m:
        m.setattr(compiler, "PASSES", [p for p in compiler.PASSES if p[0] != "fold_lane_moves"])
        return lpusim.compile(model, **kw)


def check_fold(monkeypatch, model, identical=True, **kw):
    """`identical`: the outputs bit for bit those of the unfolded program; else (a moved value the host reads: the
    f32 result where the move gave its fp16 copy) at least as close to onnxruntime."""
    program, result, cmp = assert_matches_onnxruntime(model, **kw)
    before = unfolded(monkeypatch, model, **kw)
    ref = before.run(program.random_inputs(0))
    for name, value in result.outputs.items():
        assert np.array_equal(value, ref.outputs[name]) or not identical, name
    if not identical:
        assert cmp["max_abs_error"] <= compare(ref.outputs, run_onnxruntime(model, program.random_inputs(0))[0])[
            "max_abs_error"]
    assert mxm_vectors(program) < mxm_vectors(before)
    return program, before


def selected_heads(monkeypatch):
    """Attention heads selected on the MXM (attention_lanes.py off), as quantised models and fp32 ones have them."""
    monkeypatch.setattr(attention_lanes, "lanes_ok", lambda lw: False)


@pytest.mark.parametrize("batch", [1, 2])
def test_a_single_head_selection_folds_into_the_qkv_weights(monkeypatch, batch):
    """One head: its selection picks all of Q's (K's, V's) lanes; folded, the projection is the head (batch 2:
    each element's rows read through a row offset of the layer input). No selection left, fewer cycles."""
    selected_heads(monkeypatch)
    model = bert_encoder(layers=2, hidden=64, heads=1, seq=16, batch=batch)
    program, before = check_fold(monkeypatch, model)
    assert "head selection" in purposes(before) and "head selection" not in purposes(program)
    assert program.predicted_cycles < before.predicted_cycles


def test_heads_reading_one_input_are_not_folded(monkeypatch):
    """Four heads in one 320-lane tile: folding adds no weight tiles and less MXM work, but the twelve head
    projections would all stream the layer's input, one after another, where the three projections and their
    selections ran side by side (4-17% more cycles in 5 of 7 shapes measured): refused."""
    selected_heads(monkeypatch)
    dumps = {}
    build_graph(bert_encoder(layers=1, hidden=64, heads=4, seq=16), dump=lambda k, v: dumps.__setitem__(k, v))
    assert dumps["fold_lane_moves"] == dumps["fuse_chains"]


def test_a_selection_after_an_activation_folds(monkeypatch):
    """MatMul + Add + Relu read by a lane Slice: the matmul with the picked columns of W and b, Relu after."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["hr"]), helper.make_node("Slice", ["hr", "st", "en", "ax"], ["y"])]
    inits = {"w": w(64, 48), "b": w(48, 1)[:, 0], "st": np.array([8]), "en": np.array([40]), "ax": np.array([1])}
    program, before = check_fold(monkeypatch, make_model(nodes, inits, {"x": [8, 64]}), identical=False)
    assert [n.kind for n in program._graph.nodes] == ["vector", "matmul"]  # the input's f16 copy, the matmul
    assert [n.kind for n in before._graph.nodes] == ["vector", "matmul", "matmul"]


def test_two_selections_of_one_product_are_not_folded():
    """Two Slices of one matmul's output: folded, the input would stream twice (one pass per Slice) where it
    streamed once: refused."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Slice", ["h", "s1", "e1", "ax"], ["y"]),
             helper.make_node("Slice", ["h", "s2", "e2", "ax"], ["y2"])]
    inits = {"w": w(64, 48), "s1": np.array([8]), "e1": np.array([40]), "s2": np.array([0]), "e2": np.array([16]),
             "ax": np.array([1])}
    dumps = {}
    build_graph(make_model(nodes, inits, {"x": [8, 64]}, outputs=("y", "y2")),
                dump=lambda k, v: dumps.__setitem__(k, v))
    assert dumps["fold_lane_moves"] == dumps["fuse_chains"]


def test_a_placement_folds_into_the_next_matmul(monkeypatch):
    """A lane Slice then a MatMul: (x S) W = x (S W), one matmul."""
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax"], ["xs"]), helper.make_node("MatMul", ["xs", "w"], ["y"])]
    model = make_model(nodes, {"st": np.array([8]), "en": np.array([40]), "ax": np.array([1]), "w": w(32, 16)},
                       {"x": [8, 64]})
    program, before = check_fold(monkeypatch, model)
    assert sum(n.kind == "matmul" for n in program._graph.nodes) == 1
    assert sum(n.kind == "matmul" for n in before._graph.nodes) == 2


def test_wide_heads_are_not_folded(monkeypatch):
    """BERT-base's heads (12 of 64 lanes in 768): W S spans all 3 K tiles where a selection touches one, so the
    fold would stream more weight tiles (36 passes against 21 for the projection and its selections) and store a
    320-lane tile per head: refused, the graph keeps its selections."""
    selected_heads(monkeypatch)
    dumps = {}
    build_graph(bert_encoder(layers=1, hidden=768, heads=12, seq=8), dump=lambda k, v: dumps.__setitem__(k, v))
    assert dumps["fold_lane_moves"] == dumps["fuse_chains"]


def test_quantised_models_are_left_alone():
    """precision="int8": the moves of a quantised model keep their exact pieces and codes."""
    dumps = {}
    build_graph(bert_encoder(layers=1, hidden=64, heads=4, seq=16), precision="int8",
                dump=lambda k, v: dumps.__setitem__(k, v))
    assert dumps["fold_lane_moves"] == dumps["fuse_chains"]
