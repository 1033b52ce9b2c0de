"""Hand-written assembly through the CLI, error messages (golden), and the chip configuration as data."""
import json
import os
import subprocess
import sys

import pytest

import lpusim
from lpusim.chip import Chip
from lpusim.models import mlp

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "bias_relu.asm")


def cli(*args):
    p = subprocess.run([sys.executable, "-m", "lpusim.cli", *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def test_asm_example_values_and_cycles():
    code, out, err = cli("asm", EXAMPLE, "--json")
    assert code == 0, err
    report = json.loads(out)
    # last WRITE issues at 23 and commits at 24; + 1 + (20 - 1) superlanes of stagger
    assert report["cycles"] == 44
    rows = report["dumps"][0]["values"]
    assert rows[0][:5] == [1.5, 0.0, 4.0, 0.25, 0.0]
    assert rows[1][:5] == [0.0, 2.5, 0.0, 0.75, 0.0]


def test_asm_timing_only_same_cycles():
    code, out, err = cli("asm", EXAMPLE, "--json", "--timing-only")
    assert code == 0, err
    assert json.loads(out)["cycles"] == 44


@pytest.mark.parametrize("edit, expected", [
    (("READ 0, E0", "READ 9000, E0"),
     "cycle 8: MEM.W0 #1 'READ 9000, E0': AddressOutOfRange"),
    (("    NOP 10\n    ADD.f32", "    NOP 9\n    ADD.f32"),
     "cycle 9: VXM.0 #1 'ADD.f32 -, E0, W0': StreamEmpty"),
    (("    NOP 19\n    WRITE 8, W4", "    NOP 18\n    WRITE 8, W4"),
     "cycle 18: MEM.W4 #1 'WRITE 8, W4': StreamEmpty"),
])
def test_asm_errors_are_one_line_with_cycle_queue_instruction(tmp_path, edit, expected):
    text = open(EXAMPLE).read()
    assert edit[0] in text
    path = tmp_path / "broken.asm"
    path.write_text(text.replace(edit[0], edit[1], 1))
    code, out, err = cli("asm", str(path))
    assert code == 2
    assert "Traceback" not in err and "panicked" not in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"lpusim: error: {path}: {expected}"), err


def test_asm_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.asm"
    path.write_text(".queue MEM.W0\n    READ 0, E0\n    FROB 1, 2\n")
    code, out, err = cli("asm", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "line 3" in err and "FROB" in err, err


def test_chip_config_file_drives_the_timing(tmp_path):
    """Every latency is a field of the configuration: a slower MEM read changes the schedule and the cycles."""
    cfg = json.loads(Chip.load().to_json())
    cfg["name"] = "slow_mem"
    cfg["mem_read_latency"] = 3
    path = tmp_path / "slow_mem.json"
    path.write_text(json.dumps(cfg))
    model = mlp((100, 50, 10), seed=2)
    fast = lpusim.compile(model)
    slow = lpusim.compile(model, chip=str(path))
    assert slow.chip.name == "slow_mem"
    result = slow.run(seed=0)
    assert result.cycles == slow.predicted_cycles
    assert slow.predicted_cycles > fast.predicted_cycles


def test_bad_chip_config_names_the_field(tmp_path):
    cfg = json.loads(Chip.load().to_json())
    cfg["mem_read_latncy"] = 2
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(cfg))
    code, out, err = cli("chip", "--config", str(path))
    assert code == 2 and "mem_read_latncy" in err and str(path) in err, err


def test_assembly_round_trip_of_a_compiled_program():
    program = lpusim.compile(mlp((64, 32), seed=0))
    canonical = lpusim.disassemble(lpusim.assemble(program.assembly))
    assert lpusim.disassemble(lpusim.assemble(canonical)) == canonical
