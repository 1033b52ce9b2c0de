"""The `lpusim` command: demo, run, generate, llm, sweep, segments, compile, chip, asm.

Exit status: 0 success (outputs match), 1 outputs do not match onnxruntime, 2 user error (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

from lpusim.api import compile as compile_model
from lpusim.check.explain import explain, format_explain
from lpusim.check.report import format_report, run_report
from lpusim.check.segments import check_segments, summarize
from lpusim.chip import Chip
from lpusim.compiler.frontend.load import validate_shape
from lpusim.errors import LpusimError
from lpusim.files import check_writable, load_npz, write_text
from lpusim.models import mlp
from lpusim.runtime.assembly import run_assembly_file
from lpusim.runtime.dynamic import DynamicProgram

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


def _one_line(message: str) -> str:
    """The message on one line: line breaks and other control characters (from a file name, a --shape, a file's
    text) shown escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message)


def _fail(message: str) -> int:
    print(f"lpusim: error: {_one_line(message)}", file=sys.stderr)
    return EXIT_USAGE


_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)  # ASCII digits only: not "1_0", "١" or "1e3" as int() takes
_DIGITS = 30  # a number of more digits is refused as too large before int() reads it


def _parse_shapes(items) -> dict:
    """--shape NAME=D0,D1,... (repeatable) -> {name: dims}, each checked by `validate_shape` (compiler/frontend/
    load.py, the one shape check the Python API uses too) before the model is read."""
    shapes = {}
    for item in items or []:
        name, _, dims = item.partition("=")
        name = name.strip()
        parts = dims.split(",")
        if not name or not dims.strip():
            raise LpusimError(f"--shape {item}: expected NAME=D0,D1,...")
        bad = next((p for p in parts if not _INTEGER.fullmatch(p)), None)
        if bad is not None:
            raise LpusimError(f"--shape {item}: dimension {bad.strip() or '(empty)'!r} is not an integer; expected "
                              f"NAME=D0,D1,... with integer dimensions")
        if any(len(p.strip()) > _DIGITS for p in parts):
            raise LpusimError(f"--shape {item[:60]}...: a dimension of more than {_DIGITS} digits")
        if name in shapes:
            raise LpusimError(f"--shape {item}: input '{name}' is given twice")
        shapes[name] = validate_shape(name, [int(p) for p in parts])
    return shapes


def _chips_arg(flag: str, value: str) -> int | str:
    """A chip count: 'auto' or a whole number of at least one (the largest system is checked where it is built)."""
    if value == "auto":
        return value
    if not _INTEGER.fullmatch(value):
        raise LpusimError(f"{flag} {value}: expected a number of chips or 'auto'")
    if len(value.strip()) > _DIGITS:
        raise LpusimError(f"{flag} {value[:40]}...: more chips than any system holds")
    chips = int(value)
    if chips < 1:
        raise LpusimError(f"{flag} {value}: at least one chip is needed")
    return chips


def _load_inputs(path: str | None) -> dict | None:
    """--inputs FILE.npz: the arrays by name (files.load_npz: bounded, no pickles, real numbers and booleans)."""
    return None if path is None else load_npz(path)


def cmd_run(args) -> int:
    if (args.chips != "1" or args.system) and args.precision != "fp16":
        raise LpusimError(f"--precision {args.precision} runs on one chip only (not with --chips or --system yet)")
    several = args.chips != "1" or args.system
    chips = _chips_arg("--chips", args.chips) if several else 1
    check_writable(args.trace, "the trace")
    check_writable(args.plot, "the plot")
    report = run_report(args.model, chips=chips, parallel=args.parallel, system=args.system,
                        inputs=_load_inputs(args.inputs), seed=args.seed, chip=args.chip,
                        shapes=_parse_shapes(args.shape), timing_only=args.timing_only,
                        progress=not several and not args.json and sys.stderr.isatty(), trace=args.trace,
                        plot=args.plot, precision=args.precision, explain=args.explain)
    print(json.dumps(report) if args.json else format_report(report))
    return EXIT_OK if report["outputs_match"] in (True, None) else EXIT_MISMATCH


