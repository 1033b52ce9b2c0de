"""The state of one ONNX -> IR lowering: `LowerState` holds everything the lowering functions read and write (the
IR being built, the ONNX values seen so far and the views some of them are kept as, per-family caches), all declared
in __init__. The lowering functions (one module per op family, lower/table.py) take it as their first argument.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from lpusim.compiler.frontend.load import input_kinds
from lpusim.compiler.ir import Node, Tensor
from lpusim.compiler.row_layout import as_matrix, geom
from lpusim.errors import CompileError


class LowerState:
    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, tuple], magnitudes: dict[str, float],
                 lower: Callable[[LowerState, onnx.NodeProto], None]):
        self._lower = lower  # the dispatcher (dispatch.lower): `lower(node)` lowers another node through it
        self.model = model
        self.magnitudes = magnitudes
        self.derived: dict[str, float] = {}  # IR tensor without an ONNX name -> its expected max |value|
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.input_shapes = input_shapes
        self.consts: dict[str, np.ndarray] = {}  # ONNX name -> host value (folded)
        self.values: dict[str, tuple[str, tuple]] = {}  # ONNX name -> (IR tensor, ONNX shape)
        self.counter = 0
        self.flat: dict[str, tuple[str, tuple]] = {}  # ONNX name -> (IR image, NCHW shape) flattened to [N, CHW]
        self.grouped: dict[str, tuple] = {}  # ONNX name -> an image seen as [N, g1, g2, H, W] (shape_ops.py)
        # attention heads (attention.py): pending splits, per-head parts, pending merges
        self.splits: dict[str, tuple] = {}
        self.heads: dict[str, tuple] = {}
        self.heads_hidden: dict[str, tuple] = {}
        self.merges: dict[str, tuple] = {}
        self.kinds = input_kinds(model)  # bool/integer graph inputs (host-converted to float32)
        self.integral: set[str] = set(self.kinds)  # ONNX values known to hold whole numbers (dispatch.py)
        self.maskrows: dict[str, tuple] = {}  # ONNX name -> (IR [1, K] row, ONNX shape [1, 1, Q|1, K]) (attention.py)
        self.flatrows: dict[str, tuple] = {}  # ONNX name -> a matrix flattened to a column (attention.py)
        # ONNX name -> (IR value, its [B, S, X] shape, its [B, 1, S, X] image or None) of a value reshaped to
        # [B, 1, S, X] and kept as mask rows for the attention heads (shape_ops.lower_reshape: rotary cos/sin); any
        # other reader gets the image, laid out once (dispatch.relaid_row_views)
        self.row_views: dict[str, tuple] = {}
        # caches and per-family state
        self.shared_consts: dict = {}  # key -> constant tensor: ones matrices, rotations, stored once (lanes.py)
        # Whether sums and attention products split their fp16 operands into hi + lo (lanes.fp16_residual): for
        # quantised models (any QuantizeLinear/DequantizeLinear), whose reference (onnxruntime) keeps Softmax,
        # LayerNormalization and the attention matmuls in float32, so that the QuantizeLinear after them lands on
        # its codes. fp16 models keep one pass (the fp16 rule judges them).
        self.precise_sums: bool = any(n.op_type in ("QuantizeLinear", "DequantizeLinear",
                                                                  "DynamicQuantizeLinear") for n in model.graph.node)
        # precision="fp32" (compiler/fp32_split.py splits every fp16 MXM operand after lowering): lane moves are
        # then exact, so the lowerings skip their own fp16 pieces (exact_broadcast, wide_sum). Quantised models
        # keep precise_sums instead (import_onnx).
        self.fp32: bool = False
        # Resize runs an upsampling axis as one pass (resize._resize_fused); off in compile_graph's last retry, for
        # a model whose fused pass streams too many sources for placement to find room for its output
        self.fused_resize: bool = True
        self.head_scales: dict[str, float] = {}  # head parts holding integers (codes - zero point) -> their scale
        self.head_floats: dict[str, str] = {}  # head part -> its floats (code x scale, once per part)
        self.value_parts: dict[str, list] = {}  # ONNX [B, NH, S, X] value read with heads -> its parts (attention.py)
        self.mask_rows: dict = {}  # (mask rows, batch element) -> the [1, K] row read by that element's scores
        self.interleave_width = 12  # attention.interleave_parts: parts interleaved per window
        self.row_bits: dict = {}  # (cols, word, slot) -> a bit-select constant (rows.py)
        self.nd_lanes: dict[str, tuple] = {}  # ONNX name -> (channels-last IR tensor, its shape) of 1-D/3-D results
        self.elem_types: dict | None = None  # ONNX value -> elem type (onnx shape inference, once: integer_typed)
        self.q_state: dict = {  # int8 (quant.py)
            "code": {},  # ONNX name of an integer tensor on the chip -> "u8" | "i8"
            "pending": {},  # float ONNX name -> (integer ONNX name, scale, zero point code): a lazy DequantizeLinear
            "consts": {},  # ONNX name of a dequantized constant -> (integer array, scale, zero point, axis)
            "bypass": None,
        }

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}#{self.counter}"

    def add_tensor(self, name, shape, kind, data=None, onnx_input=None) -> str:
        rows, cols = as_matrix(shape)
        if data is not None:
            data = np.ascontiguousarray(np.asarray(data, dtype=np.float32).reshape(rows, cols))
        self.tensors[name] = Tensor(name, rows, cols, kind, tuple(shape), data, onnx_input=onnx_input,
                                    geom=geom(shape))
        return name

    def const_tensor(self, array: np.ndarray, hint: str) -> str:
        """A constant already in row layout ([rows, cols])."""
        return self.add_tensor(self.fresh(hint), array.shape, "const", array)

    def feeds_other_nodes(self, name: str) -> bool:
        return any(name in n.input for n in self.model.graph.node)

    def where(self, node) -> str:
        return f"{node.op_type} node '{node.name or node.output[0]}'"

    def get(self, node, i):
        """('const', array) or ('value', ir_name, shape) for input i of node; None if absent."""
        if i >= len(node.input) or node.input[i] == "":
            return None
        name = node.input[i]
        if name in self.consts:
            return ("const", self.consts[name])
        if name in self.values:
            return ("value",) + self.values[name]
        if name in self.heads:
            return ("heads",) + self.heads[name]
        if name in self.maskrows:
            return ("maskrow", name)
        if name in self.flatrows:
            return ("flatrows", name)
        if name in self.splits:
            return ("split", name)
        if name in self.merges:
            return ("merge", name)
        if name in self.grouped:
            if node.op_type not in ("Transpose", "Reshape"):
                raise CompileError(f"{self.where(node)}: input '{name}' is a 5-D view of an image, which only a "
                                   f"channel-shuffle Transpose and a Reshape back can read")
            return ("grouped", name)
        if name in self.flat:
            if node.op_type not in ("MatMul", "Gemm") or i != 0:
                raise CompileError(f"{self.where(node)}: input '{name}' is an image flattened across channels "
                                   f"and pixels, which only a following MatMul/Gemm can read (a relayout needs "
                                   f"the SXM, not supported yet)")
            img, shape = self.flat[name]
            return ("value", img, shape)
        raise CompileError(f"{self.where(node)}: input '{name}' is not produced by any earlier node")

    def tensor_magnitude(self, node, ir_name: str) -> float:
        """The calibrated magnitude of the ONNX input of `node` that holds `ir_name` (0 when unknown)."""
        onnx_name = next((i for i in node.input if i in self.values and self.values[i][0] == ir_name), None)
        return self.magnitudes.get(onnx_name, 0.0) if onnx_name else self.derived.get(ir_name, 0.0)

    def ir_magnitude(self, ir_name: str) -> float:
        """The expected max |value| of an IR tensor, as scale_fp16 will see it (derived, else calibrated)."""
        if ir_name in self.derived:
            return self.derived[ir_name]
        onnx_name = next((k for k, v in self.values.items() if v and v[0] == ir_name), None)
        return self.magnitudes.get(onnx_name, 0.0) if onnx_name else 0.0

    def lower(self, node) -> None:
        """Lower another ONNX node (a sub-node a lowering builds) through the dispatcher."""
        self._lower(self, node)


class Renamed:
    """A node seen through one of its outputs (Split emits one selection per output)."""

    def __init__(self, node, output):
        self._node, self.output = node, [output]

    def __getattr__(self, name):
        return getattr(self._node, name)
