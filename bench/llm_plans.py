"""The rack-scale plans of docs/results.md ("Decoder LLMs at rack scale"): the four models at int8 and fp16 on the
chips `auto` picks, and Llama 2 70B on 576 chips. Prints one JSON line per plan and a markdown table.

    python bench/llm_plans.py [--out plans.jsonl] [--only llama-2-7b]

Each plan compiles and simulates its pieces (minutes on a 2-core machine for the large models).
"""
from __future__ import annotations

import argparse
import json
import sys

from lpusim.errors import LpusimError
from lpusim.llm.piece_cache import PieceCache
from lpusim.llm.plan import plan_llm

# (model, context): each model's published figure was measured at these contexts (docs/tsp-facts.md section 10)
RUNS = [("llama-2-7b", 2048), ("llama-3-8b", 2048), ("mixtral-8x7b", 2048), ("llama-2-70b", 4096)]
PUBLISHED = {"llama-2-7b": 750, "llama-3-8b": None, "mixtral-8x7b": 480, "llama-2-70b": 300}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--cache", default=None, help="the pieces' disk cache (default ~/.cache/lpusim/pieces)")
    args = ap.parse_args()
    return run(args, PieceCache(args.cache))


def run(args, store) -> int:
    rows = []
    cases = [(m, c, p, "auto") for m, c in RUNS for p in ("int8", "fp16")] + [("llama-2-70b", 4096, "int8", 576),
                                                                              ("llama-2-70b", 2048, "int8", 576)]
    for model, context, precision, chips in cases:
        if args.only and model != args.only:
            continue
        try:
            r = plan_llm(model, chips=chips, precision=precision, context=context, prompt=args.prompt,
                         new_tokens=128, progress=True, store=store)
        except LpusimError as e:
            r = {"model": model, "precision": precision, "context": context, "chips_asked": chips, "error": str(e)}
        r["chips_asked"] = chips
        print(json.dumps(r), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(r) + "\n")
        rows.append(r)
    print("\n| model | precision | context | chips (asked) | tp x pp | per token | tokens/s | published | TTFT "
          "(prompt) | SRAM | breakdown compute / installs / C2C / sync | J/token, 1 user | power | J/token, "
          "pipeline full |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['precision']} | {r['context']} | {r['chips_asked']} | - | - | - | - | - | - | "
                  f"{r['error']} |")
            continue
        f = r["cycle_breakdown_fraction"]
        print(f"| {r['model']} | {r['precision']} | {r['context']} | {r['chips']} ({r['chips_asked']}) | "
              f"{r['tp']} x {r['pp']} | {r['per_token_us']:.0f} us | {r['tokens_per_s']:.1f} | "
              f"{PUBLISHED.get(r['model']) or '-'} | {r['ttft_ms']:.2f} ms ({r['prompt']}) | "
              f"{r['sram_used_fraction']:.0%} | {f['compute']:.0%} / {f['weight_installs']:.0%} / {f['c2c']:.0%} / "
              f"{f['sync_stalls']:.0%} | {_energy(r)} |")
    return 0


def _energy(r: dict) -> str:
    """J/token for one user, the system's power, and J/token with the pipeline full (or as full as SRAM allows)."""
    e = r["energy"]
    full = e["by_concurrency"][-1]
    return (f"{e['j_per_token']:.1f} ({e['static_j_per_token'] / e['j_per_token']:.0%} static) | "
            f"{e['power_w'] / 1e3:.1f} kW | {full['j_per_token']:.2f} at {full['concurrency']}"
            + ("" if full["fits"] else " (caches exceed SRAM)"))


if __name__ == "__main__":
    sys.exit(main())
