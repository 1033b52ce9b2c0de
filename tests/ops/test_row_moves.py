"""Row moves (lower/rows.py) against onnxruntime: Concat along row axes, Slice/Split along row axes with steps
(negative too), Pad of every mode on any axes (crops too), Tile repeating rows."""
import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(31)
I64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731


def _x(shape, name="x"):
    return {name: RNG.uniform(-3, 3, shape).astype(np.float32)}


@pytest.mark.parametrize("shapes, axis", [
    ([(3, 5), (4, 5)], 0),
    ([(2, 3, 7), (2, 1, 7), (2, 4, 7)], 1),
    ([(2, 3, 7), (1, 3, 7)], 0),
    ([(330, 40), (5, 40)], 0),       # past 320 rows
    ([(3, 330), (2, 330)], -2),      # past 320 lanes
    ([(1, 3, 4, 5), (2, 3, 4, 5)], 0),  # images' batch axis
    ([(1, 3, 4, 5), (1, 3, 2, 5)], 2),
    ([(1, 3, 4, 5), (1, 3, 4, 2)], 3),
])
def test_concat_rows(shapes, axis):
    names = [f"x{i}" for i in range(len(shapes))]
    m = make_model([helper.make_node("Concat", names, ["y"], axis=axis)], {}, dict(zip(names, shapes)))
    feeds = {}
    for n, s in zip(names, shapes):
        feeds.update(_x(s, n))
    assert_matches_onnxruntime(m, feeds)


def test_concat_many_inputs_with_a_constant_and_specials():
    # 8 computed inputs (two select chains) and a constant one; inf, NaN and -0 pass bit for bit
    shapes = [(1 + i % 3, 6) for i in range(8)]
    names = [f"x{i}" for i in range(8)]
    c = RNG.standard_normal((2, 6)).astype(np.float32)
    m = make_model([helper.make_node("Concat", names[:4] + ["c"] + names[4:], ["y"], axis=0)], {"c": c},
                   dict(zip(names, shapes)))
    feeds = {}
    for n, s in zip(names, shapes):
        feeds.update(_x(s, n))
    feeds["x0"][0, :3] = [np.inf, -np.inf, -0.0]
    assert_matches_onnxruntime(m, feeds)


def test_concat_batch_feeds_a_conv():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Concat", ["a", "b"], ["c"], axis=0),
             helper.make_node("Conv", ["c", "w"], ["y"], pads=[1, 1, 1, 1])]
    m = make_model(nodes, {"w": w}, {"a": [1, 3, 6, 5], "b": [2, 3, 6, 5]})
    assert_matches_onnxruntime(m, {**_x((1, 3, 6, 5), "a"), **_x((2, 3, 6, 5), "b")})


@pytest.mark.parametrize("shape, starts, ends, axes, steps", [
    ((7, 9), [6], [0], [0], [-2]),
    ((4, 6, 5), [5, 0], [-7, 5], [1, 2], [-1, 2]),     # negative step on rows and a lane step
    ((3, 8, 5), [2, 1], [0, 7], [0, 1], [-1, 3]),      # two row axes
    ((2, 3, 6, 5), [5, 1], [0, 3], [3, 2], [-2, 1]),   # an image's W and H
    ((2, 5, 4, 4), [1], [2], [0], [1]),                # an image's batch
    ((400, 12), [390], [5], [0], [-7]),                # past 320 rows
    ((3, 5, 340), [4, 335], [0, 2], [1, 2], [-3, -4]),  # past 320 lanes, negative steps on rows and lanes
])
def test_slice_rows(shape, starts, ends, axes, steps):
    m = make_model([helper.make_node("Slice", ["x", "s", "e", "a", "p"], ["y"])],
                   {"s": I64(starts), "e": I64(ends), "a": I64(axes), "p": I64(steps)}, {"x": list(shape)})
    assert_matches_onnxruntime(m, _x(shape))


