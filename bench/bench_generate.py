"""asv benchmarks: generation on the chip (docs/llm.md 3.5-3.6) with the tiny random Llama of `models.llama_decoder`
(2 layers, hidden 64; no torch needed): 16 greedy tokens after an 8-token prompt, cache of 64 rows.

* `time_generate`: wall time of `Decoder.generate` (one prefill chunk, 15 decode steps, on one ChipMemory).
* `track_generate_over_onnxruntime`: that wall time over onnxruntime's greedy decode of the same model and prompt,
  measured in the same run (the machine is shared and noisy: ratios, not seconds).
* `track_decode_cycles`, `track_ttft_cycles`: the simulated cycles (deterministic; they move only with the compiler).

Run: `asv run --python=same --bench Generation` (after `pip install '.[bench]'`).
"""
from functools import partial

import numpy as np

from ._common import best_of


def _builder():
    from lpusim.models import llama_decoder
    return partial(llama_decoder, layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256)


class Generation:
    params = ["fp16", "int8"]
    param_names = ["precision"]
    timeout = 600

    def setup(self, precision):
        from lpusim.llm.generate import compile_decoder
        self.decoder = compile_decoder(_builder(), max_context=64, prefill_chunk=8, precision=precision)
        self.prompt = np.random.default_rng(0).integers(0, 256, (1, 8))
        self.result = self.decoder.generate(self.prompt, 16)

    def time_generate(self, precision):
        self.decoder.generate(self.prompt, 16)

    def track_generate_over_onnxruntime(self, precision):
        from lpusim.llm.reference import as_decoder, greedy_decode
        reference = as_decoder(self.decoder.source.reference)  # its sessions made once and kept, as the chip's
        greedy_decode(reference, self.prompt, 16)  # programs were compiled once
        chip = best_of(lambda: self.decoder.generate(self.prompt, 16), 3)
        ort = best_of(lambda: greedy_decode(reference, self.prompt, 16), 3)
        return chip / ort

    track_generate_over_onnxruntime.unit = "ratio"

    def track_decode_cycles(self, precision):
        return self.result.decode_cycles

    track_decode_cycles.unit = "cycles"

    def track_ttft_cycles(self, precision):
        return self.result.prefill_cycles

    track_ttft_cycles.unit = "cycles"
