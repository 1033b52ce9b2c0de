"""The SXM tables' room in the slices kept for them (schedule/sxm.py keep_table_space): weight slots may share
those slices, and weights placed before the first transpose must not take the rows its tables need."""
import numpy as np
from onnx import helper

from lpusim.chip import Chip
from onnx_cases import assert_matches_onnxruntime, make_model


def test_weights_before_the_first_transpose_leave_its_tables_room():
    """40 MatMuls of 320 x 320 weights, then a Transpose, on a chip of 1,024 addresses per slice: the weights
    filled both banks of the rotation tables' slices before the transpose asked for them ("the SXM map tables of
    hemisphere W fill the MEM slices kept for them: 1 tables of 320 rows stored, a new one of 320 rows fits neither
    bank of slice 39"; PaddleOCR rec at fp32 on tsp_v1 the same way, with 0 tables stored)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], {}, "x"
    for i in range(40):
        inits[f"w{i}"] = (rng.standard_normal((320, 320)) / 18).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Transpose", [prev], ["y"], perm=[1, 0]))
    cfg = dict(Chip.load().config)
    cfg.update(mem_words=1024, sram_bytes=cfg["mem_slices"] * 1024 * cfg["lanes"])
    assert_matches_onnxruntime(make_model(nodes, inits, {"x": [16, 320]}), chip=cfg)
