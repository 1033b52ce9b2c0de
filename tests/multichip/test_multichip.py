"""Pipeline parallelism (lpusim/multichip/): models split over 1, 2, 4 (8) chips of a simulated node.

Pipeline parallelism does not change arithmetic, so outputs must be bit-identical to the single-chip run; the
simulated cycles (the system's, and every chip's own) must equal the compiler's prediction; drift within the
tolerance the program was built for never breaks a run, and drift beyond it is an error.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import lpusim
from lpusim import CompileError, SimulationError
from lpusim.chip import Chip
from lpusim.cli import main
from lpusim.models import mini_resnet, mlp
from lpusim.multichip.pipeline import compile_multichip
from lpusim.multichip.program import MultiProgram
from lpusim.system import System


@pytest.fixture(scope="module")
def demo():
    model = mlp((784, 300, 10), batch=1, seed=0)
    single = lpusim.compile(model)
    return model, single, single.run(seed=0)


@pytest.fixture(scope="module")
def resnet():
    model = mini_resnet()
    single = lpusim.compile(model)
    return model, single, single.run(seed=0)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _check(program, reference, **run):
    result = program.run(seed=0, **run)
    assert result.cycles == result.predicted_cycles
    assert result.chip_cycles == result.predicted_chip_cycles
    assert _same(result.outputs, reference.outputs), "pipeline parallelism must not change a single bit"
    return result


@pytest.mark.parametrize("chips", [1, 2, 3])
def test_demo_mlp(demo, chips):
    model, single, ref = demo
    program = lpusim.compile(model, chips=chips, parallel="pipeline")
    if chips == 1:
        assert not isinstance(program, MultiProgram) and program.predicted_cycles == single.predicted_cycles
        return
    assert isinstance(program, MultiProgram) and program.chips == chips
    result = _check(program, ref)
    assert result.link_summary["links_used"] == chips - 1
    assert result.sync_cycles > 0 and len(result.utilization) == chips


def test_demo_mlp_has_three_nodes_for_at_most_three_chips(demo):
    with pytest.raises(CompileError, match="only 3 IR nodes"):
        lpusim.compile(demo[0], chips=4)


def test_deeper_mlp_on_four_chips():
    model = mlp((784, 300, 200, 100, 10), batch=2, seed=5)
    ref = lpusim.compile(model).run(seed=0)
    program = lpusim.compile(model, chips=4, parallel="auto")
    _check(program, ref)
    assert [t["to_chip"] for t in program.transfers] == [1, 2, 3]


@pytest.mark.parametrize("chips", [1, 2, 4, 8])
def test_mini_resnet(resnet, chips):
    model, single, ref = resnet
    program = lpusim.compile(model, chips=chips)
    if chips == 1:
        assert _same(program.run(seed=0).outputs, ref.outputs)
        return
    result = _check(program, ref)
    stages = program.partition["stages"]
    assert [s["chip"] for s in stages] == list(range(chips))
    assert stages[0]["nodes"][0] == 0 and stages[-1]["nodes"][1] == len(single._graph.nodes)
    # every vector the transfers plan goes over the links, 328 bytes a flit
    planned = sum(t["vectors"] for t in program.transfers)
    assert result.link_summary["vectors"] == planned and result.link_summary["bytes"] == 328 * planned
    assert all(0 < lk["busy_fraction"] < 1 for lk in result.links)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("magnitude", [0.0, 12.5, 25.0])
def test_drift_within_tolerance_never_breaks_a_run(resnet, seed, magnitude):
    model, _, ref = resnet
    program = _resnet4(model)
    system = System.load({"chips": 4, "seed": seed, "drift_ppm": magnitude})
    result = _check(program, ref, system=system)
    assert all(abs(c["drift_ppm"]) <= magnitude for c in result.system.chips)


_CACHE: dict = {}


def _resnet4(model, **kw):
    key = json.dumps(kw, sort_keys=True)
    if key not in _CACHE:
        _CACHE[key] = compile_multichip(model, 4, **kw)
    return _CACHE[key]


@pytest.mark.parametrize("seed", [0, 5])
def test_large_drift_tolerance_inserts_more_deskews(resnet, seed):
    """Built for 1000 ppm with a barrier once 2000 cycles have run free: barriers inside the compute (and the
    idle wait), longer RUNTIME_DESKEW delays; any drift up to 1000 ppm runs, exactly as predicted."""
    model, _, ref = resnet
    program = _resnet4(model, system={"drift_ppm": 1000.0}, max_free_cycles=2000)
    default = _resnet4(model)
    assert sum(map(len, program.barriers)) > sum(map(len, default.barriers))
    # a barrier comes between nodes once a chip has run free 2000 cycles (a node itself is never cut)
    assert max(d for bars in program.barriers for _, d in bars) > max(d for bars in default.barriers for _, d in bars)
    assert len(program.barriers[0]) > len(default.barriers[0])
    # a transfer longer than the free run is sent in chunks, each between realignments of both chips
    assert all(t["chunks"] == 1 for t in default.transfers)
    assert [t["chunks"] for t in program.transfers if t["vectors"] > 2000 // 24] == [4]  # 41 vectors a chunk
    for magnitude in (400.0, 1000.0):
        system = System.load({"chips": 4, "seed": seed, "drift_ppm": magnitude, "chip": program.chip.config})
        result = _check(program, ref, system=system)
        assert result.sync_cycles >= 4


def test_drift_beyond_tolerance_is_an_error(resnet):
    model = resnet[0]
    program = lpusim.compile(model, chips=2)  # built for the default 25 ppm
    assert program.drift_tolerance_ppm == 25.0
    with pytest.raises(SimulationError) as ei:
        program.run(seed=0, system=System.load({"chips": 2, "chip_drift_ppm": [0, -3000]}))
    assert ei.value.kind == "DriftOverrun" and ei.value.chip == 1
    with pytest.raises(SimulationError) as ei:  # too far for the HAC alignment itself
        program.run(seed=0, system={"chips": 2, "chip_drift_ppm": [0, 5000]})
    assert ei.value.kind == "DriftOverrun"


def test_too_large_for_one_chip_goes_to_the_fewest_chips():
    cfg = dict(Chip.load().config)
    cfg["mem_words"] = 256
    cfg["sram_bytes"] = cfg["mem_slices"] * cfg["mem_words"] * cfg["lanes"]
    small = Chip.load(cfg)
    model = mlp((1024, 1024, 1024, 1024, 1024), seed=1)
    with pytest.raises(CompileError, match="2 chips"):
        lpusim.compile(model, chip=small)
    with pytest.raises(CompileError, match="at least 2 chips"):
        lpusim.compile(model, chips=1, chip=small, system={"chips": 1})
    program = lpusim.compile(model, chips="auto", chip=small)
    assert program.chips == 2 and "fewest" in program.partition["reason"]
    assert all(s["sram_bytes"] <= small.sram_bytes for s in program.partition["stages"])
    ref = lpusim.compile(model).run(seed=0)
    _check(program, ref)


def test_auto_on_a_model_that_fits_is_one_chip(demo):
    program = lpusim.compile(demo[0], chips="auto")
    assert program.partition["chips"] == 1 and "one chip holds it" in program.partition["reason"]


def test_tensor_parallel_needs_a_matmul_to_split(demo):
    with pytest.raises(CompileError, match="no matmul has 2 or more output column tiles"):
        lpusim.compile(demo[0], chips=2, parallel="tensor")


@pytest.fixture(scope="module")
def wide():
    model = mlp((700, 1300, 1280, 10), batch=3, seed=7)
    return model, lpusim.compile(model).run(seed=0)


@pytest.mark.parametrize("chips", [2, 4])
def test_tensor_parallel_columns(wide, chips):
    """tensor_rows=False: matmul output tiles split over the chips, all-gathered after each split node to the chips
    that read them; every chip's arithmetic is one chip's, so outputs are bit-identical."""
    model, ref = wide
    program = compile_multichip(model, chips, parallel="tensor", tensor_rows=False)
    assert program.parallel == "tensor" and program.partition["exact"]
    fc0, fc1 = program.partition["splits"]
    assert fc0["split"] == fc1["split"] == "columns"
    # fc1's parts read all of fc0's output on every chip; fc2 (one tile) runs on chip 0 alone, so fc1's blocks go
    # to chip 0 only
    assert fc0["gather"] == f"all-gather to chips {list(range(chips))}" and fc1["gather"] == "all-gather to chips [0]"
    result = _check(program, ref)
    assert result.link_summary["links_used"] == chips * (chips - 1)  # every chip to every other (fc0)
    for seed in (1, 2):
        _check(program, ref, system=System.load({"chips": chips, "seed": seed, "chip": program.chip.config}))


def _check_tensor(program, model, single):
    """A tensor-parallel run: exact plans bit-identical to one chip, row splits (f32 partial sums added over the
    links) within onnxruntime's tolerance; cycles as predicted."""
    from lpusim.check.compare import compare, run_onnxruntime

    x = program.random_inputs(0)
    if program.partition.get("exact", True):
        return _check(program, single.run(x))
    result = program.run(x)
    assert result.cycles == result.predicted_cycles
    assert result.chip_cycles == result.predicted_chip_cycles
    ref, _ = run_onnxruntime(model, x)
    assert compare(result.outputs, ref)["outputs_match"]
    return result


