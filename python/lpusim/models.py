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
