"""Bad input to the command: one line naming the problem, exit status 2, nothing read without end (the list of
issue 16's tracebacks: a model stamped opset 99, an .npz of strings or complex numbers, negative and huge shapes,
a binary file given to `asm`, `--chips 0`, a device file such as /dev/zero). Shapes given (--shape, or the arrays
of --inputs, which fix dynamic dimensions) that contradict the model's static ones are an error too."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from lpusim.cli import main
from lpusim.models import mlp


@pytest.fixture
def files(tmp_path):
    model = mlp((8, 4, 2))
    paths = {"ok": tmp_path / "ok.onnx", "op99": tmp_path / "op99.onnx", "str": tmp_path / "str.npz",
             "complex": tmp_path / "complex.npz", "bin": tmp_path / "bin.asm", "dyn": tmp_path / "dyn.onnx",
             "rows3": tmp_path / "rows3.npz"}
    onnx.save(model, str(paths["ok"]))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_param = "batch"
    onnx.save(model, str(paths["dyn"]))  # [batch, 8]
    np.savez(paths["rows3"], input=np.ones((3, 8), np.float32))
    model = mlp((8, 4, 2))
    model.opset_import[0].version = 99
    onnx.save(model, str(paths["op99"]))
    np.savez(paths["str"], input=np.array([["a"] * 8]))
    np.savez(paths["complex"], input=(np.ones((1, 8)) + 1j).astype(np.complex64))
    paths["bin"].write_bytes(bytes(range(256)) * 4)
    return {k: str(v) for k, v in paths.items()}


CASES = [
    (["run", "{op99}"], "is stamped with opset 99; the installed onnx knows opsets up to"),
    (["run", "{ok}", "--inputs", "{str}"], "array 'input' is <U1 (1, 8); inputs must be real numbers or booleans"),
    (["run", "{ok}", "--inputs", "{complex}"], "array 'input' is complex64 (1, 8)"),
    (["run", "{ok}", "--shape", "input=-1,8"], "input 'input': shape [-1, 8] has a negative dimension"),
    (["run", "{dyn}", "--shape", "input=99999999999,8"], "has 799,999,999,992 elements, more than the 2,147,483,648"),
    (["run", "{ok}", "--shape", "input=2,8"], "input 'input': the shape given [2, 8] contradicts the model's [1, 8]"),
    (["run", "{ok}", "--inputs", "{rows3}"], "the shape given [3, 8] contradicts the model's [1, 8]"),
    (["asm", "{bin}"], "not assembly text (byte 128 is not UTF-8; a binary file?)"),
    (["run", "{ok}", "--chips", "0"], "--chips 0: at least one chip is needed"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[:1] + a[2:])[:40] for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(files, capsys, argv, message):
    assert main([a.format(**files) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
@pytest.mark.parametrize("argv", [["run", "/dev/zero"], ["asm", "/dev/zero"], ["run", "{ok}", "--inputs", "/dev/zero"]])
def test_a_device_file_is_refused_not_read(files, capsys, argv):
    assert main([a.format(**files) for a in argv]) == 2
    assert "/dev/zero: not a regular file" in capsys.readouterr().err


def test_inputs_fix_the_dynamic_dimensions(files, capsys):
    """--inputs fixes a dynamic dimension from the array (no --shape needed): [3, 8] for [batch, 8]."""
    import json
    assert main(["run", files["dyn"], "--inputs", files["rows3"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs_match"] is True
