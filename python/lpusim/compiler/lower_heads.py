"""Multi-head attention as exported from PyTorch: [B, S, H] -> Reshape [B, S, NH, D] -> Transpose -> per-head work.

A 4-D [B, NH, S, D] activation would read as an NCHW image, so heads are kept apart instead: a *heads value* is
one IR matrix per head ([S, D], rows = tokens, lanes = the head's features; batch 1), plus whether the ONNX tensor
is the transpose of each part ([B, NH, D, S], the K^T of attention scores).
* Reshape [B, S, NH*D] -> [B, S, NH, D] then Transpose (0, 2, 1, 3): head h is lanes h*D.. of the input, picked by
  an MXM selection (lower_moves.py); Transpose (0, 2, 3, 1) gives the same parts, marked transposed.
* MatMul(heads, heads): per head, the second operand's part is loaded as computed MXM weights, after an SXM/MEM
  transpose when it is marked transposed (schedule_sxm.py).
* Elementwise ops, Softmax, scalar or broadcast constants: lowered once per head on the parts.
* Transpose (0, 2, 1, 3) then Reshape [B, S, NH*D]: the parts are placed side by side on the lanes (a Concat).
"""
from __future__ import annotations

import numpy as np
import onnx

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower_lanes import UP
from lpusim.compiler.lower_moves import _Renamed
from lpusim.errors import CompileError


CODE_MAGNITUDE = 256.0  # a head part of codes minus zero point (|v| <= 255): its fp16 copy needs no scaling


