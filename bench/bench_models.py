"""asv benchmarks: ResNet-50 and large matmuls against onnxruntime (see _common.py for what each measures).

Run against the current checkout (after `pip install '.[bench]'`):
    asv machine --yes && asv run --python=same --set-commit-hash=HEAD
"""
from ._common import _ModelBench
from .workloads import matmul, resnet50

# BERT-base (random weights, sequence 128) joins here once the transformer ops compile: a `BertBase` class like
# the two below over a `bert_base()` model in workloads.py. Not yet: no placeholder benchmark until then.


class ResNet50(_ModelBench):
    """onnx's light_resnet50 (batch 1, 3x224x224), cut before its Softmax: the 1000 logits."""

    models = {"light_resnet50": resnet50}
    params = list(models)

    def setup_cache(self):  # asv keys its cache by this function's line: one per class
        return _ModelBench.setup_cache(self)

    setup_cache.timeout = 1800


class MatMul(_ModelBench):
    """One [rows, 2048] x [2048, 2048] MatMul with constant weights: the MXM streaming at full size."""

    models = {"matmul_256x2048x2048": lambda: matmul(256, 2048, 2048),
              "matmul_2048x2048x2048": lambda: matmul(2048, 2048, 2048)}
    params = list(models)

    def setup_cache(self):
        return _ModelBench.setup_cache(self)

    setup_cache.timeout = 1800
