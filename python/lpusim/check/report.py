"""The run report: compile, simulate, check against onnxruntime, for one chip or several. `lpusim run --json`
prints it; `format_report` is its text form."""
from __future__ import annotations

from typing import Any

import numpy as np

from lpusim.api import compile as compile_model
from lpusim.check.compare import compare, run_onnxruntime
from lpusim.check.explain import explain as explain_program, format_explain
from lpusim.compiler import QUANT_OPS
from lpusim.compiler.frontend.load import load_model
from lpusim.compiler.frontend.quantize import quantize_model
from lpusim.energy import chips_energy, run_energy
from lpusim.errors import LpusimError, SimulationError
from lpusim.multichip.program import MultiProgram
from lpusim.trace import plot_utilization, write_chrome_trace


def run_report(model, *, chips=1, parallel="auto", system=None, inputs=None, seed=0, chip=None, shapes=None,
               timing_only=False, progress=False, trace=None, plot=None, precision="fp16",
               explain=False) -> dict[str, Any]:
    """Compile `model` for `chips` chips, simulate it, compare with onnxruntime: the report dict.

    precision="int8" is checked against onnxruntime running the model onnxruntime's quantiser makes of it
    (compiler/frontend/quantize.py). Several chips add per-chip and per-link detail and the partition.
    `explain`: add where one chip's time goes (check/explain.py)."""
    proto = load_model(model)
    if inputs is not None:  # the arrays given fix the dynamic dimensions (a shape given with --shape wins)
        shapes = {**{name: tuple(np.shape(value)) for name, value in inputs.items()}, **(shapes or {})}
        known = {i.name for i in proto.graph.input}
        shapes = {name: dims for name, dims in shapes.items() if name in known or name not in inputs}
    program = compile_model(proto, chips=chips, chip=chip, shapes=shapes, progress=progress, precision=precision,
                            parallel=parallel, system=system)
    if inputs is None:
        inputs = program.random_inputs(seed)
    quantised = any(n.op_type in QUANT_OPS for n in proto.graph.node)
    if precision == "int8" and not quantised:
        proto = quantize_model(proto, program.random_inputs(0))  # calibrated as the compile was
    if isinstance(program, MultiProgram):
        if trace or plot or explain:
            raise LpusimError("--trace, --plot and --explain show one chip's schedule: use them without --chips")
        report, result = _several_chips(program, inputs, timing_only)
    else:
        report, result = _one_chip(program, inputs, timing_only, trace, plot)
        if explain:
            report["explain"] = explain_program(program)
    ref, ort_wall = run_onnxruntime(proto, inputs)
    report.update(model=model if isinstance(model, str) else "<ModelProto>",
                  precision="int8" if precision == "int8" or quantised else precision)
    report["wall_s"] = {"compile": program.compile_s, "simulate": result.wall_simulate_s, "onnxruntime": ort_wall}
    if not timing_only:
        # outputs_match, max errors, per output, tolerance (a quantised model keeps the fp16 rule at fp32)
        report.update(compare(result.outputs, ref, "fp32" if report["precision"] == "fp32" else "fp16"))
    return report


def _one_chip(program, inputs, timing_only, trace, plot):
    result = program.run(inputs, timing_only=timing_only)
    if trace:
        write_chrome_trace(program, trace)
    if plot:
        plot_utilization(program, plot)
    if result.cycles != result.predicted_cycles:
        raise SimulationError(f"simulated {result.cycles} cycles but the compiler predicted "
                              f"{result.predicted_cycles}: a compiler/simulator timing disagreement")
    report = {
        "model": None, "chip": program.chip.name, "chips": 1, "precision": None,
        "outputs_match": None, "max_abs_error": None, "max_rel_error": None,
        "cycles": result.cycles, "predicted_cycles": result.predicted_cycles, "latency_us": result.latency_us,
        "throughput_per_s": 1e6 / result.latency_us if result.latency_us else None,
        "instructions": result.instructions, "sram_bytes": program.sram_bytes,
        "utilization": result.utilization, "busy": result.busy, "timing_only": timing_only,
        "energy": run_energy(program.chip, result.events, result.cycles, result.configs).to_json(),
        "events": result.events,
    }
    if program.partition is not None:  # chips="auto" chose one chip: say why
        report["partition"] = program.partition
    return report, result


