"""The command line: exit status, JSON keys, and the one-line error messages (golden)."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lpusim.models import mlp


def lpusim_cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "lpusim.cli", *args], capture_output=True, text=True, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def mlp_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp((784, 300, 10), seed=1), path)
    return path


RUN_KEYS = {"outputs_match", "max_abs_error", "max_rel_error", "cycles", "predicted_cycles", "latency_us", "chips",
            "instructions", "sram_bytes", "utilization", "wall_s"}


def test_run_json(mlp_file):
    code, out, err = lpusim_cli("run", str(mlp_file), "--json", "--seed", "3")
    assert code == 0, err
    report = json.loads(out)
    assert RUN_KEYS <= set(report)
    assert report["outputs_match"] is True
    assert report["cycles"] == report["predicted_cycles"] > 0
    assert set(report["wall_s"]) == {"compile", "simulate", "onnxruntime"}
    assert set(report["utilization"]) >= {"mem", "vxm", "mxm"}
    assert 0 < report["utilization"]["mxm"] <= 1


def test_run_with_inputs_file(mlp_file, tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    code, out, err = lpusim_cli("run", str(mlp_file), "--inputs", str(tmp_path / "in.npz"), "--json")
    assert code == 0, err


def test_demo():
    code, out, err = lpusim_cli("demo")
    assert code == 0, err
    assert "MATCH" in out and "cycles" in out


def test_chip_json():
    code, out, err = lpusim_cli("chip", "--json")
    assert code == 0, err
    c = json.loads(out)
    expected = {"lanes": 320, "superlanes": 20, "mem_slices": 88, "sram_bytes": 220 * 2**20,
                "streams_per_direction": 32, "mxm_planes": 4, "mxm_dim": 320, "vxm_alus_per_lane": 16,
                "instruction_queues": 144, "clock_hz": 900e6}
    for k, v in expected.items():
        assert c[k] == v, k


def _bad(tmp_path, name, model):
    path = tmp_path / name
    onnx.save(model, path)
    return str(path)


def _single_line_error(code, out, err):
    assert code == 2, (out, err)
    assert "Traceback" not in err and "panicked" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_file(tmp_path):
    line = _single_line_error(*lpusim_cli("run", str(tmp_path / "nope.onnx")))
    assert line == f"lpusim: error: {tmp_path / 'nope.onnx'}: no such file"


def test_truncated_file(tmp_path, mlp_file):
    data = mlp_file.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 3])
    line = _single_line_error(*lpusim_cli("run", str(path)))
    assert line.startswith(f"lpusim: error: {path}: ")


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    line = _single_line_error(*lpusim_cli("run", str(path)))
    assert line.startswith(f"lpusim: error: {path}: ")


def test_unsupported_op(tmp_path):
    g = helper.make_graph([helper.make_node("Asin", ["x"], ["y"], name="my_asin")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    path = _bad(tmp_path, "asin.onnx", helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    line = _single_line_error(*lpusim_cli("run", path))
    assert line.startswith("lpusim: error: Asin node 'my_asin': operator Asin is not supported yet")


def test_dynamic_shape_needs_shape_flag(tmp_path):
    model = mlp((16, 4), seed=0)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = _bad(tmp_path, "dyn.onnx", model)
    line = _single_line_error(*lpusim_cli("run", path))
    assert line == ("lpusim: error: input 'input': dimension 'batch' is not fixed; give it with "
                    "--shape input=D0,D1,... (or shapes={'input': (...)})")
    code, out, err = lpusim_cli("run", path, "--shape", "input=3,16", "--json")
    assert code == 0, err
    # `compile` has no arrays to take the shapes from (lpusim.compile would compile at the first run)
    line = _single_line_error(*lpusim_cli("compile", path))
    assert line.startswith("lpusim: error: input 'input': dimension 'batch' is not fixed")


def test_model_too_large(tmp_path):
    # a ReLU over a [1, 8, 512, 512] image: 262,144 pixel rows in and out, 671 MB of f32 vectors, > 220 MiB
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="big")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 512, 512])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 512, 512])])
    path = _bad(tmp_path, "big.onnx", helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    line = _single_line_error(*lpusim_cli("run", path))
    assert line == ("lpusim: error: the model needs 671,088,640 bytes of SRAM and one tsp_v1 chip has 230,686,720: "
                    "it would take 3 chips (chips='auto' or --chips auto splits a model into a pipeline)")


def test_bad_inputs_file(tmp_path, mlp_file):
    (tmp_path / "x.npz").write_text("nope")
    line = _single_line_error(*lpusim_cli("run", str(mlp_file), "--inputs", str(tmp_path / "x.npz")))
    assert line.startswith(f"lpusim: error: {tmp_path / 'x.npz'}: not an .npz archive")


def test_wrong_input_name(tmp_path, mlp_file):
    np.savez(tmp_path / "in.npz", wrong=np.zeros((1, 784), np.float32))
    line = _single_line_error(*lpusim_cli("run", str(mlp_file), "--inputs", str(tmp_path / "in.npz")))
    assert line == "lpusim: error: missing input(s): input (the model takes input[1, 784])"


def test_trace_and_plot(mlp_file, tmp_path):
    pytest.importorskip("matplotlib")
    trace, plot = tmp_path / "t.json", tmp_path / "u.png"
    code, out, err = lpusim_cli("run", str(mlp_file), "--json", "--trace", str(trace), "--plot", str(plot))
    assert code == 0, err
    events = json.loads(trace.read_text())["traceEvents"]
    bursts = [e for e in events if e["ph"] == "X"]
    assert {e["args"]["instruction"].split()[0] for e in bursts} >= {"READ", "LW.f16", "IW", "ABC.f16", "ACC.f32"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
