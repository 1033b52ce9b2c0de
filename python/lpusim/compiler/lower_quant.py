"""Quantised models on the int8 MXM path: onnxruntime's QDQ and QOperator formats.

Integer tensors are IR tensors holding *codes*: an int8 tensor holds q, a uint8 tensor holds q - 128 (exact), so
every code fits the MXM's int8 operands (`ABC.i8`) and one zero point per tensor, shifted the same way, describes
it. Codes are stored as f32 where the VXM reads them and as i8 where the MXM reads them (`passes.assign_formats`).

A contraction `y = sum_k (x_q - zx)(w_q - zw)` (QLinearConv, QLinearMatMul, QGemm, MatMulInteger, ConvInteger, and
Conv/MatMul/Gemm between DequantizeLinear inputs and one QuantizeLinear output, the QDQ form onnxruntime fuses the
same way) becomes an int8 matmul of the codes x_c with weights w_q - zw (which must fit int8), accumulated exactly,
read with `ACC.i32`, and an epilogue on the VXM:
    acc + corr               ADD.i32, corr[n] = bias[n] - zx_c * sum_k w[k, n]   (zero-point correction, exact)
    float(.)                 CVT.i32.f32 (round to nearest even, as onnxruntime's int32 -> float)
    * M                      MUL.f32, M = (sx * sw[n]) / sy in float32, onnxruntime's order
    clamp, round, + zy       MAX/MIN to [-128 - zy_c, 127 - zy_c], ADD/SUB 1.5*2^23 (round half to even), ADD zy_c
which is MLAS's requantisation step for step. Convolution borders hold the zero point's code (`Tensor.conv_pad`),
so the correction holds at padded taps too, as onnxruntime pads with the zero point.

QuantizeLinear of a float tensor is DIV by the scale, the same clamp, round and add; DequantizeLinear is
`(code - zp_c) * scale` (SUB then MUL; the subtraction is exact). A DequantizeLinear of a computed tensor is lowered
lazily: Reshape/Flatten/Squeeze/Unsqueeze/Identity/MaxPool commute with it and run on the codes, a QuantizeLinear
with the same scale and zero point gives the codes back, and only a float consumer makes it compute floats.
DequantizeLinear of a constant folds (and is remembered, so a QDQ contraction finds the integer weights).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from lpusim.compiler.ir import Node, Step, View
from lpusim.errors import CompileError

MAGIC = 12582912.0  # 1.5 * 2^23: x + MAGIC - MAGIC rounds an f32 |x| < 2^22 to an integer, half to even
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger",
             "ConvInteger", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearAveragePool")
CODE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "MaxPool", "GlobalMaxPool", "Split"}
_TYPES = {onnx.TensorProto.UINT8: "u8", onnx.TensorProto.INT8: "i8", onnx.TensorProto.INT32: "i32"}
_NP_TYPES = {np.dtype(np.uint8): "u8", np.dtype(np.int8): "i8", np.dtype(np.int32): "i32"}


def int8_pieces(w: np.ndarray) -> list[np.ndarray]:
    """Integer weights as a sum of int8 arrays (one when w fits int8): the MXM takes int8 weights, and x @ (a + b)
    = x @ a + x @ b accumulates exactly, so uint8 weights with a zero point (w - zw up to +-255) cost extra passes."""
    pieces, rest = [], np.asarray(w, dtype=np.int64)
    while not pieces or rest.any():
        piece = np.clip(rest, -128, 127)
        pieces.append(piece)
        rest = rest - piece
    return pieces


def _code(zp, kind: str):
    """A zero point (or any integer) as the code the IR holds: uint8 values move down by 128."""
    return np.asarray(zp, dtype=np.int64) - (128 if kind == "u8" else 0)


class QuantLowering:
    """Mixed into the importer's `_Lowering`; `lower_quant(node)` runs first for every node."""

    @property
    def q_state(self) -> dict:
        return self.__dict__.setdefault("_q_state", {
            "code": {},  # ONNX name of an integer tensor on the chip -> "u8" | "i8"
            "pending": {},  # float ONNX name -> (integer ONNX name, scale, zero point code): a lazy DequantizeLinear
            "consts": {},  # ONNX name of a dequantized constant -> (integer array, scale, zero point, axis)
            "bypass": None,
        })

    # ----- entry ----------------------------------------------------------------------------------------
    def lower_quant(self, node) -> bool:
        """Lower `node` if it is a quantisation op or a quantised pattern; else make its inputs plain floats."""
        st = self.q_state
        if node is st["bypass"]:
            return False
        if "code_inputs" not in st:
            st["code_inputs"] = self.q_code_inputs()
        op = node.op_type
        handled = False
        if op == "DequantizeLinear":
            handled = self.q_dequantize(node)
        elif op == "QuantizeLinear":
            handled = self.q_quantize(node)
        elif op in ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger"):
            handled = self.q_operator(node)
        elif op in ("Conv", "MatMul", "Gemm"):
            handled = self.q_qdq_contraction(node)
        elif op == "GlobalAveragePool" and node.input[0] in st["pending"]:
            handled = self.q_global_average(node)
        elif op == "QLinearGlobalAveragePool":
            handled = self.q_global_average(node)
        elif op == "QLinearAdd":
            handled = self.q_linear_add(node)
        elif op == "Add" and len(node.input) == 2 and all(i in st["pending"] for i in node.input):
            handled = self.q_qdq_add(node)
        elif op in ("AveragePool", "QLinearAveragePool"):
            handled = self.q_average_pool(node)
        elif op in CODE_OPS and node.input and (node.input[0] in st["pending"] or node.input[0] in st["code"]) \
                and self.q_is_view(node):
            handled = self.q_code_op(node)
        elif op == "Cast" and node.input[0] in self.values:
            handled = self.q_cast(node)
        if handled:
            outputs = {o.name for o in self.model.graph.output}
            for o in node.output:
                if o in outputs and o in st["code"]:
                    self.q_code_output(node, o)
            return True
        for name in node.input:  # a float consumer of a lazily dequantized tensor: compute the floats now
            if name in st["pending"] and name not in self.values and name not in self.flat:
                self.q_materialize(name)
        return False

    def lower_plain(self, node) -> None:
        """The importer's own lowering of `node`, skipping `lower_quant`."""
        self.q_state["bypass"] = node
        try:
            self.lower(node)
        finally:
            self.q_state["bypass"] = None

    # ----- int8/uint8 graph inputs and outputs --------------------------------------------------------------
    def q_code_inputs(self) -> list[str]:
        """int8/uint8 graph inputs read only by quantisation ops (a QDQ model cut between layers, or one that takes
        codes): the host sends each value q exactly as float32 (importer.host_input) and one VXM pass makes the
        IR's codes of it (q - 128 for uint8, q itself for int8)."""
        made = []
        for inp in self.model.graph.input:
            kind = _TYPES.get(inp.type.tensor_type.elem_type)
            users = self.q_users(inp.name)
            if kind not in ("u8", "i8") or inp.name not in self.input_shapes or \
                    not users or any(u.op_type not in QUANT_OPS for u in users):
                continue
            ir, shape = self.values[inp.name]
            step = Step("SUB", [("src", 0), ("imm", 128.0)]) if kind == "u8" else Step("COPY", [("src", 0)])
            out = self.add_tensor(self.fresh(f"{inp.name}@codes"), shape, "value")
            self.nodes.append(Node("vector", inp.name, "Input", out, sources=[View(ir)], steps=[step]))
            self.values[inp.name] = (out, shape)
            self.q_state["code"][inp.name] = kind
            made.append(inp.name)
        return made

    def q_code_output(self, node, name: str) -> None:
        """An int8/uint8 graph output: its codes back to the values q as float32 (+128 for uint8) on the VXM;
        `program.decode_output` returns them as the ONNX type. The codes themselves stay for other readers."""
        if name not in self.values:
            raise CompileError(f"{self.where(node)}: an int8/uint8 graph output of attention heads is not "
                               f"supported (its parts are never placed side by side)")
        ir, shape = self.values[name]
        kind = self.q_state["code"][name]
        step = Step("ADD", [("src", 0), ("imm", 128.0)]) if kind == "u8" else Step("COPY", [("src", 0)])
        out = self.add_tensor(self.fresh(name), shape, "value")
        self.nodes.append(Node("vector", node.name or name, node.op_type, out, sources=[View(ir)], steps=[step]))
        self.q_state.setdefault("outputs", {})[name] = (out, shape)

    # ----- helpers --------------------------------------------------------------------------------------
    def q_const(self, node, i, what: str, required: bool = True):
        if i >= len(node.input) or not node.input[i]:
            if required:
                raise CompileError(f"{self.where(node)}: {what} is missing")
            return None
        if node.input[i] not in self.consts:
            raise CompileError(f"{self.where(node)}: {what} must be a constant")
        return np.asarray(self.consts[node.input[i]])

    def q_scalar_scale(self, node, i, what: str) -> np.float32:
        s = self.q_const(node, i, what)
        if s.size != 1:
            raise CompileError(f"{self.where(node)}: a per-axis {what} of a computed tensor is not supported "
                               f"(per-tensor only; per-channel scales are supported for constant weights)")
        return np.float32(s.reshape(()))

    def q_kind(self, node, name: str) -> str:
        kind = self.q_state["code"].get(name)
        if kind is None:
            raise CompileError(f"{self.where(node)}: input '{name}' is not an int8/uint8 tensor lpusim produced "
                               f"(QuantizeLinear, a QLinear op, or a view or max pool of one)")
        return kind

    def q_zero(self, node, i, kind: str, what: str) -> int:
        """A scalar zero point input as a code of `kind` (absent: 0)."""
        zp = self.q_const(node, i, what, required=False)
        if zp is None:
            return int(_code(0, kind))
        if zp.size != 1:
            raise CompileError(f"{self.where(node)}: a per-axis {what} of a computed tensor is not supported")
        if _NP_TYPES.get(zp.dtype, kind) != kind:
            raise CompileError(f"{self.where(node)}: {what} is {zp.dtype}, its tensor is {kind}")
        return int(_code(zp.reshape(()), kind))

    def q_vector(self, node, src: str, shape: tuple, steps: list, hint: str) -> str:
        out = self.add_tensor(self.fresh(hint), shape, "value")
        self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=[View(src)],
                               steps=steps))
        return out

    @staticmethod
    def q_round_steps(first: int, lo: float, hi: float, zp: int) -> list:
        """Steps after step `first - 1`: clamp to [lo, hi], round half to even, add the zero point code."""
        steps = [Step("MAX", [("step", first - 1), ("imm", lo)]), Step("MIN", [("step", first), ("imm", hi)]),
                 Step("ADD", [("step", first + 1), ("imm", MAGIC)]), Step("SUB", [("step", first + 2), ("imm", MAGIC)])]
        if zp:
            steps.append(Step("ADD", [("step", first + 3), ("imm", float(zp))]))
        return steps

    # ----- QuantizeLinear / DequantizeLinear --------------------------------------------------------------
    def q_dequantize(self, node) -> bool:
        st = self.q_state
        x, out = node.input[0], node.output[0]
        if x in self.consts:
            q = np.asarray(self.consts[x])
            s = np.asarray(self.q_const(node, 1, "the scale"), dtype=np.float32)
            zp = self.q_const(node, 2, "the zero point", required=False)
            zp = np.zeros_like(s, dtype=np.int64) if zp is None else np.asarray(zp, dtype=np.int64)
            axis = {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("axis", 1)
            if q.dtype.kind not in "iu":
                return False
            axis = axis % max(q.ndim, 1)
            shape = [1] * q.ndim
            if s.size > 1:
                shape[axis] = s.size
            sb = s.reshape(shape) if s.size > 1 else s.reshape(())
            zb = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
            self.consts[out] = ((q.astype(np.int64) - zb).astype(np.float32) * sb).astype(np.float32)
            st["consts"][out] = (q, s, zp, axis)
            return True
        kind = self.q_kind(node, x)
        scale = self.q_scalar_scale(node, 1, "scale")
        zp = self.q_zero(node, 2, kind, "zero point")
        if x in self.heads:  # attention heads (lower_heads.py): the floats of every part now
            parts, transposed, shape4 = self.heads[x]
            steps = ([Step("SUB", [("src", 0), ("imm", float(zp))])] if zp else []) + \
                [Step("MUL", [("step", 0) if zp else ("src", 0), ("imm", float(scale))])]
            self.heads[out] = ([self.q_vector(node, p, self.tensors[p].shape, steps, f"{out}@h{h}")
                                for h, p in enumerate(parts)], transposed, shape4)
            return True
        st["pending"][out] = (x, scale, zp)
        if out in {o.name for o in self.model.graph.output}:
            self.q_materialize(out)
        return True

    def q_materialize(self, name: str) -> None:
        """Compute the floats of a lazy DequantizeLinear: (code - zp) * scale."""
        q, scale, zp = self.q_state["pending"][name]
        steps = ([Step("SUB", [("src", 0), ("imm", float(zp))])] if zp else []) + \
            [Step("MUL", [("step", 0) if zp else ("src", 0), ("imm", float(scale))])]
        fake = helper.make_node("DequantizeLinear", [q], [name], name=name)
        if q in self.flat:
            img, shape = self.flat[q]
            self.flat[name] = (self.q_vector(fake, img, shape, steps, name), shape)
        else:
            ir, shape = self.values[q]
            self.values[name] = (self.q_vector(fake, ir, shape, steps, name), shape)
            # the codes behind these floats: attention heads split from them move the exact codes (lower_heads.py)
            self.q_state.setdefault("dequantized", {})[self.values[name][0]] = (ir, float(scale), zp)

    def q_quantize(self, node) -> bool:
        st = self.q_state
        x, out = node.input[0], node.output[0]
        if out in self.values:  # already produced by the contraction it follows (q_qdq_contraction)
            return True
        zp_arr = self.q_const(node, 2, "the zero point", required=False)
        kind = _NP_TYPES.get(zp_arr.dtype) if zp_arr is not None else "u8"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if zp_arr is None and attrs.get("output_dtype"):
            kind = _TYPES.get(attrs["output_dtype"])
        if kind not in ("u8", "i8"):
            raise CompileError(f"{self.where(node)}: QuantizeLinear to {zp_arr.dtype if zp_arr is not None else '?'}"
                               f" is not supported (int8 and uint8)")
        scale = self.q_scalar_scale(node, 1, "scale")
        zp = self.q_zero(node, 2, kind, "zero point")
        if x in st["pending"] and st["pending"][x][1:] == (scale, zp) and \
                st["code"].get(st["pending"][x][0]) == kind:
            src = st["pending"][x][0]  # Q(DQ(q)) with the same parameters is q
            if src in self.flat:
                self.flat[out] = self.flat[src]
            else:
                self.values[out] = self.values[src]
            st["code"][out] = kind
            return True
        if x in st["pending"] and x not in self.values and x not in self.flat:
            self.q_materialize(x)
        if x in self.heads:  # attention heads (lower_heads.py): every part quantised
            parts, transposed, shape4 = self.heads[x]
            steps = self.q_quantize_steps(scale, zp)
            self.heads[out] = ([self.q_vector(node, p, self.tensors[p].shape, steps, f"{out}@h{h}")
                                for h, p in enumerate(parts)], transposed, shape4)
            st["code"][out] = kind
            return True
        arg = self.get(node, 0)
        if arg[0] != "value":
            return False  # a constant: folded by the importer
        _, ir, shape = arg
        self.values[out] = (self.q_vector(node, ir, shape, self.q_quantize_steps(scale, zp), out), shape)
        st["code"][out] = kind
        if self.tensors[ir].kind == "input":  # a stem convolution may read host patches instead (q_contraction)
            st.setdefault("of_input", {})[out] = (ir, scale, zp)
        return True

    def q_quantize_steps(self, scale, zp: int) -> list:
        """QuantizeLinear of src0 to codes: x / scale, clamped, rounded half to even, plus the zero point code."""
        return [Step("DIV", [("src", 0), ("imm", float(scale))])] + \
            self.q_round_steps(1, float(-128 - zp), float(127 - zp), zp)

    def q_users(self, name: str) -> list:
        users = self.q_state.setdefault("users", {})
        if not users:
            for n in self.model.graph.node:
                for i in n.input:
                    users.setdefault(i, []).append(n)
        return users.get(name, [])

    def q_requantizer(self, name: str):
        """The QuantizeLinear reading float `name`, when only QuantizeLinears read it and all with one scale and zero
        point (else None). The quantiser's DedicatedQDQPair gives a tensor with two consumers two identical
        QuantizeLinears (MobileNetV2's linear bottleneck feeds the next block and the residual Add); onnxruntime
        still fuses the producer into one integer kernel, so the producer is fused here too and the other
        QuantizeLinears' outputs alias its codes (`q_alias_requantized`)."""
        users = self.q_users(name)
        if not users or name in {o.name for o in self.model.graph.output} or \
                any(u.op_type != "QuantizeLinear" for u in users):
            return None

        def params(u):
            zp = self.q_const(u, 2, "the zero point", required=False)
            return (np.asarray(self.q_const(u, 1, "the scale")).tobytes(),
                    None if zp is None else (zp.dtype.str, zp.tobytes()),
                    tuple(sorted((a.name, str(helper.get_attribute_value(a))) for a in u.attribute)))
        first = params(users[0])
        return users[0] if all(params(u) == first for u in users[1:]) else None

    def q_alias_requantized(self, name: str, out_name: str) -> None:
        """The other QuantizeLinears of `name` (see `q_requantizer`) give the codes `out_name` holds."""
        for u in self.q_users(name):
            o = u.output[0]
            if o != out_name:
                self.values[o] = self.values[out_name]
                self.q_state["code"][o] = self.q_state["code"][out_name]

    def q_only_feeds(self, q: str, node) -> bool:
        """`q` is read by `node` alone (directly, or through DequantizeLinears only `node` reads)."""
        outputs = {o.name for o in self.model.graph.output}
        if q in outputs:
            return False
        for u in self.q_users(q):
            if u is node:
                continue
            if u.op_type != "DequantizeLinear" or u.output[0] in outputs or \
                    any(c is not node for c in self.q_users(u.output[0])):
                return False
        return True

    # ----- views and max pools of codes -----------------------------------------------------------------
    def q_code_op(self, node) -> bool:
        st = self.q_state
        src = node.input[0]
        if src in st["pending"]:  # run the op on the codes; the result is dequantized lazily with the same params
            q, scale, zp = st["pending"][src]
            outs = [o + "#q" if o else "" for o in node.output]
            renamed = helper.make_node(node.op_type, [q] + list(node.input[1:]), outs, name=node.name or outs[0],
                                       domain=node.domain)
            renamed.attribute.extend(node.attribute)
            self.lower_plain(renamed)
            graph_outputs = {o.name for o in self.model.graph.output}
            for o, ro in zip(node.output, outs):
                if o:
                    st["pending"][o] = (ro, scale, zp)
                    st["code"][ro] = st["code"][q]
                    if o in graph_outputs:
                        self.q_materialize(o)
            return True
        self.lower_plain(node)
        for o in node.output:
            if o:
                st["code"][o] = st["code"][src]
        return True

    def q_is_view(self, node) -> bool:
        """A reshape-like op that keeps rows and lanes (or flattens an image for a Gemm), or a max pool: it runs on
        the codes. Other reshapes (attention heads) see the dequantized floats."""
        if node.op_type not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            return True
        st = self.q_state
        q = st["pending"][node.input[0]][0] if node.input[0] in st["pending"] else node.input[0]
        if q not in self.values:
            return False
        ir, shape = self.values[q]
        t = self.tensors[ir]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        args = [None] + [self.get(node, i) for i in range(1, len(node.input))]
        try:
            new = self.reshape_target(node, attrs, args, shape)
        except (CompileError, ValueError):
            return False
        rows, cols = (int(np.prod(new[:-1], dtype=np.int64)), int(new[-1])) if len(new) not in (0, 4) else \
            ((int(new[0] * new[2] * new[3]), int(new[1])) if len(new) == 4 else (1, 1))
        return (rows, cols) == (t.rows, t.cols) or (t.geom is not None and len(new) == 2 and new[0] == t.geom[0])

    def q_cast(self, node) -> bool:
        """Cast to float of an integer accumulation (i32) or of codes."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ir, shape = self.values[node.input[0]]
        kind = self.q_state["code"].get(node.input[0])
        if attrs.get("to") != onnx.TensorProto.FLOAT or (self.tensors[ir].dtype != "i32" and kind is None):
            return False
        if self.tensors[ir].dtype == "i32":
            steps = [Step("CVT", [("src", 0)], "i32.f32")]
        else:
            steps = [Step("ADD", [("src", 0), ("imm", 128.0)])] if kind == "u8" else [Step("COPY", [("src", 0)])]
        self.values[node.output[0]] = (self.q_vector(node, ir, shape, steps, node.output[0]), shape)
        return True

    # ----- QLinearAdd -------------------------------------------------------------------------------------
    def q_qdq_add(self, node) -> bool:
        """DequantizeLinear(a), DequantizeLinear(b) -> Add -> QuantizeLinear: onnxruntime fuses it into QLinearAdd,
        computed here as its kernel does (`q_add_steps`)."""
        st = self.q_state
        qn = self.q_requantizer(node.output[0])
        if qn is None:
            return False  # a float result (e.g. read by a float op first): onnxruntime adds in float too
        (qa, sa, za), (qb, sb, zb) = st["pending"][node.input[0]], st["pending"][node.input[1]]
        if qa not in self.values or qb not in self.values or \
                tuple(self.values[qa][1]) != tuple(self.values[qb][1]):
            return False
        y_zp = self.q_const(qn, 2, "the zero point", required=False)
        y_kind = _NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
        sc = self.q_scalar_scale(qn, 1, "scale")
        zc = self.q_zero(qn, 2, y_kind, "zero point")
        self.q_add(node, qn.output[0], (qa, st["code"][qa], sa, za), (qb, st["code"][qb], sb, zb),
                   (y_kind, sc, zc))
        self.q_alias_requantized(node.output[0], qn.output[0])
        return True

    def q_add(self, node, out_name: str, a: tuple, b: tuple, c: tuple) -> None:
        """C = QLinearAdd(A, B) of two computed code tensors of one shape, as onnxruntime's AVX2 kernel computes it
        on the raw 8-bit values: round_half_even(fmaf(A, rAC, fmaf(B, rBC, fixed))), saturated (`fma_steps`
        emulates fmaf). a, b = (name, kind, scale, zero point code), c = (kind, scale, zero point code). Three
        VXM passes: the inner fma, the outer one, the rounding."""
        (xa, ka, sa, za), (xb, kb, sb, zb), (kc, sc, zc) = a, b, c
        ir_a, shape = self.values[xa]
        ir_b, _ = self.values[xb]
        rac, rbc, fixed = qlinear_add_constants(sa, za + RAW[ka], sb, zb + RAW[kb], sc, zc + RAW[kc])
        name = node.name or out_name

        def raw(kind):  # the 8-bit value of src0 and its largest magnitude
            return ([Step("ADD", [("src", 0), ("imm", float(RAW[kind]))])] if RAW[kind] else []), \
                float(255 if kind == "u8" else 128)

        def stage(src: list, steps: list, hint: str) -> str:
            out = self.add_tensor(self.fresh(hint), shape, "value")
            self.nodes.append(Node("vector", name, node.op_type, out, sources=[View(t) for t in src], steps=steps))
            return out
        pre, range_b = raw(kb)
        x = ("step", len(pre) - 1) if pre else ("src", 0)
        inner_steps = pre + fma_steps(x, rbc, float(fixed), range_b, abs(float(fixed)), len(pre))
        inner = stage([ir_b], inner_steps, out_name + ".inner")
        inner_range = abs(float(rbc)) * range_b + abs(float(fixed))
        pre, range_a = raw(ka)
        x = ("step", len(pre) - 1) if pre else ("src", 0)
        outer_steps = pre + fma_steps(x, rac, ("src", 1), range_a, inner_range, len(pre))
        outer = stage([ir_a, inner], outer_steps, out_name + ".outer")
        lo, hi = (0.0, 255.0) if kc == "u8" else (-128.0, 127.0)
        steps = [Step("MAX", [("src", 0), ("imm", lo)]), Step("MIN", [("step", 0), ("imm", hi)]),
                 Step("ADD", [("step", 1), ("imm", MAGIC)]), Step("SUB", [("step", 2), ("imm", MAGIC)])]
        if RAW[kc]:
            steps.append(Step("SUB", [("step", 3), ("imm", float(RAW[kc]))]))
        self.values[out_name] = (stage([outer], steps, out_name), shape)
        self.q_state["code"][out_name] = kc

    def q_linear_add(self, node) -> bool:
        """QLinearAdd (com.microsoft). Two computed inputs of one shape: as onnxruntime's AVX2 kernel (`q_add`). A
        constant B (a quantised bias) is dequantised on the host and the sum computed as MLAS's scalar kernel does:
        (sa (a - za) + sb (b - zb)) / sc, clamped, rounded half to even, + zc, in float32."""
        a = node.input[0]
        kind = self.q_kind(node, a)
        sa = self.q_scalar_scale(node, 1, "A scale")
        za = self.q_zero(node, 2, kind, "A zero point")
        sb = self.q_scalar_scale(node, 4, "B scale")
        sc = self.q_scalar_scale(node, 6, "C scale")
        c_zp = self.q_const(node, 7, "C zero point", required=False)
        c_kind = _NP_TYPES.get(c_zp.dtype, "u8") if c_zp is not None else "u8"
        zc = self.q_zero(node, 7, c_kind, "C zero point")
        ir, shape = self.values[a]
        b = node.input[3]
        if b not in self.consts and b in self.values and tuple(self.values[b][1]) == tuple(shape):
            kb = self.q_kind(node, b)
            self.q_add(node, node.output[0], (a, kind, sa, za), (b, kb, sb, self.q_zero(node, 5, kb, "B zero point")),
                       (c_kind, sc, zc))
            return True
        steps = ([Step("SUB", [("src", 0), ("imm", float(za))])] if za else []) + \
            [Step("MUL", [("step", 0) if za else ("src", 0), ("imm", float(sa))])]
        value_a = len(steps) - 1
        sources = [View(ir)]
        if node.input[3] in self.consts:
            bq = np.asarray(self.consts[node.input[3]])
            zb = self.q_const(node, 5, "B zero point", required=False)
            zb = np.int64(0) if zb is None else np.asarray(zb, dtype=np.int64)
            vb = (np.float32(sb) * (bq.astype(np.int64) - zb).astype(np.float32)).astype(np.float32)
            if vb.size == 1:
                steps.append(Step("ADD", [("step", value_a), ("imm", float(vb.reshape(())))]))
            else:
                arg = self.operand(node, ("const", vb), tuple(shape))
                sources.append(View(arg[1]))
                steps.append(Step("ADD", [("step", value_a), ("src", 1)]))
        else:
            b = node.input[3]
            zb = self.q_zero(node, 5, self.q_kind(node, b), "B zero point")
            b_ir, b_shape = self.values[b]
            if tuple(b_shape) != tuple(shape):
                raise CompileError(f"{self.where(node)}: QLinearAdd of shapes {tuple(shape)} and {tuple(b_shape)} "
                                   f"is not supported (equal shapes, or a constant B)")
            sources.append(View(b_ir))
            if zb:
                steps.append(Step("SUB", [("src", 1), ("imm", float(zb))]))
            steps.append(Step("MUL", [("step", len(steps) - 1) if zb else ("src", 1), ("imm", float(sb))]))
            steps.append(Step("ADD", [("step", value_a), ("step", len(steps) - 1)]))
        steps.append(Step("DIV", [("step", len(steps) - 1), ("imm", float(sc))]))
        steps += self.q_round_steps(len(steps), float(-128 - zc), float(127 - zc), zc)
        out = self.add_tensor(self.fresh(node.output[0]), shape, "value")
        self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=sources,
                               steps=steps))
        self.values[node.output[0]] = (out, shape)
        self.q_state["code"][node.output[0]] = c_kind
        return True

    # ----- average pool -----------------------------------------------------------------------------------
    def q_pool_operands(self, node, attrs):
        """(x, its kind, sx, zx, sy, output zero point) of a QLinear(Global)AveragePool (com.microsoft)."""
        if attrs.get("channels_last", 0):
            raise CompileError(f"{self.where(node)}: channels_last=1 is not supported")
        x = node.input[0]
        kind = self.q_kind(node, x)
        return (x, kind, self.q_scalar_scale(node, 1, "input scale"), self.q_zero(node, 2, kind, "input zero point"),
                self.q_scalar_scale(node, 3, "output scale"),
                self.q_const(node, 4, "output zero point", required=False))

    def q_average_pool(self, node) -> bool:
        """DequantizeLinear -> AveragePool -> QuantizeLinear, or QLinearAveragePool (com.microsoft), as onnxruntime's
        QLinearAveragePool kernel computes it: each tap dequantized (sx * (x - zx)) and added in float32 in window
        order (h, then w), divided by the count, then round(y / sy + zy) clamped. One VXM pass per tap (a MEM slice
        streams one view at a time); taps in the border read the zero point's code, which adds +0."""
        st = self.q_state
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "QLinearAveragePool":
            x, kind, sx, zx, sy, y_zp = self.q_pool_operands(node, attrs)
            out_name = node.output[0]
        else:
            if node.input[0] not in st["pending"]:
                return False
            qn = self.q_requantizer(node.output[0])
            if qn is None:
                return False
            x, sx, zx = st["pending"][node.input[0]]
            sy = self.q_scalar_scale(qn, 1, "scale")
            y_zp = self.q_const(qn, 2, "the zero point", required=False)
            out_name = qn.output[0]
        y_kind = _NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
        zy_raw = int(np.asarray(y_zp).reshape(())) if y_zp is not None else 0
        if x not in self.values or len(self.values[x][1]) != 4 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            return False
        ir, shape = self.values[x]
        n, c, h, w = shape
        kernel = tuple(attrs["kernel_shape"])
        strides, _, pads, (ho, wo) = self._window(node, attrs, shape, kernel)
        if strides[0] != strides[1]:
            return False
        t = self.tensors[ir]
        if t.conv_pad not in (0.0, float(zx)) and zx:
            raise CompileError(f"{self.where(node)}: '{x}' is read with two zero points")
        t.conv_pad = float(zx) if zx else t.conv_pad
        # the count: the kernel size (count_include_pad), else the taps inside the image, per output pixel
        if attrs.get("count_include_pad", 0):
            counts = np.full((n, ho, wo), kernel[0] * kernel[1], dtype=np.float32)
        else:
            hs = np.arange(ho) * strides[0] - pads[0]
            ws = np.arange(wo) * strides[1] - pads[1]
            ch = np.minimum(hs + kernel[0], h) - np.maximum(hs, 0)
            cw = np.minimum(ws + kernel[1], w) - np.maximum(ws, 0)
            counts = np.broadcast_to((ch[:, None] * cw[None, :]).astype(np.float32), (n, ho, wo))
        out_shape = (n, c, ho, wo)
        name = node.name or out_name
        prev = None
        taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
        for k, (i, j) in enumerate(taps):
            view = View(ir, dh=i, dw=j, stride=strides[0], dilation=1, pad_top=pads[0], pad_left=pads[1], spatial=True)
            dq = ([Step("SUB", [("src", 0), ("imm", float(zx))])] if zx else []) + \
                [Step("MUL", [("step", 0) if zx else ("src", 0), ("imm", float(sx))])]
            sources = [view] if prev is None else [view, View(prev)]
            steps = dq if prev is None else dq + [Step("ADD", [("src", 1), ("step", len(dq) - 1)])]
            if k == len(taps) - 1:
                if np.all(counts == counts.flat[0]):
                    steps.append(Step("DIV", [("step", len(steps) - 1), ("imm", float(counts.flat[0]))]))
                else:
                    rows = np.repeat(counts.reshape(-1, 1), c, axis=1)
                    sources.append(View(self.const_tensor(rows, "count")))
                    steps.append(Step("DIV", [("step", len(steps) - 1), ("src", len(sources) - 1)]))
                steps.append(Step("DIV", [("step", len(steps) - 1), ("imm", float(sy))]))
                steps.append(Step("ADD", [("step", len(steps) - 1), ("imm", float(zy_raw))]))
                steps.append(Step("ADD", [("step", len(steps) - 1), ("imm", MAGIC)]))
                steps.append(Step("SUB", [("step", len(steps) - 1), ("imm", MAGIC)]))
                shift = 128 if y_kind == "u8" else 0
                if shift:
                    steps.append(Step("SUB", [("step", len(steps) - 1), ("imm", float(shift))]))
                steps.append(Step("MAX", [("step", len(steps) - 1), ("imm", -128.0)]))
                steps.append(Step("MIN", [("step", len(steps) - 1), ("imm", 127.0)]))
            out = self.add_tensor(self.fresh(out_name if k == len(taps) - 1 else f"{out_name}.tap{k}"), out_shape,
                                  "value")
            self.nodes.append(Node("vector", name, f"{node.op_type}(tap {k})", out, sources=sources, steps=steps,
                                   fusable=False))
            prev = out
        self.values[out_name] = (prev, out_shape)
        st["code"][out_name] = y_kind
        if node.op_type == "AveragePool":
            self.q_alias_requantized(node.output[0], out_name)
        return True

    # ----- global average pool ------------------------------------------------------------------------------
    def q_global_average(self, node) -> bool:
        """DequantizeLinear -> GlobalAveragePool -> QuantizeLinear, or QLinearGlobalAveragePool: onnxruntime sums
        the codes in int32 (minus zx * H*W) and requantises with sx / (sy * H*W); here identity int8 weights sum the
        taps on the MXM exactly and the same epilogue requantises."""
        st = self.q_state
        if node.op_type == "QLinearGlobalAveragePool":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            x, kind, sx, zx, sy, y_zp = self.q_pool_operands(node, attrs)
            y_kind = _NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
            zy = self.q_zero(node, 4, y_kind, "output zero point")
            out_name = node.output[0]
        else:
            qn = self.q_requantizer(node.output[0])
            if qn is None:
                return False
            x, sx, zx = st["pending"][node.input[0]]
            y_zp = self.q_const(qn, 2, "the zero point", required=False)
            y_kind = _NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
            sy = self.q_scalar_scale(qn, 1, "scale")
            zy = self.q_zero(qn, 2, y_kind, "zero point")
            out_name = qn.output[0]
        if x not in self.values or len(self.values[x][1]) != 4:
            return False
        ir, shape = self.values[x]
        taps = int(shape[2] * shape[3])
        tmp = self.fresh(out_name + "#acc")
        fake = helper.make_node("GlobalAveragePool", [x], [tmp], name=node.name or out_name)
        self.lower_spatial(fake, "GlobalAveragePool", {}, [("value", ir, shape)])
        mm = self.nodes[-1]
        out_ir, out_shape = self.values.pop(tmp)
        if mm.kind != "matmul" or mm.output != out_ir or len(mm.terms) != taps:
            raise CompileError(f"{self.where(node)}: internal: the int8 average did not lower to one matmul")
        corr = np.full(int(shape[1]), -np.int64(zx) * taps, dtype=np.int64)
        mult = np.float32(sx / np.float32(sy * np.float32(taps)))
        self.q_epilogue(node, mm, out_ir, out_shape, corr, mult, ("q", zy, y_kind), out_name)
        if node.op_type == "GlobalAveragePool":
            self.q_alias_requantized(node.output[0], out_name)
        return True

    # ----- contractions -----------------------------------------------------------------------------------
    def q_qdq_contraction(self, node) -> bool:
        """DequantizeLinear -> Conv/MatMul/Gemm -> QuantizeLinear (the QDQ form) as one int8 contraction."""
        st = self.q_state
        op, out = node.op_type, node.output[0]
        if node.input[0] not in st["pending"] or len(node.input) < 2 or node.input[1] not in st["consts"]:
            return False
        qn = self.q_requantizer(out)
        if qn is None:
            return False  # a float result: onnxruntime computes it in float too
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or
                             attrs.get("beta", 1.0) != 1.0):
            return False
        x, sx, zx = st["pending"][node.input[0]]
        wq, sw, zw, axis = st["consts"][node.input[1]]
        if wq.dtype not in (np.int8, np.uint8):
            return False
        out_axis = 0 if op == "Conv" or (op == "Gemm" and attrs.get("transB", 0)) else wq.ndim - 1
        if sw.size > 1 and axis != out_axis:
            return False
        bias = None
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in st["consts"]:
                return False
            bq, sb, zb, _ = st["consts"][node.input[2]]
            if bq.dtype != np.int32 or np.any(zb != 0):
                return False
            bias = bq
        y_zp = self.q_const(qn, 2, "the zero point", required=False)
        y_kind = _NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
        sy = self.q_scalar_scale(qn, 1, "scale")
        zy = self.q_zero(qn, 2, y_kind, "zero point")
        mult = (sx * sw.astype(np.float32)).astype(np.float32) / sy
        self.q_contraction(node, "conv" if op == "Conv" else "gemm", x, zx, wq, zw, bias, mult,
                           ("q", zy, y_kind), qn.output[0], attrs, out_axis)
        self.q_alias_requantized(out, qn.output[0])
        return True

    def q_operator(self, node) -> bool:
        """QLinearConv, QLinearMatMul, QGemm (com.microsoft), MatMulInteger, ConvInteger."""
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x = node.input[0]
        kind = self.q_kind(node, x)
        if op in ("MatMulInteger", "ConvInteger"):
            w = self.q_const(node, 1, "the weights")
            zx = self.q_zero(node, 2, kind, "the input zero point")
            zw = self.q_const(node, 3, "the weight zero point", required=False)
            zw = np.zeros(1, np.int64) if zw is None else zw
            mode, mult = ("i32",), None
        else:
            sx = self.q_scalar_scale(node, 1, "input scale")
            zx = self.q_zero(node, 2, kind, "input zero point")
            w = self.q_const(node, 3, "the weights")
            sw = np.asarray(self.q_const(node, 4, "the weight scale"), dtype=np.float32)
            zw = self.q_const(node, 5, "the weight zero point", required=False)
            zw = np.zeros(1, np.int64) if zw is None else zw
            yi = {"QLinearConv": 6, "QLinearMatMul": 6, "QGemm": 7}[op]
            alpha = np.float32(attrs.get("alpha", 1.0))
            if op == "QGemm" and (len(node.input) <= yi or not node.input[yi]):
                mode = ("f32",)
                mult = (alpha * sx * sw).astype(np.float32)
            else:
                sy = self.q_scalar_scale(node, yi, "output scale")
                y_zp = self.q_const(node, yi + 1, "output zero point", required=False)
                y_kind = _NP_TYPES.get(y_zp.dtype, "u8") if y_zp is not None else "u8"
                mode = ("q", self.q_zero(node, yi + 1, y_kind, "output zero point"), y_kind)
                mult = (alpha * sx * sw).astype(np.float32) / sy
        if w.dtype not in (np.int8, np.uint8):
            raise CompileError(f"{self.where(node)}: weights of type {w.dtype} are not supported (int8/uint8)")
        bias = None
        if op == "QLinearConv" and len(node.input) > 8 and node.input[8]:
            bias = self.q_const(node, 8, "the bias")
        if op == "QGemm":
            if attrs.get("transA", 0):
                raise CompileError(f"{self.where(node)}: QGemm with transA=1 is not supported")
            if len(node.input) > 6 and node.input[6]:
                bias = self.q_const(node, 6, "the bias C")
                if bias.ndim == 2 and bias.shape[0] != 1:
                    raise CompileError(f"{self.where(node)}: a QGemm bias C of shape {bias.shape} is not supported")
        conv = op in ("QLinearConv", "ConvInteger")
        out_axis = 0 if conv or (op == "QGemm" and attrs.get("transB", 0)) else w.ndim - 1
        self.q_contraction(node, "conv" if conv else "gemm", x, zx, w, zw, bias, mult, mode, node.output[0],
                           attrs, out_axis)
        return True

    def q_contraction(self, node, form: str, x: str, zx: int, w: np.ndarray, zw, bias, mult, mode: tuple,
                      out_name: str, attrs: dict, out_axis: int) -> None:
        """x's codes (zero point code zx) contracted with integer weights w - zw on the int8 MXM, then the
        epilogue of `mode`: ("q", zy_code, kind) requantised codes, ("f32",) floats acc * mult, ("i32",) acc."""
        where = self.where(node)
        n_out = w.shape[out_axis]
        shape = [1] * w.ndim
        shape[out_axis] = n_out
        zw = np.asarray(zw, dtype=np.int64)
        w_eff = w.astype(np.int64) - (zw.reshape(shape) if zw.size > 1 else zw.reshape(()))
        pieces = int8_pieces(w_eff)  # asymmetric uint8 weights: w - zw in [-255, 255] as 2-3 int8 passes
        colsum = w_eff.sum(axis=tuple(a for a in range(w.ndim) if a != out_axis))
        corr = -np.int64(zx) * colsum
        if bias is not None:
            corr = corr + np.broadcast_to(np.asarray(bias, dtype=np.int64).reshape(-1), (n_out,))
        if np.abs(corr).max(initial=0) >= 2 ** 31:
            raise CompileError(f"{where}: a bias or zero-point correction of {np.abs(corr).max()} leaves int32")
        mm, out_ir, out_shape = self.q_int8_matmul(node, form, x, zx, pieces[0].astype(np.float32), out_name, attrs)
        first = list(mm.terms)
        for piece in pieces[1:]:  # the same activation views again with the remaining weights, one accumulator:
            n0, inputs0 = len(self.nodes), list(self.inputs)  # lower the piece alike, keep only its weights
            extra, _, _ = self.q_int8_matmul(node, form, x, zx, piece.astype(np.float32), out_name, attrs)
            if len(extra.terms) != len(first):
                raise CompileError(f"{where}: internal: the weight pieces lowered to different term counts")
            del self.nodes[n0:]
            self.inputs[:] = inputs0
            mm.terms.extend((view, w) for (view, _), (_, w) in zip(first, extra.terms))
        self.q_epilogue(node, mm, out_ir, out_shape, corr, mult, mode, out_name)

    def q_int8_matmul(self, node, form: str, x: str, zx: int, wf: np.ndarray, out_name: str, attrs: dict):
        """One matmul node of x's codes with integer weights `wf` (held as float32): (node, IR output, shape)."""
        where = self.where(node)
        tmp = self.fresh(out_name + "#acc")
        if form == "conv":
            ir, xshape = self.values[x]
            t = self.tensors[ir]
            if t.conv_pad not in (0.0, float(zx)) and zx:
                raise CompileError(f"{where}: '{x}' is read with two zero points")
            t.conv_pad = float(zx) if zx else t.conv_pad
            keep = {k: v for k, v in attrs.items() if k in ("strides", "pads", "dilations", "group", "auto_pad",
                                                            "kernel_shape")}
            fake = helper.make_node("Conv", [x, "w"], [tmp], name=node.name or out_name, **keep)
            if not self.q_stem(node, fake, x, keep, wf):
                self.lower_spatial(fake, "Conv", keep, [("value", ir, xshape), ("const", wf)])
        else:
            keep = {"transB": attrs.get("transB", 0)}
            fake = helper.make_node("Gemm", [x, "w"], [tmp], name=node.name or out_name, **keep)
            xarg = ("value",) + (self.flat[x] if x in self.flat else self.values[x])
            if wf.ndim != 2:
                raise CompileError(f"{where}: weights of rank {wf.ndim} are not supported (rank 2)")
            self.lower_matmul(fake, "Gemm", keep, [xarg, ("const", wf)])
        mm = self.nodes[-1]
        out_ir, out_shape = self.values.pop(tmp)
        if mm.kind != "matmul" or mm.output != out_ir:
            raise CompileError(f"{where}: internal: the int8 contraction did not lower to one matmul")
        return mm, out_ir, out_shape

    def q_stem(self, node, fake, x: str, attrs: dict, wf: np.ndarray) -> bool:
        """A convolution of QuantizeLinear(graph input): the host lays the float input out as patches (as the fp16
        path does for a stem convolution) and the chip quantises the patches, so one matmul of K = C*kh*kw replaces
        kh*kw taps of K = C. Padding is exact: a zero-padded patch quantises to the zero point, which is what
        onnxruntime pads the codes with. False when the input is not such a stem."""
        src = self.q_state.get("of_input", {}).get(x)
        if src is None:
            return False
        ir, scale, zp = src
        n0, inputs0 = len(self.nodes), list(self.inputs)
        t = self.tensors[ir]
        self.lower_spatial(fake, "Conv", attrs, [("value", ir, t.shape), ("const", wf)])
        mm = self.nodes[-1]
        patches = self.tensors[mm.terms[0][0].tensor] if mm.kind == "matmul" and len(mm.terms) == 1 else None
        if patches is None or patches.im2col is None:  # not the stem path: undo it
            del self.nodes[n0:]
            self.inputs[:] = inputs0
            self.values.pop(fake.output[0], None)
            return False
        qp = self.add_tensor(self.fresh(patches.name + ".q"), patches.shape, "value")
        self.nodes.insert(len(self.nodes) - 1, Node("vector", node.name or node.output[0], "QuantizeLinear(patches)",
                                                    qp, sources=[View(patches.name)],
                                                    steps=self.q_quantize_steps(scale, zp)))
        mm.terms = [(View(qp), mm.terms[0][1])]
        if self.q_only_feeds(x, node):  # the quantised image itself is now unused
            q_ir = self.values[x][0]
            self.nodes = [n for n in self.nodes if n.output != q_ir]
        return True

    def q_epilogue(self, node, mm, out_ir: str, out_shape: tuple, corr, mult, mode: tuple, out_name: str) -> None:
        """Make `mm` an int8 matmul (its weights int8) with the zero-point correction and `mode`'s epilogue."""
        n_out = self.tensors[out_ir].cols
        mm.onnx_op = node.op_type
        for _, wname in mm.terms:
            self.tensors[wname].dtype = "i8"
        steps, sources = [], []
        cur = ("acc",)
        if corr.any():
            c = self.const_tensor(corr.reshape(1, n_out).astype(np.float32), "qcorr")
            self.tensors[c].dtype = "i32"
            self.tensors[c].data = corr.reshape(1, n_out).astype(np.int32)  # exact (float32 is not above 2^24)
            sources.append(View(c))
            steps.append(Step("ADD", [("acc",), ("src", 0)], "i32"))
            cur = ("step", 0)
        if mode[0] == "i32":
            if not steps:
                steps = [Step("COPY", [("acc",)], "i32")]
            self.tensors[out_ir].dtype = "i32"
        else:
            steps.append(Step("CVT", [cur], "i32.f32"))
            m = np.asarray(mult, dtype=np.float32).reshape(-1)
            if m.size > 1:
                mrow = self.const_tensor(np.broadcast_to(m, (n_out,)).reshape(1, n_out).copy(), "qscale")
                sources.append(View(mrow))
                steps.append(Step("MUL", [("step", len(steps) - 1), ("src", len(sources) - 1)]))
            else:
                steps.append(Step("MUL", [("step", len(steps) - 1), ("imm", float(m[0]))]))
            if mode[0] == "q":
                zy = mode[1]
                steps += self.q_round_steps(len(steps), float(-128 - zy), float(127 - zy), zy)
                self.q_state["code"][out_name] = mode[2]
        mm.steps, mm.sources = steps, sources
        self.values[out_name] = (out_ir, out_shape)


