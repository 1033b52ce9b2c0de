"""Checking a model segment by segment against onnxruntime (`lpusim.check_segments`, `lpusim segments MODEL`).

Why: onnxruntime runs an int8 transformer's LayerNorm, Softmax and attention products (two computed operands) in
float32. The chip computes them at ~22 significant bits (hi + lo fp16 MXM passes) in its own summation order, so
a float32 value within an ulp of a rounding boundary can land on the neighbouring code: in BERT-base at int8, 9
of 4.9 million codes. With random weights, twelve layers amplify one such code into a visibly different output
(max abs 0.21), and onnxruntime's own ORT_ENABLE_BASIC and ORT_ENABLE_ALL runs of the model differ by as much. A
whole-model comparison then cannot tell a rounding tie from a wrong layer. Here every segment starts from
onnxruntime's own value of its input, so each is checked with the same budget instead of inheriting the errors of
the segments before it.

Cuts: a float tensor that only QuantizeLinear nodes read and that every path from the graph inputs to the outputs
passes through (a transformer's LayerNorm outputs and residual sums, a CNN's block outputs). The segments meet at
those QuantizeLinears' int8/uint8 outputs, so each segment ends with the same fused integer kernels (QLinearAdd,
QLinearMatMul) onnxruntime runs in the whole model and the next one starts from exact codes. For float models, or to
cut elsewhere, pass `cuts` (tensor names, each separating the graph).

A segment matches when its code outputs equal onnxruntime's except at most ONE_STEP_FRACTION of them, each one step
away (the README's int8 rule for what onnxruntime computes in float), and its float outputs pass `check.compare`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from lpusim.api import compile as compile_model
from lpusim.check.compare import compare, run_onnxruntime
from lpusim.compiler import QUANT_OPS
from lpusim.compiler.frontend.load import load_model
from lpusim.compiler.frontend.quantize import quantize_model
from lpusim.errors import CompileError

# One quantisation step on at most 1% of a segment's codes: README "Precision and tolerance", int8
ONE_STEP_FRACTION = 0.01


@dataclass
class SegmentResult:
    index: int
    inputs: list[str]
    outputs: list[str]
    match: bool
    cycles: int
    codes: int = 0  # int8/uint8 output elements compared
    codes_off: int = 0  # ... that differ from onnxruntime's
    max_code_diff: int = 0
    max_abs_error: float = 0.0  # float outputs
    max_rel_error: float = 0.0
    nodes: int = 0
    seconds: float = 0.0
    reason: str = ""
    per_output: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _users(graph) -> dict[str, list]:
    users = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def _separates(graph, users, tensor: str, sources: list[str]) -> bool:
    """Every path from `sources` to a graph output passes through `tensor`."""
    outputs = {o.name for o in graph.output}
    seen, stack = set(sources), list(sources)
    while stack:
        for node in users.get(stack.pop(), []):
            for o in node.output:
                if o and o != tensor and o not in seen:
                    if o in outputs:
                        return False
                    seen.add(o)
                    stack.append(o)
    return not (outputs & set(sources))


def find_cuts(model: onnx.ModelProto) -> list[str]:
    """The float tensors, in graph order, that only QuantizeLinear nodes read and that separate the graph."""
    g = model.graph
    users = _users(g)
    inits = {i.name for i in g.initializer}
    sources = [i.name for i in g.input if i.name not in inits]
    outputs = {o.name for o in g.output}
    cuts = []
    for node in g.node:
        if node.op_type == "QuantizeLinear":
            continue
        for o in node.output:
            readers = users.get(o, [])
            if o and o not in outputs and readers and all(r.op_type == "QuantizeLinear" for r in readers) and \
                    _separates(g, users, o, sources):
                cuts.append(o)
    return cuts


def _boundary(graph, users, cut: str) -> list[str]:
    """The tensors the segments meet at for `cut`: its QuantizeLinears' outputs when only those read it."""
    readers = users.get(cut, [])
    if readers and all(r.op_type == "QuantizeLinear" for r in readers):
        return [r.output[0] for r in readers]
    return [cut]