def test_auto_picks_the_faster_split(wide):
    model, ref = wide
    program = lpusim.compile(model, chips=4)  # parallel="auto"
    cycles = program.partition["auto"]["predicted_cycles"]
    assert program.parallel == min(cycles, key=cycles.get) and program.predicted_cycles == min(cycles.values())
    _check_tensor(program, model, lpusim.compile(model))


@pytest.fixture(scope="module")
def mlp_4096():
    model = mlp((1024, 4096, 1024), batch=1)
    single = lpusim.compile(model)
    return model, single, single.run(seed=0)


@pytest.mark.parametrize("chips", [2, 4, 8])
def test_tensor_parallel_row_splits(mlp_4096, chips):
    """fc0 split by output columns, fc1 (the graph output) by the matching weight rows: no all-gather of the hidden
    layer; each chip sends each owner of an output tile its f32 partial sum, the owner adds them and adds the bias,
    and the host concatenates the owners' tiles. Outputs match onnxruntime; cycles are as predicted."""
    model, single, _ = mlp_4096
    program = compile_multichip(model, chips, parallel="tensor", tensor_rows=True)
    fc0, fc1 = program.partition["splits"]
    assert (fc0["split"], fc1["split"]) == ("columns", "rows") and not program.partition["exact"]
    assert fc0["gather"] == "none (row-split readers)" and fc1["destinations"] == []
    assert [o for o, _, _ in fc1["owners"]] == list(range(min(4, chips)))  # 1024 columns: 4 tiles
    blocks = program.output_blocks["fc1"]["blocks"]
    assert [c for c, _ in blocks] == [o for o, _, _ in fc1["owners"]]
    result = _check_tensor(program, model, single)
    assert result.outputs["fc1"].shape == (1, 1024)
    again = program.run(program.random_inputs(0), outputs=["fc1"])  # the blocks are read back with the output
    assert np.array_equal(again.outputs["fc1"], result.outputs["fc1"])
    assert result.sync_cycles == 0  # no barrier: the lag covers the drift since the common start