# ----- QLinearAdd as onnxruntime's AVX2 kernel computes it -------------------------------------------------------
RAW = {"u8": 128, "i8": 0}  # a code plus this is the 8-bit value onnxruntime stores


def _f32(x) -> np.float32:
    return np.float32(x)


def _fma32(a, b, c) -> np.float32:
    """fmaf(a, b, c) for float32 a, c and an integer b below 2^8: the product is exact in float64."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def qlinear_add_constants(sa, za_raw, sb, zb_raw, sc, zc_raw) -> tuple:
    """(rAC, rBC, fixed) of MlasQLinearAddKernelAvx2Helper: rAC = sa / sc, rBC = sb / sc and
    fixed = zc - (rAC * za + rBC * zb) in float32, the compiler contracting rAC * za + (rBC * zb) into one fma
    (measured: without the contraction one of 100,352 outputs of a ResNet-18 residual Add is one step off)."""
    rac, rbc = _f32(_f32(sa) / _f32(sc)), _f32(_f32(sb) / _f32(sc))
    fixed = _f32(_f32(zc_raw) - _fma32(rac, za_raw, _f32(rbc * _f32(zb_raw))))
    return rac, rbc, fixed


def _unit(bound: float) -> float:
    """A power of two u with bound < 2^22 u: float32 holds every multiple of u up to 4 * bound exactly."""
    return float(2.0 ** (np.floor(np.log2(max(bound, 2.0 ** -100))) - 21))


def _on_grid(x: float, u: float) -> tuple:
    """x = hi + lo with hi a multiple of u (exact in float32 when |x| < 2^22 u) and lo = x - hi, both float32."""
    hi = _f32(np.round(np.float64(x) / u) * u)
    return hi, _f32(np.float64(x) - np.float64(hi))


def fma_steps(x: tuple, r: np.float32, c, x_range: float, c_range: float, first: int = 0) -> list:
    """Steps computing fmaf(x, r, c) for an integer x (|x| <= x_range < 2^8), a constant r and c a constant
    (float) or a step reference (|c| <= c_range). On a grid of unit u (`_unit` of the largest |x r + c|):
    r = r_hi + r_lo and c = c_hi + c_lo with r_hi, c_hi multiples of u, so x * r_hi + c_hi is exact; the small
    rest x * r_lo + c_lo is added last. The result is fmaf's correctly rounded value unless the rest's own
    rounding (below 2^-16 u) moves it across a rounding boundary: rare, and then one float32 unit. Measured
    (tests/test_int8.py::test_qlinear_add_emulation_on_every_code_pair): over all 65,536 code pairs of 300 random
    scale sets, the inner fma was always exact, the outer one a unit off in 39 of 19.7M cases, the code never.
    The steps are numbered from `first` (x and c may refer to earlier ones)."""
    u = _unit(abs(float(r)) * x_range + c_range)
    r_hi, r_lo = _on_grid(r, u)
    steps: list = []

    def op(name, *args):
        steps.append(Step(name, list(args)))
        return ("step", first + len(steps) - 1)
    exact = op("MUL", x, ("imm", float(r_hi)))
    if isinstance(c, tuple):  # c rounded to the grid at run time: (c + 1.5 * 2^23 u) - 1.5 * 2^23 u is exact
        big = float(1.5 * 2.0 ** 23 * u)
        c_hi = op("SUB", op("ADD", c, ("imm", big)), ("imm", big))
        c_lo = op("SUB", c, c_hi)
    else:
        hi, lo = _on_grid(c, u)
        c_hi, c_lo = ("imm", float(hi)), ("imm", float(lo))
    exact = op("ADD", exact, c_hi)
    rest = op("ADD", op("MUL", x, ("imm", float(r_lo))), c_lo)
    op("ADD", exact, rest)
    return steps

