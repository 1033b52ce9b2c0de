"""BERT encoder (random weights, built by lpusim.models.bert_encoder): compile, simulate, compare with onnxruntime.

    python bench/bert.py [layers hidden heads seq]      (default: BERT-base, 12 768 12 128)
"""
import json
import sys
import time

import lpusim
from lpusim.check import compare, run_onnxruntime
from lpusim.models import bert_encoder


def measure(layers=12, hidden=768, heads=12, seq=128) -> dict:
    model = bert_encoder(layers=layers, hidden=hidden, heads=heads, seq=seq)
    row = {"model": f"bert_encoder L{layers} H{hidden} A{heads} S{seq}"}
    t = time.perf_counter()
    program = lpusim.compile(model, progress=True)
    row["compile_s"] = time.perf_counter() - t
    x = program.random_inputs(0)
    t = time.perf_counter()
    result = program.run(x)
    row["simulate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    timing = program.run(x, timing_only=True)
    row["timing_only_s"] = time.perf_counter() - t
    ref, ort_s = run_onnxruntime(model, x)
    cmp = compare(result.outputs, ref)
    row.update(status="matched" if cmp["outputs_match"] else "MISMATCH", max_abs_error=cmp["max_abs_error"],
               max_rel_error=cmp["max_rel_error"], cycles=result.cycles, predicted=program.predicted_cycles,
               timing_only_cycles=timing.cycles, latency_us=result.latency_us,
               sequences_per_s=1e6 / result.latency_us, sram_mib=program.sram_bytes / 2**20,
               instructions=program.instructions, ort_s=ort_s, sim_over_ort=row["simulate_s"] / ort_s,
               timing_over_ort=row["timing_only_s"] / ort_s, utilization=result.utilization)
    return row


if __name__ == "__main__":
    args = [int(v) for v in sys.argv[1:]]
    print(json.dumps(measure(*args)), flush=True)
