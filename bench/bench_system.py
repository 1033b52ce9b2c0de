"""asv benchmarks: timing-only runs of multi-chip systems (docs/system.md section 5), the simulator's own speed.

* `Pipeline`: `workloads.bert_base()` (BERT-base encoder) compiled as a 2-chip fp16 pipeline
  (`compile_multichip(..., chips=2)`), run timing-only (`MultiProgram.run(timing_only=True)`): its wall time, and
  that over onnxruntime's inference of the same model in the same process (`track_timing_only_over_onnxruntime`,
  the measure of issue 13: 12x before system runs used the fast timing-only form, as a lone chip does).
* `Dragonfly`: many chips, small programs: an 8-layer BERT encoder (hidden 256) compiled as an 8-chip pipeline,
  its 8 stage programs on every node of a dragonfly of 8 nodes (64 chips) or 33 nodes (264 chips), timing-only
  (`System.run`); per-window costs (barriers, delivery, chip set-up) weigh more here than in `Pipeline`.
* `track_cycles`: simulated cycles (deterministic; they move only with the compiler or the system model).

Run: `asv run --python=same --bench System` (after `pip install '.[bench]'`). No timed assertions: the machine is
shared and noisy, so compare ratios measured in one process.
"""
from __future__ import annotations

from ._common import best_of, ort_session

_PER_PROCESS: dict = {}


def _pipeline():
    if "pipeline" not in _PER_PROCESS:
        from lpusim.multichip.pipeline import compile_multichip

        from .workloads import bert_base
        model = bert_base()
        mp = compile_multichip(model, chips=2)
        inputs = mp.random_inputs(0)
        session = ort_session(model)
        session.run(None, inputs)  # onnxruntime's first run allocates: not part of its inference time
        _PER_PROCESS["pipeline"] = (mp, inputs, session)
    return _PER_PROCESS["pipeline"]


def _stages():
    if "stages" not in _PER_PROCESS:
        from lpusim.models import bert_encoder
        from lpusim.multichip.pipeline import compile_multichip
        mp = compile_multichip(bert_encoder(layers=8, hidden=256, heads=4, seq=128), chips=8)
        _PER_PROCESS["stages"] = mp
    return _PER_PROCESS["stages"]


class SystemPipeline:
    """A 2-chip BERT-base pipeline, timing-only."""

    timeout = 1800
    number = 1
    repeat = (3, 10, 60.0)
    warmup_time = 0

    def setup(self):
        self.mp, self.inputs, self.session = _pipeline()

    def time_timing_only(self):
        self.mp.run(self.inputs, timing_only=True)

    def time_timing_only_one_thread(self):
        self.mp.run(self.inputs, timing_only=True, threads=1)

    def track_timing_only_over_onnxruntime(self):
        """Timing-only wall time over onnxruntime's inference wall time, best of each, interleaved in one process."""
        best_sim = best_ort = float("inf")
        for _ in range(3):
            best_sim = min(best_sim, best_of(lambda: self.mp.run(self.inputs, timing_only=True), 1))
            best_ort = min(best_ort, best_of(lambda: self.session.run(None, self.inputs), 5))
        return best_sim / best_ort

    track_timing_only_over_onnxruntime.unit = "ratio"

    def track_cycles(self):
        return self.mp.run(self.inputs, timing_only=True).cycles

    track_cycles.unit = "cycles"


class SystemDragonfly:
    """An 8-stage pipeline on every node of a dragonfly, timing-only."""

    params = [8, 33]
    param_names = ["nodes"]
    timeout = 1800
    number = 1
    repeat = (3, 10, 60.0)
    warmup_time = 0

    def setup(self, nodes):
        from lpusim.system import System
        mp = _stages()
        self.system = System.load({"topology": "dragonfly", "nodes": nodes, "chip": mp.chip.config})
        self.loaded = self.system.load_programs(list(mp.binaries) * nodes)

    def time_timing_only(self, nodes):
        self.loaded.run(timing_only=True)

    def time_timing_only_one_thread(self, nodes):
        self.loaded.run(timing_only=True, threads=1)

    def track_cycles(self, nodes):
        return self.loaded.run(timing_only=True).cycles

    track_cycles.unit = "cycles"
