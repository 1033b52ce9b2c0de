"""Bad input to the command: one line naming the problem, exit status 2, nothing read without end (issue 16).

Golden errors, one class at a time: special files (directories, devices, pipes, files over the size bounds of
lpusim/files.py) as model, inputs, configuration or assembly; opsets newer than onnx or onnxruntime know; .npz
arrays of the wrong kind (strings, objects, complex numbers, records, a single .npy, pickles) or declaring more bytes
than one input may take; negative, malformed and huge --shape dimensions; chip counts of 0 or below; chip, system and
LLM configurations that are not JSON or hold bad fields; models whose declared shapes need more bytes than the bound;
argparse's own errors and bad seeds; outputs that cannot be written. Shapes given (--shape, or the arrays of
--inputs, which fix dynamic dimensions) that contradict the model's static ones are an error too.
Random bad input of the same classes: test_bad_input_properties.py.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest

from lpusim.cli import main
from lpusim.models import mlp



def cli(argv) -> tuple[int, str]:
    """`lpusim ARGV` in-process: (exit status, stderr). argparse's own errors leave by SystemExit."""
    try:
        return main(argv), ""
    except SystemExit as e:
        return e.code, ""


@pytest.fixture
def files(tmp_path):
    model = mlp((8, 4, 2))
    paths = {k: tmp_path / v for k, v in dict(
        ok="ok.onnx", op99="op99.onnx", ml99="ml99.onnx", str="str.npz", complex="complex.npz", bin="bin.asm",
        dyn="dyn.onnx", rows3="rows3.npz", obj="obj.npz", npy="one.npz", records="records.npz", huge_npz="huge.npz",
        not_zip="notzip.npz", nul="nul.asm", big_model="big.onnx", declared="declared.onnx", not_json="bad.json",
        list_json="list.json", neg_chip="neg_chip.json", str_chip="str_chip.json", sys_zero="sys_zero.json",
        llm_neg="llm_neg.json", sparse="sparse.onnx", dir="adir", fifo="fifo", asm="ok.asm").items()}
    onnx.save(model, str(paths["ok"]))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_param = "batch"
    onnx.save(model, str(paths["dyn"]))  # [batch, 8]
    np.savez(paths["rows3"], input=np.ones((3, 8), np.float32))
    model = mlp((8, 4, 2))
    model.opset_import[0].version = 99
    onnx.save(model, str(paths["op99"]))
    model = mlp((8, 4, 2))
    model.opset_import.add(domain="ai.onnx.ml", version=99)
    onnx.save(model, str(paths["ml99"]))
    model = mlp((8, 4, 2))  # an input declared [100000000, 8]: 3.2 GB of float32 before anything runs
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 100_000_000
    onnx.save(model, str(paths["big_model"]))
    model = mlp((8, 4, 2))  # an output declared [10^6, 10^6]
    for d in model.graph.output[0].type.tensor_type.shape.dim:
        d.dim_value = 1_000_000
    onnx.save(model, str(paths["declared"]))
    np.savez(paths["str"], input=np.array([["a"] * 8]))
    np.savez(paths["complex"], input=(np.ones((1, 8)) + 1j).astype(np.complex64))
    np.savez(paths["obj"], input=np.array([[None] * 8], dtype=object))  # a pickled object array
    np.savez(paths["records"], input=np.zeros((1, 8), dtype=[("a", "f4")]))
    np.save(paths["npy"], np.ones((1, 8), np.float32))
    os.replace(str(paths["npy"]) + ".npy", paths["npy"])
    with zipfile.ZipFile(paths["huge_npz"], "w") as z:  # a header declaring 4 TB, and no data
        header = {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000, 100)}
        with z.open("input.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
    paths["not_zip"].write_bytes(b"not a zip archive")
    paths["bin"].write_bytes(bytes(range(256)) * 4)
    paths["nul"].write_bytes(b"\0" * 100)
    paths["asm"].write_text("")
    paths["not_json"].write_text("{nope")
    paths["list_json"].write_text("[1, 2]")
    chip = json.loads(main_chip_json())
    paths["neg_chip"].write_text(json.dumps({**chip, "lanes": -320}))
    paths["str_chip"].write_text(json.dumps({**chip, "mem_words": "many"}))
    paths["sys_zero"].write_text(json.dumps({"chips": 0}))
    paths["llm_neg"].write_text(json.dumps({"model_type": "llama", "hidden_size": -1, "num_hidden_layers": 2,
                                            "num_attention_heads": 2, "intermediate_size": 8, "vocab_size": 10}))
    with open(paths["sparse"], "wb") as f:  # 3 GiB of nothing: refused by its size, never read
        f.truncate(3 << 30)
    paths["dir"].mkdir()
    os.mkfifo(paths["fifo"])
    return {k: str(v) for k, v in paths.items()}


def main_chip_json() -> str:
    from lpusim.chip import Chip
    return Chip.load().to_json()


CASES = [
    # special files, as every kind of file input
    (["run", "{dir}"], "adir: a directory, not a regular file (an ONNX model is a file)"),
    (["run", "{fifo}"], "fifo: not a regular file (an ONNX model is a file; a device or pipe is not read)"),
    (["run", "{sparse}"], "sparse.onnx: 3,221,225,472 bytes; an ONNX model of more than 2,147,483,648 bytes is not read"),
    (["compile", "{dir}"], "adir: a directory, not a regular file"),
    (["segments", "{fifo}"], "fifo: not a regular file (an ONNX model is a file"),
    (["generate", "{fifo}", "--prompt-ids", "1,2"], "fifo: not a regular file (an ONNX model is a file"),
    (["run", "{ok}", "--inputs", "{fifo}"], "fifo: not a regular file (an .npz file of inputs is a file"),
    (["run", "{ok}", "--inputs", "{dir}"], "adir: a directory, not a regular file (an .npz file of inputs"),
    (["segments", "{ok}", "--inputs", "{dir}"], "adir: a directory, not a regular file (an .npz file of inputs"),
    (["run", "{ok}", "--chip", "{fifo}"], "fifo: not a regular file (a chip configuration is a file"),
    (["chip", "--config", "{dir}"], "adir: a directory, not a regular file (a chip configuration is a file)"),
    (["demo", "--chip", "{fifo}"], "fifo: not a regular file (a chip configuration is a file"),
    (["asm", "{asm}", "--config", "{fifo}"], "fifo: not a regular file (a chip configuration is a file"),
    (["run", "{ok}", "--chips", "2", "--system", "{fifo}"], "fifo: not a regular file (a system configuration"),
    (["llm", "{fifo}"], "fifo: not a regular file (a config.json is a file"),
    (["llm", "llama-2-7b", "--chip", "{dir}"], "adir: a directory, not a regular file (a chip configuration"),
    (["asm", "{dir}"], "adir: a directory, not a regular file (assembly text is a file)"),
    (["asm", "{fifo}"], "fifo: not a regular file (assembly text is a file"),
    # opsets
    (["run", "{op99}"], "is stamped with opset 99; the installed onnx 1."),
    (["segments", "{ml99}"], "is stamped with opset 99 of ai.onnx.ml; the installed onnx"),
    # .npz arrays of the wrong kind
    (["run", "{ok}", "--inputs", "{str}"], "array 'input' is <U1 (1, 8); inputs must be real numbers or booleans"),
    (["run", "{ok}", "--inputs", "{complex}"], "array 'input' is complex64 (1, 8)"),
    (["run", "{ok}", "--inputs", "{obj}"], "array 'input' is object (1, 8); inputs must be real numbers"),
    (["run", "{ok}", "--inputs", "{records}"], "array 'input' is [('a', '<f4')] (1, 8)"),
    (["run", "{ok}", "--inputs", "{npy}"], "a single .npy array, not an .npz archive"),
    (["run", "{ok}", "--inputs", "{not_zip}"], "notzip.npz: not an .npz archive"),
    (["run", "{ok}", "--inputs", "{huge_npz}"], "array 'input' is float32 (100000, 100000, 100): 4,000,000,000,000 "
                                                "bytes, more than the 2,147,483,648 one input may take"),
    (["generate", "{ok}", "--inputs", "{complex}"], "array 'input' is complex64"),
    # --shape
    (["run", "{ok}", "--shape", "input=-1,8"], "input 'input': shape [-1, 8] has a negative dimension"),
    (["compile", "{dyn}", "--shape", "input=-3,8"], "input 'input': shape [-3, 8] has a negative dimension"),
    (["run", "{dyn}", "--shape", "input=99999999999,8"],
     "shape [99999999999, 8] needs 3,199,999,999,968 bytes at 4 bytes an element; one tensor may take at most "
     "2,147,483,648"),
    (["segments", "{dyn}", "--shape", "input=99999999999,8"], "needs 3,199,999,999,968 bytes"),
    (["run", "{dyn}", "--shape", "input=1," + "9" * 40], "a dimension of more than 30 digits"),
    (["run", "{dyn}", "--shape", "input=1,,8"], "dimension '(empty)' is not an integer"),
    (["run", "{dyn}", "--shape", "input=1.5,8"], "dimension '1.5' is not an integer"),
    (["run", "{dyn}", "--shape", "input=1_0,8"], "dimension '1_0' is not an integer"),
    (["run", "{dyn}", "--shape", "input=\u0661,8"], "is not an integer"),
    (["run", "{dyn}", "--shape", "input=1,8", "--shape", "input=2,8"], "input 'input' is given twice"),
    (["run", "{dyn}", "--shape", "=1,8"], "--shape =1,8: expected NAME=D0,D1,..."),
    (["run", "{ok}", "--shape", "input=2,8"], "input 'input': the shape given [2, 8] contradicts the model's [1, 8]"),
    (["run", "{ok}", "--inputs", "{rows3}"], "the shape given [3, 8] contradicts the model's [1, 8]"),
    # declared shapes that need more than the bound
    (["run", "{big_model}"], "input 'input': shape [100000000, 8] needs 3,200,000,000 bytes"),
    (["compile", "{declared}"], "(declared): shape [1000000, 1000000] needs 4,000,000,000,000 bytes at 4 bytes an "
                                "element; one tensor may take at most 2,147,483,648"),
    # chip counts
    (["run", "{ok}", "--chips", "0"], "--chips 0: at least one chip is needed"),
    (["run", "{ok}", "--chips", "-3"], "--chips -3: at least one chip is needed"),
    (["run", "{ok}", "--chips", "1e3"], "--chips 1e3: expected a number of chips or 'auto'"),
    (["run", "{ok}", "--chips", "20000"], "chips=20,000: the published topology reaches at most 145 racks"),
    (["generate", "{ok}", "--prompt-ids", "1", "--chips", "0"], "--chips 0: at least one chip is needed"),
    (["llm", "llama-2-7b", "--chips", "0"], "--chips 0: at least one chip is needed"),
    # configurations
    (["chip", "--config", "{not_json}"], "bad.json: chip configuration field 'json': not valid JSON"),
    (["chip", "--config", "{list_json}"], "list.json: chip configuration field 'json': a chip configuration is a JSON"),
    (["chip", "--config", "{neg_chip}"], "neg_chip.json: chip configuration field 'lanes': bad value -320"),
    (["asm", "{asm}", "--config", "{str_chip}"], "str_chip.json: chip configuration field 'mem_words': bad value"),
    (["run", "{ok}", "--chips", "2", "--system", "{not_json}"], "bad.json: not valid JSON"),
    (["run", "{ok}", "--chips", "2", "--system", "{list_json}"], "list.json: a JSON object is needed"),
    (["run", "{ok}", "--chips", "2", "--system", "{sys_zero}"],
     "sys_zero.json: system configuration field 'system.chips': a node holds 1..8 chips, not 0"),
    (["llm", "{not_json}"], "bad.json: a config.json is not valid JSON"),
    (["llm", "{llm_neg}"], "llm_neg.json: the configuration's hidden is -1; at least 1"),
    (["llm", "llama-2-7b", "--context", "99999999999999"], "--context 99,999,999,999,999: at most 1,048,576"),
    # assembly
    (["asm", "{bin}"], "not assembly text (byte 128 is not UTF-8; a binary file?)"),
    (["asm", "{nul}"], "not assembly text (control character 0x00 at byte 0; a binary file?)"),
    # argparse's own errors and seeds: one line too
    (["run"], "lpusim run: the following arguments are required: model"),
    (["run", "{ok}", "--precision", "int9"], "argument --precision: invalid choice: 'int9'"),
    (["run", "{ok}", "--seed", "-1"], "argument --seed: '-1': expected a whole number 0 .. 2^64 - 1"),
    (["demo", "--seed", "x"], "argument --seed: 'x'"),
    (["generate", "{ok}", "--prompt-ids", "9" * 30], "expected token ids like 1,2,3"),
    # outputs that cannot be written: refused before the work, nothing half-written
    (["compile", "{ok}", "-o", "{dir}"], "adir: a directory; cannot write the assembly there"),
    (["run", "{ok}", "--trace", "{dir}/none/t.json"], "cannot write the trace: no directory"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[:1] + a[2:])[:50] for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(files, capsys, argv, message):
    status, _ = cli([a.format(**files) for a in argv])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert message in err and len(err.splitlines()) == 1, err
    assert err.startswith("lpusim: error: ") and "Traceback" not in err


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
@pytest.mark.parametrize("argv", [["run", "/dev/zero"], ["asm", "/dev/zero"], ["run", "{ok}", "--inputs", "/dev/zero"],
                                  ["chip", "--config", "/dev/zero"], ["llm", "/dev/zero"],
                                  ["run", "{ok}", "--chips", "2", "--system", "/dev/zero"]])
def test_a_device_file_is_refused_not_read(files, capsys, argv):
    assert cli([a.format(**files) for a in argv])[0] == 2
    assert "/dev/zero: not a regular file" in capsys.readouterr().err


def _bounded():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 2 GiB: reading /dev/zero whole would pass it


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_run_dev_zero_as_a_process_is_one_line_in_bounded_memory_and_time():
    """The issue's `lpusim run /dev/zero`, as a user runs it: a separate process under a 2 GiB address-space limit
    and a timeout (before the fix it read until the machine ran out of memory)."""
    # the lpusim this test imported (an installed wheel in CI, the source tree with its built extension here)
    import lpusim
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(lpusim.__file__))))
    done = subprocess.run([sys.executable, "-m", "lpusim.cli", "run", "/dev/zero"], capture_output=True, text=True,
                          timeout=120, preexec_fn=_bounded, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == ["lpusim: error: /dev/zero: not a regular file (an ONNX model is a file; a "
                                        "device or pipe is not read)"]


def test_opsets_onnxruntime_does_not_know_are_refused_before_compiling(files, capsys, monkeypatch):
    """A model stamped with an opset the installed onnx knows but onnxruntime (the reference) does not: refused at
    load, naming both numbers (here onnx is made to claim opset 99)."""
    monkeypatch.setattr(onnx.defs, "onnx_opset_version", lambda: 99)
    monkeypatch.setattr(onnx.checker, "check_model", lambda model: None)
    assert cli(["run", files["op99"]])[0] == 2
    err = capsys.readouterr().err.strip()
    assert "the model is stamped with opset 99 of ai.onnx; the installed onnxruntime" in err, err
    assert "supports opsets up to" in err and len(err.splitlines()) == 1


def test_a_failed_write_leaves_no_partial_file(files, tmp_path, capsys):
    """compile -o writes whole or not at all: an existing file survives a failed write, no .partial stays."""
    from lpusim.files import write_text
    from lpusim.errors import LpusimError
    target = tmp_path / "out.asm"
    target.write_text("before")
    with pytest.raises(LpusimError, match="cannot write"):
        write_text(tmp_path / "missing" / "out.asm", "x")
    assert main(["compile", files["ok"], "-o", str(target)]) == 0
    assert target.read_text().startswith("#") or target.read_text() != "before"
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_inputs_fix_the_dynamic_dimensions(files, capsys):
    """--inputs fixes a dynamic dimension from the array (no --shape needed): [3, 8] for [batch, 8]."""
    assert main(["run", files["dyn"], "--inputs", files["rows3"], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs_match"] is True


def test_segments_uses_the_shape_given(files, capsys):
    """`segments --shape` fixes the dynamic dimension (it was ignored: 'dimension batch is not fixed')."""
    assert main(["segments", files["dyn"], "--shape", "input=2,8", "--json"]) == 0


def test_python_api_refuses_the_same(files):
    """The Python entry points that take files raise one-line LpusimErrors of the same classes."""
    import lpusim
    from lpusim.chip import Chip
    from lpusim.errors import CompileError, ConfigError, LpusimError, ModelError
    from lpusim.files import load_npz
    from lpusim.llm.configs import model_size
    from lpusim.runtime.assembly import run_assembly_file
    from lpusim.system import System
    cases = [(lambda: lpusim.compile(files["fifo"]), ModelError, "not a regular file"),
             (lambda: lpusim.compile(files["dyn"], shapes={"input": (-1, 8)}), CompileError, "negative dimension"),
             (lambda: lpusim.compile(files["dyn"], shapes={"input": (1.5, 8)}), CompileError, "not an integer"),
             (lambda: lpusim.compile(files["op99"]), ModelError, "stamped with opset 99"),
             (lambda: lpusim.compile(files["ok"], chips=0), CompileError, "at least one chip is needed"),
             (lambda: lpusim.compile(files["ok"], chips=2.5), CompileError, "a whole number of chips"),
             (lambda: lpusim.check_segments(files["dir"]), ModelError, "a directory"),
             (lambda: __import__("lpusim.backend").backend.prepare(files["fifo"]), ModelError, "not a regular file"),
             (lambda: Chip.load(files["fifo"]), ConfigError, "not a regular file"),
             (lambda: System.load(files["dir"]), ConfigError, "a directory"),
             (lambda: model_size(files["fifo"]), ModelError, "not a regular file"),
             (lambda: run_assembly_file(files["bin"]), LpusimError, "not assembly text"),
             (lambda: load_npz(files["obj"]), LpusimError, "array 'input' is object")]
    for call, kind, words in cases:
        with pytest.raises(kind, match=words) as caught:
            call()
        assert len(str(caught.value).splitlines()) == 1
