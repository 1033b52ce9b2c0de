"""asv benchmarks: ResNet-50, BERT-base and large matmuls against onnxruntime (what each measures: _common.py).

Run against the current checkout (after `pip install '.[bench]'`):
    asv machine --yes && asv run --python=same --set-commit-hash=HEAD
"""
from ._common import _ModelBench
from .workloads import bert_base, matmul, resnet50


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


class BertBase(_ModelBench):
    """A BERT-base encoder: 12 layers, hidden 768, 12 heads, sequence 128, batch 1, random weights."""

    models = {"bert_base_seq128": bert_base}
    params = list(models)
    ratio_repeat = 2  # a functional run takes tens of seconds
    repeat = (1, 2, 60.0)

    def setup_cache(self):
        return _ModelBench.setup_cache(self)

    setup_cache.timeout = 1800
