"""Shared set-up of the test suite.

The tests are grouped by subject, in the order data flows through lpusim:
  unit/       single compiler parts: fp16 scaling, SRAM reuse, image borders, a program loaded once
  ops/        ONNX ops compiled, simulated and compared with onnxruntime (fp16 and int8), the ONNX backend suite
  models/     whole models: MLPs, onnx's light_* CNNs, torch/transformers exports, segment-by-segment checks
  multichip/  pipeline and tensor parallelism, many-chip systems
  reference/  the Python reference interpreter, and the Rust core against it on generated random programs
  cli/        the `lpusim` command and hand-written assembly
Long cases carry `@pytest.mark.slow` and run with `pytest -m slow`.

Helpers every group uses live in onnx_cases.py, beside this file; this folder goes on sys.path here so that a test
in any subfolder imports them the same way, whatever pytest's import mode.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# `lpusim llm` keeps measured plan pieces in a disk cache (default ~/.cache/lpusim/pieces): the suite uses its own,
# so a test run neither reads a user's entries nor leaves its own behind.
if "LPUSIM_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["LPUSIM_CACHE"] = tempfile.mkdtemp(prefix="lpusim-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LPUSIM_CACHE"], True)
