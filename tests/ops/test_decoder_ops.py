"""The patterns of Hugging Face decoder LLMs (Llama, Qwen2, GPT-2 as torch.onnx.export writes them) in small
hand-built graphs, compiled, simulated and compared with onnxruntime:

* a causal mask (a constant that differs between query rows) combined with the padding mask rows: a mask with a
  row per query (lower/attention.py `lower_maskrow`);
* rotary position embeddings: Cos/Sin of positions computed from the `position_ids` input (VXM COS/SIN), their
  [B, S, D] -> [B, 1, S, D] Unsqueeze kept as rows the heads read, rotate_half as Slice/Neg/Concat of the heads;
* grouped-query attention: key/value heads repeated by Unsqueeze/Expand/Reshape (`lower_heads_repeat`).
The last test exports tiny Llama, Qwen2 and GPT-2 with torch (slow)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
from onnx_cases import assert_matches_onnxruntime, make_model, typed_model

RNG = np.random.default_rng(0)
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def w(*shape):
    return (RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def padding(b_, s):
    """Element b keeps its first s - 2b - 1 tokens (at least 1)."""
    m = np.ones((b_, s), np.int64)
    for b in range(b_):
        m[b, max(1, s - 2 * b - 1):] = 0
    return m


def decoder_attention(b_, s, hidden, heads, kv_heads, rotary=False, mask=True, names=None, neg=-1e4):
    """One decoder attention block as the HF exports write it: Q/K/V projections, heads split by Reshape +
    Transpose; with `rotary` q, k = q * cos + rotate_half(q) * sin, cos/sin of position_ids * inv_freq, Unsqueezed
    to [B, 1, S, D]; key/value heads repeated (Unsqueeze, Expand, Reshape) to the query heads; scores + (causal AND
    padding ? 0 : neg); Softmax; P @ V; heads merged; output projection."""
    d, rep = hidden // heads, heads // kv_heads
    names = names or {}
    inits = {"wq": w(hidden, heads * d), "wk": w(hidden, kv_heads * d), "wv": w(hidden, kv_heads * d),
             "wo": w(hidden, hidden), "qsplit": np.array([b_, s, heads, d]), "kvsplit": np.array([b_, s, kv_heads, d]),
             "merge": np.array([b_, s, hidden]), "scale": np.float32(1 / np.sqrt(d)),
             "ax1": np.array([1]), "ax2": np.array([2]), "ax12": np.array([1, 2]),
             "rep": np.array([b_, kv_heads, rep, s, d]), "kvmerge": np.array([b_, heads, s, d]),
             "causal": np.tril(np.ones((s, s), bool))[None, None], "zero": np.float32(0.0),
             "neg": np.float32(neg), "inv_freq": (1.0 / 10000 ** (np.arange(0, d, 2) / d)).astype(np.float32),
             "h0": np.array([0]), "hmid": np.array([d // 2]), "hend": np.array([d]), "ax3": np.array([3])}
    n = helper.make_node
    nodes = [n("MatMul", ["x", "wq"], ["q"]), n("MatMul", ["x", "wk"], ["k"]), n("MatMul", ["x", "wv"], ["v"]),
             n("Reshape", ["q", "qsplit"], ["q4"]), n("Reshape", ["k", "kvsplit"], ["k4"]),
             n("Reshape", ["v", "kvsplit"], ["v4"])]
    nodes += [n("Transpose", [f"{t}4"], [f"{t}t"], perm=[0, 2, 1, 3]) for t in "qkv"]
    q, k = "qt", "kt"
    if rotary:
        nodes += [n("Unsqueeze", ["pos", "ax2"], ["pos3"]), n("Cast", ["pos3"], ["posf"], to=F),
                  n("Mul", ["posf", "inv_freq"], ["freqs"]), n("Concat", ["freqs", "freqs"], ["emb"], axis=-1),
                  n("Cos", ["emb"], ["cos"], name=names.get("cos", "cos")), n("Sin", ["emb"], ["sin"]),
                  n("Unsqueeze", ["cos", "ax1"], ["cos4"]), n("Unsqueeze", ["sin", "ax1"], ["sin4"])]
        for t in "qk":
            nodes += [n("Slice", [f"{t}t", "h0", "hmid", "ax3"], [f"{t}lo"]),
                      n("Slice", [f"{t}t", "hmid", "hend", "ax3"], [f"{t}hi"], name=names.get(f"slice_{t}")),
                      n("Neg", [f"{t}hi"], [f"{t}nhi"]), n("Concat", [f"{t}nhi", f"{t}lo"], [f"{t}rot"], axis=-1),
                      n("Mul", [f"{t}t", "cos4"], [f"{t}c"]), n("Mul", [f"{t}rot", "sin4"], [f"{t}s"]),
                      n("Add", [f"{t}c", f"{t}s"], [f"{t}r"])]
        q, k = "qr", "kr"
    v = "vt"
    if rep > 1:
        for t, src in (("k", k), ("v", v)):
            nodes += [n("Unsqueeze", [src, "ax2"], [f"{t}5"], name=names.get(f"unsqueeze_{t}")),
                      n("Expand", [f"{t}5", "rep"], [f"{t}e"]),
                      n("Reshape", [f"{t}e", "kvmerge"], [f"{t}rep"])]
        k, v = "krep", "vrep"
    nodes += [n("Transpose", [k], ["kT"], perm=[0, 1, 3, 2]), n("MatMul", [q, "kT"], ["sc"]),
              n("Mul", ["sc", "scale"], ["ss"])]
    if mask:  # the padding mask [B, S] as rows [B, 1, 1, S], AND the causal constant [1, 1, S, S]
        nodes += [n("Cast", ["attention_mask"], ["mb"], to=TensorProto.BOOL), n("Unsqueeze", ["mb", "ax12"], ["m4"]),
                  n("And", ["causal", "m4"], ["allowed"], name="and"),
                  n("Where", ["allowed", "zero", "neg"], ["madd"]), n("Add", ["ss", "madd"], ["sm"])]
    else:
        nodes += [n("Identity", ["ss"], ["sm"])]
    nodes += [n("Softmax", ["sm"], ["p"], axis=-1), n("MatMul", ["p", v], ["c"]),
              n("Transpose", ["c"], ["ct"], perm=[0, 2, 1, 3]), n("Reshape", ["ct", "merge"], ["cm"]),
              n("MatMul", ["cm", "wo"], ["y"])]
    inputs = {"x": (F, [b_, s, hidden])}
    if mask:
        inputs["attention_mask"] = (I64, [b_, s])
    if rotary:
        inputs["pos"] = (I64, [b_, s])
    return typed_model(nodes, inits, inputs, {"y": (F, [b_, s, hidden])})


def feeds(b_, s, hidden, mask=None, pos=None):
    x = {"x": RNG.standard_normal((b_, s, hidden)).astype(np.float32)}
    if mask is not None:
        x["attention_mask"] = mask
    if pos is not None:
        x["pos"] = pos
    return x


@pytest.mark.parametrize("b_", [1, 2])
def test_causal_and_padding_mask(b_):
    """And(causal [1, 1, S, S], padding rows [B, 1, 1, S]): a mask with a row per query; every element's own
    padding and the causal triangle change the output."""
    s, hidden = 8, 16
    m = decoder_attention(b_, s, hidden, 2, 2)
    x = feeds(b_, s, hidden, padding(b_, s))
    program, result, _ = assert_matches_onnxruntime(m, x)
    ones = program.run({**x, "attention_mask": np.ones((b_, s), np.int64)})
    assert not np.allclose(ones.outputs["y"][-1], result.outputs["y"][-1], atol=1e-3)
    assert np.allclose(ones.outputs["y"][:, 0], result.outputs["y"][:, 0], atol=1e-3)  # token 0 sees token 0 only


def test_rows_masked_everywhere_by_finfo_min_are_uniform():
    """Left padding under the causal mask with transformers' finfo(float32).min: the first query rows see no key
    at all; onnxruntime's softmax of score + finfo.min (= finfo.min everywhere) is uniform, and so is the chip's
    (norms.lower_softmax clamps such a mask before the fp16 maximum search, where it would be -inf and give NaN)."""
    b_, s, hidden = 1, 8, 16
    m = decoder_attention(b_, s, hidden, 2, 2, neg=np.finfo(np.float32).min)
    mask = np.ones((b_, s), np.int64)
    mask[:, :3] = 0
    _, result, _ = assert_matches_onnxruntime(m, feeds(b_, s, hidden, mask))
    assert np.isfinite(result.outputs["y"]).all()


def test_constant_differing_per_query_row_meets_mask_rows():
    """The graph tests/ops/test_attention_batch.py used to expect an error from: mask rows [B, 1, 1, S] times a
    constant [1, 1, S, 1] that differs between query rows, at batch 2 (each element's row repeated per query)."""
    b_, s, hidden = 2, 5, 16
    n = helper.make_node
    d = hidden // 2
    nodes = [n("MatMul", ["x", "wq"], ["q"]), n("MatMul", ["x", "wk"], ["k"]), n("MatMul", ["x", "wv"], ["v"]),
             *[n("Reshape", [t, "split"], [f"{t}4"]) for t in "qkv"],
             n("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]), n("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
             n("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]), n("MatMul", ["qt", "kt"], ["sc"]),
             n("Unsqueeze", ["m", "axes"], ["m4"]), n("Mul", ["m4", "rowc"], ["madd"], name="qmul"),
             n("Add", ["sc", "madd"], ["sm"]), n("Softmax", ["sm"], ["p"], axis=3), n("MatMul", ["p", "vt"], ["c"]),
             n("Transpose", ["c"], ["ct"], perm=[0, 2, 1, 3]), n("Reshape", ["ct", "merge"], ["y"])]
    inits = {"wq": w(hidden, hidden), "wk": w(hidden, hidden), "wv": w(hidden, hidden),
             "split": np.array([b_, s, 2, d]), "merge": np.array([b_, s, hidden]), "axes": np.array([1, 2]),
             "rowc": RNG.standard_normal((1, 1, s, 1)).astype(np.float32)}
    m = make_model(nodes, inits, {"x": [b_, s, hidden], "m": [b_, s]})
    x = {"x": RNG.standard_normal((b_, s, hidden)).astype(np.float32), "m": padding(b_, s).astype(np.float32)}
    assert_matches_onnxruntime(m, x)


@pytest.mark.parametrize("b_", [1, 2])
def test_rotary_embeddings_of_computed_positions(b_):
    """cos/sin of position_ids * inv_freq on the VXM (COS, SIN); the [B, 1, S, D] Unsqueeze read by every head as
    rows; rotate_half by Slice/Neg/Concat of the heads. Positions out of order and far apart, as a padded or
    continued sequence has them."""
    s, hidden = 8, 32
    m = decoder_attention(b_, s, hidden, 2, 2, rotary=True, mask=False)
    pos = np.stack([RNG.permutation(100)[:s] for _ in range(b_)]).astype(np.int64)
    program, _, cmp = assert_matches_onnxruntime(m, feeds(b_, s, hidden, pos=pos))
    assert "COS.f32" in program.assembly and "SIN.f32" in program.assembly
    assert cmp["max_rel_error"] < 1e-2


@pytest.mark.parametrize("b_", [1, 2])
def test_grouped_query_attention(b_):
    """4 query heads read 2 key/value heads (repeat_kv: Unsqueeze, Expand, Reshape): the parts are repeated by
    reference; with rotary embeddings and the causal + padding mask, as in Llama."""
    s, hidden = 8, 32
    m = decoder_attention(b_, s, hidden, 4, 2, rotary=True)
    pos = np.tile(np.arange(s), (b_, 1)).astype(np.int64)
    assert_matches_onnxruntime(m, feeds(b_, s, hidden, padding(b_, s), pos))


def test_row_view_read_by_other_ops_is_laid_out_as_an_image():
    """A [1, S, X] value Unsqueezed to [1, 1, S, X] and read by an op that is not an attention head (a graph
    output, Relu): the [1, 1, S, X] image, as before such values were kept as rows for the heads."""
    s, x_ = 6, 8
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w"], ["h"]), n("Unsqueeze", ["h", "ax"], ["u"]), n("Relu", ["u"], ["y"]),
             n("Unsqueeze", ["h", "ax"], ["y2"])]
    m = make_model(nodes, {"w": w(x_, x_), "ax": np.array([1])}, {"x": [1, s, x_]}, outputs=("y", "y2"))
    assert_matches_onnxruntime(m)


def test_unsupported_head_forms_are_clear_errors():
    s, hidden = 8, 32
    m = decoder_attention(1, s, hidden, 4, 2, names={"unsqueeze_k": "uk"})
    for node in m.graph.node:  # the new axis in front of the heads axis: [B, 1, NKV, S, D]
        if node.name == "uk":
            node.input[1] = "ax1"
    with pytest.raises(lpusim.CompileError, match="Unsqueeze node 'uk'.*only \\[B, heads, 1, S, D\\]"):
        lpusim.compile(m)
    # a Slice of the heads along the heads axis
    n, d = helper.make_node, hidden // 2
    nodes = [n("MatMul", ["x", "wq"], ["q"]), n("Reshape", ["q", "split"], ["q4"]),
             n("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]), n("Slice", ["qt", "h0", "h1", "ax1"], ["q1"], name="sq"),
             n("Transpose", ["q1"], ["ct"], perm=[0, 2, 1, 3]), n("Reshape", ["ct", "merge"], ["y"])]
    inits = {"wq": w(hidden, hidden), "split": np.array([1, s, 2, d]), "merge": np.array([1, s, d]),
             "h0": np.array([0]), "h1": np.array([1]), "ax1": np.array([1])}
    with pytest.raises(lpusim.CompileError, match="Slice node 'sq'.*batch or heads axis"):
        lpusim.compile(make_model(nodes, inits, {"x": [1, s, hidden]}))


# ----- torch exports of tiny decoder LLMs (slow) --------------------------------------------------------------------
def export_decoder(tmp_path, kind, seq=8):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg, cls = transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128), \
            transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config
        cfg = config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        cls = transformers.LlamaForCausalLM if kind == "llama" else transformers.Qwen2ForCausalLM
    cfg._attn_implementation = "eager"  # the sdpa path exports aten::diff, which the exporter rejects
    m = cls(cfg).eval()

    class NoCache(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask, pos):
            return self.m(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    args = (torch.randint(0, 256, (1, seq)), torch.ones(1, seq, dtype=torch.int64), torch.arange(seq)[None])
    path = tmp_path / f"{kind}.onnx"
    torch.onnx.export(NoCache(m), args, str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask", "position_ids"], output_names=["logits"])
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_tiny_decoder_llms_match_onnxruntime(tmp_path, kind):
    """fp16: an all-ones mask with positions 0..S-1, a padding mask with positions continuing past a prefix, and
    the random inputs `lpusim run` draws (token ids below the vocabulary, masks in {0, 1}, positions in range)."""
    seq = 12
    path = export_decoder(tmp_path, kind, seq)
    program = lpusim.compile(path)
    ids = np.random.default_rng(1).integers(0, 256, (1, seq)).astype(np.int64)
    pad = np.ones((1, seq), np.int64)
    pad[0, :3] = 0  # left padding
    for mask, pos in ((np.ones((1, seq), np.int64), np.arange(seq)[None]),
                      (pad, np.arange(40, 40 + seq)[None])):
        x = {"input_ids": ids, "attention_mask": mask, "position_ids": pos.astype(np.int64)}
        _, _, cmp = assert_matches_onnxruntime(path, x)
        assert cmp["max_rel_error"] < 1e-2, cmp
    assert_matches_onnxruntime(path, program.random_inputs(0))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_tiny_llama_int8_matches_onnxruntime(tmp_path, kind):
    """precision="int8" of the Llama/Qwen2 exports (no cache): RMSNorm's mean and x * 1/sqrt(...), rotary's Concat and
    rotate_half kept at f32 (docs/precision.md, "Tiny Llama decoders at int8"): the logits agree to f32 rounding
    (they were 2.3% off with those in one fp16 pass)."""
    import onnx
    from onnx_cases import run_int8
    path = export_decoder(tmp_path, kind, 8)
    _, result, ref = run_int8(onnx.load(path))
    err = np.abs(result.outputs["logits"] - ref["logits"]).max()
    assert err <= 4 * 2.0 ** -23 * np.abs(ref["logits"]).max(), err


@pytest.mark.slow
def test_tiny_gpt2_int8_gathers_embeddings_exactly(tmp_path):
    """precision="int8": the quantiser leaves the wte/wpe Gathers in float, which onnxruntime gathers exactly in
    f32; the chip gathers the table as three fp16 pieces summed in f32 (index.lower_gather_computed), so the codes
    after them land on onnxruntime's and the logits agree to f32 rounding (F32_UNITS, tests/ops/test_int8.py)."""
    import onnx
    from onnx_cases import run_int8
    path = export_decoder(tmp_path, "gpt2", 8)
    _, result, ref = run_int8(onnx.load(path))
    err = np.abs(result.outputs["logits"] - ref["logits"]).max()
    assert err <= 4 * 2.0 ** -23 * np.abs(ref["logits"]).max(), err
