"""Random small ONNX graphs (hypothesis), compiled and simulated with lpusim (fp16) and compared with onnxruntime
under lpusim's own tolerance rule (lpusim.check.compare).

A graph is a DAG of 1-6 nodes over one or two inputs of random small shapes: unary elementwise ops (Relu, Sigmoid,
Tanh, Abs, Neg), Add/Sub/Mul/Max with broadcasting (against another tensor of the graph or a constant), MatMul and
Gemm against constant weights, Reshape, Transpose, Softmax, ReduceSum/ReduceMean, Concat. Every tensor no node reads
is an output. The default run draws a few derandomized examples (the same every run); `pytest -m slow` many more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402

import lpusim  # noqa: E402
from lpusim.check.compare import compare, run_onnxruntime  # noqa: E402

QUICK = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                 database=None)
MANY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)

UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Neg"]
BINARY = ["Add", "Sub", "Mul", "Max"]
OPS = ["unary", "binary", "matmul", "gemm", "reshape", "transpose", "softmax", "reduce", "concat"]


@dataclass
class Graph:
    """A random graph as data (its repr is what hypothesis prints for a failing example)."""
    inputs: dict = field(default_factory=dict)  # name -> shape
    nodes: list = field(default_factory=list)  # (op, inputs, output, attributes)
    consts: dict = field(default_factory=dict)  # name -> array
    shapes: dict = field(default_factory=dict)  # every tensor's shape
    seed: int = 0

    def __repr__(self):
        lines = [f"inputs {self.inputs}, seed {self.seed}"]
        for op, ins, out, attrs in self.nodes:
            args = ", ".join(f"{i}{list(self.consts[i].shape) if i in self.consts else ''}" for i in ins)
            lines.append(f"  {out}{list(self.shapes[out])} = {op}({args}){' ' + str(attrs) if attrs else ''}")
        return "\n".join(lines)

    def outputs(self) -> list[str]:
        read = {i for _, ins, _, _ in self.nodes for i in ins}
        return [out for _, _, out, _ in self.nodes if out not in read]

    def model(self) -> onnx.ModelProto:
        nodes = [helper.make_node(op, ins, [out], name=f"n{k}_{op}", **attrs)
                 for k, (op, ins, out, attrs) in enumerate(self.nodes)]
        g = helper.make_graph(
            nodes, "random",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in self.inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, self.shapes[o]) for o in self.outputs()],
            [numpy_helper.from_array(v, k) for k, v in self.consts.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m

    def arrays(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return {n: rng.standard_normal(s).astype(np.float32) for n, s in self.inputs.items()}


def _const(g: Graph, shape, draw, scale=1.0) -> str:
    name = f"c{len(g.consts)}"
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    g.consts[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    g.shapes[name] = tuple(shape)
    return name


def _broadcast_partner(shape, draw):
    """A shape that broadcasts against `shape` to `shape`: a suffix of it with some dimensions set to 1."""
    keep = draw(st.integers(1 if shape else 0, len(shape)))
    return tuple(d if draw(st.booleans()) else 1 for d in shape[len(shape) - keep:])


def _broadcasts_to(a, shape) -> bool:
    try:
        return np.broadcast_shapes(tuple(a), tuple(shape)) == tuple(shape)
    except ValueError:
        return False


def _reshape_target(shape, draw):
    """A shape of the same size: two neighbours merged, a dimension split, or a leading 1 added or dropped."""
    shape = list(shape)
    # at most 3-D: a 4-D view of a 3-D tensor read by other ops is a known failure (the xfail tests below)
    choices = ["lead"] if len(shape) < 3 else []
    if len(shape) >= 2:
        choices.append("merge")
    if len(shape) < 3 and any(d > 1 and any(d % f == 0 for f in range(2, d)) for d in shape):
        choices.append("split")
    if shape and shape[0] == 1 and len(shape) > 1:
        choices.append("drop")
    how = draw(st.sampled_from(choices))
    if how == "merge":
        i = draw(st.integers(0, len(shape) - 2))
        return shape[:i] + [shape[i] * shape[i + 1]] + shape[i + 2:]
    if how == "split":
        i = draw(st.sampled_from([k for k, d in enumerate(shape) if d > 1 and any(d % f == 0 for f in range(2, d))]))
        f = draw(st.sampled_from([f for f in range(2, shape[i]) if shape[i] % f == 0]))
        return shape[:i] + [f, shape[i] // f] + shape[i + 1:]
    if how == "drop":
        return shape[1:]
    return [1] + shape


@st.composite
def graphs(draw) -> Graph:
    g = Graph(seed=draw(st.integers(0, 2**16)))
    dims = st.integers(1, 6)
    first = tuple(draw(st.lists(dims, min_size=1, max_size=3)))
    g.inputs["x"] = first
    if draw(st.booleans()):
        g.inputs["x2"] = _broadcast_partner(first, draw) if draw(st.booleans()) else first
    g.shapes.update(g.inputs)
    for k in range(draw(st.integers(1, 6))):
        pool = [n for n in g.shapes if n not in g.consts and g.shapes[n]]  # a scalar (a full reduction) ends a path
        x = draw(st.sampled_from(pool))
        shape = tuple(g.shapes[x])
        op = draw(st.sampled_from(OPS))
        out = f"t{k}"
        if op == "gemm" and len(shape) != 2:
            op = "matmul"
        if op == "unary":
            node = (draw(st.sampled_from(UNARY)), [x], tuple(shape), {})
        elif op == "binary":
            partners = [n for n in pool if _broadcasts_to(g.shapes[n], shape)]
            if partners and draw(st.booleans()):
                y = draw(st.sampled_from(partners))
            else:
                y = _const(g, _broadcast_partner(shape, draw), draw)
            a, b = (x, y) if draw(st.booleans()) else (y, x)
            node = (draw(st.sampled_from(BINARY)), [a, b], shape, {})
        elif op == "matmul":
            n = draw(dims)
            if len(shape) == 1:
                w = _const(g, (shape[0], n), draw, 1 / math.sqrt(shape[0]))
                node = ("MatMul", [x, w], (n,), {})
            else:
                w = _const(g, (shape[-1], n), draw, 1 / math.sqrt(shape[-1]))
                node = ("MatMul", [x, w], shape[:-1] + (n,), {})
        elif op == "gemm":
            n, trans_b = draw(dims), draw(st.booleans())
            w = _const(g, (n, shape[1]) if trans_b else (shape[1], n), draw, 1 / math.sqrt(shape[1]))
            ins = [x, w] + ([_const(g, draw(st.sampled_from([(n,), (1, n)])), draw)] if draw(st.booleans()) else [])
            attrs = {"transB": 1} if trans_b else {}
            if draw(st.booleans()):
                attrs["alpha"] = draw(st.sampled_from([0.5, 2.0]))
            node = ("Gemm", ins, (shape[0], n), attrs)
        elif op == "reshape":
            target = _reshape_target(shape, draw)
            name = f"s{len(g.consts)}"
            g.consts[name] = np.array(target, dtype=np.int64)
            node = ("Reshape", [x, name], tuple(target), {})
        elif op == "transpose":
            perm = draw(st.permutations(list(range(len(shape)))))
            node = ("Transpose", [x], tuple(shape[p] for p in perm), {"perm": list(perm)})
        elif op == "softmax":
            axis = draw(st.integers(-len(shape), len(shape) - 1))
            node = ("Softmax", [x], shape, {"axis": axis})
        elif op == "reduce":
            axes = sorted(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1)))
            keep = draw(st.booleans())
            reduced = tuple(1 if i in axes else d for i, d in enumerate(shape)) if keep else \
                tuple(d for i, d in enumerate(shape) if i not in axes)
            if draw(st.booleans()):
                name = f"a{len(g.consts)}"
                g.consts[name] = np.array(axes, dtype=np.int64)
                node = ("ReduceSum", [x, name], reduced, {"keepdims": int(keep)})
            else:
                node = ("ReduceMean", [x], reduced, {"axes": axes, "keepdims": int(keep)})
        else:  # concat: with itself, a tensor of the graph that fits, or a constant
            axis = draw(st.integers(0, len(shape) - 1))
            fits = [n for n in pool if len(g.shapes[n]) == len(shape)
                    and all(a == b for i, (a, b) in enumerate(zip(g.shapes[n], shape)) if i != axis)]
            y = draw(st.sampled_from(fits)) if draw(st.booleans()) else \
                _const(g, shape[:axis] + (draw(dims),) + shape[axis + 1:], draw)
            joined = shape[:axis] + (shape[axis] + g.shapes[y][axis],) + shape[axis + 1:]
            node = ("Concat", [x, y], joined, {"axis": axis})
        op_type, ins, out_shape, attrs = node
        g.nodes.append((op_type, ins, out, attrs))
        g.shapes[out] = tuple(out_shape)
    return g


# Known failures (each has a test of its minimal graph below, xfail): the property skips graphs that meet them.
FLAT_COLUMN = "flattened from a computed matrix"  # an op other than Reshape/Gather reading a flattened matrix
CANCELS = 0.1  # an output this small against the inputs: a sum that cancels, judged against itself (below)


def check(g: Graph, known: bool = True):
    """Compile, simulate and compare with onnxruntime. `known`: skip (hypothesis.assume) a graph that meets a known
    failure instead of failing."""
    model = g.model()
    x = g.arrays()
    try:
        result = lpusim.compile(model).run(x)
    except lpusim.CompileError as e:
        assume(not known or FLAT_COLUMN not in str(e))
        raise
    ref, _ = run_onnxruntime(model, x)
    cmp = compare(result.outputs, ref)
    if known and not cmp["outputs_match"]:
        inputs = max(float(np.abs(v).max()) for v in x.values())
        bad = [n for n, r in ref.items() if not cmp["per_output"][n]["match"]]
        assume(not all(float(np.abs(ref[n]).max()) < CANCELS * inputs for n in bad))
    assert cmp["outputs_match"], (repr(g), cmp)


@QUICK
@given(graphs())
def test_random_graphs(g):
    check(g)


@pytest.mark.slow
@MANY
@given(graphs())
def test_random_graphs_many(g):
    check(g)


# Found by the graphs above: a computed matrix Reshaped to a flat vector or column, or to [B, 1, 1, K], as a graph
# output was left a pending view ("output is not produced by any node").
@pytest.mark.parametrize("shape,target", [((2, 2), (4,)), ((2, 3), (6, 1)), ((2, 1, 4), (2, 1, 1, 4)),
                                          ((4,), (1, 1, 1, 4))])
def test_reshaped_computed_output(shape, target):
    g = Graph(inputs={"x": shape}, shapes={"x": shape, "t0": shape, "s0": (len(target),), "y": target},
              consts={"s0": np.array(target, dtype=np.int64)})
    g.nodes = [("Relu", ["x"], "t0", {}), ("Reshape", ["t0", "s0"], "y", {})]
    check(g)


def test_two_outputs_of_one_tensor():
    """Found by the graphs above: two outputs that are views of one tensor in different shapes (a one-element
    ReduceMean and a Reshape of its input) were returned in one shape."""
    g = Graph(inputs={"x": (1,)}, shapes={"x": (1,), "t0": (1,), "t1": (), "s0": (2,), "t2": (1, 1)},
              consts={"s0": np.array([1, 1], dtype=np.int64)})
    g.nodes = [("Relu", ["x"], "t0", {}), ("ReduceMean", ["t0"], "t1", {"axes": [0], "keepdims": 0}),
               ("Reshape", ["t0", "s0"], "t2", {})]
    check(g)


@pytest.mark.xfail(strict=True, raises=lpusim.CompileError, reason="an elementwise op on a computed matrix Reshaped "
                   "to one flat vector is not supported: the flat column is kept as a view of the matrix "
                   "(lower/attention_masks.py) that only a Gather or a Reshape back can read; the op would need the "
                   "values moved across lanes (an SXM relayout)")
def test_known_failure_elementwise_of_a_flattened_matrix():
    g = Graph(inputs={"x": (2, 2)}, shapes={"x": (2, 2), "t0": (2, 2), "s0": (1,), "t1": (4,), "y": (4,)},
              consts={"s0": np.array([4], dtype=np.int64)})
    g.nodes = [("Relu", ["x"], "t0", {}), ("Reshape", ["t0", "s0"], "t1", {}), ("Relu", ["t1"], "y", {})]
    check(g, known=False)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="lpusim's tolerance rule (check/compare.py) scales "
                   "atol with the output's largest magnitude: a one-element mean of terms that cancel is judged "
                   "against itself, while the fp16 rounding of its terms (2^-11 of each) is larger; the chip is "
                   "within its documented precision, the rule has no term magnitudes to judge by")
def test_known_failure_a_cancelling_mean():
    g = Graph(inputs={"x": (3,)}, shapes={"x": (3,), "y": ()}, seed=23713)
    g.nodes = [("ReduceMean", ["x"], "y", {"axes": [0], "keepdims": 0})]
    check(g, known=False)


def _reshaped_input(shape, target, then):
    """x -> Reshape(target) -> `then` (a unary op, or MatMul by a [K, 1] constant)."""
    g = Graph(inputs={"x": shape}, shapes={"x": shape, "s0": (len(target),), "t0": target},
              consts={"s0": np.array(target, dtype=np.int64)})
    g.nodes = [("Reshape", ["x", "s0"], "t0", {})]
    if then == "MatMul":
        g.consts["c1"] = np.full((target[-1], 1), 0.5, np.float32)
        g.shapes.update(c1=(target[-1], 1), y=tuple(target[:-1]) + (1,))
        g.nodes.append(("MatMul", ["t0", "c1"], "y", {}))
    else:
        g.shapes["y"] = target
        g.nodes.append((then, ["t0"], "y", {}))
    return g


# Open findings of the slow profile (not triaged yet): a 3-D input Reshaped to 4-D [B, 1, S, X] and read by a
# MatMul or an elementwise op. Kept as known failures with their minimal graphs.
@pytest.mark.xfail(strict=True, raises=lpusim.CompileError, reason="[1, 1, 2] -> [1, 1, 1, 2] is kept as attention "
                   "mask rows (shape_ops.lower_reshape); an elementwise op of them stays mask rows, and an output "
                   "of mask rows is never laid out: 'output is not produced by any node'")
def test_known_failure_elementwise_of_mask_rows_as_output():
    check(_reshaped_input((1, 1, 2), (1, 1, 1, 2), "Relu"), known=False)


@pytest.mark.xfail(strict=True, raises=lpusim.CompileError, reason="[1, 1, 2] -> [1, 1, 1, 2] is kept as attention "
                   "mask rows, which only elementwise ops with constants, Expand and attention scores read")
def test_known_failure_matmul_of_mask_rows():
    check(_reshaped_input((1, 1, 2), (1, 1, 1, 2), "MatMul"), known=False)


@pytest.mark.xfail(strict=True, raises=lpusim.CompileError, reason="an input [1, 2, 2] Reshaped to [1, 1, 2, 2] "
                   "and read by a MatMul: the IR check fails (shapes 4x1 @ 2x1): the 4-D view's rows are the image "
                   "layout's, not the MatMul's")
def test_known_failure_matmul_of_a_4d_view_of_an_input():
    check(_reshaped_input((1, 2, 2), (1, 1, 2, 2), "MatMul"), known=False)
