"""One chip's share of a decoder layer under Megatron-style tensor parallelism over `tp` chips, as ONNX graphs with
random weights (the rack-scale planner, docs/llm.md section 4, compiles and simulates them).

A layer is two *parts*, each ending in a row-split matmul whose f32 partial sum the `tp` chips all-reduce:

* **attention**: `x = residual + update` (the previous part's all-reduced output), the input norm, the chip's
  heads of q, k, v (column blocks: `heads / tp` query heads, `kv_heads / tp` key/value heads, or one key/value head
  per chip replicated when `tp` exceeds `kv_heads`, as Megatron does for grouped-query attention), rotary
  embeddings, the chip's KV cache (`past` rows before, `past + seq` after), attention, and the o_proj rows of its
  heads: outputs `x` and `partial`.
* **mlp**: `x = residual + update`, the post-attention norm, the chip's `ffn / tp` columns of gate and up, SwiGLU
  (GELU for GPT-2), the matching rows of down: outputs `x` and `partial`. Mixtral's mixture keeps every expert
  (the dense form of docs/llm.md 3.2: every expert computes every token, weighted by its routing weight), each
  expert's `ffn / tp` columns on the chip; the router is replicated.

Plus the ends of the model: **embed** (the token-embedding Gather of the chip's `hidden / tp` columns, then an
all-gather) and **head** (the final norm and the chip's `vocab / tp` columns of lm_head: each chip's logits
block; the host, or an argmax exchange, picks the token).

The graphs use the op patterns of lpusim.models.llama_decoder (RMSNorm as Pow, ReduceMean, Add, Sqrt, Div, Mul;
rotate_half with Slice, Neg, Concat; grouped-query heads by Unsqueeze, Expand, Reshape), with the head dimension
and widths of the configuration, so a shard compiles as any exported decoder does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lpusim.errors import ModelError
from lpusim.llm.configs import config_fields, first_field

LLAMA_FAMILY = ("llama", "mistral", "mixtral", "qwen2")
PARTS = ("embed", "attention", "mlp", "head")


@dataclass(frozen=True)
class DecoderShape:
    """The fields of a Hugging Face configuration that fix a decoder's graph (transformers' meanings)."""

    family: str          # "llama" (Llama, Mistral, Mixtral, Qwen2) or "gpt2"
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    experts: int = 0
    top_k: int = 0
    qkv_bias: bool = False
    tied: bool = False
    eps: float = 1e-5
    rope_theta: float = 10000.0
    positions: int = 4096

    @classmethod
    def from_config(cls, config) -> "DecoderShape":
        f = config_fields(config)
        kind = f.get("model_type")
        name = str(config) if isinstance(config, str) else f.get("_name_or_path") or str(kind)
        if kind == "gpt2":
            try:
                hidden, heads = int(f["n_embd"]), int(f["n_head"])
                shape = cls("gpt2", name, hidden, int(f["n_layer"]), heads, heads, hidden // max(heads, 1),
                            int(f.get("n_inner") or 4 * hidden), int(f["vocab_size"]), tied=True,
                            eps=float(f.get("layer_norm_epsilon", 1e-5)), positions=int(f.get("n_positions", 1024)))
            except KeyError as e:
                raise ModelError(f"the configuration has no {e.args[0]} field") from None
            except (TypeError, ValueError) as e:
                raise ModelError(f"the configuration has a field that is not a number: {e}") from None
            shape.check()
            return shape
        if kind not in LLAMA_FAMILY:
            raise ModelError(f"model_type '{kind}': the planner knows {', '.join(LLAMA_FAMILY)} and gpt2")
        try:
            hidden, heads = int(f["hidden_size"]), int(f["num_attention_heads"])
            shape = cls("llama", name, hidden, int(f["num_hidden_layers"]), heads,
                        int(first_field(f, "num_key_value_heads", default=heads)),
                        int(first_field(f, "head_dim", default=hidden // max(heads, 1))), int(f["intermediate_size"]),
                        int(f["vocab_size"]), int(f.get("num_local_experts") or 0),
                        int(f.get("num_experts_per_tok") or 0), kind == "qwen2",
                        bool(f.get("tie_word_embeddings", False)), float(f.get("rms_norm_eps", 1e-5)),
                        float(f.get("rope_theta", 10000.0)), int(f.get("max_position_embeddings", 4096)))
        except KeyError as e:
            raise ModelError(f"the configuration has no {e.args[0]} field") from None
        except (TypeError, ValueError) as e:
            raise ModelError(f"the configuration has a field that is not a number: {e}") from None
        shape.check()
        if shape.experts and not 1 <= shape.top_k <= shape.experts:
            raise ModelError(f"num_experts_per_tok {shape.top_k}: between 1 and num_local_experts {shape.experts}")
        if shape.heads % shape.kv_heads:
            raise ModelError(f"num_attention_heads {shape.heads} is not a multiple of num_key_value_heads "
                             f"{shape.kv_heads}")
        return shape

    def check(self) -> None:
        """Every size at least 1 (a config.json can say anything)."""
        for field in ("hidden", "layers", "heads", "kv_heads", "head_dim", "ffn", "vocab"):
            if getattr(self, field) < 1:
                raise ModelError(f"{self.name}: the configuration's {field} is {getattr(self, field)}; at least 1")


@dataclass(frozen=True)
class ShardWidths:
    """One chip's widths at tensor parallelism `tp`."""

    tp: int
    heads: int      # query heads
    kv_heads: int   # key/value heads held (replicated when tp > kv_heads)
    ffn: int        # per expert
    vocab: int
    hidden: int     # the embedding's column block

    @classmethod
    def of(cls, shape: DecoderShape, tp: int) -> "ShardWidths":
        if tp < 1:
            raise ModelError(f"--tp {tp}: at least 1")
        if shape.heads % tp:
            raise ModelError(f"--tp {tp} does not divide the {shape.heads} attention heads of {shape.name}")
        if shape.kv_heads % tp and tp % shape.kv_heads:
            raise ModelError(f"--tp {tp} neither divides nor is a multiple of the {shape.kv_heads} key/value heads "
                             f"of {shape.name}")
        return cls(tp, shape.heads // tp, max(1, shape.kv_heads // tp), math.ceil(shape.ffn / tp),
                   math.ceil(shape.vocab / tp), math.ceil(shape.hidden / tp))


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.names = [], [], set()

    def const(self, name, array):
        if name not in self.names:
            self.names.add(name)
            self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name, rows, cols):
        w = self.rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(1.6 / math.sqrt(rows))
        return self.const(name, w)

    def gain(self, name, n):
        return self.const(name, (1 + 0.1 * self.rng.standard_normal(n)).astype(np.float32))

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def model(self, name, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lpusim")
        model.ir_version = 8
        return model


def _info(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _norm(b: _Builder, shape: DecoderShape, x, name):
    eps = b.const("const.eps", np.float32(shape.eps))
    if shape.family == "gpt2":
        return b.node("LayerNormalization", [x, b.gain(f"{name}.weight", shape.hidden),
                                             b.const(f"{name}.bias", np.zeros(shape.hidden, np.float32))],
                      name, axis=-1, epsilon=shape.eps)
    sq = b.node("Pow", [x, b.const("const.two", np.float32(2.0))], f"{name}.pow")
    mean = b.node("ReduceMean", [sq], f"{name}.mean", axes=[-1], keepdims=1)
    root = b.node("Sqrt", [b.node("Add", [mean, eps], f"{name}.add_eps")], f"{name}.sqrt")
    inv = b.node("Div", [b.const("const.one", np.float32(1.0)), root], f"{name}.inv")
    return b.node("Mul", [b.gain(f"{name}.weight", shape.hidden), b.node("Mul", [x, inv], f"{name}.scaled")], name)


def _residual_inputs(batch, seq, hidden):
    return [_info("residual", TensorProto.FLOAT, (batch, seq, hidden)),
            _info("update", TensorProto.FLOAT, (batch, seq, hidden))]


def attention_part(shape: DecoderShape, tp: int, *, seq: int, past: int, batch: int = 1,
                   seed: int = 0) -> onnx.ModelProto:
    """One chip's attention part of one layer: `seq` new tokens after `past` cached ones."""
    w = ShardWidths.of(shape, tp)
    d, total = shape.head_dim, past + seq
    b = _Builder(seed)
    x = b.node("Add", ["residual", "update"], "x")
    h = _norm(b, shape, x, "input_norm")

    def linear(t, n_out, name, bias=False):
        y = b.node("MatMul", [t, b.weight(f"{name}.weight", shape.hidden, n_out)], name)
        return b.node("Add", [y, b.const(f"{name}.bias", np.zeros(n_out, np.float32))], f"{name}.biased") \
            if bias else y

    def heads_first(t, n, name):
        split = b.node("Reshape", [t, b.const(f"{name}.shape", np.array([batch, seq, n, d], np.int64))],
                       f"{name}.split")
        return b.node("Transpose", [split], f"{name}.heads", perm=[0, 2, 1, 3])

    bias = shape.qkv_bias or shape.family == "gpt2"
    rep = w.heads // w.kv_heads
    # Grouped-query attention repeats the key/value heads (Unsqueeze, Expand, Reshape) as transformers' eager
    # attention does: the compiler does not yet broadcast a matmul's head dimension, so the repeated cache is
    # materialised (docs/llm.md 4.4 reports what that costs).
    q = heads_first(linear(h, w.heads * d, "q", bias), w.heads, "q")
    k = heads_first(linear(h, w.kv_heads * d, "k", bias), w.kv_heads, "k")
    v = heads_first(linear(h, w.kv_heads * d, "v", bias), w.kv_heads, "v")
    if shape.family == "llama":
        inv_freq = (1.0 / shape.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / d)).astype(np.float32)
        pos = b.node("Cast", [b.node("Unsqueeze", ["position_ids", b.const("axis.last", np.array([-1], np.int64))],
                                     "rope.pos3")], "rope.posf", to=TensorProto.FLOAT)
        freqs = b.node("Mul", [pos, b.const("rope.inv_freq", inv_freq)], "rope.freqs")
        angles = b.node("Concat", [freqs, freqs], "rope.angles", axis=-1)
        axis1 = b.const("axis.head", np.array([1], np.int64))
        cos = b.node("Unsqueeze", [b.node("Cos", [angles], "rope.cos3"), axis1], "rope.cos")
        sin = b.node("Unsqueeze", [b.node("Sin", [angles], "rope.sin3"), axis1], "rope.sin")
        last = b.const("axis.3", np.array([3], np.int64))
        lo = (b.const("rope.lo0", np.array([0], np.int64)), b.const("rope.lo1", np.array([d // 2], np.int64)))
        hi = (b.const("rope.hi0", np.array([d // 2], np.int64)), b.const("rope.hi1", np.array([d], np.int64)))

        def rope(t, name):
            x1 = b.node("Slice", [t, lo[0], lo[1], last], f"{name}.x1")
            x2 = b.node("Slice", [t, hi[0], hi[1], last], f"{name}.x2")
            rotated = b.node("Concat", [b.node("Neg", [x2], f"{name}.neg"), x1], f"{name}.rotated", axis=-1)
            return b.node("Add", [b.node("Mul", [t, cos], f"{name}.cos"), b.node("Mul", [rotated, sin],
                                                                                  f"{name}.sin")], name)
        q, k = rope(q, "q.rope"), rope(k, "k.rope")
    keys = b.node("Concat", ["past_key", k], "present_key", axis=2) if past else b.node("Identity", [k],
                                                                                       "present_key")
    values = b.node("Concat", ["past_value", v], "present_value", axis=2) if past else b.node("Identity", [v],
                                                                                             "present_value")
    if rep > 1:
        grow = b.const("gqa.expand", np.array([batch, w.kv_heads, rep, total, d], np.int64))
        merge = b.const("gqa.merge", np.array([batch, w.heads, total, d], np.int64))
        kv_axis = b.const("gqa.axis", np.array([2], np.int64))
        keys, values = (b.node("Reshape", [b.node("Expand", [b.node("Unsqueeze", [t, kv_axis], f"{n}.unsq"), grow],
                                                  f"{n}.expand"), merge], f"{n}.rep")
                        for t, n in ((keys, "keys"), (values, "values")))
    causal = np.arange(total)[None, :] <= (past + np.arange(seq))[:, None]
    keep = b.node("Unsqueeze", [b.node("Cast", ["attention_mask"], "mask.keep", to=TensorProto.BOOL),
                                b.const("mask.axes", np.array([1, 2], np.int64))], "mask.keep4")
    allowed = b.node("And", [b.const("mask.causal", causal[None, None]), keep], "mask.allowed")
    mask = b.node("Where", [allowed, b.const("mask.zero", np.float32(0.0)),
                            b.const("mask.min", np.float32(np.finfo(np.float32).min))], "mask.bias")
    scores = b.node("MatMul", [q, b.node("Transpose", [keys], "keys.t", perm=[0, 1, 3, 2])], "scores")
    scaled = b.node("Add", [b.node("Mul", [scores, b.const("attn.scale", np.float32(d ** -0.5))], "scaled"), mask],
                    "masked")
    probs = b.node("Softmax", [scaled], "probs", axis=-1)
    ctx = b.node("MatMul", [probs, values], "ctx")
    ctx = b.node("Transpose", [ctx], "ctx.t", perm=[0, 2, 1, 3])
    merged = b.node("Reshape", [ctx, b.const("ctx.shape", np.array([batch, seq, w.heads * d], np.int64))],
                    "ctx.merged")
    b.node("MatMul", [merged, b.weight("o.weight", w.heads * d, shape.hidden)], "partial")
    inputs = _residual_inputs(batch, seq, shape.hidden) + [
        _info("attention_mask", TensorProto.INT64, (batch, total)),
        _info("position_ids", TensorProto.INT64, (batch, seq))]
    if past:
        inputs += [_info(n, TensorProto.FLOAT, (batch, w.kv_heads, past, d)) for n in ("past_key", "past_value")]
    outputs = [_info("x", TensorProto.FLOAT, (batch, seq, shape.hidden)),
               _info("partial", TensorProto.FLOAT, (batch, seq, shape.hidden)),
               _info("present_key", TensorProto.FLOAT, (batch, w.kv_heads, total, d)),
               _info("present_value", TensorProto.FLOAT, (batch, w.kv_heads, total, d))]
    return b.model("attention_part", inputs, outputs)


def _swiglu(b: _Builder, shape: DecoderShape, h, ffn, name):
    gate = b.node("MatMul", [h, b.weight(f"{name}.gate.weight", shape.hidden, ffn)], f"{name}.gate")
    silu = b.node("Mul", [gate, b.node("Sigmoid", [gate], f"{name}.sigmoid")], f"{name}.silu")
    up = b.node("MatMul", [h, b.weight(f"{name}.up.weight", shape.hidden, ffn)], f"{name}.up")
    return b.node("MatMul", [b.node("Mul", [silu, up], f"{name}.swiglu"), b.weight(f"{name}.down.weight", ffn, shape.hidden)],
                  f"{name}.down")


def mlp_part(shape: DecoderShape, tp: int, *, seq: int, batch: int = 1, seed: int = 0,
             groups: int = 1) -> onnx.ModelProto:
    """One chip's MLP part of one layer (dense, GELU for GPT-2, or every expert of a mixture). With `groups` = k
    > 1 the MLP is split over k consecutive parts (so that a layer's share can be cut finer over pipeline groups):
    a mixture's experts, `experts / k` per part with the router repeated; a dense MLP's `ffn / tp` columns,
    `ffn / (tp k)` per part (its down rows matching: a row split, whose partial sums add). `update` then carries
    the sum of the earlier parts (its first Add)."""
    if shape.experts % groups:
        raise ModelError(f"{groups} groups of experts do not divide {shape.experts} experts")
    w = ShardWidths.of(shape, tp)
    ffn = w.ffn if shape.experts else math.ceil(w.ffn / groups)
    b = _Builder(seed + 1)
    x = b.node("Add", ["residual", "update"], "x")
    h = _norm(b, shape, x, "post_norm")
    if shape.family == "gpt2":
        up = b.node("Add", [b.node("MatMul", [h, b.weight("fc.weight", shape.hidden, ffn)], "fc"),
                            b.const("fc.bias", np.zeros(ffn, np.float32))], "fc.biased")
        act = _gelu_tanh(b, up)
        out = b.node("MatMul", [act, b.weight("proj.weight", ffn, shape.hidden)], "proj")
    elif shape.experts:
        probs = b.node("Softmax", [b.node("MatMul", [h, b.weight("router.weight", shape.hidden, shape.experts)],
                                          "router.logits")], "router.probs", axis=-1)
        remaining, kept_sum, threshold = probs, None, None
        below = b.const("router.below", np.float32(-1.0))
        for j in range(shape.top_k):
            threshold = b.node("ReduceMax", [remaining], f"router.max{j}", axes=[-1], keepdims=1)
            kept_sum = threshold if kept_sum is None else b.node("Add", [kept_sum, threshold], f"router.sum{j}")
            if j + 1 < shape.top_k:
                found = b.node("Equal", [remaining, threshold], f"router.found{j}")
                remaining = b.node("Where", [found, below, remaining], f"router.rest{j}")
        chosen = b.node("GreaterOrEqual", [probs, threshold], "router.chosen")
        kept = b.node("Where", [chosen, probs, b.const("router.zero", np.float32(0.0))], "router.kept")
        routes = b.node("Div", [kept, kept_sum], "routes")
        out = None
        for e in range(shape.experts // groups):
            y = _swiglu(b, shape, h, w.ffn, f"expert{e}")
            route = b.node("Slice", [routes, b.const(f"expert{e}.start", np.array([e], np.int64)),
                                     b.const(f"expert{e}.end", np.array([e + 1], np.int64)),
                                     b.const("axis.2", np.array([2], np.int64))], f"expert{e}.route")
            weighted = b.node("Mul", [y, route], f"expert{e}.weighted")
            out = weighted if out is None else b.node("Add", [out, weighted], f"experts.sum{e}")
    else:
        out = _swiglu(b, shape, h, ffn, "mlp")
    b.node("Identity", [out], "partial")
    outputs = [_info("x", TensorProto.FLOAT, (batch, seq, shape.hidden)),
               _info("partial", TensorProto.FLOAT, (batch, seq, shape.hidden))]
    return b.model("mlp_part", _residual_inputs(batch, seq, shape.hidden), outputs)


def _gelu_tanh(b: _Builder, x):
    # GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as transformers exports it
    cube = b.node("Mul", [x, b.node("Mul", [x, x], "gelu.sq")], "gelu.cube")
    inner = b.node("Add", [x, b.node("Mul", [cube, b.const("gelu.c", np.float32(0.044715))], "gelu.cube_c")],
                   "gelu.inner")
    t = b.node("Tanh", [b.node("Mul", [inner, b.const("gelu.k", np.float32(math.sqrt(2 / math.pi)))],
                               "gelu.scaled")], "gelu.tanh")
    half = b.node("Mul", [x, b.const("gelu.half", np.float32(0.5))], "gelu.half_x")
    return b.node("Mul", [half, b.node("Add", [t, b.const("const.one", np.float32(1.0))], "gelu.one")], "gelu")


def embed_part(shape: DecoderShape, tp: int, *, seq: int, batch: int = 1, seed: int = 0,
               row_blocks: int = 1) -> onnx.ModelProto:
    """One chip's column block of the token embedding (and GPT-2's position embedding): a Gather. With
    `row_blocks` > 1 the table's rows are split over that many chips too (a table too big for one chip's column
    block): this chip holds one block of `ceil(vocab / row_blocks)` rows (a block's first row is an input,
    `block_start`, so every block is this graph), looks up the ids inside it (0 for the others) and adds the
    `partial` sum of the blocks after it (the chain of docs/llm.md 4.1)."""
    w = ShardWidths.of(shape, tp)
    b = _Builder(seed + 2)
    inputs = [_info("input_ids", TensorProto.INT64, (batch, seq))]
    if row_blocks == 1:
        table = b.const("embed.weight", b.rng.standard_normal((shape.vocab, w.hidden), dtype=np.float32))
        x = b.node("Gather", [table, "input_ids"], "tokens")
    else:
        # the block's rows and a zero row after them, which every id outside the block reads (no mask multiply:
        # the part stays a Gather and an Add, stored as the whole table's block is)
        rows = math.ceil(shape.vocab / row_blocks)
        table = np.concatenate([b.rng.standard_normal((rows, w.hidden), dtype=np.float32),
                                np.zeros((1, w.hidden), np.float32)])
        local = b.node("Sub", ["input_ids", "block_start"], "local_ids")
        inside = b.node("And", [b.node("GreaterOrEqual", [local, b.const("const.zero_id", np.int64(0))], "above"),
                                b.node("Less", [local, b.const("const.rows", np.int64(rows))], "below")], "inside")
        safe = b.node("Where", [inside, local, b.const("const.rows", np.int64(rows))], "safe_ids")
        x = b.node("Add", [b.node("Gather", [b.const("embed.weight", table), safe], "found"), "partial"], "tokens")
        inputs += [_info("block_start", TensorProto.INT64, ()), _info("partial", TensorProto.FLOAT,
                                                                      (batch, seq, w.hidden))]
    if shape.family == "gpt2":
        pos = b.const("wpe.weight", b.rng.standard_normal((shape.positions, w.hidden), dtype=np.float32))
        x = b.node("Add", [x, b.node("Gather", [pos, "position_ids"], "positions")], "embedded")
        inputs.append(_info("position_ids", TensorProto.INT64, (batch, seq)))
    b.node("Identity", [x], "block")
    return b.model("embed_part", inputs, [_info("block", TensorProto.FLOAT, (batch, seq, w.hidden))])


def head_part(shape: DecoderShape, tp: int, *, seq: int = 1, batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """The final norm and one chip's `vocab / tp` columns of lm_head, for the last token only."""
    w = ShardWidths.of(shape, tp)
    b = _Builder(seed + 3)
    x = b.node("Add", ["residual", "update"], "x")
    h = _norm(b, shape, x, "final_norm")
    b.node("MatMul", [h, b.weight("lm_head.weight", shape.hidden, w.vocab)], "logits")
    return b.model("head_part", _residual_inputs(batch, seq, shape.hidden),
                   [_info("logits", TensorProto.FLOAT, (batch, seq, w.vocab))])
