"""Shared machinery of the asv suite: one base class per model family, measuring lpusim against onnxruntime.

Every model is compiled once per benchmark run (`setup_cache`); each benchmark then gets the compiled program,
the ONNX model and one set of seeded random inputs, the same for lpusim and onnxruntime. `track_*` values are
deterministic (simulated cycles) or measured within one process (ratios against onnxruntime, instructions per
second, peak memory), so they compare across runs even when the machine's load differs between them.
"""
from __future__ import annotations

import dataclasses
import resource
import time

import lpusim
from lpusim.chip import Chip as _Chip  # underscored: asv would take any public class here for a benchmark
from lpusim.runtime.program import Program as _Program


# onnxruntime inferences timed after each simulation in a ratio (they take milliseconds)
ORT_PER_CALL = 5


def best_of(fn, repeat: int) -> float:
    """Smallest wall time of `repeat` calls of fn()."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def ort_session(model):
    """An onnxruntime CPU session with its default threading (all cores), as `lpusim.check` makes it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def pack(program: _Program) -> dict:
    """A compiled program as picklable fields (asv pickles setup_cache's result; a `Chip` does not unpickle)."""
    fields = {f.name: getattr(program, f.name) for f in dataclasses.fields(program)}
    fields["chip"] = program.chip.config
    return fields


def unpack(fields: dict) -> _Program:
    return _Program(**dict(fields, chip=_Chip.load(fields["chip"])))


_PER_PROCESS: dict = {}  # (class, model) -> (model, program, inputs, onnxruntime session)


class _ModelBench:
    """Subclasses set `models` (param name -> function returning an onnx.ModelProto) and `params`, and may set
    `ratio_repeat` (best of how many runs each ratio takes)."""

    models: dict = {}
    param_names = ["model"]
    ratio_repeat = 3
    # A sample is one call: a compile or a simulation takes seconds, so asv's calibration of `number` is moot.
    number = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0
    rounds = 1
    timeout = 1800

    def setup_cache(self):
        """Compile every model once for the whole run; asv hands the result to each benchmark's process."""
        return {name: pack(lpusim.compile(self.models[name]())) for name in self.params}

    def setup(self, cache, name):
        # asv runs setup before every sample; the model, program and session are the same each time, so each
        # benchmark process makes them once
        key = (type(self).__name__, name)
        if key not in _PER_PROCESS:
            model = self.models[name]()
            program = unpack(cache[name])
            inputs = program.random_inputs(0)
            session = ort_session(model)
            session.run(None, inputs)  # onnxruntime's first run allocates: not part of its inference time
            program._loaded()  # lpusim's analogue of the session: the program decoded and loaded once
            _PER_PROCESS[key] = (model, program, inputs, session)
        self.model, self.program, self.inputs, self.session = _PER_PROCESS[key]
        self.feeds = self.inputs

    # ----- wall times ------------------------------------------------------------------------------------
    def time_compile(self, cache, name):
        lpusim.compile(self.model)

    def time_simulate(self, cache, name):
        """Functional simulation (every value computed), inputs in and outputs out included."""
        self.program.run(self.inputs)

    def time_simulate_timing_only(self, cache, name):
        self.program.run(self.inputs, timing_only=True)

    def time_onnxruntime(self, cache, name):
        """onnxruntime's inference on the same model and inputs (session made in setup)."""
        self.session.run(None, self.feeds)

    time_onnxruntime.repeat = (5, 20, 20.0)  # milliseconds each: more samples for a steadier median

    # ----- within-process ratios and rates ---------------------------------------------------------------
    def _over_onnxruntime(self, fn, repeat: int) -> float:
        """Best wall time of fn() over best onnxruntime inference wall time, the two interleaved (each fn call
        followed by ORT_PER_CALL inferences) so that both see the same load on the machine."""
        best_fn = best_ort = float("inf")
        for _ in range(repeat):
            best_fn = min(best_fn, best_of(fn, 1))
            best_ort = min(best_ort, best_of(lambda: self.session.run(None, self.feeds), ORT_PER_CALL))
        return best_fn / best_ort

    def track_simulate_over_onnxruntime(self, cache, name):
        """Functional simulate wall time (Program.run: inputs in, outputs out) over onnxruntime inference wall
        time, best of each, in one process."""
        return self._over_onnxruntime(lambda: self.program.run(self.inputs), self.ratio_repeat)

    track_simulate_over_onnxruntime.unit = "ratio"

    def track_timing_only_over_onnxruntime(self, cache, name):
        """Timing-only simulate wall time over onnxruntime inference wall time, best of each, in one process."""
        return self._over_onnxruntime(lambda: self.program.run(self.inputs, timing_only=True), self.ratio_repeat)

    track_timing_only_over_onnxruntime.unit = "ratio"

    def track_compile_over_onnxruntime(self, cache, name):
        """Compile wall time over onnxruntime inference wall time, in one process (one compile)."""
        return self._over_onnxruntime(lambda: lpusim.compile(self.model), 1)

    track_compile_over_onnxruntime.unit = "ratio"

    def track_cycles(self, cache, name):
        """Simulated cycles (deterministic: changes only when the schedule does)."""
        return self.program.run(self.inputs, timing_only=True).cycles

    track_cycles.unit = "cycles"

    def track_instructions(self, cache, name):
        """Instructions the simulator issues (repeats counted, NOPs not)."""
        return self.program.run(self.inputs, timing_only=True).instructions

    track_instructions.unit = "instructions"

    def track_instructions_per_second_timing_only(self, cache, name):
        """Simulated instructions per second of wall time in timing-only mode (the simulator core's time)."""
        best = float("inf")
        for _ in range(self.ratio_repeat):
            result = self.program.run(self.inputs, timing_only=True)
            best = min(best, result.wall_simulate_s)
        return result.instructions / best

    track_instructions_per_second_timing_only.unit = "instructions/s"

    def track_peak_rss_simulate(self, cache, name):
        """Peak resident memory of this benchmark process after a functional simulation (it holds the compiled
        program, the inputs and onnxruntime's session too)."""
        self.program.run(self.inputs)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

    track_peak_rss_simulate.unit = "MiB"
