"""MatMul and Gemm (activation @ constant weights, or two computed matrices), Einsum's attention forms.

Constant weights become one matmul node (an image flattened across channels and pixels sums a term per pixel);
a computed second operand is loaded into the MXM as weights (at most 320 x 320 per tile). Gemm's transA on a
computed A is an SXM transpose (transpose.permute); its C an elementwise ADD. Einsum "...qd,...kd->...qk" (Q K^T)
and "...qk,...kd->...qd" (P V) are lowered as a Transpose and/or a MatMul (through the dispatcher).
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.compiler.ir import Node, View
from lpusim.compiler.lower.decompose import SubGraph
from lpusim.compiler.lower.elementwise import emit_binary
from lpusim.compiler.lower.transpose import permute
from lpusim.errors import CompileError


# ----- contractions ---------------------------------------------------------------------------------
def lower_matmul(lw, node, op, a, args):
    x, w = args[0], args[1]
    if op == "Gemm" and a.get("transA", 0) and x[0] == "value":  # A^T on the SXM (transpose.py)
        shape = (x[2][1], x[2][0])
        x = ("value", permute(lw, node, x[1], tuple(x[2]), [1, 0], shape, "transA",
                              lw.tensor_magnitude(node, x[1])), shape)
    if x[0] == "value" and w[0] == "value" and op == "MatMul":
        return lower_computed_matmul(lw, node, x, w)
    if x[0] == "const" or w[0] != "const":
        raise CompileError(f"{lw.where(node)}: only activation @ constant weights, or a MatMul of two "
                           f"computed matrices, is supported yet")
    wmat = np.asarray(w[1], dtype=np.float32)
    if op == "Gemm":
        if a.get("transB", 0):
            wmat = wmat.T
        wmat = wmat * np.float32(a.get("alpha", 1.0))
    if wmat.ndim != 2:
        raise CompileError(f"{lw.where(node)}: weights of rank {wmat.ndim} are not supported yet (rank 2)")
    _, xname, xshape = x
    image = lw.flat.get(node.input[0])
    if image is not None:
        xshape = (image[1][0], int(np.prod(image[1][1:])))
    if xshape[-1] != wmat.shape[0]:
        raise CompileError(f"{lw.where(node)}: inner dimensions differ: {tuple(xshape)} @ {wmat.shape}")
    out_shape = tuple(xshape[:-1]) + (wmat.shape[1],)
    out = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
    if image is not None:
        # x is an NCHW image flattened to [N, C*H*W]: sum over pixels (h, w) of pixel @ W[c*H*W + h*W + w]
        img_name, (n, c, h, wd) = image
        w4 = wmat.reshape(c, h, wd, wmat.shape[1])
        terms = [(View(img_name, dh=i, dw=j, spatial=True), lw.const_tensor(np.ascontiguousarray(w4[:, i, j]), "w"))
                 for i in range(h) for j in range(wd)]
    else:
        terms = [(View(xname), lw.const_tensor(wmat, "w"))]
    lw.nodes.append(Node("matmul", node.name or node.output[0], op, out, terms=terms))
    lw.values[node.output[0]] = (out, out_shape)
    if op == "Gemm" and len(args) > 2 and args[2] is not None:
        c = args[2]
        if c[0] == "const":
            c = ("const", np.asarray(c[1], dtype=np.float32) * np.float32(a.get("beta", 1.0)))
        elif a.get("beta", 1.0) != 1.0:
            raise CompileError(f"{lw.where(node)}: beta != 1 with a computed C is not supported yet")
        emit_binary(lw, node, "ADD", ("value", out, out_shape), c, node.output[0])


def lower_computed_matmul(lw, node, x, w):
    """x @ w with w computed: w's rows are loaded into a plane as weights (at most 320 x 320 per tile)."""
    _, xname, xshape = x
    _, wname, wshape = w
    if len(wshape) < 2 or len(xshape) < 2:
        raise CompileError(f"{lw.where(node)}: a MatMul of computed {tuple(xshape)} @ {tuple(wshape)}: 1-D "
                           f"operands are not supported yet")
    if xshape[-1] != wshape[-2]:
        raise CompileError(f"{lw.where(node)}: inner dimensions differ: {tuple(xshape)} @ {tuple(wshape)}")
    if any(d != 1 for d in wshape[:-2]) or any(d != 1 for d in xshape[:-2]):
        return lower_batched_matmul(lw, node, tuple(xshape), tuple(wshape))
    out_shape = tuple(np.broadcast_shapes(tuple(xshape[:-2]), tuple(wshape[:-2]))) + (xshape[-2], wshape[-1])
    out = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
    lw.nodes.append(Node("matmul", node.name or node.output[0], "MatMul", out, terms=[(View(xname), wname)]))
    lw.values[node.output[0]] = (out, out_shape)


