"""precision="fp32": every fp16 MXM operand split into fp16 pieces, the partial products summed in one accumulator.

The MXM multiplies fp16 numbers and adds the exact products in an integer accumulator of 2^-48 units, rounding
once when the row is read (docs/isa.md section 4). So a sum of several passes into the same accumulator rows is
exact, and an f32 operand can be fed as fp16 pieces (TruePoint's scheme, docs/precision.md):

    x = x0 + x1 (+ x2),  x0 = fp16(x), x1 = fp16(x - x0), x2 = fp16(x - x0 - x1)    (each at x's fp16 scale)
    w = w0 + w1,         w0 = fp16(w), w1 = fp16(w - w0)

* weights fp16 holds exactly (0/1 matrices: lane sums, moves, selections, AveragePool's taps): x0 @ w + x1 @ w +
  x2 @ w, three passes; 22 + 2 bits cover f32's 24, so moves are exact and sums are rounded once;
* other weights (MatMul, Gemm, Conv, attention's computed operands): x0 @ w0 + x1 @ w0 + x0 @ w1, three passes;
  the dropped x1 @ w1 is at most 2^-22 |x| |w| per product.

Two passes, around `scale_fp16`:
* `split_operands` (before assign_formats) adds the residual pieces as VXM nodes (`CVT f32.f16`, `SUB`) and their
  terms;
* `split_weights` (after scale_fp16, which in fp32 graphs also scales up every f16 copy whose largest magnitude is
  below 2, to (2^7, 2^8], so the pieces stay normal fp16 numbers: calibrate.LOW_FP32) writes the pieces' steps at
  their tensor's scale, and splits the scaled constant weights into w0 + w1.
Graphs of other precisions pass through unchanged; int8 matmuls are integer and are never split.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lpusim.compiler.ir import Graph, Node, Step, View
from lpusim.compiler.passes import fp16_exact, is_int8
from lpusim.errors import CompileError

F16_MAX = 65504.0


def split_operands(graph: Graph) -> Graph:
    """The residual pieces of every fp16 matmul's activations (and computed weights), and their terms."""
    if graph.precision != "fp32":
        return graph
    pieces: dict[str, list[str]] = {}  # tensor -> its residual pieces, made once and shared by its readers
    nodes: list[Node] = []

    def residuals(x: str, count: int) -> list[str]:
        have = pieces.setdefault(x, [])
        while len(have) < count:
            src = have[-1] if have else x
            t = graph.tensors[x]
            name = f"{x}.r{len(have) + 1}"
            graph.tensors[name] = dataclasses.replace(
                t, name=name, kind="value", data=None, formats=set(), onnx_input=None, im2col=None, pad=0,
                f16_exp=0, f16_saturate=False, dtype="f32")
            # steps are written by split_weights, once the scale of x's f16 copy is known
            nodes.append(Node("vector", f"{x} fp32 piece", "Fp32Piece", name, sources=[View(src)],
                              steps=[Step("COPY", [("src", 0)])], fusable=False))
            graph.residuals[name] = src
            graph.derived[name] = graph.derived.get(x, graph.magnitudes.get(graph.origin.get(x, ""), 0.0))
            have.append(name)
        return have[:count]

    for node in graph.nodes:
        if node.kind == "matmul" and not is_int8(graph, node):
            if node.out_tiles is not None or len({v.tensor for v, _ in node.terms}) > 1:
                raise CompileError(f"{node.onnx_op} node '{node.name}': terms of several tensors are not split "
                                   f"into fp32 pieces (attention_lanes.py is off at precision fp32)")
            weights = [w for _, w in node.terms]
            computed = [w for w in weights if graph.tensors[w].kind == "value"]
            exact = not computed and all(fp16_exact(graph.tensors[w].data) for w in set(weights))
            x = node.x
            xs = residuals(x, 2 if exact else 1)
            terms = []
            for v, w in node.terms:
                terms += [(v, w)] + [(dataclasses.replace(v, tensor=r), w) for r in xs]
                if computed:  # x0 @ w0 + x1 @ w0 + x0 @ w1; constant weights are split after scaling
                    terms.append((v, residuals(w, 1)[0]))
            node.terms = terms
        nodes.append(node)
    graph.nodes = nodes
    return graph


def piece_steps(k: int, clamp: bool) -> list[Step]:
    """src - its f16 copy's value, fp16(src * 2^-k) * 2^k (exact in f32). `clamp`: src first limited to the copy's
    finite range, so that an inf (a mask) or an overflowing value leaves a residual of 0, not NaN or inf."""
    steps: list[Step] = []
    src = ("src", 0)
    if clamp:
        top = float(np.float32(F16_MAX * 2.0 ** k))
        steps += [Step("MAX", [src, ("imm", -top)]), Step("MIN", [("step", 0), ("imm", top)])]
        src = ("step", 1)
    hi = src
    if k:
        steps.append(Step("MUL", [src, ("imm", float(2.0 ** -k))]))
        hi = ("step", len(steps) - 1)
    steps.append(Step("CVT", [hi], "f32.f16"))
    if k:
        steps.append(Step("MUL", [("step", len(steps) - 1), ("imm", float(2.0 ** k))]))
    steps.append(Step("SUB", [src, ("step", len(steps) - 1)]))
    return steps


def split_weights(graph: Graph) -> Graph:
    """Pieces at their tensor's f16 scale, and constant weights split into w0 + w1 at the matmul's scale."""
    if graph.precision != "fp32":
        return graph
    producer = {n.output: n for n in graph.nodes}
    for piece, src in graph.residuals.items():  # in creation order: x.r1 before x.r2
        read = graph.tensors.get(f"{src}.f16") if graph.tensors[src].kind == "input" else None
        k = (read or graph.tensors[src]).f16_exp  # what the MXM's copy of src holds (an input's: its f16 cast)
        graph.tensors[piece].f16_exp = k
        producer[piece].steps = piece_steps(k, src not in graph.residuals)
    split: dict[str, tuple[str, str | None]] = {}
    for node in graph.nodes:
        if node.kind != "matmul" or is_int8(graph, node):
            continue
        terms = []
        for v, w in node.terms:
            if graph.tensors[w].kind != "const":
                terms.append((v, w))
                continue
            if w not in split:
                split[w] = _split_constant(graph, w)
            w0, w1 = split[w]
            terms.append((v, w0))
            if w1 is not None and v.tensor in graph.residuals and graph.residuals[v.tensor] not in graph.residuals:
                terms.append((dataclasses.replace(v, tensor=node.x), w1))  # x0 @ w1 after x1 @ w0
        node.terms = terms
    used = {w for node in graph.nodes for _, w in node.terms}
    for w in split:
        if w not in used:
            del graph.tensors[w]
    return graph


def _split_constant(graph: Graph, w: str) -> tuple[str, str | None]:
    """(w0, w1) constant tensors, w1 None when fp16 holds w exactly (w0 is then w)."""
    t = graph.tensors[w]
    with np.errstate(over="ignore", invalid="ignore"):
        hi = t.data.astype(np.float16).astype(np.float32)
        lo = (t.data - hi).astype(np.float16).astype(np.float32)
    lo[~np.isfinite(lo)] = 0.0  # an inf weight: its w0 is inf, as in fp16
    if not lo.any():
        return w, None
    names = (f"{w}.w0", f"{w}.w1")
    for name, data in zip(names, (hi, lo)):
        graph.tensors[name] = dataclasses.replace(t, name=name, data=np.ascontiguousarray(data))
    return names