def test_tensor_exchange_falls_back_to_the_latest_frontier(mlp_4096, monkeypatch):
    """When a chip cannot receive a vector overlapped with its compute, every chip undoes that collective (sends,
    receives, store readiness) and plans it again with sends from the latest chip's frontier. Forced here for every
    collective: the program still runs exactly as predicted, under drift too, and computes the same outputs."""
    import importlib

    tensor_sched = importlib.import_module("lpusim.compiler.schedule.tensor")
    model, _, _ = mlp_4096
    overlapped = compile_multichip(model, 4, parallel="tensor", tensor_rows=True)
    exchange = tensor_sched.TensorScheduler.exchange

    def refuse_overlap(self, k, col, tag, lower):
        log = exchange(self, k, col, tag, lower)
        return None if tag == "early" else log

    monkeypatch.setattr(tensor_sched.TensorScheduler, "exchange", refuse_overlap)
    late = compile_multichip(model, 4, parallel="tensor", tensor_rows=True)
    assert late.transfers and not any(t["overlapped"] for t in late.transfers)
    assert all(t["overlapped"] for t in overlapped.transfers)
    assert late.predicted_cycles >= overlapped.predicted_cycles
    x = late.random_inputs(0)
    want = overlapped.run(x).outputs
    for system in (None, {"chips": 4, "seed": 3}):
        result = late.run(x, system=system)
        assert result.cycles == result.predicted_cycles and result.chip_cycles == result.predicted_chip_cycles
        assert _same(result.outputs, want)