def lower_batched_matmul(lw, node, xshape: tuple, wshape: tuple) -> None:
    """A MatMul of two computed tensors with batch dimensions outside the attention pattern (attention.py), as
    paddle2onnx writes attention: qkv reshaped to [B, N, 3, heads, D] and transposed to [3, B, heads, N, D]. One
    2-D MatMul per batch index (broadcast as numpy does), through the dispatcher: each operand reshaped to
    [P, M, K], the matrix of index p taken by a Gather (rows), the products stacked by a Concat and reshaped back."""
    try:
        batch = tuple(np.broadcast_shapes(xshape[:-2], wshape[:-2]))
    except ValueError:
        raise CompileError(f"{lw.where(node)}: batch dimensions of {xshape} @ {wshape} do not broadcast") from None
    out_shape = batch + (xshape[-2], wshape[-1])
    tag = node.output[0]
    g = SubGraph(lw, node)

    def stacked(i, shape):  # operand i as [P, rows, cols]; its batch index of each output batch index
        flat = g.add("Reshape", [node.input[i], g.const((-1,) + shape[-2:], "shape")], f"{tag}@in{i}")
        own = np.arange(int(np.prod(shape[:-2], dtype=np.int64))).reshape(shape[:-2])
        index = np.broadcast_to(own.reshape((1,) * (len(batch) - len(own.shape)) + own.shape), batch).ravel()
        return flat, index

    xs, xi = stacked(0, xshape)
    ws, wi = stacked(1, wshape)
    parts = []
    for p in range(int(np.prod(batch, dtype=np.int64))):
        a_p = g.add("Gather", [xs, g.const(xi[p], "i")], f"{tag}@a{p}", axis=0)
        b_p = g.add("Gather", [ws, g.const(wi[p], "i")], f"{tag}@b{p}", axis=0)
        y_p = g.add("MatMul", [a_p, b_p], f"{tag}@y{p}")
        parts.append(g.add("Unsqueeze", [y_p, g.const([0], "axes")], f"{tag}@u{p}"))
    stack = g.add("Concat", parts, f"{tag}@stack", axis=0)
    g.add("Reshape", [stack, g.const(out_shape, "out")], node.output[0])
    g.lower()


def lower_einsum(lw, node, a, args):
    eq = a["equation"].decode() if isinstance(a["equation"], bytes) else a["equation"]
    eq = eq.replace(" ", "")
    lhs, rhs = eq.split("->")
    ins = lhs.split(",")
    if len(ins) != 2 or len({len(s) for s in ins + [rhs]}) != 1:
        raise CompileError(f"{lw.where(node)}: Einsum '{eq}' is not supported yet (two operands, the "
                           f"attention forms ...qd,...kd->...qk and ...qk,...kd->...qd)")
    p, q = ins
    batch = p[:-2]
    if q[:-2] != batch or rhs[:-2] != batch:
        raise CompileError(f"{lw.where(node)}: Einsum '{eq}' with different batch letters is not supported")
    i, k = p[-2:]
    if q[-2:] == (rhs[-1] + k) and rhs[-2:] == i + rhs[-1]:  # x @ y^T
        transposed = True
    elif q[-2:] == (k + rhs[-1]) and rhs[-2:] == i + rhs[-1]:  # x @ y
        transposed = False
    else:
        raise CompileError(f"{lw.where(node)}: Einsum '{eq}' is not a matrix product of the supported forms")
    second = node.input[1]
    nodes = []
    if transposed:
        nd = len(q)
        perm = list(range(nd - 2)) + [nd - 1, nd - 2]
        second = f"{node.output[0]}@einsum.T"
        nodes.append(onnx.helper.make_node("Transpose", [node.input[1]], [second], perm=perm, name=node.name))
    nodes.append(onnx.helper.make_node("MatMul", [node.input[0], second], list(node.output), name=node.name))
    for sub in nodes:
        lw.lower(sub)
