"""The `lpusim` command: demo, run, segments, compile, chip, asm.

Exit status: 0 success (outputs match), 1 outputs do not match onnxruntime, 2 user error (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from lpusim.errors import LpusimError

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


def _fail(message: str) -> int:
    print(f"lpusim: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _parse_shapes(items) -> dict:
    shapes = {}
    for item in items or []:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(",") if d)
        except ValueError:
            raise LpusimError(f"--shape {item}: expected NAME=D0,D1,... with integer dimensions") from None
        if not name or not shapes[name]:
            raise LpusimError(f"--shape {item}: expected NAME=D0,D1,...")
    return shapes


def _int_arg(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LpusimError(f"{flag} {value}: expected a number of chips or 'auto'") from None


def _load_inputs(path: str | None) -> dict | None:
    if path is None:
        return None
    if not os.path.exists(path):
        raise LpusimError(f"{path}: no such inputs file")
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except Exception as e:
        raise LpusimError(f"{path}: not a readable .npz file: {e}") from None


def run_and_check(model, *, inputs=None, seed=0, chip=None, shapes=None, timing_only=False, progress=False,
                  trace=None, plot=None, precision="fp16"):
    """Compile, simulate and cross-check; the report dict that `lpusim run --json` prints. precision="int8" is
    checked against onnxruntime running the model onnxruntime's quantiser makes of it (compiler/quantize.py)."""
    import lpusim
    from lpusim.check.compare import compare, run_onnxruntime
    from lpusim.compiler.frontend.load import load_model

    proto = load_model(model)
    program = lpusim.compile(proto, chip=chip, shapes=shapes, progress=progress, precision=precision)
    if inputs is None:
        inputs = program.random_inputs(seed)
    from lpusim.compiler.lower_quant import QUANT_OPS
    quantised = any(n.op_type in QUANT_OPS for n in proto.graph.node)
    if precision == "int8" and not quantised:
        from lpusim.compiler.frontend.quantize import quantize_model
        proto = quantize_model(proto, program.random_inputs(0))  # calibrated as the compile was
    result = program.run(inputs, timing_only=timing_only)
    if trace:
        from lpusim.trace import write_chrome_trace
        write_chrome_trace(program, trace)
    if plot:
        from lpusim.trace import plot_utilization
        plot_utilization(program, plot)
    if result.cycles != result.predicted_cycles:
        raise lpusim.SimulationError(f"simulated {result.cycles} cycles but the compiler predicted "
                                     f"{result.predicted_cycles}: a compiler/simulator timing disagreement")
    ref, ort_wall = run_onnxruntime(proto, inputs)
    report = {
        "model": model if isinstance(model, str) else "<ModelProto>",
        "chip": program.chip.name,
        "chips": 1,
        "precision": "int8" if precision == "int8" or quantised else precision,
        "outputs_match": None, "max_abs_error": None, "max_rel_error": None,
        "cycles": result.cycles,
        "predicted_cycles": result.predicted_cycles,
        "latency_us": result.latency_us,
        "throughput_per_s": 1e6 / result.latency_us if result.latency_us else None,
        "instructions": result.instructions,
        "sram_bytes": program.sram_bytes,
        "utilization": result.utilization,
        "busy": result.busy,
        "timing_only": timing_only,
        "wall_s": {"compile": program.compile_s, "simulate": result.wall_simulate_s, "onnxruntime": ort_wall},
    }
    if not timing_only:
        report.update(compare(result.outputs, ref))  # outputs_match, max errors, per output, tolerance
    return report


def _print_report(r: dict) -> None:
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
        f"vs onnxruntime {match}" + ("" if r["max_abs_error"] is None else
                                     f"  (max abs error {r['max_abs_error']:.3g}, "
                                     f"max rel error {r['max_rel_error']:.3g})"),
        "wall time      " + "  ".join(f"{k} {v:.3f}s" for k, v in r["wall_s"].items()),
    ]
    if r["outputs_match"] is False and r["precision"] == "int8":
        lines.append("hint           an f32 rounding tie upstream can move a deep int8 model's output by a step "
                     "per layer; `lpusim segments MODEL --precision int8` checks every segment from onnxruntime's "
                     "codes")
    if "link_summary" in r:  # several chips (multichip.run_report)
        ls = r["link_summary"]
        lines[3:3] = [f"per chip       cycles {r['chip_cycles']}, sync stalls {r['chip_sync_cycles']}",
                      f"links          {ls['vectors']:,} vectors, {ls['bytes']:,} bytes over {ls['links_used']} "
                      f"link(s), busiest {100 * ls['max_busy_fraction']:.1f}% busy",
                      f"partition      {r['partition']['reason']}"]
    print("\n".join(lines))