def test_auto_takes_the_tensor_split_when_no_pipeline_fits(mlp_4096):
    """3 IR nodes cannot make 8 pipeline stages: parallel='auto' (lpusim run --chips 8) splits by tensors."""
    model, _, _ = mlp_4096
    program = lpusim.compile(model, chips=8)
    assert program.parallel == "tensor" and program.partition["auto"]["chosen"] == "tensor"


def test_tensor_parallel_scales(mlp_4096):
    """Each chip streams 1/N of the weights: 8 chips take under 0.6 of one chip's cycles (deterministic simulated
    counts, not wall time; 894 against 1,584 since a hemisphere's two planes load weights from their own slices,
    which made the one-chip baseline 25% faster), and more chips are never slower."""
    model, single, ref = mlp_4096
    cycles = {1: ref.cycles}
    for chips in (2, 4, 8):
        cycles[chips] = lpusim.compile(model, chips=chips, parallel="tensor").predicted_cycles
    assert cycles[8] < 0.6 * cycles[1]
    assert cycles[1] > cycles[2] > cycles[4] > cycles[8]


def test_cli_json(tmp_path, capsys):
    import onnx

    path = tmp_path / "mlp.onnx"
    onnx.save(mlp((64, 48, 32, 10), seed=2), str(path))
    assert main(["run", str(path), "--chips", "2", "--parallel", "pipeline", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chips"] == 2 and report["outputs_match"] is True
    assert report["cycles"] == report["predicted_cycles"]
    assert report["link_summary"]["vectors"] > 0 and report["sync_cycles"] > 0
    assert len(report["utilization_per_chip"]) == 2 and report["partition"]["stages"][1]["receives"]
    assert main(["run", str(path), "--chips", "two"]) == 2
    capsys.readouterr()
    assert main(["run", str(path), "--chips", "3", "--parallel", "pipeline"]) == 0
    text = capsys.readouterr().out
    assert "x3" in text and "sync stalls" in text and "links" in text and "MATCH" in text


def _small_chip(mem_words: int = 256) -> Chip:
    cfg = dict(Chip.load().config)
    cfg["mem_words"] = mem_words
    cfg["sram_bytes"] = cfg["mem_slices"] * cfg["mem_words"] * cfg["lanes"]
    return Chip.load(cfg)


@pytest.mark.parametrize("scale", [1.0, 3e5])
def test_node_larger_than_a_chip_is_split_by_columns(scale):
    """A 7.2 MB chip and a 1024 x 4096 Gemm (8.5 MB of weight tiles): the Gemm is split into column blocks, the
    next Gemm by rows with an f32 partial sum carried down the pipeline; outputs match onnxruntime and cycles the
    prediction. scale=3e5 puts the hidden layer out of fp16's range, so the reader's chain starts with the exact
    power-of-two rescale (scale_fp16), which every row part applies to its own accumulator."""
    from onnx import numpy_helper

    from lpusim.check.compare import compare, run_onnxruntime

    small = _small_chip()
    model = mlp((1024, 4096, 640, 10), batch=2, seed=3)
    for init in model.graph.initializer:
        if init.name == "fc0.weight":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale), init.name))
    with pytest.raises(CompileError, match="it would take 2 chips"):
        lpusim.compile(model, chip=small)
    with pytest.raises(CompileError, match="must fit one chip"):
        lpusim.compile(model, chips=4, chip=small, parallel="tensor")
    program = lpusim.compile(model, chips="auto", chip=small)
    split, = program.partition["column_splits"]
    assert split["parts"] == 2 and split["column_tiles"] == [[0, 6], [6, 13]]
    assert split["weight_bytes"] > small.sram_bytes and "column blocks" in program.partition["reason"]
    assert all(p.sram_bytes <= small.sram_bytes for p in program.stages)
    nodes = [n for p in program.stages for n in p._graph.nodes]
    ops = [n.onnx_op for n in nodes]
    assert [o.split("(")[-1] for o in ops if "/2)" in o] == ["cols 1/2)", "rows 1/2)", "cols 2/2)", "rows 2/2)"]
    last = next(n for n in nodes if n.onnx_op.endswith("(rows 2/2)"))
    assert (last.steps[0].op == "MUL") == (scale != 1.0)
    # the partial sum travels down the pipeline with the input the second column block reads
    assert any(name.endswith("#ps0") for t in program.transfers for name in t["tensors"])
    x = program.random_inputs(0)
    result = program.run(x)
    assert result.cycles == result.predicted_cycles and result.chip_cycles == result.predicted_chip_cycles
    ref, _ = run_onnxruntime(model, x)
    assert compare(result.outputs, ref)["outputs_match"]


