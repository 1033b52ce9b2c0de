"""Small models built in code (no downloads): the demo MLP and the random shapes the tests sweep."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp(sizes=(784, 300, 10), batch: int = 1, seed: int = 0, activation: str = "Relu", use_gemm: bool = True,
        opset: int = 17) -> onnx.ModelProto:
    """A multi-layer perceptron `sizes[0] -> ... -> sizes[-1]` with `activation` between layers.

    Weights are Kaiming-scaled normal values from `seed`, so activations stay O(1) through the layers. With
    `use_gemm` each layer is one Gemm (as torch exports nn.Linear); otherwise MatMul followed by Add."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((k, n)) * np.sqrt(2.0 / k)).astype(np.float32)
        b = (rng.standard_normal(n) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        y = f"fc{i}"
        if use_gemm:
            nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [y], name=f"fc{i}"))
        else:
            nodes.append(helper.make_node("MatMul", [x, f"fc{i}.weight"], [y + ".mm"], name=f"fc{i}.matmul"))
            nodes.append(helper.make_node("Add", [y + ".mm", f"fc{i}.bias"], [y], name=f"fc{i}.add"))
        x = y
        if i < len(sizes) - 2 and activation:
            nodes.append(helper.make_node(activation, [x], [f"act{i}"], name=f"act{i}"))
            x = f"act{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [batch, sizes[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lpusim")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mini_resnet(batch: int = 1, size: int = 32, width: int = 16, blocks: int = 2, classes: int = 10,
                seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """A small ResNet: 7x7/2 stem conv + BN + ReLU, 3x3/2 max pool, `blocks` bottleneck blocks with identity or
    projection shortcuts (Sum), global average pool, flatten, Gemm. Random He-scaled weights, so values stay O(1)
    (unlike the constant-weight models in onnx's test data, whose activations outgrow fp16)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def conv_bn(x, cin, cout, k, stride=1, relu=True):
        count[0] += 1
        i = count[0]
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        nodes.append(helper.make_node("Conv", [x, const(f"w{i}", w)], [f"c{i}"], pads=[k // 2] * 4,
                                      strides=[stride, stride], name=f"conv{i}"))
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", const(f"s{i}", 0.5 + rng.random(cout)),
                                                             const(f"b{i}", 0.1 * rng.standard_normal(cout)),
                                                             const(f"m{i}", 0.1 * rng.standard_normal(cout)),
                                                             const(f"v{i}", 0.5 + rng.random(cout))],
                                      [f"n{i}"], name=f"bn{i}"))
        if not relu:
            return f"n{i}"
        nodes.append(helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"))
        return f"r{i}"

    x = conv_bn("input", 3, width, 7, stride=2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                                  name="maxpool"))
    x, cin = "pool", width
    for b in range(blocks):
        cout = width * 2 ** (b + 1)
        stride = 1 if b == 0 else 2
        y = conv_bn(x, cin, cout // 4, 1)
        y = conv_bn(y, cout // 4, cout // 4, 3, stride=stride)
        y = conv_bn(y, cout // 4, cout, 1, relu=False)
        shortcut = conv_bn(x, cin, cout, 1, stride=stride, relu=False) if (cin != cout or stride != 1) else x
        nodes.append(helper.make_node("Sum", [y, shortcut], [f"sum{b}"], name=f"sum{b}"))
        nodes.append(helper.make_node("Relu", [f"sum{b}"], [f"block{b}"], name=f"block{b}.relu"))
        x, cin = f"block{b}", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    fc = rng.standard_normal((classes, cin)) / np.sqrt(cin)
    nodes.append(helper.make_node("Gemm", ["flat", const("fc.w", fc), const("fc.b", np.zeros(classes))], ["logits"],
                                  transB=1, name="fc"))
    graph = helper.make_graph(nodes, "mini_resnet",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lpusim")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def bert_encoder(layers: int = 2, hidden: int = 64, heads: int = 4, seq: int = 16, ffn: int | None = None,
                 seed: int = 0, opset: int = 17, batch: int = 1, mask: bool = False) -> onnx.ModelProto:
    """A BERT encoder stack (post-LayerNorm, GELU) over input embeddings [batch, seq, hidden], random weights.

    The graph has the shape `torch.onnx.export` gives a Hugging Face BertLayer: Q/K/V MatMul + Add, Reshape to
    [1, seq, heads, d], Transpose (K to [1, heads, d, seq]), MatMul, Div by sqrt(d), Softmax, MatMul with V,
    Transpose and Reshape back, output projection, residual Add + LayerNormalization, the feed-forward block with
    the erf form of GELU. BERT-base is `layers=12, hidden=768, heads=12, seq=128`. (The token embedding lookup
    is left out: the input is the embeddings.) With `mask`, a second input `attention_mask` [batch, seq] (1.0
    keeps a token, 0.0 drops it) is added to the scaled scores as BERT does: Unsqueeze to [batch, 1, 1, seq],
    (1 - mask) * -10000."""
    rng = np.random.default_rng(seed)
    ffn = ffn or 4 * hidden
    d = hidden // heads
    inits: list = []
    nodes: list = []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def linear(x, k, n, name):
        w = const(f"{name}.weight", (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32))
        b = const(f"{name}.bias", (rng.standard_normal(n) * 0.02).astype(np.float32))
        nodes.append(helper.make_node("MatMul", [x, w], [f"{name}.mm"], name=f"{name}.mm"))
        nodes.append(helper.make_node("Add", [f"{name}.mm", b], [name], name=f"{name}.add"))
        return name

    def layernorm(x, name):
        g = const(f"{name}.gamma", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        b = const(f"{name}.beta", (0.1 * rng.standard_normal(hidden)).astype(np.float32))
        nodes.append(helper.make_node("LayerNormalization", [x, g, b], [name], name=name, axis=-1, epsilon=1e-12))
        return name

    split = const("shape.split", np.array([batch, seq, heads, d], np.int64))
    merge = const("shape.merge", np.array([batch, seq, hidden], np.int64))
    if mask:
        nodes += [helper.make_node("Unsqueeze", ["attention_mask", const("mask.axes", np.array([1, 2], np.int64))],
                                   ["mask.4d"], name="mask.unsqueeze"),
                  helper.make_node("Sub", [const("mask.one", np.float32(1.0)), "mask.4d"], ["mask.inv"],
                                   name="mask.inv"),
                  helper.make_node("Mul", ["mask.inv", const("mask.big", np.float32(-10000.0))], ["mask.add"],
                                   name="mask.add")]
    scale = const("attn.scale", np.float32(np.sqrt(d)))
    half, one, rsqrt2 = const("gelu.half", np.float32(0.5)), const("gelu.one", np.float32(1.0)), \
        const("gelu.sqrt2", np.float32(np.sqrt(2.0)))
    x = "embeddings"
    for i in range(layers):
        p = f"layer{i}"
        q, k, v = (linear(x, hidden, hidden, f"{p}.attn.{n}") for n in "qkv")
        for t in (q, k, v):
            nodes.append(helper.make_node("Reshape", [t, split], [f"{t}.heads"], name=f"{t}.split"))
        nodes.append(helper.make_node("Transpose", [f"{q}.heads"], [f"{q}.t"], perm=[0, 2, 1, 3], name=f"{q}.t"))
        nodes.append(helper.make_node("Transpose", [f"{k}.heads"], [f"{k}.t"], perm=[0, 2, 3, 1], name=f"{k}.t"))
        nodes.append(helper.make_node("Transpose", [f"{v}.heads"], [f"{v}.t"], perm=[0, 2, 1, 3], name=f"{v}.t"))
        nodes.append(helper.make_node("MatMul", [f"{q}.t", f"{k}.t"], [f"{p}.scores"], name=f"{p}.scores"))
        nodes.append(helper.make_node("Div", [f"{p}.scores", scale], [f"{p}.scaled"], name=f"{p}.scaled"))
        scores = f"{p}.scaled"
        if mask:
            nodes.append(helper.make_node("Add", [scores, "mask.add"], [f"{p}.masked"], name=f"{p}.masked"))
            scores = f"{p}.masked"
        nodes.append(helper.make_node("Softmax", [scores], [f"{p}.probs"], axis=-1, name=f"{p}.softmax"))
        nodes.append(helper.make_node("MatMul", [f"{p}.probs", f"{v}.t"], [f"{p}.ctx"], name=f"{p}.ctx"))
        nodes.append(helper.make_node("Transpose", [f"{p}.ctx"], [f"{p}.ctx.t"], perm=[0, 2, 1, 3],
                                      name=f"{p}.ctx.t"))
        nodes.append(helper.make_node("Reshape", [f"{p}.ctx.t", merge], [f"{p}.ctx.m"], name=f"{p}.merge"))
        o = linear(f"{p}.ctx.m", hidden, hidden, f"{p}.attn.out")
        nodes.append(helper.make_node("Add", [o, x], [f"{p}.res1"], name=f"{p}.res1"))
        x1 = layernorm(f"{p}.res1", f"{p}.ln1")
        h = linear(x1, hidden, ffn, f"{p}.ffn.in")
        nodes += [helper.make_node("Div", [h, rsqrt2], [f"{h}.s"], name=f"{h}.s"),
                  helper.make_node("Erf", [f"{h}.s"], [f"{h}.erf"], name=f"{h}.erf"),
                  helper.make_node("Add", [f"{h}.erf", one], [f"{h}.1p"], name=f"{h}.1p"),
                  helper.make_node("Mul", [h, f"{h}.1p"], [f"{h}.m"], name=f"{h}.m"),
                  helper.make_node("Mul", [f"{h}.m", half], [f"{h}.gelu"], name=f"{h}.gelu")]
        f = linear(f"{h}.gelu", ffn, hidden, f"{p}.ffn.out")
        nodes.append(helper.make_node("Add", [f, x1], [f"{p}.res2"], name=f"{p}.res2"))
        x = layernorm(f"{p}.res2", f"{p}.ln2")
    inputs = [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [batch, seq, hidden])]
    if mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, [batch, seq]))
    graph = helper.make_graph(nodes, "bert_encoder", inputs,
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, seq, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lpusim")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def llama_decoder_weights(layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2, ffn: int = 128,
                          vocab: int = 256, seed: int = 0, qkv_bias: bool = False,
                          experts: int = 0) -> dict[str, np.ndarray]:
    """Random weights of a Llama decoder under transformers' parameter names (`model.layers.0.self_attn.q_proj
    .weight` [out, in], ...), so that the same dict can be loaded into a transformers model and compared.

    Linear weights are normal with standard deviation 1.6 / sqrt(fan_in) (0.2 at hidden 64, as the export presets
    in lpusim.llm.export use): the logits then have a standard deviation near 1.6 at any width, so greedy choices
    are not a run of near-ties. Norm gains are 1 + 0.1 N(0, 1), biases 0.1 N(0, 1), embeddings N(0, 1). With
    `experts`, Mixtral's names replace the MLP's: `mlp.gate.weight` [experts, hidden] (the router),
    `mlp.experts.gate_up_proj` [experts, 2 ffn, hidden] (gate rows first) and `mlp.experts.down_proj`
    [experts, hidden, ffn]."""
    rng = np.random.default_rng(seed)
    d = hidden // heads

    def linear(out_features, in_features):
        return (rng.standard_normal((out_features, in_features)) * 1.6 / np.sqrt(in_features)).astype(np.float32)

    def gain(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}"
        w[f"{p}.input_layernorm.weight"] = gain(hidden)
        for name, n_out in (("q", heads * d), ("k", kv_heads * d), ("v", kv_heads * d)):
            w[f"{p}.self_attn.{name}_proj.weight"] = linear(n_out, hidden)
            if qkv_bias:
                w[f"{p}.self_attn.{name}_proj.bias"] = (0.1 * rng.standard_normal(n_out)).astype(np.float32)
        w[f"{p}.self_attn.o_proj.weight"] = linear(hidden, heads * d)
        w[f"{p}.post_attention_layernorm.weight"] = gain(hidden)
        if experts:
            w[f"{p}.mlp.gate.weight"] = linear(experts, hidden)
            w[f"{p}.mlp.experts.gate_up_proj"] = np.stack([linear(2 * ffn, hidden) for _ in range(experts)])
            w[f"{p}.mlp.experts.down_proj"] = np.stack([linear(hidden, ffn) for _ in range(experts)])
        else:
            w[f"{p}.mlp.gate_proj.weight"] = linear(ffn, hidden)
            w[f"{p}.mlp.up_proj.weight"] = linear(ffn, hidden)
            w[f"{p}.mlp.down_proj.weight"] = linear(hidden, ffn)
    w["model.norm.weight"] = gain(hidden)
    w["lm_head.weight"] = linear(vocab, hidden)
    return w


def llama_decoder(layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2, ffn: int = 128,
                  vocab: int = 256, seq: int = 8, past: int = 0, batch: int = 1, seed: int = 0,
                  qkv_bias: bool = False, experts: int = 0, top_k: int = 2, rope_theta: float = 10000.0,
                  eps: float = 1e-6, weights: dict[str, np.ndarray] | None = None,
                  opset: int = 17, static_cache: int = 0) -> onnx.ModelProto:
    """One step of a Llama decoder with a KV cache, static shapes: `seq` new tokens after a cache of `past`.

    The interface is the Optimum KV-cache layout (lpusim.llm.layout, docs/llm.md): inputs `input_ids` [batch, seq],
    `attention_mask` [batch, past + seq], `position_ids` [batch, seq] (int64), `past_key_values.N.key/.value`
    [batch, kv_heads, past, head_dim]; outputs `logits` [batch, seq, vocab] and `present.N.key/.value`
    [batch, kv_heads, past + seq, head_dim]. `past=0` is prefill, `seq=1` a decode step.

    The body has the op patterns of transformers' Llama exported by torch.onnx.export (eager attention), without
    the shape arithmetic, since every shape is static: the embedding Gather; RMSNorm as Pow, ReduceMean, Add,
    Sqrt, Div, Mul, Mul by the gain; rotary embeddings as Cos and Sin of position_ids times inv_freq, applied with
    Slice, Neg, Concat (rotate_half), Mul and Add; the new keys and values Concat after the past ones (axis 2:
    these are the present outputs); grouped-query attention by Unsqueeze, Expand and Reshape of the KV heads;
    MatMul, Mul by 1/sqrt(head_dim), Add of the mask, Softmax, MatMul; SwiGLU as Sigmoid, Mul, Mul. The mask is a
    constant causal pattern (key j is visible to new token i when j <= past + i) And-ed with the attention mask,
    then Where(allowed, 0, float32 min), as transformers builds it. `qkv_bias` adds Qwen2's biases on q, k, v.
    `experts` > 0 puts Mixtral's mixture of experts in place of the MLP, in the dense form a static schedule can
    run (docs/llm.md section 3.2): every expert computes every token and is weighted by its routing weight, which
    is 0 unless the expert is among the `top_k` largest router probabilities (found by `top_k` rounds of
    ReduceMax, Equal, Where; no TopK, no Gather). `weights` (transformers' names, `llama_decoder_weights`)
    replaces the random weights from `seed`.

    `static_cache=C` builds the static-cache form of docs/llm.md section 3.1 (`past` must be 0): the cache is C
    rows whatever the step, `attention_mask` [batch, C] (1 at written and valid cache rows, the new ones included),
    `past_key_values.N.*` and `present.N.*` both [batch, kv_heads, C, head_dim]. The new token s of row b is
    written to cache row position_ids[b, s] by a static-address blend, `Where(Equal(arange(C), position), new,
    cache)` (one Where per new token, in order), and attends over all C rows: row j is visible when
    j <= position_ids[b, s] and attention_mask[b, j] is 1 (LessOrEqual of arange(C) against the positions, And the
    mask). The cache row of a token is therefore its position: prompts are padded on the right. The weights and
    the rest of the graph are those of the dynamic form, so the same `seed` gives the same model."""
    if static_cache and past:
        raise ValueError(f"llama_decoder: static_cache={static_cache} takes no past (got past={past}): the past "
                         f"is the whole cache")
    if static_cache and seq > static_cache:
        raise ValueError(f"llama_decoder: seq {seq} does not fit a static cache of {static_cache} rows")
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"llama_decoder: hidden {hidden} must divide into heads {heads}, and heads into "
                         f"kv_heads {kv_heads}")
    if experts and not 1 <= top_k <= experts:
        raise ValueError(f"llama_decoder: top_k {top_k} must be in 1..experts ({experts})")
    d = hidden // heads
    rep = heads // kv_heads
    total = static_cache or past + seq
    w = weights if weights is not None else llama_decoder_weights(layers, hidden, heads, kv_heads, ffn, vocab,
                                                                  seed, qkv_bias, experts)
    nodes: list = []
    inits: list = []

    defined: set[str] = set()

    def const(name, array):
        if name not in defined:  # the static cache's slice bounds are shared by every layer
            defined.add(name)
            inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, param, name):
        y = node("MatMul", [x, const(f"{param}.weight.T", np.ascontiguousarray(w[f"{param}.weight"].T))], name)
        if f"{param}.bias" in w:
            y = node("Add", [y, const(f"{param}.bias", w[f"{param}.bias"])], f"{name}.bias")
        return y

    two, one = const("const.two", np.float32(2.0)), const("const.one", np.float32(1.0))
    eps_c = const("const.eps", np.float32(eps))

    def rms_norm(x, param, name):
        sq = node("Pow", [x, two], f"{name}.pow")
        mean = node("ReduceMean", [sq], f"{name}.mean", axes=[-1], keepdims=1)
        root = node("Sqrt", [node("Add", [mean, eps_c], f"{name}.add_eps")], f"{name}.sqrt")
        inv = node("Div", [one, root], f"{name}.inv")
        return node("Mul", [const(f"{param}.weight", w[f"{param}.weight"]), node("Mul", [x, inv], f"{name}.scaled")],
                    name)

    x = node("Gather", [const("model.embed_tokens.weight", w["model.embed_tokens.weight"]), "input_ids"], "embed")

    # Mask: [batch, 1, seq, total] additive bias, 0 where a key is visible, float32 min where it is not.
    keep = node("Cast", ["attention_mask"], "mask.keep", to=TensorProto.BOOL)
    if static_cache:
        # Causal from the data: cache row j is visible to new token s when j <= position_ids[b, s]. Built on
        # [batch, seq, C] (rows of C lanes) and Unsqueezed to [batch, 1, seq, C] last, as the chip keeps masks.
        slot = node("Unsqueeze", [node("Cast", ["position_ids"], "cache.position", to=TensorProto.FLOAT),
                                  const("cache.slot_axis", np.array([-1], np.int64))], "cache.slot")  # [B, S, 1]
        causal = node("LessOrEqual", [const("cache.rows", np.arange(total, dtype=np.float32)), slot], "mask.causal")
        keep3 = node("Unsqueeze", [keep, const("mask.keep_axis", np.array([1], np.int64))], "mask.keep3")
        allowed3 = node("And", [causal, keep3], "mask.allowed3")  # [B, S, C]
        bias3 = node("Where", [allowed3, const("mask.zero", np.float32(0.0)),
                               const("mask.min", np.float32(np.finfo(np.float32).min))], "mask.bias3")
        bias = node("Unsqueeze", [bias3, const("mask.head_axis", np.array([1], np.int64))], "mask.bias")
        # Row s of the new keys/values goes to cache row position_ids[b, s]: onehot [B, 1, C, head_dim] per new
        # token (Equal of the row index, the same in every lane, with the position; rows of head_dim lanes).
        rows_d = const("cache.rows_d", np.repeat(np.arange(total, dtype=np.float32)[:, None], d, axis=1))
        onehots = []
        for s_ in range(seq):
            col = slot if seq == 1 else node("Slice", [slot, const(f"cache.slot{s_}.start", np.array([s_], np.int64)),
                                                      const(f"cache.slot{s_}.end", np.array([s_ + 1], np.int64)),
                                                      const("cache.slot.axis", np.array([1], np.int64))],
                                             f"cache.slot{s_}")  # [B, 1, 1]
            onehot3 = node("Equal", [rows_d, col], f"cache.onehot{s_}.3")  # [B, C, D]
            onehots.append(node("Unsqueeze", [onehot3, const("mask.head_axis", np.array([1], np.int64))],
                                f"cache.onehot{s_}"))
    else:
        causal = np.arange(total)[None, :] <= (past + np.arange(seq))[:, None]
        keep4 = node("Unsqueeze", [keep, const("mask.axes", np.array([1, 2], np.int64))], "mask.keep4")
        allowed = node("And", [const("mask.causal", causal[None, None]), keep4], "mask.allowed")
        bias = node("Where", [allowed, const("mask.zero", np.float32(0.0)),
                              const("mask.min", np.float32(np.finfo(np.float32).min))], "mask.bias")

    # Rotary embedding: angle[b, s, j] = position_ids[b, s] * inv_freq[j], duplicated over the two halves.
    inv_freq = (1.0 / rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / d)).astype(np.float32)
    pos = node("Cast", [node("Unsqueeze", ["position_ids", const("rope.axis_last", np.array([-1], np.int64))],
                             "rope.pos3")], "rope.posf", to=TensorProto.FLOAT)
    freqs = node("Mul", [pos, const("rope.inv_freq", inv_freq)], "rope.freqs")
    angles = node("Concat", [freqs, freqs], "rope.angles", axis=-1)
    axis1 = const("rope.axis_head", np.array([1], np.int64))
    cos = node("Unsqueeze", [node("Cos", [angles], "rope.cos3"), axis1], "rope.cos")
    sin = node("Unsqueeze", [node("Sin", [angles], "rope.sin3"), axis1], "rope.sin")
    lo = (const("rope.lo.start", np.array([0], np.int64)), const("rope.lo.end", np.array([d // 2], np.int64)))
    hi = (const("rope.hi.start", np.array([d // 2], np.int64)), const("rope.hi.end", np.array([d], np.int64)))
    last = const("rope.slice_axis", np.array([3], np.int64))

    def rope(t, name):
        x1 = node("Slice", [t, lo[0], lo[1], last], f"{name}.x1")
        x2 = node("Slice", [t, hi[0], hi[1], last], f"{name}.x2")
        rotated = node("Concat", [node("Neg", [x2], f"{name}.neg"), x1], f"{name}.rotated", axis=-1)
        return node("Add", [node("Mul", [t, cos], f"{name}.cos"), node("Mul", [rotated, sin], f"{name}.sin")], name)

    def heads_first(t, n_heads, name):
        split = node("Reshape", [t, const(f"{name}.shape", np.array([batch, seq, n_heads, d], np.int64))],
                     f"{name}.split")
        return node("Transpose", [split], f"{name}.heads", perm=[0, 2, 1, 3])

    kv_axis = const("gqa.axis", np.array([2], np.int64))
    gqa_expand = const("gqa.expand", np.array([batch, kv_heads, rep, total, d], np.int64))
    gqa_merge = const("gqa.merge", np.array([batch, heads, total, d], np.int64))

    def repeat_kv(t, name):
        if rep == 1:
            return t
        grown = node("Expand", [node("Unsqueeze", [t, kv_axis], f"{name}.unsq"), gqa_expand], f"{name}.expand")
        return node("Reshape", [grown, gqa_merge], f"{name}.rep")

    def swiglu(h, param, name, gate_w=None, up_w=None, down_w=None):
        """down(silu(gate(h)) * up(h)); the three [out, in] weights from `w` by `param` unless given."""
        def mm(t, weight, suffix):
            return node("MatMul", [t, const(f"{param}.{suffix}.weight.T", np.ascontiguousarray(weight.T))],
                        f"{name}.{suffix}")
        gate = mm(h, w[f"{param}.gate_proj.weight"] if gate_w is None else gate_w, "gate")
        silu = node("Mul", [gate, node("Sigmoid", [gate], f"{name}.gate.sigmoid")], f"{name}.silu")
        up = mm(h, w[f"{param}.up_proj.weight"] if up_w is None else up_w, "up")
        return mm(node("Mul", [silu, up], f"{name}.swiglu"),
                  w[f"{param}.down_proj.weight"] if down_w is None else down_w, "down")

    # Less than any probability: Where puts it over a maximum already found, so the next ReduceMax finds the next.
    below_probs = const("moe.below", np.float32(-1.0)) if experts else None

    def mixture(h, p, name):
        """Mixtral's sparse MoE block as a dense sum: sum_e route_e * expert_e(h), route_e = p_e / (sum of the
        top_k p) for the top_k experts and 0 for the others. Exact ties between router probabilities select
        every tied expert (TopK would take the lower index)."""
        logits = linear(h, f"{p}.mlp.gate", f"{name}.router")
        probs = node("Softmax", [logits], f"{name}.router.probs", axis=-1)
        remaining, kept_sum, threshold = probs, None, None
        for j in range(top_k):
            threshold = node("ReduceMax", [remaining], f"{name}.router.max{j}", axes=[-1], keepdims=1)
            kept_sum = threshold if kept_sum is None else node("Add", [kept_sum, threshold], f"{name}.router.sum{j}")
            if j + 1 < top_k:
                found = node("Equal", [remaining, threshold], f"{name}.router.found{j}")
                remaining = node("Where", [found, below_probs, remaining], f"{name}.router.rest{j}")
        chosen = node("GreaterOrEqual", [probs, threshold], f"{name}.router.chosen")
        kept = node("Where", [chosen, probs, const(f"{name}.router.zero", np.float32(0.0))], f"{name}.router.kept")
        routes = node("Div", [kept, kept_sum], f"{name}.routes")
        total_out = None
        gate_up, down_all = w[f"{p}.mlp.experts.gate_up_proj"], w[f"{p}.mlp.experts.down_proj"]
        for e in range(experts):
            out = swiglu(h, f"{p}.mlp.experts.{e}", f"{name}.expert{e}", gate_up[e, :ffn], gate_up[e, ffn:],
                         down_all[e])
            route = node("Slice", [routes, const(f"{name}.expert{e}.start", np.array([e], np.int64)),
                                   const(f"{name}.expert{e}.end", np.array([e + 1], np.int64)),
                                   const(f"{name}.expert{e}.axis", np.array([2], np.int64))], f"{name}.expert{e}.route")
            weighted = node("Mul", [out, route], f"{name}.expert{e}.weighted")
            total_out = weighted if total_out is None else node("Add", [total_out, weighted], f"{name}.moe.sum{e}")
        return total_out

    scale = const("attn.scale", np.float32(d ** -0.5))
    merge = const("attn.merge", np.array([batch, seq, hidden], np.int64))
    outputs = []
    for i in range(layers):
        p, name = f"model.layers.{i}", f"layer{i}"
        h = rms_norm(x, f"{p}.input_layernorm", f"{name}.input_norm")
        q = rope(heads_first(linear(h, f"{p}.self_attn.q_proj", f"{name}.q"), heads, f"{name}.q"), f"{name}.q.rope")
        k = rope(heads_first(linear(h, f"{p}.self_attn.k_proj", f"{name}.k"), kv_heads, f"{name}.k"),
                 f"{name}.k.rope")
        v = heads_first(linear(h, f"{p}.self_attn.v_proj", f"{name}.v"), kv_heads, f"{name}.v")
        if static_cache:
            for kind, new_rows in (("key", k), ("value", v)):
                cache = f"past_key_values.{i}.{kind}"
                for s_ in range(seq):
                    row = new_rows if seq == 1 else node(
                        "Slice", [new_rows, const(f"cache.slot{s_}.start", np.array([s_], np.int64)),
                                  const(f"cache.slot{s_}.end", np.array([s_ + 1], np.int64)),
                                  const("cache.row.axis", np.array([2], np.int64))], f"{name}.cache.{kind}.row{s_}")
                    out = f"present.{i}.{kind}" if s_ == seq - 1 else f"{name}.cache.{kind}.{s_}"
                    cache = node("Where", [onehots[s_], row, cache], out)
        else:
            nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.key", k], [f"present.{i}.key"], axis=2,
                                          name=f"{name}.cache.key"))
            nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.value", v], [f"present.{i}.value"],
                                          axis=2, name=f"{name}.cache.value"))
        keys = repeat_kv(f"present.{i}.key", f"{name}.keys")
        values = repeat_kv(f"present.{i}.value", f"{name}.values")
        scores = node("MatMul", [q, node("Transpose", [keys], f"{name}.keys.t", perm=[0, 1, 3, 2])],
                      f"{name}.scores")
        scaled = node("Add", [node("Mul", [scores, scale], f"{name}.scaled"), bias], f"{name}.masked")
        probs = node("Softmax", [scaled], f"{name}.probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, values], f"{name}.ctx")], f"{name}.ctx.t", perm=[0, 2, 1, 3])
        attn = linear(node("Reshape", [ctx, merge], f"{name}.ctx.merged"), f"{p}.self_attn.o_proj", f"{name}.o")
        x = node("Add", [x, attn], f"{name}.residual1")
        h = rms_norm(x, f"{p}.post_attention_layernorm", f"{name}.post_norm")
        down = mixture(h, p, name) if experts else swiglu(h, f"{p}.mlp", name)
        x = node("Add", [x, down], f"{name}.residual2")
        outputs += [f"present.{i}.key", f"present.{i}.value"]
    x = rms_norm(x, "model.norm", "final_norm")
    nodes.append(helper.make_node("MatMul", [x, const("lm_head.weight.T", np.ascontiguousarray(w["lm_head.weight"].T))],
                                  ["logits"], name="lm_head"))

    def info(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    inputs = [info("input_ids", TensorProto.INT64, [batch, seq]),
              info("attention_mask", TensorProto.INT64, [batch, total]),
              info("position_ids", TensorProto.INT64, [batch, seq])]
    for i in range(layers):
        inputs += [info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, [batch, kv_heads, static_cache or past, d])
                   for kind in ("key", "value")]
    outs = [info("logits", TensorProto.FLOAT, [batch, seq, vocab])]
    outs += [info(n, TensorProto.FLOAT, [batch, kv_heads, total, d]) for n in outputs]
    graph = helper.make_graph(nodes, "llama_decoder", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lpusim")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
