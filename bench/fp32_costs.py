"""The cost of precision="fp32" (compiler/fp32_split.py) against fp16: cycles and accuracy of the same models.

    python bench/fp32_costs.py [mlp bert resnet light_resnet50] [--json out.json]

One line per model and precision: cycles (simulated = predicted), the max error over the largest output magnitude
against onnxruntime, and whether the fp32 tolerance holds (docs/precision.md). Results: docs/results.md section 4.
"""
import json
import os
import sys

import onnx

from lpusim.check.report import run_report
from lpusim.models import bert_encoder, mini_resnet, mlp

MODELS = {
    "mlp": lambda: mlp((784, 300, 10), batch=1, seed=0),
    "mlp_wide": lambda: mlp((1024, 4096, 1024), batch=1, seed=0),
    "bert": lambda: bert_encoder(layers=1),
    "resnet": lambda: mini_resnet(),
    "light_resnet50": lambda: onnx.load(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data",
                                                     "light", "light_resnet50.onnx")),
}


def main(argv):
    out = None
    if "--json" in argv:
        i = argv.index("--json")
        out, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    rows = []
    for name in argv or ["mlp", "mlp_wide", "bert", "resnet"]:
        model = MODELS[name]()
        for precision in ("fp16", "fp32"):
            r = run_report(model, precision=precision)
            row = {"model": name, "precision": precision, "cycles": r["cycles"],
                   "predicted_cycles": r["predicted_cycles"], "max_rel_error": r["max_rel_error"],
                   "fp32_tolerance": None}
            if precision == "fp32":
                row["fp32_tolerance"] = r["outputs_match"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