def test_node_larger_than_a_chip_that_cannot_be_split():
    """An oversized Gemm whose output is the graph output has no reader to carry a partial sum: a clear error."""
    with pytest.raises(CompileError, match="cannot be split by output columns: its output is a graph output"):
        lpusim.compile(mlp((1024, 4096), seed=3), chips="auto", chip=_small_chip())


@pytest.mark.slow
def test_vgg19_on_several_chips():
    """onnx's light VGG-19 (482 MB at fp16; FC6 alone 209 MB of weight tiles) on the fewest tsp_v1 chips."""
    import os

    import onnx

    from lpusim.check.report import run_report

    path = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_vgg19.onnx")
    report = run_report(path, chips="auto")
    assert report["outputs_match"] is True and 3 <= report["chips"] <= 8
    assert report["cycles"] == report["predicted_cycles"]
    assert report["chip_cycles"] == report["predicted_chip_cycles"]
    split, = report["partition"]["column_splits"]
    assert split["parts"] == 2 and split["weight_bytes"] > 0.9 * Chip.load().sram_bytes  # past a stage's fill
    assert all(s["sram_bytes"] <= Chip.load().sram_bytes for s in report["partition"]["stages"])
    # the 224 x 224 x 64 activation after the first stage is sent in chunks between realignments
    assert report["partition"]["transfers"][0]["chunks"] > 1


def test_placement_limit_shortens_stages(demo):
    """The allocator's verdict overrides the byte estimate: a stage start limited to one node ends there."""
    from lpusim.compiler import build_graph
    from lpusim.multichip.partition import Partitioner

    _, graph = build_graph(demo[0])
    part = Partitioner(graph, Chip.load(), 24)
    assert part.fewest_chips() == 1 and part.split(2, [1, 1, 1]) == [(0, 2), (2, 3)]
    part.limit(0, 1)
    assert part.max_end(0) == 1 and part.fewest_chips() == 2
    assert part.split(2, [1, 1, 1]) == [(0, 1), (1, 3)]
    part.limit(1, 2)
    assert part.fewest_chips() == 3 and part.split(2, [1, 1, 1]) == []


