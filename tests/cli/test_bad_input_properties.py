"""Random bad input never gives a traceback (issue 16): random --shape strings, random bytes as model, assembly and
.npz files, .npz arrays of random kinds, chip and system configurations with random field values. Every run exits
0, 1 (outputs differ from onnxruntime: only where the inputs are well-formed) or 2, with exactly one line on stderr
when 2 and never a traceback.

The default run draws a few examples per property (quick); `pytest -m slow` runs the `_many` versions with more.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile

import numpy as np
import onnx
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from lpusim.chip import Chip  # noqa: E402
from lpusim.cli import main  # noqa: E402
from lpusim.models import mlp  # noqa: E402

QUICK = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
MANY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

_DIR = tempfile.mkdtemp(prefix="lpusim-props-")
OK, DYN = os.path.join(_DIR, "ok.onnx"), os.path.join(_DIR, "dyn.onnx")
onnx.save(mlp((8, 4, 2)), OK)
_dyn = mlp((8, 4, 2))
_batch = _dyn.graph.input[0].type.tensor_type.shape.dim[0]
_batch.Clear()
_batch.dim_param = "batch"
onnx.save(_dyn, DYN)
CHIP = json.loads(Chip.load().to_json())


def run_cli(argv, allowed=(0, 2)) -> int:
    """`lpusim ARGV` in-process; asserts the contract: an allowed status, one stderr line when 2, no traceback."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as e:  # argparse's own errors
            status = e.code
    text = err.getvalue()
    assert status in allowed, (argv, status, text)
    assert "Traceback" not in text and "panicked" not in text, (argv, text)
    if status == 2:
        assert len(text.strip().splitlines()) == 1 and text.startswith("lpusim: error: "), (argv, text)
    return status


def _file(name: str, data: bytes) -> str:
    path = os.path.join(_DIR, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# ---- --shape ------------------------------------------------------------------------------------------------------
dims = st.one_of(st.integers(-10**12, 10**12), st.integers(-3, 20), st.sampled_from([0, 1, 8, 2**31, 2**63, 10**40]))
shape_strings = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(dims.map(str), st.text(max_size=4)), max_size=5).map(lambda xs: "input=" + ",".join(xs)),
    st.lists(dims, min_size=1, max_size=4).map(lambda xs: "input=" + ",".join(map(str, xs))),
)


def _shape(text):
    if text.startswith("-"):  # argparse would read it as an option: give it attached
        return ["compile", DYN, f"--shape={text}"]
    return ["compile", DYN, "--shape", text]


@QUICK
@given(shape_strings)
def test_random_shapes(text):
    run_cli(_shape(text))


@pytest.mark.slow
@MANY
@given(shape_strings)
def test_random_shapes_many(text):
    run_cli(_shape(text))


# ---- random bytes as files ---------------------------------------------------------------------------------------
blobs = st.one_of(st.binary(max_size=2000), st.text(max_size=500).map(str.encode),
                  st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b), st.binary(max_size=200).map(
                      lambda b: b"\x93NUMPY" + b))


@QUICK
@given(blobs)
def test_random_bytes_as_a_model(data):
    run_cli(["compile", _file("random.onnx", data)])


@QUICK
@given(blobs)
def test_random_bytes_as_assembly(data):
    run_cli(["asm", _file("random.asm", data)])


@QUICK
@given(blobs)
def test_random_bytes_as_inputs(data):
    run_cli(["run", OK, "--inputs", _file("random.npz", data), "--timing-only"])


@pytest.mark.slow
@MANY
@given(blobs, st.sampled_from(["model", "asm", "npz"]))
def test_random_bytes_many(data, kind):
    path = _file(f"random.{kind}", data)
    argv = {"model": ["compile", path], "asm": ["asm", path], "npz": ["run", OK, "--inputs", path, "--timing-only"]}
    run_cli(argv[kind])


# ---- .npz arrays of random kinds ---------------------------------------------------------------------------------
kinds = st.sampled_from(["float32", "float16", "float64", "int64", "uint8", "bool", "complex64", "complex128",
                         "<U3", "S2", "datetime64[s]", "timedelta64[s]", "object", "V4"])
shapes = st.lists(st.integers(0, 9), max_size=3).map(tuple)


@QUICK
@given(kinds, shapes, st.sampled_from(["input", "other"]))
def test_npz_of_random_kinds(kind, shape, name):
    array = np.zeros(shape, dtype=kind)
    path = os.path.join(_DIR, "kinds.npz")
    np.savez(path, **{name: array})
    # a well-formed float array of the model's shape runs: its outputs may then differ (1), nothing else may
    run_cli(["run", DYN, "--inputs", path, "--timing-only"], allowed=(0, 1, 2))


# ---- configurations with random field values -----------------------------------------------------------------------
values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 3000),
                   st.floats(allow_nan=False), st.text(max_size=5), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@QUICK
@given(st.dictionaries(st.sampled_from(sorted(CHIP)), values, min_size=1, max_size=3))
def test_chip_config_with_random_fields(changes):
    path = _file("chip.json", json.dumps({**CHIP, **changes}).encode())
    run_cli(["chip", "--config", path])


SYSTEM_FIELDS = ["chips", "chip", "topology", "nodes", "links", "seed", "local_latency_cycles", "global_latency_cycles",
                 "latency_spread_cycles", "vector_bytes", "flit_bytes", "link_gbps", "drift_ppm", "chip_drift_ppm",
                 "hac_adjust_per_epoch", "root_chip", "bogus"]


@QUICK
@given(st.dictionaries(st.sampled_from(SYSTEM_FIELDS), values, min_size=1, max_size=3))
def test_system_config_with_random_fields(fields):
    path = _file("system.json", json.dumps(fields).encode())
    run_cli(["run", OK, "--chips", "2", "--system", path, "--timing-only"], allowed=(0, 1, 2))


@pytest.mark.slow
@MANY
@given(st.dictionaries(st.sampled_from(sorted(CHIP)), values, min_size=1, max_size=4))
def test_chip_config_with_random_fields_many(changes):
    path = _file("chip.json", json.dumps({**CHIP, **changes}).encode())
    run_cli(["chip", "--config", path])


@pytest.mark.slow
@MANY
@given(kinds, shapes, st.sampled_from(["input", "other"]))
def test_npz_of_random_kinds_many(kind, shape, name):
    path = os.path.join(_DIR, "kinds.npz")
    np.savez(path, **{name: np.zeros(shape, dtype=kind)})
    run_cli(["run", DYN, "--inputs", path, "--timing-only"], allowed=(0, 1, 2))


@pytest.mark.slow
@MANY
@given(st.dictionaries(st.sampled_from(SYSTEM_FIELDS), values, min_size=1, max_size=4))
def test_system_config_with_random_fields_many(fields):
    path = _file("system.json", json.dumps(fields).encode())
    run_cli(["run", OK, "--chips", "2", "--system", path, "--timing-only"], allowed=(0, 1, 2))
