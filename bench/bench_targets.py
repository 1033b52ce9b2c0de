"""asv benchmarks: issue 15's speed targets, as simulated latency and its ratio to Groq's published figure.

    asv run --python=same --bench Targets          (compiles BERT-Large on 4 chips: minutes)

Each workload is compiled and simulated (timing only) once per run in `setup_cache`; the `track_*` values are
simulated, so they are deterministic and compare across runs whatever the machine's load. The published figures
(docs/tsp-facts.md section 6) and the issue's targets are stated beside each; nothing is tuned toward them.

* `resnet50_int8`: onnx's light ResNet-50 quantised by onnxruntime's quantize_static, batch 1, one chip. Published
  under 49 us (20.4K images/s); targets 98 us, then 56 us.
* `hf_bert_base_ids`: transformers' BertModel(BertConfig()) from token ids and mask, seq 128, fp16, `chips="auto"`
  (bench/hf_bert.py's export, embeddings included). Published 130 us (BERT-base); targets 260 us, then 150 us.
* `bert_large_4chips`: lpusim.models.bert_encoder(24 layers, hidden 1024, 16 heads, seq 128), fp16 on 4 chips.
  Published 1,225 us (99th percentile, 4 TSPs); targets 2,450 us, then 1,410 us.
"""
from __future__ import annotations

import os

PUBLISHED_US = {"resnet50_int8": 49.0, "hf_bert_base_ids": 130.0, "bert_large_4chips": 1225.0}


def _resnet50_int8():
    import lpusim

    from .workloads import light_resnet50_path
    import onnx
    return lpusim.compile(onnx.load(light_resnet50_path()), precision="int8")


def _hf_bert_base_ids():
    import onnx

    import lpusim

    from .hf_bert import model_path
    cache = os.path.join(os.path.expanduser("~"), ".cache", "lpusim", "models")
    return lpusim.compile(onnx.load(model_path(cache, 128, 12)), chips="auto")


def _bert_large_4chips():
    import lpusim
    from lpusim.models import bert_encoder
    return lpusim.compile(bert_encoder(layers=24, hidden=1024, heads=16, seq=128), chips=4)


WORKLOADS = {"resnet50_int8": _resnet50_int8, "hf_bert_base_ids": _hf_bert_base_ids,
             "bert_large_4chips": _bert_large_4chips}


class Targets:
    params = list(WORKLOADS)
    param_names = ["workload"]
    timeout = 3600

    def setup_cache(self):
        out = {}
        for name, make in WORKLOADS.items():
            program = make()
            result = program.run(program.random_inputs(0), timing_only=True)
            out[name] = {"cycles": result.cycles, "latency_us": result.latency_us,
                         "predicted": program.predicted_cycles}
        return out

    setup_cache.timeout = 3600

    def track_cycles(self, cache, name):
        """Simulated cycles (equal to the compiler's prediction, or the run would have failed)."""
        assert cache[name]["cycles"] == cache[name]["predicted"]
        return cache[name]["cycles"]

    track_cycles.unit = "cycles"

    def track_latency_us(self, cache, name):
        return cache[name]["latency_us"]

    track_latency_us.unit = "us"

    def track_over_published(self, cache, name):
        """Simulated latency over Groq's published latency for the same workload (1.0: equal)."""
        return cache[name]["latency_us"] / PUBLISHED_US[name]

    track_over_published.unit = "ratio"