def test_token_id_inputs_on_two_chips():
    # An int64 ids input (embedding Gather, then a MatMul): the two-chip program draws ids below the table's
    # length like one chip does, and both give the same bits.
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(5)
    table = numpy_helper.from_array(rng.standard_normal((40, 32)).astype(np.float32), "t")
    w = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["t", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])], "ids",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 16])], [table, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    single = lpusim.compile(model)
    program = lpusim.compile(model, chips=2, parallel="pipeline")
    inputs = program.random_inputs(0)
    assert inputs["ids"].dtype == np.int64 and 0 <= inputs["ids"].min() and inputs["ids"].max() < 40
    _check(program, single.run(inputs))


def test_auto_retries_on_two_chips_when_one_chip_placement_fails(monkeypatch):
    """chips="auto" whose SRAM estimate fits one chip but whose placement there runs out of SRAM (issue 16's
    YOLOv8n: 110.7 MB estimated of 230.7 MB, fragmentation) compiles for 2 chips and says why, instead of
    repeating the one-chip error. The one-chip placement failure is forced here; the 2-chip pipeline is real."""
    import lpusim.multichip.pipeline as pipeline
    from lpusim.check.compare import compare, run_onnxruntime
    from lpusim.errors import OutOfSram

    def fails(*args, **kwargs):
        raise OutOfSram("out of SRAM: a tile needs 4 slices x 40 vectors and no slice group has room (forced)")

    model = mlp((64, 96, 32, 10), seed=3)
    monkeypatch.setattr(pipeline, "compile_program", fails)
    program = lpusim.compile(model, chips="auto")
    assert program.chips == 2
    assert ("placement on 1 chip ran out of SRAM: a tile needs 4 slices x 40 vectors and no slice group has room "
            "(forced); 2 chips") in program.partition["reason"]
    assert "forced" in program.partition["one_chip_placement_error"]
    x = program.random_inputs(0)
    ref, _ = run_onnxruntime(model, x)
    assert compare(program.run(x).outputs, ref)["outputs_match"]
    with pytest.raises(OutOfSram, match="forced"):  # a chip count given is kept: the error stands
        pipeline.compile_multichip(model, 1)


def _shrinking_convs(layers: int, c: int = 8, hw: int = 48):
    """3x3 convolutions alternating padding 1 and 0: every padded one reads a bordered store of its own geometry."""
    from onnx import helper

    from onnx_cases import make_model
    rng = np.random.default_rng(5)
    nodes, inits, x = [], {}, "x"
    for i in range(layers):
        for j, pad in enumerate((1, 0)):
            inits[f"w{i}{j}"] = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
            nodes.append(helper.make_node("Conv", [x, f"w{i}{j}"], [f"c{i}{j}"], pads=[pad] * 4))
            x = f"c{i}{j}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return make_model(nodes, inits, {"x": [1, c, hw, hw]})


def test_auto_retries_when_a_small_chip_runs_out_of_sram_in_placement():
    """The same retry, not forced: on a 14.4 MB chip (512 addresses per slice) 12 convolution pairs need 7.0 MB by
    the estimate (peak live bytes), but placement runs out of SRAM: a bordered store must start with a clean border,
    so it takes fresh room or a released store of its own layout, and every padded layer here has its own geometry.
    chips="auto" says so and compiles for 2 chips; outputs match and cycles equal the prediction."""
    from lpusim.check.compare import compare, run_onnxruntime
    from lpusim.errors import OutOfSram

    model, small = _shrinking_convs(12), _small_chip(512)
    with pytest.raises(OutOfSram, match="placement ran out of SRAM"):
        lpusim.compile(model, chip=small)
    program = lpusim.compile(model, chips="auto", chip=small)
    assert program.chips == 2
    assert ("the model needs 7,004,160 bytes of SRAM by the estimate, which one tsp_v1 chip holds; placement on 1 "
            "chip ran out of SRAM: a tile needs") in program.partition["reason"]
    assert program.partition["reason"].endswith("; 2 chips")
    x = program.random_inputs(0)
    result = program.run(x)
    ref, _ = run_onnxruntime(model, x)
    assert compare(result.outputs, ref)["outputs_match"] and result.cycles == program.predicted_cycles
