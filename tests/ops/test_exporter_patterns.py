"""Graph forms that real exported models use (docs/models.md), each cut down to a few nodes: tf2onnx's 1-D
convolution (magika), paddle2onnx's -1 batch and its attention's batched MatMul of two computed tensors (PP-OCRv4
rec)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import lpusim
from onnx_cases import assert_matches_onnxruntime, make_model

rng = np.random.default_rng(0)


def test_tf2onnx_conv1d_unsqueeze_is_an_image_not_heads():
    # [B, L, C] -> Unsqueeze(3) -> a Slice selecting everything -> Transpose(0, 2, 1, 3) -> Conv [k, 1]: a
    # trailing axis of 1 is not a split into attention heads of one lane each
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Unsqueeze", ["r", "ax"], ["u"]),
             helper.make_node("Slice", ["u", "st", "en", "axs", "sp"], ["s"]),
             helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node("Conv", ["t", "w"], ["y"], kernel_shape=[5, 1])]
    inits = {"ax": np.array([3]), "st": np.zeros(4, np.int64), "en": np.full(4, 10**9, np.int64),
             "axs": np.array([0, 2, 1, 3]), "sp": np.ones(4, np.int64),
             "w": rng.standard_normal((24, 16, 5, 1)).astype(np.float32) * 0.2}
    assert_matches_onnxruntime(make_model(nodes, inits, {"x": [1, 40, 16]}))


def test_negative_batch_dimension_is_dynamic():
    # paddle2onnx declares the batch as dim_value -1; a given shape fixes it like a dim_param
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 4, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, 4, 5])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    program = lpusim.compile(m, shapes={"x": (1, 3, 4, 5)})
    x = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(program.run({"x": x}).outputs["y"].reshape(x.shape), np.maximum(x, 0), atol=1e-2)


@pytest.mark.parametrize("bx, bw", [((1, 3), (1, 3)), ((2,), (2,)), ((2, 1), (1, 3))])
def test_batched_matmul_of_computed_tensors(bx, bw):
    # two computed operands with batch dimensions (broadcast as numpy does), outside the attention pattern
    m_, k, n = 7, 5, 6
    nodes = [helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("MatMul", ["ra", "rb"], ["y"])]
    assert_matches_onnxruntime(make_model(nodes, {}, {"a": list(bx) + [m_, k], "b": list(bw) + [k, n]}))


def test_paddle_attention_qkv_5d():
    # paddle2onnx's ViT attention: qkv [B, N, 3*C] -> [B, N, 3, heads, D] -> Transpose(2, 0, 3, 1, 4), q, k, v by
    # Slice + Squeeze, q k^T, Softmax, @ v, back to [B, N, C]
    b, n, heads, d = 1, 12, 2, 8
    c = heads * d
    consts = {"shape5": np.array([b, n, 3, heads, d]), "shape3": np.array([b, n, c]), "ax0": np.array([0]),
              "w": rng.standard_normal((c, 3 * c)).astype(np.float32) * 0.3}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["qkv"]),
             helper.make_node("Reshape", ["qkv", "shape5"], ["r5"]),
             helper.make_node("Transpose", ["r5"], ["t5"], perm=[2, 0, 3, 1, 4])]
    for i, part in enumerate("qkv"):
        consts[f"s{i}"], consts[f"e{i}"] = np.array([i]), np.array([i + 1])
        nodes += [helper.make_node("Slice", ["t5", f"s{i}", f"e{i}", "ax0"], [f"{part}5"]),
                  helper.make_node("Squeeze", [f"{part}5", "ax0"], [part])]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["s"]),
              helper.make_node("Softmax", ["s"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "shape3"], ["y"])]
    assert_matches_onnxruntime(make_model(nodes, consts, {"x": [b, n, c]}))


@pytest.mark.parametrize("kw", [
    dict(kernel=2, strides=[2, 2]),                                        # PP-OCR's detector head
    dict(kernel=3, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    dict(kernel=4, strides=[2, 2], pads=[1, 1, 1, 1], group=2),
    dict(kernel=3, strides=[1, 1], pads=[2, 2, 2, 2]),                     # negative conv padding: a crop
    dict(kernel=2, strides=[3, 3], dilations=[2, 2], bias=False),
    dict(kernel=3, strides=[3, 2], pads=[1, 2, 1, 2]),                    # onnx's convtranspose_pads: crops
])
def test_conv_transpose(kw):
    kw = dict(kw)
    k, group, bias = kw.pop("kernel"), kw.get("group", 1), kw.pop("bias", True)
    cin, cout = 4, 6
    inits = {"w": rng.standard_normal((cin, cout // group, k, k)).astype(np.float32) * 0.3}
    ins = ["r", "w"]
    if bias:
        inits["b"] = rng.standard_normal(cout).astype(np.float32)
        ins.append("b")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("ConvTranspose", ins, ["y"], **kw)]
    assert_matches_onnxruntime(make_model(nodes, inits, {"x": [1, cin, 5, 7]}))


@pytest.mark.parametrize("direction, seq, states", [("forward", 1, True), ("forward", 3, False),
                                                    ("reverse", 2, True), ("bidirectional", 2, True)])
def test_lstm(direction, seq, states):
    # Silero VAD's decoder: one LSTM step with its state in and out; the others unrolled over a short sequence
    d = 2 if direction == "bidirectional" else 1
    batch, size, hidden = 2, 6, 5
    inits = {"W": rng.standard_normal((d, 4 * hidden, size)).astype(np.float32) * 0.4,
             "R": rng.standard_normal((d, 4 * hidden, hidden)).astype(np.float32) * 0.4,
             "B": rng.standard_normal((d, 8 * hidden)).astype(np.float32) * 0.2}
    inputs = {"x": [seq, batch, size]}
    ins = ["x", "W", "R", "B"]
    if states:
        inputs.update(h=[d, batch, hidden], c=[d, batch, hidden])
        ins += ["", "h", "c"]
    nodes = [helper.make_node("LSTM", ins, ["y", "yh", "yc"], hidden_size=hidden, direction=direction)]
    assert_matches_onnxruntime(make_model(nodes, inits, inputs, outputs=("y", "yh", "yc")))