def _prompt(args) -> tuple[np.ndarray, np.ndarray | None]:
    """The prompt's ids [batch, length] (and mask) from --prompt-ids or --inputs (one of them)."""
    if (args.prompt_ids is None) == (args.inputs is None):
        raise LpusimError("give the prompt with --prompt-ids 1,2,3 or with --inputs PROMPT.npz (one of the two)")
    if args.prompt_ids is not None:
        parts = [t for t in args.prompt_ids.split(",") if t.strip()]
        if not all(re.fullmatch(r"\s*[+-]?[0-9]{1,18}\s*", t, re.ASCII) for t in parts):  # fits an int64
            raise LpusimError(f"--prompt-ids {args.prompt_ids}: expected token ids like 1,2,3")
        ids = [int(t) for t in parts]
        if not ids:
            raise LpusimError("--prompt-ids: no token ids given")
        return np.asarray([ids], np.int64), None
    data = _load_inputs(args.inputs)
    if "input_ids" not in data:
        raise LpusimError(f"{args.inputs}: holds {', '.join(sorted(data)) or 'nothing'}; a prompt needs 'input_ids'")
    ids = data["input_ids"]
    if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2):
        raise LpusimError(f"{args.inputs}: input_ids must be integer token ids [batch, length] (got {ids.dtype} "
                          f"{ids.shape})")
    ids = ids.reshape(1, -1) if ids.ndim == 1 else ids
    mask = data.get("attention_mask")
    if mask is not None and mask.size != ids.size:
        raise LpusimError(f"{args.inputs}: attention_mask {mask.shape} does not match input_ids {ids.shape}")
    return ids.astype(np.int64), None if mask is None else np.asarray(mask).reshape(ids.shape)


def cmd_generate(args) -> int:
    from lpusim.llm.check import format_generation, generation_report
    from lpusim.llm.generate import compile_decoder

    ids, mask = _prompt(args)
    if args.new_tokens < 1:
        raise LpusimError(f"--new-tokens {args.new_tokens}: expected at least 1")
    chips = _chips_arg("--chips", args.chips)
    if chips != 1 and args.precision == "int8" and chips != "auto":
        raise LpusimError("--precision int8 runs on one chip only (pipelines of several chips are fp16)")
    length = ids.shape[1]
    need = length + args.new_tokens - 1
    context = args.max_context or max(16, 1 << max(need, length + 1 - 1).bit_length())
    if need > context:
        raise LpusimError(f"a prompt of {length} tokens and {args.new_tokens} new tokens need {need} cache rows; "
                          f"--max-context is {context}")
    chunk = args.prefill_chunk or min(length, context - 1)
    decoder = compile_decoder(args.model, max_context=context, prefill_chunk=chunk, precision=args.precision,
                              chip=args.chip, batch=ids.shape[0], chips=chips)
    report = generation_report(decoder, ids, args.new_tokens, attention_mask=mask,
                               progress=not args.json and sys.stderr.isatty())
    report["model"] = args.model
    print(json.dumps(report) if args.json else format_generation(report))
    return EXIT_OK if report["ok"] else EXIT_MISMATCH


def cmd_llm(args) -> int:
    from lpusim.llm.gpu import Gpu, compare, format_comparison
    from lpusim.llm.piece_cache import PieceCache

    chips = _chips_arg("--chips", args.chips)
    gpu = Gpu.load(args.compare) if args.compare else None  # a bad GPU file fails before the plan's minutes
    common = dict(chips=chips, tp=args.tp, pp=args.pp, precision=args.precision, context=args.context,
                  prompt=args.prompt, new_tokens=args.new_tokens, concurrency=args.concurrency,
                  prefill_chunk=args.prefill_chunk, chip=args.chip, progress=not args.json and sys.stderr.isatty(),
                  store=None if args.no_cache else PieceCache(args.cache))  # measured pieces, reused by later plans
    result, text = _plan_or_speculate(args, common)
    if gpu is not None:
        result["gpu"] = compare(result, args.config, gpu)
        text += "\n" + format_comparison(result)
    if args.plot:
        from lpusim.llm.plan_energy import plot_energy
        plot_energy(result, args.plot)
    print(json.dumps(result) if args.json else text)
    return EXIT_OK


def _plan_or_speculate(args, common) -> tuple[dict, str]:
    """The plan (or, with --speculative, the plan with its speculative rounds) and its text report."""
    from lpusim.llm.plan import format_plan, plan_llm

    if args.speculative is None:
        for flag, value in (("--draft-tokens", args.draft_tokens), ("--acceptance", args.acceptance),
                            ("--draft-chips", args.draft_chips)):
            if value is not None:
                raise LpusimError(f"{flag} needs --speculative DRAFT")
        result = plan_llm(args.config, **common)
        text = format_plan(result)
    else:
        from lpusim.llm.speculative import format_speculative, plan_speculative

        draft_chips = args.draft_chips or "auto"
        draft_chips = _chips_arg("--draft-chips", draft_chips)
        result = plan_speculative(args.config, args.speculative, draft_chips=draft_chips,
                                  draft_tokens=args.draft_tokens, acceptance=args.acceptance, **common)
        text = format_plan(result) + "\n" + format_speculative(result)
    return result, text


