"""lpusim's simulated tsp_v1 numbers next to Groq's published single-chip results (the table in README.md and
docs/results.md section 1; paste it into both, with the commit it was measured at).

    python bench/published.py            # runs the models (minutes), prints the markdown table

Published (docs/tsp-facts.md section 6, with sources): ResNet-50 v2, batch 1: 20.4K images/s, under 49 us per
image (int8); BERT-base, batch 1: 130 us. Nothing here is tuned toward them: a gap is a finding.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import bert  # noqa: E402
import light_models  # noqa: E402

import lpusim  # noqa: E402


def rows():
    out = []
    r = light_models.measure("resnet50")
    out.append(("ResNet-50 (onnx light_resnet50, constant weights), batch 1", "fp16", r,
                "20.4K images/s, < 49 us (int8)"))
    r = light_models.measure("resnet50", precision="int8")
    out.append(("ResNet-50 (the same, quantised by onnxruntime's quantize_static), batch 1", "int8", r,
                "20.4K images/s, < 49 us (int8)"))
    for layers in (12, 6):
        try:
            b = bert.measure(layers, 768, 12, 128)
        except lpusim.CompileError as e:
            out.append((f"BERT-base encoder, {layers} layers, seq 128, batch 1", "fp16", {"error": str(e)},
                        "130 us (12 layers)"))
            continue
        out.append((f"BERT-base encoder, {layers} layers, seq 128, batch 1", "fp16", b, "130 us (12 layers)"))
        break
    return out


def table(results) -> str:
    lines = ["| model | precision | matches onnxruntime | cycles | latency | per second | SRAM | published |",
             "|---|---|---|---|---|---|---|---|"]
    energy = ["| model | precision | energy per inference | average power | dynamic | largest terms | "
              "published chip power |", "|---|---|---|---|---|---|---|"]
    for name, prec, r, pub in results:
        if "error" in r:
            lines.append(f"| {name} | {prec} | - | - | - | - | - | {pub} |")
            lines.append(f"|  | | compile: {r['error']} | | | | | |")
            continue
        rate = r.get("images_per_s") or r.get("sequences_per_s")
        lines.append(f"| {name} | {prec} | {r['status']} (max rel err {r['max_rel_error']:.1e}) | "
                     f"{r['cycles']:,} | {r['latency_us']:.0f} us | {rate:,.0f} | {r['sram_mib']:.0f} MiB | {pub} |")
        e = r["energy"]
        top = sorted(e["breakdown_j"].items(), key=lambda kv: -kv[1])[:4]
        energy.append(f"| {name.split(' (')[0].split(',')[0]} | {prec} | {e['energy_j'] * 1e3:.2f} mJ | "
                      f"{e['power_w']:.0f} W | {e['dynamic_j'] / e['energy_j']:.0%} | "
                      + ", ".join(f"{k} {v / e['energy_j']:.0%}" for k, v in top)
                      + " | 215 W TDP, 185 W average, 300 W max |")
    return "\n".join(lines) + "\n\nEnergy (model: docs/energy.md; chosen per-event energies, not published):\n\n" \
        + "\n".join(energy)


if __name__ == "__main__":
    print(table(rows()))
