"""The int8 compile's fast paths give the same results as the slow ones, bit for bit.

* `quantize_model` runs onnxruntime's `quant_pre_process` + `quantize_static` steps in memory (large weights kept out
  of shape inference, the calibration session given them as in-memory initializers); `in_memory=False` calls
  onnxruntime's file-based functions. The quantised models must serialise to the same bytes, and the programs compiled
  from them (`assembly` and the constant image `static_init`) must be equal.
* Symmetric int8 weights skip the int64 copies in `q_contraction` / `q_dequantize` (lower/quant_contract.py,
  lower/quant.py): the same program as uint8 weights holding the same values (which take the general path).
"""
import hashlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lpusim
from lpusim import models
from lpusim.compiler import random_inputs
from lpusim.compiler.frontend import load
from lpusim.compiler.frontend.quantize import quantize_model

pytest.importorskip("onnxruntime.quantization")


def _torch_like(opset=11, seed=0):
    """Gemm biases as Constant nodes and an Identity of an initializer (a torch export), weights also listed as
    graph inputs (old IR), at opset 11 (converted to 13 for the quantiser), a weight above the 1,024-element
    threshold and a Reshape whose shape operand is an initializer."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array((rng.standard_normal((48, 64)) * 0.2).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((64, 16)) * 0.2).astype(np.float32), "w2")
    shape = numpy_helper.from_array(np.array([2, 48], np.int64), "shape")
    b1 = helper.make_tensor("b1v", TensorProto.FLOAT, [64], (rng.standard_normal(64) * 0.1).astype(np.float32))
    nodes = [helper.make_node("Constant", [], ["b1"], value=b1),
             helper.make_node("Identity", ["w2"], ["w2i"]),
             helper.make_node("Reshape", ["input", "shape"], ["x"]),
             helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2i"], ["out"], name="fc2")]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [4, 24])] + \
        [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in (w1, w2)]
    graph = helper.make_graph(nodes, "torch_like", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                                                           [2, 16])],
                              [w1, w2, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6
    return model


MODELS = {
    "mlp": lambda: models.mlp(batch=4),
    "mlp_matmul_add": lambda: models.mlp(sizes=(256, 1200, 40), batch=2, use_gemm=False),
    "mini_resnet": lambda: models.mini_resnet(batch=1),  # BatchNormalization: onnxruntime's optimiser folds it
    "bert": lambda: models.bert_encoder(layers=1, hidden=64, heads=4, seq=16),
    "llama_decode": lambda: models.llama_decoder(layers=1, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256,
                                                 seq=1, past=3),
    "mixtral_chunk": lambda: models.llama_decoder(layers=1, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256,
                                                  experts=4, top_k=2, seq=2, past=3),
    "torch_like": _torch_like,
}


def _calibration(model):
    return random_inputs(load.resolve_input_shapes(model, None), 0, load.input_kinds(model))


def _program_digest(program) -> tuple:
    image = hashlib.sha256()
    for address, length, data in program._schedule.static_init:
        image.update(repr((address, length)).encode())
        image.update(np.ascontiguousarray(data).tobytes())
    return program.assembly, image.hexdigest(), program.predicted_cycles


@pytest.mark.parametrize("name", list(MODELS))
def test_in_memory_quantisation_equals_onnxruntimes_file_based_one(name, monkeypatch):
    """The in-memory quantiser's model serialises to the bytes of onnxruntime's file-based quant_pre_process +
    quantize_static (same nodes, value_info, initializers, metadata); the in-memory path itself succeeds (no
    fall-back to the files)."""
    from lpusim.compiler.frontend import quantize

    model = MODELS[name]()
    x = _calibration(model)
    files = quantize._quantize_files

    def no_files(*args):
        raise AssertionError("the in-memory quantisation fell back to the files")
    monkeypatch.setattr(quantize, "_quantize_files", no_files)
    fast = quantize_model(model, x)
    monkeypatch.setattr(quantize, "_quantize_files", files)
    slow = quantize_model(model, x, in_memory=False)
    assert any(n.op_type == "DequantizeLinear" for n in fast.graph.node)
    assert fast.SerializeToString(deterministic=True) == slow.SerializeToString(deterministic=True)


@pytest.mark.parametrize("name", ["mlp_matmul_add", "mini_resnet", "bert"])
def test_int8_program_equals_the_program_of_the_file_based_quantisation(name):
    """lpusim.compile(float model, precision="int8") gives the program (assembly, constant image, cycles) that
    compiling onnxruntime's file-based quantisation of it gives, and the same outputs."""
    model = MODELS[name]()
    program = lpusim.compile(model, precision="int8")
    reference = lpusim.compile(quantize_model(model, _calibration(model), in_memory=False), precision="int8")
    assert _program_digest(program) == _program_digest(reference)
    x = program.random_inputs(3)
    a, b = program.run(x).outputs, reference.run(x).outputs
    for k in b:
        np.testing.assert_array_equal(a[k], b[k])


def _qlinear_mlp(weight_type):
    """QuantizeLinear -> QLinearMatMul (per-column scales, zero point 0) -> DequantizeLinear, then a QDQ MatMul
    whose weights go through DequantizeLinear; the weights hold 0..127 in `weight_type` (int8 takes the fast path,
    uint8 the general one)."""
    rng = np.random.default_rng(5)
    w = rng.integers(0, 128, size=(96, 40)).astype(weight_type)
    w2 = rng.integers(0, 128, size=(40, 24)).astype(weight_type)
    inits = {"s": np.float32(0.02), "z": np.uint8(131), "w": w, "ws": (rng.random(40) * 0.01 + 0.001).astype(np.float32),
             "wz": np.zeros(40, weight_type), "ys": np.float32(0.05), "yz": np.uint8(100),
             "w2": w2, "w2s": np.float32(0.003), "w2z": np.zeros((), weight_type)}
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"]),
             helper.make_node("QLinearMatMul", ["xq", "s", "z", "w", "ws", "wz", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
             helper.make_node("DequantizeLinear", ["w2", "w2s", "w2z"], ["w2f"]),
             helper.make_node("MatMul", ["y", "w2f"], ["out"])]
    graph = helper.make_graph(nodes, "qmlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [8, 96])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [8, 24])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_int8_weights_fast_path_equals_the_general_path():
    """int8 weights with zero point 0 (the codes used as they are) compile to the program uint8 weights holding the
    same values compile to (w - zw in int64, `int8_pieces`), and run to the same outputs."""
    a = lpusim.compile(_qlinear_mlp(np.int8), precision="int8")
    b = lpusim.compile(_qlinear_mlp(np.uint8), precision="int8")
    assert "ABC.i8" in a.assembly
    assert _program_digest(a) == _program_digest(b)
    x = a.random_inputs(1)
    np.testing.assert_array_equal(a.run(x).outputs["out"], b.run(x).outputs["out"])


def test_int8_pieces():
    from lpusim.compiler.lower.quant_codes import int8_pieces

    for w in (np.arange(-128, 128), np.arange(-255, 256), np.zeros((0, 3), np.int64), np.array([[300, -300]])):
        pieces = int8_pieces(w.reshape(1, -1) if w.ndim == 1 else w)
        assert all(p.dtype == np.int64 and (p.size == 0 or (p.min() >= -128 and p.max() <= 127)) for p in pieces)
        assert (sum(pieces) == (w.reshape(1, -1) if w.ndim == 1 else w)).all()
    assert len(int8_pieces(np.arange(-128, 128))) == 1 and len(int8_pieces(np.arange(-255, 256))) == 3