def cmd_sweep(args) -> int:
    from lpusim.llm.piece_cache import default_dir
    from lpusim.sweep.output import save_sweep
    from lpusim.sweep.run import run_sweep
    from lpusim.sweep.spec import AXES, SweepSpec, load_json, parse_list
    from lpusim.sweep.table import format_rows

    fields = load_json(args.spec) if args.spec else {}
    if args.config:
        fields["model"] = args.config
    for axis in AXES[1:]:  # a flag given replaces the file's axis
        text = getattr(args, axis)
        if text is not None:
            fields[axis] = parse_list(axis, text)
    if args.chip is not None:
        fields["chip"] = args.chip
    spec = SweepSpec.from_dict(fields)
    cache = None if args.no_cache else args.cache or default_dir()
    rows = run_sweep(spec, workers=args.workers, ray_address=args.ray, cache_dir=cache,
                     progress=args.progress or sys.stderr.isatty())
    if args.out:
        written, notes = save_sweep(rows, args.out, plots=not args.no_plots)
        for note in notes:
            print(f"lpusim sweep: {note}", file=sys.stderr)
        if not args.json:
            print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    print(json.dumps(rows) if args.json else format_rows(rows))
    return EXIT_OK


def cmd_demo(args) -> int:
    model = mlp((784, 300, 10), batch=1, seed=args.seed)
    print("lpusim demo: a 784-300-10 MLP (ReLU, random weights, batch 1) compiled for one tsp_v1 chip,\n"
          "simulated cycle by cycle and checked against onnxruntime.\n")
    report = run_report(model, seed=args.seed, chip=args.chip)
    report["model"] = "built-in MLP 784-300-10"
    print(json.dumps(report) if args.json else format_report(report))
    return EXIT_OK if report["outputs_match"] else EXIT_MISMATCH


def cmd_compile(args) -> int:
    def dump(name, text):
        print(f"===== after {name} =====\n{text}")

    check_writable(args.output, "the assembly")
    program = compile_model(args.model, chip=args.chip, shapes=_parse_shapes(args.shape),
                                   dump=dump if args.dump else None, precision=args.precision)
    if isinstance(program, DynamicProgram):  # nothing to compile for until the shapes are known
        program.need_shapes()
    if args.output:
        write_text(args.output, program.assembly, "the assembly")  # whole or not at all
    summary = {"predicted_cycles": program.predicted_cycles, "latency_us": program.latency_us,
               "instructions": program.instructions, "sram_bytes": program.sram_bytes,
               "compile_s": program.compile_s, "assembly": args.output}
    text = "\n".join(f"{k:17} {v}" for k, v in summary.items())
    if args.explain:  # the schedule alone says where the time goes: no run needed
        summary["explain"] = explain(program)
        text += "\n" + format_explain(summary["explain"])
    print(json.dumps(summary) if args.json else text)
    return EXIT_OK


def cmd_chip(args) -> int:
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
    stats = run_assembly_file(args.file, args.config, args.timing_only)
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


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error form: one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"lpusim: error: {_one_line(f'{self.prog}: {message}')} (see {self.prog} --help)\n")


