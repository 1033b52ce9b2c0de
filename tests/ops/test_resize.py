"""Resize (lower/resize.py): nearest, linear, cubic with any scales or sizes, every coordinate transformation,
antialias, exclude_outside, tf_crop_and_resize, axes, keep_aspect_ratio_policy, against onnxruntime (row axes in
float32 on the VXM: close to exact; a lane-axis resize passes the MXM as fp16)."""
import numpy as np
import onnx.reference
import pytest
from onnx import helper

import lpusim
from lpusim.check.compare import compare, run_onnxruntime
from onnx_cases import assert_matches_onnxruntime, make_model

RNG = np.random.default_rng(11)


def resize_model(shape, scales=None, sizes=None, roi=None, opset=19, relu=True, **attrs):
    """Relu (so the input is a computed tensor: negative values become 0, a leading Neg keeps them) -> Resize."""
    inits, ins = {}, ["r", "", ""]
    if roi is not None:
        inits["roi"], ins[1] = np.array(roi, np.float32), "roi"
    if scales is not None:
        inits["s"], ins[2] = np.array(scales, np.float32), "s"
    if sizes is not None:
        inits["z"] = np.array(sizes, np.int64)
        ins.append("z")
    first = helper.make_node("Relu" if relu else "Neg", ["x"], ["r"])
    return make_model([first, helper.make_node("Resize", ins, ["y"], **attrs)], inits, {"x": list(shape)},
                      opset=opset)


def close(m, rel=1e-5):
    """Matches onnxruntime (check.py's tolerance), and the row-axis paths also within `rel` of its largest value."""
    program, result, cmp = assert_matches_onnxruntime(m)
    ref, _ = run_onnxruntime(m, program.random_inputs(0))
    scale = max(float(np.abs(ref["y"]).max()), 1e-6)
    assert result.outputs["y"].shape == ref["y"].shape
    assert float(np.abs(result.outputs["y"] - ref["y"]).max()) <= rel * scale
    return program, result


def test_bilinear_2x_upsampling_of_64_channels():
    program, result = close(resize_model((1, 64, 8, 8), [1, 1, 2, 2], mode="linear"))
    assert result.cycles > 0


def test_bilinear_384_channels_past_320_lanes():
    close(resize_model((1, 384, 5, 6), [1, 1, 2, 2], mode="linear", relu=False))


@pytest.mark.parametrize("shape,sizes", [((1, 8, 5, 7), [1, 8, 10, 14]), ((2, 4, 6, 5), [2, 4, 3, 9])])
def test_bilinear_align_corners(shape, sizes):
    close(resize_model(shape, sizes=sizes, mode="linear", coordinate_transformation_mode="align_corners",
                       relu=False))


@pytest.mark.parametrize("mode", ["linear", "cubic", "nearest"])
@pytest.mark.parametrize("scales", [[1, 1, 0.5, 0.5], [1, 1, 0.6, 0.75], [1, 1, 1.5, 2.5], [1, 1, 1.7, 0.8]])
def test_downsampling_and_non_integer_scales(mode, scales):
    close(resize_model((1, 6, 7, 9), scales, mode=mode, relu=False), rel=0 if mode == "nearest" else 1e-5)