def cmd_run(args) -> int:
    if (args.chips != "1" or args.system) and args.precision != "fp16":
        raise LpusimError("--precision int8 runs on one chip only (not with --chips or --system yet)")
    if args.chips != "1" or args.system:  # several chips: lpusim/multichip.py
        from lpusim.multichip.pipeline import run_report
        chips = args.chips if args.chips == "auto" else _int_arg("--chips", args.chips)
        report = run_report(args.model, chips=chips, parallel=args.parallel, system=args.system,
                            inputs=_load_inputs(args.inputs), seed=args.seed, chip=args.chip,
                            shapes=_parse_shapes(args.shape), timing_only=args.timing_only)
    else:
        report = run_and_check(args.model, inputs=_load_inputs(args.inputs), seed=args.seed, chip=args.chip,
                               shapes=_parse_shapes(args.shape), timing_only=args.timing_only,
                               progress=not args.json and sys.stderr.isatty(), trace=args.trace, plot=args.plot,
                               precision=args.precision)
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return EXIT_OK if report["outputs_match"] in (True, None) else EXIT_MISMATCH


def cmd_demo(args) -> int:
    from lpusim.models import mlp

    model = mlp((784, 300, 10), batch=1, seed=args.seed)
    print("lpusim demo: a 784-300-10 MLP (ReLU, random weights, batch 1) compiled for one tsp_v1 chip,\n"
          "simulated cycle by cycle and checked against onnxruntime.\n")
    report = run_and_check(model, seed=args.seed, chip=args.chip)
    report["model"] = "built-in MLP 784-300-10"
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return EXIT_OK if report["outputs_match"] else EXIT_MISMATCH


def cmd_compile(args) -> int:
    import lpusim

    def dump(name, text):
        print(f"===== after {name} =====\n{text}")

    program = lpusim.compile(args.model, chip=args.chip, shapes=_parse_shapes(args.shape),
                             dump=dump if args.dump else None, precision=args.precision)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(program.assembly)
    summary = {"predicted_cycles": program.predicted_cycles, "latency_us": program.latency_us,
               "instructions": program.instructions, "sram_bytes": program.sram_bytes,
               "compile_s": program.compile_s, "assembly": args.output}
    print(json.dumps(summary) if args.json else "\n".join(f"{k:17} {v}" for k, v in summary.items()))
    return EXIT_OK


def cmd_chip(args) -> int:
    from lpusim.chip import Chip

    chip = Chip.load(args.config)
    if args.json:
        print(chip.to_json())
    else:
        c = chip.config
        print(f"{c['name']}: {c['lanes']} lanes in {c['superlanes']} superlanes, {c['mem_slices']} MEM slices "
              f"({c['sram_bytes'] / 2**20:.0f} MiB), {c['mxm_planes']} MXM planes of {c['mxm_dim']}x{c['mxm_dim']}, "
              f"{c['streams_per_direction']}+{c['streams_per_direction']} streams, {c['instruction_queues']} "
              f"queues, {c['clock_hz'] / 1e6:.0f} MHz")
    return EXIT_OK


def cmd_asm(args) -> int:
    from lpusim import _lpusim
    from lpusim.chip import Chip

    if not os.path.exists(args.file):
        raise LpusimError(f"{args.file}: no such file")
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    chip = Chip.load(args.config)
    start = time.perf_counter()
    try:
        stats, _ = _lpusim.simulate(chip.to_json(), text, [], [], args.timing_only)
    except LpusimError as e:
        raise type(e)(f"{args.file}: {e}") from None
    stats["wall_s"] = time.perf_counter() - start
    if args.json:
        print(json.dumps(stats))
    else:
        print(f"cycles {stats['cycles']}  instructions {stats['instructions']}")
        for d in stats.get("dumps", []):
            print(f"{d['slice']} @{d['addr']} as {d['dtype']}:")
            for row in d["values"]:
                print("  " + " ".join(str(v) for v in row[:16]) + (" ..." if len(row) > 16 else ""))
    return EXIT_OK