def _seed(value: str) -> int:
    """--seed: a whole number 0 .. 2^64 - 1 (numpy's generators take no negative seed)."""
    if not re.fullmatch(r"\s*\+?[0-9]{1,20}\s*", value, re.ASCII) or int(value) >= 1 << 64:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number 0 .. 2^64 - 1")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lpusim", description="Cycle-level simulator of Groq-style LPUs (TSPs).")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="compile, simulate and check a built-in MLP")
    d.add_argument("--seed", type=_seed, default=0)
    d.add_argument("--chip", default=None, help="chip configuration: a name (tsp_v1) or a JSON file")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="compile MODEL.onnx, simulate it and compare with onnxruntime")
    r.add_argument("model")
    r.add_argument("--inputs", help=".npz file of inputs by name (default: seeded random inputs)")
    r.add_argument("--seed", type=_seed, default=0)
    r.add_argument("--shape", action="append", metavar="NAME=D0,D1,...", help="fix a dynamic input shape")
    r.add_argument("--chip", default=None)
    r.add_argument("--timing-only", action="store_true", help="execute the schedule without computing values")
    r.add_argument("--trace", metavar="FILE.json", help="write a Perfetto/Chrome trace of the schedule")
    r.add_argument("--plot", metavar="FILE.png", help="plot unit utilisation over time (needs matplotlib)")
    r.add_argument("--explain", action="store_true", help="where the time goes: MXM and MAC utilisation, cycles "
                   "by cause, MXM work by purpose, the busiest nodes (one chip)")
    r.add_argument("--chips", default="1", help="chips in a pipeline (a number, or 'auto': the fewest that hold "
                   "the model)")
    r.add_argument("--parallel", default="auto", choices=["auto", "pipeline", "tensor"])
    r.add_argument("--precision", default="fp16", choices=["fp16", "int8", "fp32"],
                   help="int8: quantise a float model with onnxruntime's quantize_static, run the int8 MXM path; "
                   "fp32: each MXM operand as fp16 pieces summed exactly (about 3x the MXM passes; docs/precision.md)")
    r.add_argument("--system", default=None, help="system configuration JSON (docs/system.md): drift, seed, ...")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("generate", help="greedy generation with a decoder LLM on the chip (KV cache in SRAM), "
                       "checked against onnxruntime's own decode (docs/llm.md)")
    g.add_argument("model", help="an ONNX decoder in the Optimum KV-cache layout with dynamic axes")
    g.add_argument("--prompt-ids", help="the prompt's token ids, e.g. 1,2,3")
    g.add_argument("--inputs", help=".npz holding input_ids [batch, length] (and optionally attention_mask)")
    g.add_argument("--new-tokens", type=int, default=16)
    g.add_argument("--max-context", type=int, default=None, help="cache rows (default: the next power of two "
                   "that holds prompt and new tokens, at least 16)")
    g.add_argument("--prefill-chunk", type=int, default=None, help="prompt tokens per prefill run (default: the "
                   "whole prompt in one run; 1: the prompt runs through the decode step)")
    g.add_argument("--chips", default="1", help="chips for the decode step: a number, or 'auto' (the fewest that hold "
                   "it); several chips form a pipeline (fp16), each keeping its layers' KV cache; the prompt then "
                   "runs through the decode step")
    g.add_argument("--precision", default="fp16", choices=["fp16", "int8"])
    g.add_argument("--chip", default=None)
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_generate)

    lm = sub.add_parser("llm", help="plan a decoder LLM over many chips (tensor groups in a pipeline) and simulate "
                        "it: tokens/s, time to first token, SRAM, links (docs/llm.md section 4)")
    lm.add_argument("config", help="a Hugging Face config.json (Llama, Mistral, Mixtral, Qwen2, GPT-2) or a built-in "
                    "name: llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, llama-3-70b, llama-3.2-1b, mixtral-8x7b")
    lm.add_argument("--chips", default="auto", help="a number, or 'auto': the fewest chips that hold weights and KV "
                    "cache, then the fastest layout of those")
    lm.add_argument("--tp", type=int, default=None, help="chips per tensor-parallel group (1, 2, 4 or 8)")
    lm.add_argument("--pp", type=int, default=None, help="pipeline groups (needs --chips)")
    lm.add_argument("--precision", default="int8", choices=["int8", "fp16"])
    lm.add_argument("--context", type=int, default=4096, help="KV-cache positions a decode step attends over")
    lm.add_argument("--prompt", type=int, default=128, help="prompt tokens (the prefill behind time to first token)")
    lm.add_argument("--new-tokens", type=int, default=128)
    lm.add_argument("--concurrency", type=int, default=1, help="sequences in flight through the pipeline")
    lm.add_argument("--prefill-chunk", type=int, default=None, help="prompt tokens per prefill pass (default: 16)")
    lm.add_argument("--speculative", metavar="DRAFT", default=None, help="speculative decoding: this draft model "
                    "(a built-in name or config.json, the target's vocabulary) on chips of its own proposes tokens "
                    "the target verifies in one pass (docs/llm.md section 4.4)")
    lm.add_argument("--draft-tokens", type=int, default=None, help="tokens the draft proposes a round (default: the "
                    "fastest of 1..8)")
    lm.add_argument("--acceptance", type=float, default=None, help="probability that the target accepts a draft "
                    "token, in [0, 1) (default 0.88: Llama 3 8B drafting for Llama 3 70B, docs/llm.md 4.4)")
    lm.add_argument("--draft-chips", default=None, help="the draft's chips: a number, or 'auto' (default: the "
                    "fewest that hold it)")
    lm.add_argument("--chip", default=None)
    lm.add_argument("--compare", metavar="GPU", default=None, help="the same model on GPUs beside the plan, by a "
                    "roofline model (docs/llm.md section 5): h100, a100 or a GPU JSON file")
    lm.add_argument("--plot", metavar="FILE.png", help="plot J/token against sequences in flight (docs/energy.md)")
    lm.add_argument("--cache", metavar="DIR", default=None, help="the measured pieces' disk cache, keyed by content "
                    "hash, so a later plan reuses them (default $LPUSIM_CACHE or ~/.cache/lpusim/pieces)")
    lm.add_argument("--no-cache", action="store_true", help="compile and simulate every piece afresh, store nothing")
    lm.add_argument("--json", action="store_true")
    lm.set_defaults(func=cmd_llm)

    sw = sub.add_parser("sweep", help="plan a decoder LLM over a grid of chips, layouts, precisions, contexts and "
                        "concurrencies (docs/llm.md 4.4); Ray is an optional extra",
                        description="Run `lpusim llm` over the cartesian product of the axes given (comma lists: "
                        "--chips 8,16,auto --precision int8,fp16 --concurrency 1,2,4), one row per point, on a local "
                        "process pool (--workers) or a Ray cluster (--ray ADDRESS, or --ray local). Ray is an "
                        "optional extra: pip install 'lpusim[ray]'. Measured pieces are cached on disk by content "
                        "hash (--cache, $LPUSIM_CACHE, default ~/.cache/lpusim/pieces), so repeated points and later "
                        "runs do not recompile. A point the planner rejects is a row with an error.")
    sw.add_argument("config", nargs="*", help="built-in names or config.json paths (several: a model axis); or "
                    "give them in --spec")
    sw.add_argument("--spec", metavar="FILE.json", help="the axes as a JSON object ({\"model\": ..., \"chips\": "
                    "[8, 16, \"auto\"], ...}); flags given replace its axes")
    for axis, what in (("chips", "numbers or auto"), ("tp", "1, 2, 4, 8 or auto"), ("pp", "numbers or auto"),
                       ("precision", "int8, fp16"), ("context", "KV-cache positions"),
                       ("concurrency", "sequences in flight"), ("prompt", "prompt tokens"),
                       ("new_tokens", "generated tokens"), ("prefill_chunk", "numbers or auto")):
        sw.add_argument("--" + axis.replace("_", "-"), dest=axis, default=None, metavar="A,B,...",
                        help=f"comma list: {what}")
    sw.add_argument("--chip", default=None)
    sw.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core; 1: "
                    "this process)")
    sw.add_argument("--ray", metavar="ADDRESS", default=None, help="run the points on the Ray cluster at ADDRESS "
                    "('local': start one on this machine with --workers CPUs); needs pip install 'lpusim[ray]'")
    sw.add_argument("--cache", metavar="DIR", default=None, help="the pieces' disk cache (default $LPUSIM_CACHE or "
                    "~/.cache/lpusim/pieces)")
    sw.add_argument("--no-cache", action="store_true", help="compile every point's pieces afresh, store nothing")
    sw.add_argument("--out", metavar="DIR", help="write sweep.csv, sweep.parquet (with pyarrow) and plots (with "
                    "matplotlib) here")
    sw.add_argument("--no-plots", action="store_true", help="with --out: the table only")
    sw.add_argument("--progress", action="store_true", help="a progress bar on stderr even when it is not a terminal")
    sw.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    sw.set_defaults(func=cmd_sweep)

    s = sub.add_parser("segments", help="check MODEL.onnx segment by segment against onnxruntime, each segment "
                       "starting from onnxruntime's values (lpusim/check/segments.py)")
    s.add_argument("model")
    s.add_argument("--inputs", help=".npz file of inputs by name (default: seeded random inputs)")
    s.add_argument("--seed", type=_seed, default=0)
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
    c.add_argument("--explain", action="store_true", help="where the time goes (as run --explain)")
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
    except BrokenPipeError:  # the reader went away (`lpusim asm ... | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return EXIT_OK
    except OSError as e:
        return _fail(f"{e.filename or ''}: {e.strerror}" if e.strerror else str(e))


if __name__ == "__main__":
    sys.exit(main())
