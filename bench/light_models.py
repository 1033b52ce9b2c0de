"""Compile, simulate and check onnx's light_* models (full-size architectures, constant weights) against onnxruntime.

    python bench/light_models.py [name ...] [--chips N|auto] [--json out.json]

Prints one line per model: matched, max errors, cycles, latency, images/s, SRAM, compile time, and the
simulate-time / onnxruntime-time ratio measured in the same process. `--chips auto` (or N) compiles for several
chips (lpusim/multichip/: the fewest chips whose SRAM holds the model) and adds per-chip cycles, SRAM and the
partition; a model that fits one chip is then compiled for one.
"""
import json
import os
import sys
import time

import onnx

import lpusim
from lpusim.check.compare import compare, run_onnxruntime

NAMES = ["resnet50", "vgg19", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet",
         "bvlc_alexnet", "zfnet512"]


def light_path(name: str) -> str:
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")


def measure(name: str, precision: str = "fp16", chips=1) -> dict:
    """precision="int8": compiled through onnxruntime's quantiser and compared with onnxruntime running the same
    quantised model (compiler/frontend/quantize.py)."""
    return measure_model(onnx.load(light_path(name)), name, precision, chips=chips)


def _energy(program, result) -> dict:
    """The run's energy (docs/energy.md): one chip, or every chip of a pipeline powered for the whole latency."""
    from lpusim.energy import chips_energy, run_energy

    if isinstance(result.events, dict):
        return run_energy(program.chip, result.events, result.cycles, result.configs).to_json()
    return chips_energy(program.chip, result.events, result.cycles).to_json()


def measure_model(model, name: str, precision: str = "fp16", progress: bool = False, chips=1) -> dict:
    """Compile, simulate (functional and timing-only) and compare one model; times from this process."""
    from lpusim.multichip.program import MultiProgram

    row = {"model": name, "precision": precision}
    t = time.perf_counter()
    try:
        program = lpusim.compile(model, chips=chips, precision=precision, progress=progress)
    except lpusim.LpusimError as e:
        row.update(status="compile error", error=str(e))
        return row
    row["compile_s"] = time.perf_counter() - t
    x = program.random_inputs(0)
    if hasattr(program, "load"):  # one chip: load before timing runs, as onnxruntime's session is made first
        t = time.perf_counter()
        program.load()
        row["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    result = program.run(x)
    row["simulate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    timing = program.run(x, timing_only=True)
    row["timing_only_s"] = time.perf_counter() - t
    if precision == "int8":
        from lpusim.compiler.frontend.quantize import quantize_model
        model = quantize_model(model, x)  # x = random_inputs(0): the compile's default calibration inputs
    ref, ort_s = run_onnxruntime(model, x)
    cmp = compare(result.outputs, ref)
    row.update(status="matched" if cmp["outputs_match"] else "MISMATCH", max_abs_error=cmp["max_abs_error"],
               max_rel_error=cmp["max_rel_error"], cycles=result.cycles, predicted=program.predicted_cycles,
               timing_only_cycles=timing.cycles, latency_us=result.latency_us,
               images_per_s=1e6 / result.latency_us, sram_mib=program.sram_bytes / 2**20, ort_s=ort_s,
               sim_over_ort=row["simulate_s"] / ort_s, timing_over_ort=row["timing_only_s"] / ort_s,
               instructions=program.instructions, utilization=result.utilization,
               energy=_energy(program, result))
    if isinstance(program, MultiProgram):
        part = program.partition
        row.update(chips=program.chips, chip_cycles=result.chip_cycles,
                   predicted_chip_cycles=result.predicted_chip_cycles,
                   sram_mib_per_chip=[p.sram_bytes / 2**20 for p in program.stages],
                   stages=[[s["nodes"], s["first"], s["last"]] for s in part["stages"]],
                   column_splits=part.get("column_splits", []), link_vectors=result.link_summary["vectors"],
                   sync_cycles=result.sync_cycles, reason=part["reason"])
    return row


def option(argv: list, flag: str, default):
    """(argv without `flag VALUE`, VALUE or `default`): the benchmark scripts' one option form."""
    if flag not in argv:
        return argv, default
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:], argv[i + 1]


def main(argv):
    argv, out = option(argv, "--json", None)
    argv, chips = option(argv, "--chips", "1")
    chips = chips if chips == "auto" else int(chips)
    rows = []
    for name in argv or NAMES:
        row = measure(name, chips=chips)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
