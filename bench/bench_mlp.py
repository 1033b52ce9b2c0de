"""asv benchmarks: compile and simulate time of MLPs against onnxruntime on the same model and inputs.

Run against the current checkout (after `pip install '.[bench]'`):
    asv machine --yes && asv run --python=same --set-commit-hash=HEAD
What each benchmark measures: _common.py.
"""
from lpusim.models import mlp

from ._common import _ModelBench


class MLP(_ModelBench):
    models = {"mlp_784_300_10": lambda: mlp((784, 300, 10), batch=1, seed=0),
              "mlp_1024_4096_1024": lambda: mlp((1024, 4096, 1024), batch=1, seed=0)}
    params = list(models)
    ratio_repeat = 5
    # milliseconds per call: let asv pick how many calls make a sample (its defaults)
    number = 0
    repeat = 0
    warmup_time = -1

    def setup_cache(self):  # asv keys its cache by this function's line: one per class
        return _ModelBench.setup_cache(self)
