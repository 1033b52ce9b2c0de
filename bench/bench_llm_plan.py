"""asv benchmarks: the rack-scale plan of Llama 2 70B (docs/llm.md section 4), the issue's speed goal "a 70B plan on
576 chips in under 60 s" on a 2-core machine.

* `time_plan_70b_576`: wall time of a cold `plan_llm("llama-2-70b", chips=576)` at int8 (every piece compiled and
  simulated from scratch: nothing is cached between calls).
* `track_plan_over_baseline`: that wall time over a baseline measured in the same run (the machine is shared and
  noisy): compiling the fp16 MLP share of one 70B layer for one chip of 8 and simulating it, the single most common
  kind of work in a plan.
* `track_per_token_cycles`: the plan's simulated cycles per token (deterministic: it moves with the compiler only).

Run: `asv run --python=same --bench LlamaPlan` (after `pip install '.[bench]'`).
"""
import time


def _plan():
    from lpusim.llm.plan import plan_llm
    return plan_llm("llama-2-70b", chips=576, precision="int8", context=2048, prompt=128, new_tokens=128)


def _baseline() -> float:
    from lpusim.llm.shard import DecoderShape, mlp_part
    from lpusim.runtime.program import compile_program
    start = time.perf_counter()
    compile_program(mlp_part(DecoderShape.from_config("llama-2-70b"), 8, seq=1), precision="fp16").run(
        timing_only=True)
    return time.perf_counter() - start


class LlamaPlan:
    timeout = 1800
    number = 1
    repeat = 1

    def setup(self):
        self.result = _plan()

    def time_plan_70b_576(self):
        _plan()

    def track_plan_over_baseline(self):
        start = time.perf_counter()
        _plan()
        plan_s = time.perf_counter() - start
        return plan_s / _baseline()

    def track_per_token_cycles(self):
        return self.result["per_token_cycles"]
