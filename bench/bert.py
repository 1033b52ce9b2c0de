"""BERT encoder (random weights, built by lpusim.models.bert_encoder): compile, simulate, compare with onnxruntime.

    python bench/bert.py [layers hidden heads seq]      (default: BERT-base, 12 768 12 128)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from light_models import measure_model  # noqa: E402

import lpusim  # noqa: E402
from lpusim.models import bert_encoder  # noqa: E402


def measure(layers=12, hidden=768, heads=12, seq=128) -> dict:
    row = measure_model(bert_encoder(layers=layers, hidden=hidden, heads=heads, seq=seq),
                        f"bert_encoder L{layers} H{hidden} A{heads} S{seq}", progress=True)
    if "error" in row:
        raise lpusim.CompileError(row["error"])
    row["sequences_per_s"] = row.pop("images_per_s")
    return row


if __name__ == "__main__":
    args = [int(v) for v in sys.argv[1:]]
    print(json.dumps(measure(*args)), flush=True)
