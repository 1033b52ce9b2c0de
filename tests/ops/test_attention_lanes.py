"""Attention heads read in place from their lanes (lower/attention_lanes.py): no head selection or placement on
the MXM. Each case matches onnxruntime, its cycles equal the prediction, and its outputs are bit-identical to those
of the MXM selections (attention_lanes off) with fewer MXM vectors."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
from lpusim.check.explain import explain
from lpusim.compiler import ir
from lpusim.compiler.lower import attention_lanes
from lpusim.errors import CompileError
from lpusim.models import bert_encoder
from onnx_cases import assert_matches_onnxruntime

RNG = np.random.default_rng(7)


def mxm_work(program) -> dict:
    return {p: row["vectors"] for p, row in explain(program)["mxm_work_by_purpose"].items()}


def selected(monkeypatch, model, **kw):
    """The program with heads selected and placed on the MXM (the path quantised and fp32 models take)."""
    with monkeypatch.context() as m:
        m.setattr(attention_lanes, "lanes_ok", lambda lw: False)
        return lpusim.compile(model, **kw)


def check_lanes(monkeypatch, model, x=None, fewer=True):
    program, result, _ = assert_matches_onnxruntime(model, inputs=x)
    before = selected(monkeypatch, model)
    ref = before.run(x if x is not None else program.random_inputs(0))
    for name, value in result.outputs.items():
        assert np.array_equal(value.view(np.uint32), ref.outputs[name].view(np.uint32)), name
    work, old = mxm_work(program), mxm_work(before)
    assert not any("head selection" in p or "head placement" in p for p in work), work
    assert sum(work.values()) < sum(old.values()) or not fewer and work == old
    return program, before


@pytest.mark.parametrize("kw", [dict(hidden=64, heads=4, seq=16),
                                dict(hidden=384, heads=4, seq=8),  # D = 96: head 3 straddles two 320-lane tiles
                                dict(hidden=640, heads=10, seq=8),  # two full tiles of 5 heads
                                dict(hidden=64, heads=1, seq=16),  # one head: no mask, Q and K^T as they are
                                dict(hidden=64, heads=4, seq=8, batch=3, mask=True)],  # row maps per element
                         ids=["4-heads", "straddling", "two-tiles", "one-head", "batch3-mask"])
def test_heads_read_from_their_lanes(monkeypatch, kw):
    model = bert_encoder(layers=2, **kw)
    x = None
    if kw.get("mask"):
        mask = np.ones((kw["batch"], kw["seq"]), np.float32)
        mask[1, 5:] = 0.0
        x = {"embeddings": RNG.standard_normal((kw["batch"], kw["seq"], kw["hidden"])).astype(np.float32),
             "attention_mask": mask}
    # (one head: fold_moves folds its selections into the projections: the same MXM work)
    program, before = check_lanes(monkeypatch, model, x, fewer=kw["heads"] > 1)
    if kw["heads"] > 1 and kw["hidden"] > 320:
        assert any(n.out_tiles is not None for n in program._graph.nodes)


def attention_with_heads_output():
    """Q, K, V projections split into 4 heads; the context [1, 4, 8, 16] itself is the output (not merged): the
    contexts' lane split gives its parts to heads_output."""
    h, nh, s = 64, 4, 8
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [h, h], (RNG.standard_normal((h, h)) / 8).ravel())
             for n in ("wq", "wk", "wv")]
    inits.append(helper.make_tensor("split", TensorProto.INT64, [4], [1, s, nh, h // nh]))
    nodes = [helper.make_node("MatMul", ["x", f"w{n}"], [n]) for n in "qkv"]
    nodes += [helper.make_node("Reshape", [n, "split"], [f"{n}4"]) for n in "qkv"]
    nodes += [helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["y"])]
    graph = helper.make_graph(nodes, "heads_out", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, s, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, nh, s, h // nh])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_contexts_read_as_heads_are_selected_from_the_merged_lanes():
    program, _, _ = assert_matches_onnxruntime(attention_with_heads_output())
    assert "head selection (Transpose)" in mxm_work(program)  # the merged contexts' parts, for the output


def scaled_attention(h: int, nh: int, s: int, batch: int = 1, k_op: str = "Mul"):
    """Hugging Face BERT's sdpa export: Q and K^T each scaled by a scalar after the head split (Mul by
    sqrt(1/sqrt(D)); K^T here by `k_op` of the matching scalar, a [1, 1, 1, 1] one for Div), then scores, Softmax, contexts, heads merged and
    projected."""
    d = h // nh
    c = float(np.sqrt(1.0 / np.sqrt(d)))
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [h, h], (RNG.standard_normal((h, h)) / 8).ravel())
             for n in ("wq", "wk", "wv", "wo")]
    inits += [helper.make_tensor("split", TensorProto.INT64, [4], [batch, s, nh, d]),
              helper.make_tensor("merge", TensorProto.INT64, [3], [batch, s, h]),
              helper.make_tensor("cq", TensorProto.FLOAT, [], [c]),
              helper.make_tensor("ck", TensorProto.FLOAT, [] if k_op == "Mul" else [1, 1, 1, 1],
                                 [c if k_op == "Mul" else 1.0 / c])]
    nodes = [helper.make_node("MatMul", ["x", f"w{n}"], [n]) for n in "qkv"]
    nodes += [helper.make_node("Reshape", [n, "split"], [f"{n}4"]) for n in "qkv"]
    nodes += [helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
              helper.make_node("Mul", ["qt", "cq"], ["qs"]),
              helper.make_node(k_op, ["kt", "ck"], ["ks"]),
              helper.make_node("MatMul", ["qs", "ks"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx4"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx4", "merge"], ["merged"]),
              helper.make_node("MatMul", ["merged", "wo"], ["y"])]
    graph = helper.make_graph(nodes, "scaled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, s, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, s, h])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kw", [dict(h=64, nh=4, s=16), dict(h=384, nh=4, s=8), dict(h=64, nh=4, s=8, batch=2),
                                dict(h=64, nh=4, s=16, k_op="Div")],
                         ids=["4-heads", "straddling", "batch2", "div"])
def test_scalar_scaled_heads_stay_on_their_lanes(monkeypatch, kw):
    check_lanes(monkeypatch, scaled_attention(**kw))  # no head selection: the scaled splits read in place


def graph_with(node: ir.Node, tensors: list[ir.Tensor]) -> ir.Graph:
    return ir.Graph({t.name: t for t in tensors}, [node], ["x"], [node.output], ["y"], {"x": (8, 640)})


def test_the_validator_checks_tiles():
    x = ir.Tensor("x", 8, 640, "input", (8, 640))
    y = ir.Tensor("y", 8, 320, "value", (8, 320))
    ok = ir.Node("vector", "n", "Copy", "y", sources=[ir.View("x", tile=1)], steps=[ir.Step("COPY", [("src", 0)])])
    ir.validate(graph_with(ok, [x, y]))
    for tile in (2, -1):
        bad = ir.Node("vector", "n", "Copy", "y", sources=[ir.View("x", tile=tile)],
                      steps=[ir.Step("COPY", [("src", 0)])])
        with pytest.raises(CompileError, match="column tile"):
            ir.validate(graph_with(bad, [x, y]))
    w = ir.Tensor("w", 640, 320, "const", (640, 320), data=np.zeros((640, 320), np.float32))
    out = ir.Tensor("y", 8, 640, "value", (8, 640))
    good = ir.Node("matmul", "n", "MatMul", "y", terms=[(ir.View("x"), "w")], out_tiles=(1,))
    ir.validate(graph_with(good, [x, w, out]))
    for tiles in ((2,), (0, 1)):
        bad = ir.Node("matmul", "n", "MatMul", "y", terms=[(ir.View("x"), "w")], out_tiles=tiles)
        with pytest.raises(CompileError, match="output tiles"):
            ir.validate(graph_with(bad, [x, w, out]))