def cmd_segments(args) -> int:
    from lpusim.check.segments import check_segments, summarize

    def show(r):
        if not args.json:
            what = f"{r.codes_off} of {r.codes} codes off (max {r.max_code_diff})" if r.codes else \
                f"max rel error {r.max_rel_error:.2e}"
            print(f"segment {r.index:3d}  {'MATCH' if r.match else 'MISMATCH'}  {r.cycles:>10,} cycles  {what}  "
                  f"-> {', '.join(r.outputs)[:60]}" + (f"  ({r.reason})" if r.reason else ""), flush=True)

    results = check_segments(args.model, _load_inputs(args.inputs), args.precision, args.cut or None, args.chip,
                             args.seed, _parse_shapes(args.shape), progress=args.json and sys.stderr.isatty(),
                             on_segment=show)
    summary = summarize(results)
    if args.json:
        print(json.dumps({"model": args.model, "precision": args.precision, **summary,
                          "per_segment": [r.as_dict() for r in results]}))
    else:
        print(f"{summary['matched']} of {summary['segments']} segments match onnxruntime; "
              f"{summary['codes_off']} of {summary['codes']:,} codes off by at most {summary['max_code_diff']}")
    return EXIT_OK if summary["all_match"] else EXIT_MISMATCH


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lpusim", description="Cycle-level simulator of Groq-style LPUs (TSPs).")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="compile, simulate and check a built-in MLP")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--chip", default=None, help="chip configuration: a name (tsp_v1) or a JSON file")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="compile MODEL.onnx, simulate it and compare with onnxruntime")
    r.add_argument("model")
    r.add_argument("--inputs", help=".npz file of inputs by name (default: seeded random inputs)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--shape", action="append", metavar="NAME=D0,D1,...", help="fix a dynamic input shape")
    r.add_argument("--chip", default=None)
    r.add_argument("--timing-only", action="store_true", help="execute the schedule without computing values")
    r.add_argument("--trace", metavar="FILE.json", help="write a Perfetto/Chrome trace of the schedule")
    r.add_argument("--plot", metavar="FILE.png", help="plot unit utilisation over time (needs matplotlib)")
    r.add_argument("--chips", default="1", help="chips in a pipeline (a number, or 'auto': the fewest that hold "
                   "the model)")
    r.add_argument("--parallel", default="auto", choices=["auto", "pipeline", "tensor"])
    r.add_argument("--precision", default="fp16", choices=["fp16", "int8"],
                   help="int8: quantise a float model with onnxruntime's quantize_static, run the int8 MXM path")
    r.add_argument("--system", default=None, help="system configuration JSON (docs/system.md): drift, seed, ...")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("segments", help="check MODEL.onnx segment by segment against onnxruntime, each segment "
                       "starting from onnxruntime's values (lpusim/segments.py)")
    s.add_argument("model")
    s.add_argument("--inputs", help=".npz file of inputs by name (default: seeded random inputs)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shape", action="append", metavar="NAME=D0,D1,...", help="fix a dynamic input shape")
    s.add_argument("--chip", default=None)
    s.add_argument("--precision", default="fp16", choices=["fp16", "int8"])
    s.add_argument("--cut", action="append", metavar="TENSOR", help="cut here (default: every float tensor only "
                   "QuantizeLinears read that separates the graph)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_segments)

    c = sub.add_parser("compile", help="compile MODEL.onnx and report the schedule")
    c.add_argument("model")
    c.add_argument("-o", "--output", help="write the assembly here")
    c.add_argument("--dump", action="store_true", help="print the IR after every pass")
    c.add_argument("--shape", action="append", metavar="NAME=D0,D1,...")
    c.add_argument("--chip", default=None)
    c.add_argument("--precision", default="fp16", choices=["fp16", "int8"])
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compile)

    ch = sub.add_parser("chip", help="print the chip configuration")
    ch.add_argument("--config", default=None, help="a configuration name or JSON file (default tsp_v1)")
    ch.add_argument("--json", action="store_true")
    ch.set_defaults(func=cmd_chip)

    a = sub.add_parser("asm", help="assemble and run a hand-written program")
    a.add_argument("file")
    a.add_argument("--config", default=None)
    a.add_argument("--timing-only", action="store_true")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_asm)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LpusimError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted")
    except OSError as e:
        return _fail(f"{e.filename or ''}: {e.strerror}" if e.strerror else str(e))


if __name__ == "__main__":
    sys.exit(main())
