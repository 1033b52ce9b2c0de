"""onnx's light_* models (full-size architectures with constant weights): slow, run with `pytest -m slow`."""
import os
import sys

import pytest

import lpusim

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from light_models import light_path, measure  # noqa: E402

FITS = ["resnet50", "squeezenet", "shufflenet", "inception_v1", "inception_v2", "densenet121"]
# fp16 weights alone exceed one chip's 220 MiB (or come close): the compiler must say how many chips it takes
TOO_LARGE = ["vgg19", "bvlc_alexnet", "zfnet512"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FITS)
def test_light_model_matches_onnxruntime(name):
    row = measure(name)
    assert row["status"] == "matched", row
    assert row["cycles"] == row["predicted"] == row["timing_only_cycles"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TOO_LARGE)
def test_light_model_too_large_names_chips(name):
    with pytest.raises(lpusim.CompileError, match=r"needs [\d,]+ bytes of SRAM .* it would take \d+ chips"):
        lpusim.compile(light_path(name))


def test_light_models_are_present():
    assert all(os.path.exists(light_path(n)) for n in FITS + TOO_LARGE)
