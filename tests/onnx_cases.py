"""Helpers the tests share: build a one-graph ONNX model, compile, simulate, compare with onnxruntime (fp16 and
int8). tests/conftest.py puts this folder on sys.path, so test files in every subfolder import it."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import lpusim
from lpusim.check.compare import compare, run_onnxruntime
from lpusim.compiler.frontend.quantize import quantize_model


def make_model(nodes, inits, inputs, opset=17, outputs=("y",)):
    """`inputs`: {name: shape} (float32); `inits`: {name: array}; outputs are float32 of inferred shape."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def assert_matches_onnxruntime(m, inputs=None, seed=0, **compile_kw):
    """Compile and simulate `m`; the cycles must equal the prediction and the outputs match onnxruntime."""
    program = lpusim.compile(m, **compile_kw)
    x = inputs if inputs is not None else program.random_inputs(seed)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    ref, _ = run_onnxruntime(m, x)
    cmp = compare(result.outputs, ref)
    assert cmp["outputs_match"], cmp
    timing = program.run(x, timing_only=True)
    assert timing.cycles == result.cycles
    return program, result, cmp


def typed_model(nodes, inits, inputs, outputs, opset=17):
    """`inputs`/`outputs`: {name: (elem type, shape)}."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
                          [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def run_int8(model):
    """Compile at precision="int8", run on the default inputs, and compare with onnxruntime on the quantised model
    (quantised with the same calibration inputs as the compile's): (program, result, compare dict)."""
    program = lpusim.compile(model, precision="int8")
    x = program.random_inputs(0)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    ref, _ = run_onnxruntime(quantize_model(model, x), x)
    return program, result, ref


# A float output after float ops onnxruntime runs in float32 (LayerNormalization at the end of a transformer): the
# chip keeps f32 accuracy there (LowerState.precise_sums: sums and attention products through the fp16 MXM as
# hi + lo, ~22 significant bits), so every QuantizeLinear before it lands on onnxruntime's codes and the output
# differs only by f32 rounding order: at most F32_UNITS units of 2^-23 of the output's largest magnitude. One code
# off anywhere upstream moves the output by about a quantisation step (~1e-2 relative), 10^4 times this bound.
F32_UNITS = 4


def assert_f32_close(sim: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """max |sim - ref| <= F32_UNITS * 2^-23 * max |ref|; returns (that max relative to max |ref|, exact fraction)."""
    diff = np.abs(sim.astype(np.float64) - ref.astype(np.float64))
    rel = float(diff.max() / np.abs(ref).max())
    assert rel <= F32_UNITS * 2.0 ** -23, (rel, diff.max())
    return rel, float((diff == 0).mean())


def int8_step(q, output: str) -> float:
    """The quantisation step of a decoder output in the quantised model `q`: the scale of the QuantizeLinear whose
    codes it dequantizes (logits; present keys after the rotary Add; present values after v_proj)."""
    from onnx import numpy_helper
    name = {"logits": "logits_scale"}.get(output)
    if name is None:
        _, layer, kind = output.split(".")
        name = f"layer{layer}.k.rope_scale" if kind == "key" else f"layer{layer}.v_scale"
    return float(next(numpy_helper.to_array(i) for i in q.graph.initializer if i.name == name))


def assert_int8_decoder_matches(model) -> None:
    """A builder decoder at precision="int8": its cycles equal the prediction, and every output is within the int8
    rule against onnxruntime on the same quantised model (equal codes except one step on at most 1%). The inputs
    are the program's own random inputs, which the compiler quantised on."""
    from lpusim.check.compare import run_onnxruntime
    from lpusim.compiler.frontend.quantize import quantize_model
    program = lpusim.compile(model, precision="int8")
    x = program.random_inputs(0)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    q = quantize_model(model, x)
    ref, _ = run_onnxruntime(q, x)
    for k, want in ref.items():
        steps = np.abs(result.outputs[k].astype(np.float64) - want) / int8_step(q, k)
        assert steps.max() <= 1.001 and (steps > 1e-3).mean() <= 0.01, (k, steps.max(), (steps > 1e-3).mean())
