"""asv benchmarks: compile and simulate time of MLPs against onnxruntime on the same model and inputs.

Run against the current checkout (after `pip install .`):  asv run --python=same
`track_*` values are deterministic (simulated cycles) or ratios measured within one process, so a change in the
model or in the simulator's speed shows up regardless of the machine's load.
"""
import time

import lpusim
from lpusim.check import run_onnxruntime
from lpusim.models import mlp

SIZES = {"mlp_784_300_10": (784, 300, 10), "mlp_1024_4096_1024": (1024, 4096, 1024)}


def _best(fn, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class MLP:
    params = list(SIZES)
    param_names = ["model"]
    timeout = 600

    def setup(self, name):
        self.model = mlp(SIZES[name], batch=1, seed=0)
        self.program = lpusim.compile(self.model)
        self.inputs = self.program.random_inputs(0)

    def time_compile(self, name):
        lpusim.compile(self.model)

    def time_simulate(self, name):
        self.program.run(self.inputs)

    def time_simulate_timing_only(self, name):
        self.program.run(self.inputs, timing_only=True)

    def time_onnxruntime(self, name):
        run_onnxruntime(self.model, self.inputs)

    def track_cycles(self, name):
        return self.program.run(self.inputs, timing_only=True).cycles

    track_cycles.unit = "cycles"

    def track_simulate_over_onnxruntime(self, name):
        """Simulate wall time over onnxruntime inference wall time, both measured here, best of 5."""
        sim = _best(lambda: self.program.run(self.inputs))
        ort = min(run_onnxruntime(self.model, self.inputs)[1] for _ in range(5))
        return sim / ort

    track_simulate_over_onnxruntime.unit = "ratio"

    def track_instructions_per_second_timing_only(self, name):
        result = self.program.run(self.inputs, timing_only=True)
        return result.instructions / _best(lambda: self.program.run(self.inputs, timing_only=True))

    track_instructions_per_second_timing_only.unit = "instructions/s"
