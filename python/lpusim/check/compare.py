"""The cross-check: run the same model and inputs in onnxruntime and compare with one fixed tolerance per precision.

Tolerances follow from the arithmetic, never from a model: with `fp16` the MXM multiplies inputs rounded to fp16
(relative error up to 2**-11 each) and sums them exactly, so each output carries roughly 2**-11 of the size of
the terms that made it, growing layer by layer. An element matches when
    |sim - ref| <= rtol * |ref| + atol * max|ref|
(atol scales with the output's largest magnitude, so cancellation near zero is judged against the size of the
terms). `max_rel_error` is the largest |sim - ref| over max|ref|.
"""
from __future__ import annotations

import time

import numpy as np

TOLERANCES = {
    "fp16": {"rtol": 1e-2, "atol": 1e-2},
    # precision="fp32" (compiler/fp32_split.py): each product misses at most ~2^-21 of |x| |w| (the dropped x1 w1
    # and the pieces' own rounding), each sum is rounded once: 1e-5 leaves ~20x for a few layers of growth
    "fp32": {"rtol": 1e-5, "atol": 1e-5},
}


def run_onnxruntime(model, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    payload = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(payload, opts, providers=["CPUExecutionProvider"])
    feeds = {k: np.asarray(v) if np.asarray(v).dtype.kind in "biu" else np.asarray(v, dtype=np.float32)
             for k, v in inputs.items()}  # bool/integer inputs (token ids, masks) as given
    session.run(None, feeds)  # warm-up: the first run includes one-off allocation
    start = time.perf_counter()
    values = session.run(None, feeds)
    wall = time.perf_counter() - start
    return {o.name: v for o, v in zip(session.get_outputs(), values)}, wall


def compare(sim: dict[str, np.ndarray], ref: dict[str, np.ndarray], precision: str = "fp16") -> dict:
    tol = TOLERANCES[precision]
    max_abs, max_rel, ok = 0.0, 0.0, True
    per_output = {}
    for name, r in ref.items():
        r = np.asarray(r, dtype=np.float64)
        s = np.asarray(sim[name], dtype=np.float64)
        if s.shape != r.shape:
            per_output[name] = {"match": False, "reason": f"shape {s.shape} != {r.shape}"}
            ok = False
            continue
        diff = np.abs(s - r)
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        finite = np.isfinite(s) == np.isfinite(r)
        bad = ~finite | (diff > tol["rtol"] * np.abs(r) + tol["atol"] * scale)
        both_inf = np.isinf(s) & np.isinf(r) & (np.sign(s) == np.sign(r))
        bad &= ~both_inf
        diff = np.where(np.isfinite(diff), diff, 0.0)
        a = float(diff.max()) if diff.size else 0.0
        rel = a / scale if scale > 0 else a
        per_output[name] = {"match": not bool(bad.any()), "max_abs_error": a, "max_rel_error": rel,
                            "mismatched": int(bad.sum())}
        ok &= not bool(bad.any())
        max_abs, max_rel = max(max_abs, a), max(max_rel, rel)
    return {"outputs_match": ok, "max_abs_error": max_abs, "max_rel_error": max_rel, "per_output": per_output,
            "tolerance": dict(tol, precision=precision)}