def test_split_along_axis_3_of_4d():
    # rotary embedding's halves: Split along the last axis of [B, S, H, D] (a row axis in the image layout)
    nodes = [helper.make_node("Split", ["x", "sp"], ["a", "b"], axis=3),
             helper.make_node("Concat", ["b", "a"], ["y"], axis=3)]
    m = make_model(nodes, {"sp": I64([3, 5])}, {"x": [2, 4, 3, 8]})
    assert_matches_onnxruntime(m, _x((2, 4, 3, 8)))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("shape, pads", [
    ((5, 7), [2, 0, 1, 0]),                         # rows
    ((5, 7), [1, 2, 2, 3]),                         # rows and lanes
    ((3, 4, 6), [0, 2, -1, 1, 1, 2]),              # a crop on lanes
    ((1, 3, 5, 6), [0, 0, 2, 3, 0, 0, 1, 2]),      # an image's borders
    ((2, 3, 5, 6), [0, 1, -1, 2, 0, 1, 2, -2]),    # channels, and crops
])
def test_pad_modes(mode, shape, pads):
    nodes = [helper.make_node("Pad", ["x", "p", "v"], ["y"], mode=mode)]
    m = make_model(nodes, {"p": I64(pads), "v": np.float32(-1.5)}, {"x": list(shape)})
    assert_matches_onnxruntime(m, _x(shape))


def test_pad_with_axes_past_320():
    nodes = [helper.make_node("Pad", ["x", "p", "v", "ax"], ["y"], mode="reflect")]
    m = make_model(nodes, {"p": I64([3, 2, 4, 1]), "v": np.float32(0.0), "ax": I64([0, -1])}, {"x": [330, 340]},
                   opset=18)
    assert_matches_onnxruntime(m, _x((330, 340)))


def test_pad_constant_value_rows_of_an_image_feeding_a_conv():
    w = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Pad", ["x", "p", "v"], ["h"]), helper.make_node("Conv", ["h", "w"], ["y"])]
    m = make_model(nodes, {"p": I64([0, 0, 1, 2, 0, 0, 2, 1]), "v": np.float32(0.75), "w": w}, {"x": [1, 3, 5, 4]})
    assert_matches_onnxruntime(m, _x((1, 3, 5, 4)))


@pytest.mark.parametrize("shape, reps", [((3, 5), [2, 1]), ((2, 3, 4), [2, 3, 2]), ((1, 3, 2, 4), [2, 1, 2, 3]),
                                         ((170, 8), [2, 1])])
def test_tile_rows(shape, reps):
    m = make_model([helper.make_node("Tile", ["x", "r"], ["y"])], {"r": I64(reps)}, {"x": list(shape)})
    assert_matches_onnxruntime(m, _x(shape))


def test_empty_split_part_is_dropped_by_concat():
    # rotary embedding without a pass-through part: Split gives a zero-size piece that a Concat drops
    nodes = [helper.make_node("Split", ["x", "sp"], ["a", "b", "e"], axis=3),
             helper.make_node("Concat", ["b", "e", "a"], ["y"], axis=3)]
    m = make_model(nodes, {"sp": I64([4, 4, 0])}, {"x": [1, 3, 2, 8]})
    assert_matches_onnxruntime(m, _x((1, 3, 2, 8)))


def test_reflect_pad_of_an_image_feeding_a_conv_past_320_channels():
    w = (RNG.standard_normal((8, 330, 3, 3)) * 0.05).astype(np.float32)
    nodes = [helper.make_node("Pad", ["x", "p"], ["h"], mode="reflect"), helper.make_node("Conv", ["h", "w"], ["y"])]
    m = make_model(nodes, {"p": I64([0, 0, 1, 1, 0, 0, 1, 1]), "w": w}, {"x": [1, 330, 5, 6]})
    assert_matches_onnxruntime(m, _x((1, 330, 5, 6)))


def test_concat_rows_then_matmul_int8():
    # precision="int8": compared with onnxruntime running the same quantised model (at most one output step off)
    pytest.importorskip("onnxruntime.quantization")
    import lpusim
    from lpusim.check.compare import run_onnxruntime
    from lpusim.compiler.frontend.quantize import quantize_model
    w = RNG.standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("Concat", ["a", "b"], ["c"], axis=1), helper.make_node("MatMul", ["c", "w"], ["y"])]
    m = make_model(nodes, {"w": w}, {"a": [2, 3, 16], "b": [2, 5, 16]})
    x = {**_x((2, 3, 16), "a"), **_x((2, 5, 16), "b")}
    program = lpusim.compile(m, precision="int8", calibration=x)
    result = program.run(x)
    assert result.cycles == program.predicted_cycles
    quant = quantize_model(m, x)
    ref, _ = run_onnxruntime(quant, x)
    scale = max(float(np.asarray(numpy_helper.to_array(i)).max()) for i in quant.graph.initializer
                if i.name.startswith("y") and "scale" in i.name)
    assert np.abs(result.outputs["y"] - ref["y"]).max() <= scale * (1 + 1e-6)