class HeadsLowering:
    """Mixed into the importer's `_Lowering`."""

    def split_reshape(self, node, ir_name, shape, new) -> bool:
        """[B, S, H] -> [B, S, NH, D] of a computed tensor: remember it (no data moves yet)."""
        if len(shape) == 3 and len(new) == 4 and tuple(new[:2]) == tuple(shape[:2]) and new[2] * new[3] == shape[2]:
            if shape[0] != 1:
                raise CompileError(f"{self.where(node)}: attention heads with batch {shape[0]} are not supported "
                                   f"yet (batch 1)")
            self.splits[node.output[0]] = (ir_name, tuple(shape), int(new[2]), int(new[3]))
            return True
        return False

    def lower_split_transpose(self, node, a):
        ir_name, shape, nh, d = self.splits[node.input[0]]
        perm = list(a.get("perm", []))
        if perm not in ([0, 2, 1, 3], [0, 2, 3, 1]):
            raise CompileError(f"{self.where(node)}: Transpose perm={perm} of a [B, S, heads, D] view is not "
                               f"supported (perm [0,2,1,3] or [0,2,3,1])")
        parts = []
        # quantised models (precise_sums): the MXM selection moves fp16 values. Floats dequantized from codes:
        # select the codes minus the zero point (integers, exact in fp16) and keep the scale aside (`head_scales`:
        # a heads MatMul applies it in its epilogue, other readers multiply first, `head_float`). Other floats:
        # select x's fp16 copy and its residual (scaled up) and add them back in f32 (~22 significant bits).
        codes = self.q_state.get("dequantized", {}).get(ir_name) if self.precise_sums() else None
        lo = self.fp16_residual(node, ir_name, shape, f"{node.output[0]}.lo", self.magnitudes.get(node.input[0]),
                                up=True) if self.precise_sums() and codes is None else None
        for h in range(nh):
            cols = list(range(h * d, (h + 1) * d))
            if codes is not None:
                q, scale, zp = codes
                y, _ = self.select_lanes(_Renamed(node, f"{node.output[0]}@h{h}"), q, shape, cols,
                                         f"{node.output[0]}@h{h}.codes",
                                         [Step("SUB", [("acc",), ("imm", float(zp))])] if zp else [])
                self.derived[y] = CODE_MAGNITUDE
                self.tensors[y].shape = (1, shape[1], d)
                self.head_scales[y] = scale
                parts.append(y)
                continue
            y, _ = self.select_lanes(_Renamed(node, f"{node.output[0]}@h{h}"), ir_name, shape, cols,
                                     f"{node.output[0]}@h{h}")
            if lo is not None:
                y, _ = self.select_lanes(_Renamed(node, f"{node.output[0]}@h{h}"), lo, shape, cols,
                                         f"{node.output[0]}@h{h}",
                                         [Step("MUL", [("acc",), ("imm", 1.0 / UP)]),
                                          Step("ADD", [("step", 0), ("src", 0)])], [y])
            self.tensors[y].shape = (1, shape[1], d)
            parts.append(y)
        transposed = perm == [0, 2, 3, 1]
        self.heads[node.output[0]] = (parts, transposed, (1, nh, d, shape[1]) if transposed else (1, nh, shape[1], d))

    def lower_heads_transpose(self, node, a):
        parts, transposed, shape4 = self.heads[node.input[0]]
        perm = list(a.get("perm", []))
        if perm == [0, 1, 3, 2]:
            b, nh, s, d = shape4
            self.heads[node.output[0]] = (parts, not transposed, (b, nh, d, s))
        elif perm == [0, 2, 1, 3] and not transposed:
            self.merges[node.output[0]] = (parts, shape4)
        else:
            raise CompileError(f"{self.where(node)}: Transpose perm={perm} of attention heads is not supported")

    def lower_merge_reshape(self, node, new):
        parts, (b, nh, s, d) = self.merges[node.input[0]]
        if tuple(new) != (b, s, nh * d):
            raise CompileError(f"{self.where(node)}: merged heads must be reshaped to {(b, s, nh * d)}")
        if self.precise_sums() and self.merge_codes(node, parts, (b, s, nh * d)):
            return
        parts = [self.head_float(node, p) for p in parts]
        args = [("value", p, (1, s, d)) for p in parts]
        if not self.precise_sums():
            self.lower_concat(node, {"axis": -1}, args)
            return
        # quantised models: concatenate the fp16 copies and the (scaled) residuals, add them in f32
        los = [("value", self.fp16_residual(node, p, (1, s, d), f"{p}.lo", self.ir_magnitude(p), up=True), (1, s, d))
               for p in parts]
        lo_node = _Renamed(node, f"{node.output[0]}.lo")
        self.lower_concat(lo_node, {"axis": -1}, los)
        lo_cat, _ = self.values.pop(lo_node.output[0])
        self.lower_concat(node, {"axis": -1}, args)
        hi_cat, shape = self.values[node.output[0]]
        y = self.vector(node, [hi_cat, lo_cat], [Step("MUL", [("src", 1), ("imm", 1.0 / UP)]),
                                                 Step("ADD", [("src", 0), ("step", 0)])], shape, node.output[0])
        self.tensors[y].shape = shape
        self.values[node.output[0]] = (y, shape)

    @property
    def head_scales(self) -> dict:
        """Head parts holding integers (codes minus zero point) -> the scale that makes them the floats."""
        return self.__dict__.setdefault("_head_scales", {})

    def head_float(self, node, part: str) -> str:
        """The floats of a head part (`head_scales`: code x scale, once per part)."""
        if part not in self.head_scales:
            return part
        cache = self.__dict__.setdefault("_head_floats", {})
        if part not in cache:
            y = self.vector(node, [part], [Step("MUL", [("src", 0), ("imm", self.head_scales[part])])],
                            self.tensors[part].shape, f"{part}.f")
            self.tensors[y].shape = self.tensors[part].shape
            cache[part] = y
        return cache[part]

    def merge_codes(self, node, parts: list, shape: tuple) -> bool:
        """Merged heads read only by QuantizeLinears of one scale and zero point (an attention output before its
        int8 projection): quantise each part, then place the codes (exact in fp16) in one MXM pass each; the
        QuantizeLinears' outputs are those codes (elementwise, so the same as quantising the merged floats)."""
        name, via = node.output[0], None
        u = self.q_requantizer(name)
        users = self.q_users(name)
        if u is None and len(users) == 1 and users[0].op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") \
                and name not in {o.name for o in self.model.graph.output}:
            via = users[0]  # GPT-2: the merged heads reshaped to [S, H], then quantised
            u = self.q_requantizer(via.output[0])
        if u is None:
            return False
        zp_arr = self.q_const(u, 2, "the zero point", required=False)
        kind = {np.dtype(np.uint8): "u8", np.dtype(np.int8): "i8"}.get(zp_arr.dtype) if zp_arr is not None else None
        if kind is None:
            return False
        scale = self.q_scalar_scale(u, 1, "scale")
        zp = self.q_zero(u, 2, kind, "zero point")
        steps = self.q_quantize_steps(scale, zp)
        codes = []
        for h, p in enumerate(parts):
            c = self.q_vector(u, self.head_float(node, p), self.tensors[p].shape, steps, f"{u.output[0]}@h{h}")
            self.tensors[c].shape = self.tensors[p].shape
            self.derived[c] = CODE_MAGNITUDE
            codes.append(("value", c, self.tensors[p].shape))
        if via is not None:  # the merged codes, dequantized lazily: the reshape runs on them, its QuantizeLinear
            out = f"{name}#q"  # (same scale and zero point) gives them back (lower_quant.q_code_op, q_quantize)
            self.lower_concat(_Renamed(node, out), {"axis": -1}, codes)
            self.derived[self.values[out][0]] = CODE_MAGNITUDE
            self.q_state["code"][out] = kind
            self.q_state["pending"][name] = (out, scale, zp)
            return True
        self.lower_concat(_Renamed(node, u.output[0]), {"axis": -1}, codes)
        self.derived[self.values[u.output[0]][0]] = CODE_MAGNITUDE
        self.q_state["code"][u.output[0]] = kind
        self.q_alias_requantized(node.output[0], u.output[0])
        return True

    def lower_heads_matmul(self, node, args):
        if args[0][0] != "heads" or args[1][0] != "heads":
            raise CompileError(f"{self.where(node)}: a MatMul of attention heads with a non-head operand is not "
                               f"supported yet")
        (a_parts, a_t, a_shape), (b_parts, b_t, _) = args[0][1:], args[1][1:]
        if a_t:
            raise CompileError(f"{self.where(node)}: the left operand of a heads MatMul must not be transposed")
        out_parts = []
        precise = self.precise_sums()
        mx, mw = self.magnitudes.get(node.input[0], 0.0), self.magnitudes.get(node.input[1], 0.0)
        for h, (x, w) in enumerate(zip(a_parts, b_parts)):
            sub = _Renamed(node, f"{node.output[0]}@h{h}")
            # f32-accurate products (quantised models, lower_lanes.precise_sums): x @ w = xh @ wh + xl @ wh +
            # xh @ wl, h/l the fp16 copy and its residual (the dropped xl @ wl is 2^-22 of the product); an operand
            # of integer codes (`head_scales`) is exact in fp16 and needs no residual: its scale ends the epilogue
            sx, sw = self.head_scales.get(x), self.head_scales.get(w)
            if not precise:
                x, w = self.head_float(sub, x), self.head_float(sub, w)
            wl = self.fp16_residual(sub, w, self.tensors[w].shape, f"{node.input[1]}@h{h}.lo", mw) \
                if precise and sw is None else None
            if b_t:  # K^T: transpose the part on the SXM first
                ws = []
                for v in (w, wl) if wl is not None else (w,):
                    k = self.tensors[v]
                    kt = self.add_tensor(self.fresh(f"{v}.T"), (1, k.cols, k.rows), "value")
                    self.nodes.append(Node("transpose", node.name or node.output[0], "Transpose", kt,
                                           sources=[View(v)], fusable=False))
                    self.derived[kt] = self.derived[v] if v is wl or v in self.head_scales else mw
                    ws.append(kt)
                w, wl = ws if wl is not None else (ws[0], None)
            wt = self.tensors[w]
            self.lower_computed_matmul(sub, ("value", x, self.tensors[x].shape), ("value", w, (wt.rows, wt.cols)))
            y = self.values[sub.output[0]][0]
            if precise:
                xl = self.fp16_residual(sub, x, self.tensors[x].shape, f"{node.input[0]}@h{h}.lo", mx) \
                    if sx is None else None
                extra = [(v, u) for v, u in ((xl, w), (x, wl)) if v is not None and u is not None]
                scale = np.float32(sx if sx is not None else 1.0) * np.float32(sw if sw is not None else 1.0)
                for i, (xv, wv) in enumerate(extra):
                    out = self.add_tensor(self.fresh(sub.output[0]), self.tensors[y].shape, "value")
                    self.nodes.append(Node("matmul", node.name or node.output[0], "MatMul", out,
                                           sources=[View(y)], steps=[Step("ADD", [("acc",), ("src", 0)])],
                                           terms=[(View(xv), wv)]))
                    y = out
                if scale != 1.0:
                    last = self.nodes[-1]
                    assert last.kind == "matmul" and last.output == y
                    last.steps = last.steps + [Step("MUL", [("step", len(last.steps) - 1) if last.steps else ("acc",),
                                                            ("imm", float(scale))])]
                self.values[sub.output[0]] = (y, self.values[sub.output[0]][1])
            out_parts.append(y)
        b, nh = a_shape[:2]
        self.heads[node.output[0]] = (out_parts, False, (b, nh, a_shape[2], self.tensors[out_parts[0]].cols))

    def lower_per_head(self, node, args):
        """An elementwise op or a Softmax over the last axis, once per head."""
        heads = [x for x in args if x is not None and x[0] == "heads"]
        nh = len(heads[0][1])
        transposed = heads[0][2]
        scalars_only = all(x is None or x[0] == "heads" or (x[0] == "const" and np.asarray(x[1]).size == 1)
                           for x in args)
        if any(x[2] != transposed for x in heads) or (transposed and not scalars_only):
            raise CompileError(f"{self.where(node)}: {node.op_type} of transposed attention heads with a "
                               f"non-scalar operand is not supported")
        shape4 = heads[0][3]
        out_parts = []
        for h in range(nh):
            saved = {}
            inputs = list(node.input)
            for i, x in enumerate(args):
                if x is None:
                    continue
                name = node.input[i]
                if x[0] == "heads":
                    part = self.head_float(node, x[1][h])
                    saved[name] = self.values.get(name)
                    self.values[name] = (part, self.tensors[part].shape)
                    self.heads_hidden[name] = self.heads.pop(name)
                elif x[0] == "const" and x[1].ndim == 4:  # [B, NH or 1, S or 1, X] -> that head's [B, ., X]
                    arr = x[1][:, h if x[1].shape[1] > 1 else 0]
                    cname = f"{name}@h{h}"
                    self.consts[cname] = arr
                    inputs[i] = cname
                elif x[0] == "maskrow":  # an attention mask [B, 1, Q|1, K]: its one row, for every head
                    row = self.maskrows[name][0]
                    cname = f"{name}@row"
                    self.values[cname] = (row, (1, 1, self.tensors[row].cols))
                    inputs[i] = cname
                elif x[0] == "value":
                    raise CompileError(f"{self.where(node)}: mixing attention heads with a computed non-head "
                                       f"operand is not supported yet")
            attrs = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
            if "axis" in attrs and attrs["axis"] >= 0:
                attrs["axis"] = attrs["axis"] - 1 if attrs["axis"] > 0 else attrs["axis"]
            sub = onnx.helper.make_node(node.op_type, inputs, [f"{node.output[0]}@h{h}"], name=node.name, **attrs)
            try:
                self.lower(sub)
            finally:
                for name, old in saved.items():
                    self.heads[name] = self.heads_hidden.pop(name)
                    if old is None:
                        del self.values[name]
                    else:
                        self.values[name] = old
            out_parts.append(self.values.pop(sub.output[0])[0])
        # an elementwise op with scalars commutes with the transpose: the parts stay untransposed
        self.heads[node.output[0]] = (out_parts, transposed, shape4)