def _several_chips(program: MultiProgram, inputs, timing_only):
    result = program.run(inputs, timing_only=timing_only)
    if result.cycles != result.predicted_cycles or result.chip_cycles != result.predicted_chip_cycles:
        raise SimulationError(f"simulated {result.cycles} cycles (chips {result.chip_cycles}) but the compiler "
                              f"predicted {result.predicted_cycles} ({result.predicted_chip_cycles})")
    kinds = result.utilization[0].keys()
    report = {
        "model": None, "chip": program.chip.name, "chips": program.chips, "parallel": program.parallel,
        "precision": None, "outputs_match": None, "max_abs_error": None, "max_rel_error": None,
        "cycles": result.cycles, "predicted_cycles": result.predicted_cycles,
        "chip_cycles": result.chip_cycles, "predicted_chip_cycles": result.predicted_chip_cycles,
        "latency_us": result.latency_us,
        "throughput_per_s": 1e6 / result.latency_us if result.latency_us else None,
        "instructions": result.instructions, "sram_bytes": program.sram_bytes,
        "utilization": {k: sum(u[k] for u in result.utilization) / len(result.utilization) for k in kinds},
        "utilization_per_chip": result.utilization,
        "sync_cycles": result.sync_cycles, "chip_sync_cycles": result.chip_sync_cycles,
        "links": result.links, "link_summary": result.link_summary,
        "drift_tolerance_ppm": program.drift_tolerance_ppm,
        "partition": program.partition,
        "timing_only": timing_only,
        # one inference alone: every chip powered for the whole latency (docs/energy.md)
        "energy": chips_energy(program.chip, result.events, result.cycles,
                               [c.get("configs", ()) for c in result.system.chips]).to_json(),
        "events_per_chip": result.events,
    }
    return report, result


def _energy_line(e: dict) -> str:
    """Total, average power, and the three largest terms (docs/energy.md: a model, not a measurement)."""
    top = sorted(e["breakdown_j"].items(), key=lambda kv: -kv[1])[:3]
    return (f"energy         {e['energy_j'] * 1e3:.4g} mJ at {e['power_w']:.1f} W average (model: docs/energy.md); "
            + ", ".join(f"{k} {v / e['energy_j']:.0%}" for k, v in top))


def format_report(r: dict) -> str:
    """The report as the text `lpusim run` prints without --json."""
    u = r["utilization"]
    match = {True: "MATCH", False: "MISMATCH", None: "not checked (timing only)"}[r["outputs_match"]]
    lines = [
        f"model          {r['model']}",
        f"chip           {r['chip']} x{r['chips']}, precision {r['precision']}",
        f"cycles         {r['cycles']:,} (compiler predicted {r['predicted_cycles']:,})",
        f"latency        {r['latency_us']:.3f} us  ({r['throughput_per_s']:,.0f} batches/s, one after another)",
        f"instructions   {r['instructions']:,}",
        f"SRAM           {r['sram_bytes'] / 2**20:.2f} MiB",
        "utilization    " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in u.items()),
        _energy_line(r["energy"]),
        f"vs onnxruntime {match}" + ("" if r["max_abs_error"] is None else
                                     f"  (max abs error {r['max_abs_error']:.3g}, "
                                     f"max rel error {r['max_rel_error']:.3g})"),
        "wall time      " + "  ".join(f"{k} {v:.3f}s" for k, v in r["wall_s"].items()),
    ]
    if "explain" in r:
        lines.append(format_explain(r["explain"]))
    if r["outputs_match"] is False and r["precision"] == "int8":
        lines.append("hint           an f32 rounding tie upstream can move a deep int8 model's output by a step "
                     "per layer; `lpusim segments MODEL --precision int8` checks every segment from onnxruntime's "
                     "codes")
    if "link_summary" in r:  # several chips
        ls = r["link_summary"]
        lines[3:3] = [f"per chip       cycles {r['chip_cycles']}, sync stalls {r['chip_sync_cycles']}",
                      f"links          {ls['vectors']:,} vectors, {ls['bytes']:,} bytes over {ls['links_used']} "
                      f"link(s), busiest {100 * ls['max_busy_fraction']:.1f}% busy",
                      f"partition      {r['partition']['reason']}"]
    return "\n".join(lines)