@pytest.mark.parametrize("attrs", [
    {"mode": "nearest", "coordinate_transformation_mode": "align_corners", "nearest_mode": "ceil"},
    {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "floor"},
    {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "round_prefer_ceil"},
    {"mode": "nearest", "coordinate_transformation_mode": "pytorch_half_pixel"},
    {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
    {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
    {"mode": "cubic", "coordinate_transformation_mode": "asymmetric"},
    {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1},
])
def test_coordinate_modes_with_sizes(attrs):
    close(resize_model((2, 3, 5, 6), sizes=[2, 3, 8, 4], relu=False, **attrs),
          rel=0 if attrs["mode"] == "nearest" else 1e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_antialiased_downsampling(mode):
    close(resize_model((1, 5, 12, 10), [1, 1, 0.4, 0.6], mode=mode, antialias=1, relu=False))


def test_tf_crop_and_resize_with_extrapolation():
    close(resize_model((1, 3, 6, 6), sizes=[1, 3, 4, 5], roi=[0, 0, -0.2, 0.3, 1, 1, 0.7, 1.4], mode="linear",
                       coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-3.5, relu=False))


def test_axes_and_keep_aspect_ratio_policy():
    m = make_model([helper.make_node("Neg", ["x"], ["r"]),
                    helper.make_node("Resize", ["r", "", "", "z"], ["y"], mode="nearest", axes=[3, 2],
                                     keep_aspect_ratio_policy="not_smaller")],
                   {"z": np.array([7, 5], np.int64)}, {"x": [1, 3, 4, 6]}, opset=19)
    close(m, rel=0)


def test_resize_along_the_lanes_is_an_mxm_matmul():
    program, result = close(resize_model((3, 40), [1, 2.5], mode="linear", relu=False), rel=2e-3)  # fp16
    assert [n.kind for n in program._graph.nodes if n.onnx_op == "Resize"] == ["matmul"]


def test_bilinear_of_a_3d_tensor_along_rows():
    close(resize_model((2, 9, 16), [1, 1.5, 1], mode="linear", relu=False))


def test_unet_up_path_conv_resize_concat():
    """Conv -> bilinear 2x Resize -> Concat with the skip connection -> Conv."""
    c, h = 16, 6
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Resize", ["b", "", "s"], ["u"], mode="linear"),
             helper.make_node("Concat", ["u", "skip"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["y"], pads=[1, 1, 1, 1])]
    inits = {"w1": RNG.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.2,
             "w2": RNG.standard_normal((8, 2 * c, 3, 3)).astype(np.float32) * 0.2,
             "s": np.array([1, 1, 2, 2], np.float32)}
    m = make_model(nodes, inits, {"x": [1, c, h, h], "skip": [1, c, 2 * h, 2 * h]})
    assert_matches_onnxruntime(m)


def test_align_corners_scales_follow_the_onnx_reference():
    """align_corners with scales whose output length is fractional (0.5 * 5 = 2.5): ONNX's reference (and the
    backend test data) divide by the fractional length - 1, onnxruntime by the whole one; lpusim follows ONNX's."""
    m = resize_model((1, 4, 6, 5), [1, 1, 0.5, 0.5], mode="linear", coordinate_transformation_mode="align_corners",
                     relu=False)
    program = lpusim.compile(m)
    x = program.random_inputs(0)
    result = program.run(x)
    want = onnx.reference.ReferenceEvaluator(m).run(None, x)[0]
    assert compare(result.outputs, {"y": want})["outputs_match"]
    np.testing.assert_allclose(result.outputs["y"], want, rtol=1e-5, atol=1e-5)


def test_computed_scales_are_a_clear_error():
    m = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Abs", ["sc"], ["s"]),
                    helper.make_node("Resize", ["r", "", "s"], ["y"], mode="linear")],
                   {}, {"x": [1, 2, 4, 4], "sc": [4]})
    with pytest.raises(lpusim.CompileError, match="Resize node 'y'.*constant roi/scales/sizes"):
        lpusim.compile(m)


def test_too_wide_antialias_footprint_is_a_clear_error():
    m = resize_model((1, 2, 200, 3), [1, 1, 0.02, 1], mode="cubic", antialias=1)
    with pytest.raises(lpusim.CompileError, match="Resize node 'y'.*taps per output"):
        lpusim.compile(m)


@pytest.mark.parametrize("opset,ins,inits,attrs", [
    (10, ["s"], {"s": np.array([1, 1, 2, 1.5], np.float32)}, {"mode": "linear"}),
    (11, ["roi", "s"], {"roi": np.zeros(0, np.float32), "s": np.array([1, 1, 2, 1.5], np.float32)},
     {"mode": "linear"}),
    (11, ["roi", "s", "z"], {"roi": np.zeros(0, np.float32), "s": np.zeros(0, np.float32),
                            "z": np.array([1, 3, 7, 4])}, {"mode": "cubic"}),
    (13, ["", "", "z"], {"z": np.array([1, 3, 7, 4])},
     {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}),
])
def test_older_opsets(opset, ins, inits, attrs):
    """Resize-10 (X, scales), Resize-11 (roi and scales required, empty when unused), Resize-13 (optional)."""
    close(make_model([helper.make_node("Neg", ["x"], ["r"]), helper.make_node("Resize", ["r"] + ins, ["y"], **attrs)],
                     inits, {"x": [1, 3, 5, 6]}, opset=opset))


def test_compact_weights_through_row_maps(monkeypatch):
    """Past FULL_WEIGHT_BYTES every tap's weights are one constant row per output index read through a row map."""
    from lpusim.compiler.lower import resize as lower_resize
    monkeypatch.setattr(lower_resize, "FULL_WEIGHT_BYTES", 0)
    program, _ = close(resize_model((2, 5, 4, 6), [1, 1, 2.5, 1.5], mode="cubic", relu=False))
    weights = [t for t in program._graph.tensors.values() if t.kind == "const" and t.name.startswith("resizew")]
    assert weights and max(t.rows for t in weights) <= 10  # out_h = 10, out_w = 9


def fused_passes(program):
    """The Resize's VXM nodes that read several taps in one pass (lower/resize.py `_resize_fused`): several
    computed tensors through row maps (a chained pass reads one, and maybe its weights through another)."""
    g = program._graph
    return [n for n in g.nodes if n.onnx_op.startswith("Resize")
            and sum(v.rows is not None and g.tensors[v.tensor].kind == "value" for v in n.sources) > 1]


@pytest.mark.parametrize("shape,sizes,mode,ctm", [
    ((1, 3, 5, 5), [1, 3, 160, 160], "linear", "pytorch_half_pixel"),  # U^2-Net's side outputs: by 32
    ((1, 8, 6, 7), [1, 8, 24, 14], "linear", "half_pixel"),  # by 4 and 2
    ((1, 4, 5, 6), [1, 4, 15, 18], "linear", "align_corners"),  # by 3
    ((1, 4, 5, 6), [1, 4, 20, 13], "cubic", "asymmetric"),  # 4 taps, non-integer along W
    ((2, 5, 4, 3), [2, 5, 8, 9], "linear", "half_pixel"),  # a batch of 2
])
def test_upsampling_runs_each_axis_in_one_pass(shape, sizes, mode, ctm):
    """An upsampling axis runs all its taps in one VXM pass (each tap past the first reads a copy of the
    smaller input): matches onnxruntime, cycles equal the prediction."""
    program, _ = close(resize_model(shape, sizes=sizes, mode=mode, coordinate_transformation_mode=ctm,
                                    relu=False))
    assert len(fused_passes(program)) == 2  # H and W


def test_downsampling_keeps_one_pass_per_tap():
    """Shrinking, the input is the larger tensor: copying it would cost more than the passes it saves."""
    program, _ = close(resize_model((1, 6, 12, 10), [1, 1, 0.5, 0.5], mode="linear", relu=False))
    assert not fused_passes(program)


def test_one_channel_upsampling_by_32_to_160_fits_in_half_the_sram():
    """A one-channel map bilinearly upsampled by 32 (U^2-Net-p's deepest side output at 160 x 160): one
    pixel per row, so a full-size f32 partial sum is 25,600 rows of 1,280 bytes; the fused pass stores none
    (67.2 MB and 53,086 cycles with one pass per tap, measured before the fused pass)."""
    m = resize_model((1, 1, 5, 5), sizes=[1, 1, 160, 160], mode="linear",
                     coordinate_transformation_mode="pytorch_half_pixel")
    program, result = close(m)
    assert program.sram_bytes < 40e6  # 35.5 MB when measured
    assert result.cycles < 30_000  # 26,947 when measured


def test_full_weights_of_few_channels_count_whole_vectors():
    """A tap's weights as one row per output row cost a whole 320-lane vector per row however few channels the
    image has: for one channel at 96 x 96 that is 11.8 MB (it was counted as 37 KB), so they go through a row
    map (one row per output index, 96 rows) instead."""
    program, _ = close(resize_model((1, 1, 6, 12), sizes=[1, 1, 96, 96], mode="linear", relu=False))
    weights = [t for t in program._graph.tensors.values() if t.kind == "const" and t.name.startswith("resizew")]
    assert weights and max(t.rows for t in weights) <= 96


def test_a_fused_pass_that_does_not_place_falls_back_to_one_pass_per_tap():
    """One channel from 17 x 17 to 272 x 272: the fused passes' estimate is 119 MB, but the 94.7 MB f32 output,
    kept apart from the four slices' worth of sources the pass streams, finds no room; compile_graph lowers the
    model again with one pass per tap (placed in 198 MB, as before the fused pass) instead of failing."""
    program, _ = close(resize_model((1, 1, 17, 17), sizes=[1, 1, 272, 272], mode="linear", relu=False))
    assert not fused_passes(program)
