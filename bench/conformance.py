"""The plain-backend conformance rate: onnx's node tests that onnxruntime passes, run through
`lpusim.backend.prepare(model).run(inputs)` exactly as a user would (no `constant_inputs`, no looser comparison),
judged by the suite's own tolerances (each case's rtol/atol, 1e-3/1e-7 by default, via onnx's
`Runner.assert_similar_outputs`).

    python bench/conformance.py [--jobs 2] [--timeout 120] [--only SUBSTRING] [--json out.json] [--precision fp16]

Denominator: every node test whose ops the compiler lowers (`SUPPORTED_OPS` plus the default-domain integer ops)
and that onnxruntime passes with the same comparison (onnxruntime's verdicts are cached in
$TMPDIR/lpusim_conformance_ort.json, keyed by onnx and onnxruntime versions). tests/ops/test_onnx_backend.py is the
other view: it binds weights with `constant_inputs` and judges MXM runs by lpusim's fp16 rule.
Each lpusim case runs in a worker process with a timeout; failures are grouped by the first line of their error.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time

import onnx


def _cases():
    """(name, model bytes, data sets, rtol, atol) of every node test whose ops the compiler lowers (onnx generates
    its node tests in memory: this install has no node data on disk)."""
    import warnings
    from onnx.backend.test.loader import load_model_tests
    from lpusim.compiler.lower.table import SUPPORTED_OPS
    quant = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}
    ops = set(SUPPORTED_OPS) | quant
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx's case generators warn about their own overflow/NaN cases
        tests = load_model_tests(kind="node")
    for tc in sorted(tests, key=lambda t: t.name):
        if tc.model is None or not all(n.domain in ("", "ai.onnx") and n.op_type in ops for n in tc.model.graph.node):
            continue
        yield tc.name, tc.model.SerializeToString(), tc.data_sets, tc.rtol, tc.atol


def _compare(ref, out, rtol, atol):
    from onnx.backend.test.runner import Runner
    Runner.assert_similar_outputs(list(ref), list(out), rtol, atol)


def _ort_case(args):
    name, model, data_sets, rtol, atol = args
    import onnxruntime as ort
    ort.set_default_logger_severity(3)  # its opset-1 and shape-merge warnings are not ours
    try:
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        for inputs, ref in data_sets:
            out = sess.run(None, dict(zip(names, inputs)))
            _compare(ref, out, rtol, atol)
        return name, True
    except Exception:
        return name, False


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _lpusim_case(args):
    name, model, data_sets, rtol, atol, timeout, precision = args
    import lpusim.backend as backend
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    t0 = time.time()
    try:
        options = {"precision": precision} if precision else {}  # None: the backend's default (fp32)
        rep = backend.prepare(onnx.load_from_string(model), **options)
        for inputs, ref in data_sets:
            out = rep.run(inputs)
            _compare(ref, out, rtol, atol)
        return name, "pass", "", time.time() - t0
    except _Timeout:
        return name, "fail", f"timeout after {timeout}s", time.time() - t0
    except AssertionError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if ln.startswith("Max relative")), lines[0] if lines else "")
        return name, "fail", f"AssertionError: wrong values ({detail})", time.time() - t0
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        return name, "fail", f"{type(e).__name__}: {first[:300]}", time.time() - t0
    finally:
        signal.alarm(0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout", type=int, default=120)
    p.add_argument("--only", default=None, help="run the cases whose name contains this")
    p.add_argument("--json", default=None, help="write every case's verdict here")
    p.add_argument("--precision", default=None, choices=["fp16", "fp32"],
                   help="the backend's precision option (default: the backend's own, fp32)")
    a = p.parse_args(argv)
    import onnxruntime as ort
    cases = list(_cases())
    cache_path = os.path.join(tempfile.gettempdir(), "lpusim_conformance_ort.json")
    key = f"onnx {onnx.__version__} onnxruntime {ort.__version__}"
    cache = {}
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f).get(key, {})
    todo = [c for c in cases if c[0] not in cache]
    if todo:
        with cf.ProcessPoolExecutor(a.jobs) as ex:
            cache.update(dict(ex.map(_ort_case, todo, chunksize=8)))
        with open(cache_path, "w") as f:
            json.dump({key: cache}, f)
    passing = [c for c in cases if cache[c[0]]]
    if a.only:
        passing = [c for c in passing if a.only in c[0]]
    print(f"{key}: {len(cases)} node tests with supported ops, onnxruntime passes {len(passing)}", flush=True)
    results = {}
    # fresh workers now and then: a simulated program's memory is not all returned to the system
    with multiprocessing.get_context("fork").Pool(a.jobs, maxtasksperchild=40) as pool:
        for name, verdict, why, secs in pool.imap_unordered(_lpusim_case, [(*c, a.timeout, a.precision) for c in passing]):
            results[name] = {"verdict": verdict, "why": why, "seconds": round(secs, 2)}
            if len(results) % 100 == 0:
                print(f"  {len(results)} run", flush=True)
    passed = sorted(n for n, r in results.items() if r["verdict"] == "pass")
    failed = {n: r["why"] for n, r in results.items() if r["verdict"] != "pass"}
    print(f"lpusim.backend passes {len(passed)} of {len(results)} ({100 * len(passed) / max(1, len(results)):.1f}%)")
    groups = collections.defaultdict(list)
    for n, why in sorted(failed.items()):
        groups[why.split("(")[0][:120] if why.startswith("AssertionError") else why[:120]].append(n)
    for why, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print(f"{len(names):4d}  {why}\n      {' '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"key": key, "results": results}, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