def _typed(model: onnx.ModelProto, users, names: list[str]) -> onnx.ModelProto:
    """`model` with shape inference's value_info plus an entry (type only) for each boundary tensor it missed:
    the Extractor needs one for every segment input and output."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.input) +
             list(inferred.graph.output)}
    consts = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for name in names:
        if name in known:
            continue
        node = producer[name]
        elem = onnx.TensorProto.FLOAT
        if node.op_type == "QuantizeLinear":
            zp = node.input[2] if len(node.input) > 2 else ""
            elem = consts[zp].data_type if zp in consts else onnx.TensorProto.UINT8
        inferred.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return inferred


def split(model: onnx.ModelProto, cuts: list[str] | None = None) -> list[onnx.ModelProto]:
    """The model as consecutive segments (onnx.utils.Extractor), cut at `cuts` (default: `find_cuts`)."""
    from onnx.utils import Extractor

    g = model.graph
    users = _users(g)
    inits = {i.name for i in g.initializer}
    sources = [i.name for i in g.input if i.name not in inits]
    produced = {o for n in g.node for o in n.output}
    order = {o: k for k, n in enumerate(g.node) for o in n.output}
    if cuts is None:
        cuts = find_cuts(model)
    for c in cuts:
        if c not in produced:
            raise CompileError(f"cut '{c}': no node of the model produces this tensor")
        if not _separates(g, users, c, sources):
            raise CompileError(f"cut '{c}': a path from the graph inputs to an output bypasses this tensor, so the "
                               f"model does not split there")
    cuts = sorted(set(cuts), key=order.__getitem__)
    bounds = [sources] + [_boundary(g, users, c) for c in cuts] + [[o.name for o in g.output]]
    if len(bounds) == 2:
        return [model]
    extractor = Extractor(_typed(model, users, [t for b in bounds[1:-1] for t in b]))
    return [extractor.extract_model(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _compare_segment(sim: dict, ref: dict, result: SegmentResult) -> None:

    floats, seen = {}, []
    for name, r in ref.items():
        s = np.asarray(sim[name])
        if r.dtype.kind in "iu" and r.dtype.itemsize == 1:
            if any(np.array_equal(r, a) and np.array_equal(s, b) for a, b in seen):
                continue  # a LayerNorm's identical QuantizeLinears (DedicatedQDQPair): one tensor, counted once
            seen.append((r, s))
            d = np.abs(s.astype(np.int64) - r.astype(np.int64))
            off = int((d > 0).sum())
            result.codes += r.size
            result.codes_off += off
            result.max_code_diff = max(result.max_code_diff, int(d.max()) if d.size else 0)
            result.per_output[name] = {"codes": int(r.size), "codes_off": off,
                                       "max_code_diff": int(d.max()) if d.size else 0}
        else:
            floats[name] = r
    ok = result.max_code_diff <= 1 and result.codes_off <= ONE_STEP_FRACTION * max(result.codes, 1)
    if not ok:
        result.reason = (f"{result.codes_off} of {result.codes} codes differ, up to {result.max_code_diff} steps "
                         f"(allowed: one step on {ONE_STEP_FRACTION:.0%})")
    if floats:
        c = compare({k: sim[k] for k in floats}, floats)
        result.max_abs_error, result.max_rel_error = c["max_abs_error"], c["max_rel_error"]
        result.per_output.update(c["per_output"])
        if not c["outputs_match"]:
            ok = False
            result.reason = (result.reason + "; " if result.reason else "") + \
                f"float outputs differ (max rel error {c['max_rel_error']:.2e})"
    result.match = ok


def check_segments(model, inputs: dict | None = None, precision: str = "fp16", cuts: list[str] | None = None,
                   chip=None, seed: int = 0, shapes: dict | None = None, calibration: dict | None = None,
                   progress: bool = False, on_segment=None) -> list[SegmentResult]:
    """Compile and run every segment of `model` from onnxruntime's value of its inputs; compare with onnxruntime
    running the same segment. Without `inputs`, seeded random ones (`shapes` fixes dynamic dimensions), as
    `Program.random_inputs` draws them. `precision="int8"` quantises a float model first, as `compile` does (calibrated on
    `calibration`, default the inputs). `on_segment(result)` is called after each segment."""
    proto = load_model(model)
    if inputs is None:
        inputs = compile_model(proto, chip=chip, precision=precision, shapes=shapes).random_inputs(seed)
    if precision == "int8" and not any(n.op_type in QUANT_OPS for n in proto.graph.node):
        proto = quantize_model(proto, calibration or inputs)
    segments = split(proto, cuts)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(segments), desc="segments", unit="seg", leave=False)
    results, feed = [], dict(inputs)
    try:
        for k, seg in enumerate(segments):
            names = [i.name for i in seg.graph.input if i.name not in {t.name for t in seg.graph.initializer}]
            seg_inputs = {n: feed[n] for n in names}
            start = time.perf_counter()
            ref, _ = run_onnxruntime(seg, seg_inputs)
            program = compile_model(seg, chip=chip, shapes={n: np.shape(v) for n, v in seg_inputs.items()})
            run = program.run(seg_inputs)
            result = SegmentResult(k, names, list(ref), False, run.cycles, nodes=len(seg.graph.node))
            _compare_segment(run.outputs, ref, result)
            result.seconds = time.perf_counter() - start
            results.append(result)
            feed.update(ref)  # the next segment starts from onnxruntime's values
            if on_segment is not None:
                on_segment(result)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results


def summarize(results: list[SegmentResult]) -> dict:
    codes = sum(r.codes for r in results)
    return {"segments": len(results), "matched": sum(r.match for r in results),
            "all_match": all(r.match for r in results), "codes": codes,
            "codes_off": sum(r.codes_off for r in results),
            "max_code_diff": max((r.max_code_diff for r in results), default=0),
            "max_rel_error": max((r.max_rel_error for r in results), default=0.0),
            "cycles": sum(r.cycles for r in results)}
