"""The README's benchmark table from a saved asv run (`asv run --python=same --set-commit-hash=HEAD`).

    python bench/summary.py [results.json]      (default: the newest file under .asv/results)
"""
from __future__ import annotations

import glob
import json
import os
import sys

COLUMNS = [  # (benchmark, header, format)
    ("time_compile", "compile", "s"),
    ("time_simulate", "simulate", "s"),
    ("time_simulate_timing_only", "timing-only", "s"),
    ("time_onnxruntime", "onnxruntime", "s"),
    ("track_simulate_over_onnxruntime", "simulate / ort", "x"),
    ("track_timing_only_over_onnxruntime", "timing-only / ort", "x"),
    ("track_compile_over_onnxruntime", "compile / ort", "x"),
    ("track_cycles", "cycles", "n"),
    ("track_instructions_per_second_timing_only", "instr/s (timing-only)", "M"),
    ("track_peak_rss_simulate", "peak RSS", "MiB"),
]


def _fmt(value, kind: str) -> str:
    if value is None:
        return "failed"
    if kind == "s":
        if value >= 1:
            return f"{value:.2f} s"
        ms = value * 1e3
        return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms" if ms >= 1 else f"{ms * 1e3:.0f} us"
    if kind == "x":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:,.0f}"
    if kind == "n":
        return f"{int(value):,}"
    if kind == "M":
        return f"{value / 1e6:.1f} M"
    return f"{value:,.0f} MiB"


ORDER = ["ResNet50", "BertBase", "MatMul", "MLP"]


def rows(path: str):
    data = json.load(open(path))
    cols = data["result_columns"]
    table: dict[tuple, dict] = {}
    for name, entry in data["results"].items():
        entry = dict(zip(cols, entry))
        module_class, bench = name.rsplit(".", 1)
        for param, value in zip(entry["params"][0], entry["result"]):
            table.setdefault((module_class.split(".")[-1], param.strip("'")), {})[bench] = value
    return data, table


def main():
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        files = glob.glob(os.path.join(".asv", "results", "*", "*.json"))
        files = [f for f in files if not f.endswith("machine.json")]
        path = max(files, key=os.path.getmtime)
    data, table = rows(path)
    print(f"commit {data['commit_hash'][:7]}, {data['params'].get('cpu', '?')} x {data['params'].get('num_cpu', '?')}")
    print()
    print("| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for (cls, param), values in sorted(table.items(), key=lambda kv: (ORDER.index(kv[0][0]) if kv[0][0] in ORDER
                                                                  else len(ORDER), kv[0])):
        print(f"| {param} | " + " | ".join(_fmt(values.get(b), k) for b, _, k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
