"""SRAM reuse of released stores (schedule/scheduler.py, schedule/sram.py): bordered stores kept whole for a later store of the
same layout (BorderedPool: its border is still zeros or its pad value), and a released block of more slices split
for a narrower store when no fresh room is left (SramAllocator.split_wider)."""
import numpy as np
from onnx import helper

import lpusim
from lpusim.compiler.schedule import sram as sram_module
from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(11)


def conv_stack(n, c=8, hw=12, pad_kind="zeros"):
    """n 3x3 convolutions with padding 1 (each reads a bordered store of the same layout), ReLU between, and a
    3x3 max pool with padding 1 (a border of -inf) after each even one when `pad_kind` is "mixed"."""
    nodes, inits, x = [], {}, "x"
    for i in range(n):
        inits[f"w{i}"] = (RNG.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
        if pad_kind == "mixed" and i % 2 == 0:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            x = f"p{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return make_model(nodes, inits, {"x": [1, c, hw, hw]})


def test_bordered_stores_reused_by_stores_of_the_same_layout(monkeypatch):
    """Reuse happens when room is short (`short_of_room`; here forced, as in the retry after an out-of-SRAM)."""
    m = conv_stack(6)
    monkeypatch.setattr(sram_module.SramAllocator, "short_of_room", lambda self, extra=0: True)
    program, _, _ = assert_matches_onnxruntime(m)
    monkeypatch.setattr(sram_module.BorderedPool, "keep", lambda self, key, tiles, last: False)
    fresh = lpusim.compile(m)
    assert program.sram_bytes < fresh.sram_bytes


def test_bordered_reuse_keeps_each_pad_value_apart(monkeypatch):
    """Convolutions (zero borders) and max pools (-inf borders) of the same geometry: a store only takes the space
    of one with the same pad value; negative inputs make a wrong border show."""
    m = conv_stack(6, pad_kind="mixed")
    monkeypatch.setattr(sram_module.SramAllocator, "short_of_room", lambda self, extra=0: True)
    x = {"x": -np.abs(RNG.standard_normal((1, 8, 12, 12))).astype(np.float32)}
    assert_matches_onnxruntime(m, x)


def test_split_wider_takes_the_first_slices_and_keeps_the_rest_free():
    from lpusim.chip import Chip
    sram = sram_module.SramAllocator(Chip.load(None))
    sram.release(0, 4, 100, 64, 50)
    assert sram.split_wider(2, 40, "W", set()) == (0, 100, 50)
    assert sram.free[(2, "W")] == [[2, 2, 0, 100, 64, 50], [0, 2, 0, 140, 24, 50]]
    assert sram.split_wider(2, 40, "E", set()) is None
    assert sram.split_wider(2, 40, "W", set()) is None  # no block of more slices is left ...
    assert sram.alloc_reusable(2, 64, "W", 0, set())[:2] == (2, 100)  # ... the exact width is taken first


def test_released_blocks_joined_when_fresh_room_runs_out():
    """Two released [S]-row blocks of the same slices whose addresses meet serve a [2S]-row store once no fresh
    room is left (coalesce), with the later not_before of the two; blocks of other slices stay apart."""
    from lpusim.chip import Chip
    sram = sram_module.SramAllocator(Chip.load(None))
    sram.release(8, 4, 300, 128, 70)
    sram.release(8, 4, 172, 128, 90)
    sram.release(12, 4, 428, 128, 10)
    assert sram.take_released(4, 256, "W", set()) is None  # no single block holds 256 rows
    sram.coalesce()
    assert sorted(map(tuple, sram.free[(4, "W")])) == [(8, 4, 0, 172, 256, 90), (12, 4, 0, 428, 128, 10)]
    assert sram.take_released(4, 256, "W", set()) == (8, 172, 90)


def test_schedules_with_joined_blocks_match_onnxruntime(monkeypatch):
    """Every released block joined whenever none fits (the placement compile() retries with after an out-of-SRAM):
    attention at batch 3 still matches onnxruntime, and fresh SRAM does not grow."""
    from lpusim.models import bert_encoder
    m = bert_encoder(layers=2, hidden=64, heads=4, seq=16, batch=3)
    plain = lpusim.compile(m)
    init = sram_module.SramAllocator.__init__

    def joining(self, chip):
        init(self, chip)
        self.join_at = 0.0
    monkeypatch.setattr(sram_module.SramAllocator, "__init__", joining)
    program, _, _ = assert_matches_onnxruntime(m)
    assert program.sram_bytes <= plain.sram_bytes
