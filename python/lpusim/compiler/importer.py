"""ONNX -> IR: load and check the model, resolve shapes, fold constants, lower each node to matmul/vector nodes.

Everything that depends on constants alone is folded on the host (numpy, float32). Everything else becomes chip
work; an op with no chip lowering yet is a CompileError naming the node and its op type.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from lpusim.compiler.frontend.calibrate import without_large_initializers
from lpusim.compiler.frontend.load import HOST_TYPES, attrs, input_kinds, resolve_input_shapes
from lpusim.compiler.ir import Graph, Node, Step, Tensor, View, node_inputs
from lpusim.compiler.lower_flatrows import FlatRowsLowering
from lpusim.compiler.lower_gather import GatherLowering
from lpusim.compiler.lower_heads import HeadsLowering
from lpusim.compiler.lower_index import IndexLowering
from lpusim.compiler.lower_lanes import LaneLowering
from lpusim.compiler.lower_misc import MiscLowering
from lpusim.compiler.lower_moves import MoveLowering, _Renamed
from lpusim.compiler.lower_norms import NormLowering
from lpusim.compiler.lower_quant import QuantLowering
from lpusim.compiler.lower_reduce import KINDS as _REDUCE_KINDS, ReduceLowering
from lpusim.compiler.lower_spatial_nd import SpatialNdLowering
from lpusim.compiler.lower_rows import RowLowering
from lpusim.compiler.lower_resize import ResizeLowering
from lpusim.compiler.lower_transpose import TransposeLowering, same_layout
from lpusim.compiler.row_layout import as_matrix, geom, to_rows
from lpusim.errors import CompileError

def _gelu(a) -> list:
    """0.5 * x * (1 + erf(x / sqrt(2))), or with approximate="tanh" 0.5 * x * (1 + tanh(sqrt(2/pi) * (x +
    0.044715 x^3)))."""
    if a.get("approximate", b"none") in (b"none", "none"):
        head = [("MUL", [("in",), ("imm", float(np.float32(1 / np.sqrt(2))))]), ("ERF", [("step", 0)])]
    else:
        head = [("MUL", [("in",), ("in",)]), ("MUL", [("step", 0), ("imm", 0.044715)]),
                ("MUL", [("step", 1), ("in",)]), ("ADD", [("step", 2), ("in",)]),
                ("MUL", [("step", 3), ("imm", float(np.float32(np.sqrt(2 / np.pi))))]), ("TANH", [("step", 4)])]
    k = len(head) - 1
    return head + [("ADD", [("step", k), ("imm", 1.0)]), ("MUL", [("in",), ("imm", 0.5)]),
                   ("MUL", [("step", k + 2), ("step", k + 1)])]


# ONNX unary ops and the VXM chain each lowers to (x is ("in",); constants come from attributes).
_UNARY = {
    "Relu": lambda a: [("RELU", [("in",)])],
    "Sigmoid": lambda a: [("SIGMOID", [("in",)])],
    "Tanh": lambda a: [("TANH", [("in",)])],
    "Exp": lambda a: [("EXP", [("in",)])],
    "Neg": lambda a: [("NEG", [("in",)])],
    "Abs": lambda a: [("ABS", [("in",)])],
    "Erf": lambda a: [("ERF", [("in",)])],
    "Reciprocal": lambda a: [("RCP", [("in",)])],
    "Sqrt": lambda a: [("SQRT", [("in",)])],
    "Log": lambda a: [("LOG", [("in",)])],
    "Floor": lambda a: [("FLOOR", [("in",)])],
    "Ceil": lambda a: [("CEIL", [("in",)])],
    "Not": lambda a: [("SUB", [("imm", 1.0), ("in",)])],  # booleans are 1.0 / 0.0
    "IsNaN": lambda a: [("NE", [("in",), ("in",)])],  # only NaN differs from itself
    # Softplus: max(x, 0) + log(1 + exp(-|x|)), which never overflows
    "Softplus": lambda a: [("ABS", [("in",)]), ("NEG", [("step", 0)]), ("EXP", [("step", 1)]),
                           ("ADD", [("step", 2), ("imm", 1.0)]), ("LOG", [("step", 3)]), ("RELU", [("in",)]),
                           ("ADD", [("step", 5), ("step", 4)])],
    # HardSwish: x * max(0, min(1, x/6 + 1/2))
    "HardSwish": lambda a: [("MUL", [("in",), ("imm", 1.0 / 6.0)]), ("ADD", [("step", 0), ("imm", 0.5)]),
                            ("MIN", [("step", 1), ("imm", 1.0)]), ("MAX", [("step", 2), ("imm", 0.0)]),
                            ("MUL", [("in",), ("step", 3)])],
    # max(x, alpha*x) equals LeakyRelu for 0 <= alpha <= 1; other alphas are rejected at lowering.
    "LeakyRelu": lambda a: [("MUL", [("in",), ("imm", a.get("alpha", 0.01))]), ("MAX", [("in",), ("step", 0)])],
    # HardSigmoid: max(0, min(1, alpha*x + beta))
    "HardSigmoid": lambda a: [("MUL", [("in",), ("imm", a.get("alpha", 0.2))]),
                              ("ADD", [("step", 0), ("imm", a.get("beta", 0.5))]),
                              ("MIN", [("step", 1), ("imm", 1.0)]), ("MAX", [("step", 2), ("imm", 0.0)])],
    "Gelu": lambda a: _gelu(a),
}
_BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Max": "MAX", "Min": "MIN",
           "Equal": "EQ", "Less": "LT", "Greater": "GT", "LessOrEqual": "LE", "GreaterOrEqual": "GE",
           "And": "MUL", "Or": "MAX", "Xor": "NE"}  # comparisons give 1.0 / 0.0; booleans are 1.0 / 0.0
# Pow with these constant exponents is exact arithmetic; any other exponent is exp(p * log(x)), defined for x > 0.
_POW = {1.0: [("COPY", [("in",)])], 2.0: [("MUL", [("in",), ("in",)])],
        3.0: [("MUL", [("in",), ("in",)]), ("MUL", [("step", 0), ("in",)])],
        4.0: [("MUL", [("in",), ("in",)]), ("MUL", [("step", 0), ("step", 0)])],
        0.5: [("SQRT", [("in",)])], -1.0: [("RCP", [("in",)])], -0.5: [("RSQRT", [("in",)])]}
_PASSTHROUGH = {"Identity", "Dropout"}
# Which results hold whole numbers (lower_index.py: a Cast to an integer type of such a value moves nothing):
_KEEP_INTEGRAL = {"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Slice", "Transpose",
                  "Tile", "Neg", "Abs", "Relu", "Floor", "Ceil", "Cast"}  # when the first input does
_WHOLE_ARITH = {"Add", "Sub", "Mul", "Max", "Min", "Where", "Concat"}  # when every input does
_BOOLEAN = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "IsNaN",
            "ArgMax", "ArgMin"}
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_SPATIAL = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
_REDUCE = set(_REDUCE_KINDS)  # lower_reduce.py
SUPPORTED_OPS = sorted(set(_UNARY) | set(_BINARY) | _PASSTHROUGH | _RESHAPES | _SPATIAL | _REDUCE |
                       {"Pad", "Expand", "Tile", "Gather", "Einsum", "ConstantOfShape"} |
                       {"ArgMax", "ArgMin", "GatherElements", "GatherND", "Resize", "Range"} |
                       {"Softmax", "LogSoftmax", "LayerNormalization", "Concat", "Slice", "Split", "LRN",
                        "Transpose", "Pow", "Where", "Shape", "Size", "Cast"} |
                       {"MatMul", "Gemm", "Clip", "Constant", "BatchNormalization", "Sum"})


class _Lowering(ResizeLowering,
                LaneLowering, MoveLowering, HeadsLowering, QuantLowering, MiscLowering, IndexLowering,
                TransposeLowering, GatherLowering, ReduceLowering, RowLowering, NormLowering, SpatialNdLowering,
                FlatRowsLowering):
    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, tuple], magnitudes: dict[str, float]):
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
        self.grouped: dict[str, tuple] = {}  # ONNX name -> an image seen as [N, g1, g2, H, W] (lower_moves.py)
        # attention heads (lower_heads.py): pending splits, per-head parts, pending merges
        self.splits: dict[str, tuple] = {}
        self.heads: dict[str, tuple] = {}
        self.heads_hidden: dict[str, tuple] = {}
        self.merges: dict[str, tuple] = {}
        self.kinds = input_kinds(model)  # bool/integer graph inputs (host-converted to float32)
        self.integral: set[str] = set(self.kinds)  # ONNX values known to hold whole numbers (lower_index.py)
        self.maskrows: dict[str, tuple] = {}  # ONNX name -> (IR [1, K] row, ONNX shape [1, 1, Q|1, K]) (lower_index.py)
        self.flatrows: dict[str, tuple] = {}  # ONNX name -> a matrix flattened to a column (lower_flatrows.py)

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

    def run(self) -> None:
        g = self.model.graph
        for init in g.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        for name, shape in self.input_shapes.items():
            self.inputs.append(self.add_tensor(name, shape, "input", onnx_input=name))
            self.values[name] = (name, shape)
        for node in g.node:
            self.lower(node)

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

    def lower(self, node) -> None:
        self.lower_node(node)
        ins = [i for i in node.input if i]
        whole = lambda i: i in self.integral or (i in self.consts and np.all(  # noqa: E731
            np.mod(np.asarray(self.consts[i], dtype=np.float64), 1) == 0))
        if node.op_type in _KEEP_INTEGRAL and ins and whole(ins[0]) or \
                node.op_type in _WHOLE_ARITH and ins and all(whole(i) for i in ins) or node.op_type in _BOOLEAN:
            self.integral.update(o for o in node.output if o and o in self.values)

    def lower_node(self, node) -> None:
        if self.lower_quant(node):  # int8: QDQ and QOperator forms (lower_quant.py)
            return
        op, a = node.op_type, attrs(node)
        args = [self.get(node, i) for i in range(len(node.input))]
        out = node.output[0]
        if node.domain not in ("", "ai.onnx"):
            raise CompileError(f"{self.where(node)}: operator domain '{node.domain}' is not supported")
        if op == "Constant":
            self.consts[out] = numpy_helper.to_array(a["value"]) if "value" in a else np.asarray(
                a.get("value_float", a.get("value_floats", a.get("value_int", a.get("value_ints")))))
            return
        if all(x is None or x[0] == "const" for x in args) and op not in ("Dropout",):
            self.consts[out] = self.fold(node, op, a, [None if x is None else x[1] for x in args])
            return
        if op in ("Shape", "Size") and args[0][0] == "value":  # shapes are static: these are constants
            shape = np.array(args[0][2], dtype=np.int64)
            if op == "Size":
                self.consts[out] = np.array(np.prod(shape), dtype=np.int64)
            else:
                self.consts[out] = shape[a.get("start", 0):a.get("end", len(shape))]
            return
        if op == "Dropout" and len(args) > 2 and args[2] is not None and (
                args[2][0] != "const" or bool(np.asarray(args[2][1]))):
            raise CompileError(f"{self.where(node)}: Dropout in training mode (random masks) is not supported; "
                               f"inference Dropout is the identity")
        if any(x is not None and x[0] == "maskrow" for x in args) and not any(
                x is not None and x[0] == "heads" for x in args):
            return self.lower_maskrow(node, op, a, args)
        if any(x is not None and x[0] == "flatrows" for x in args):
            return self.lower_flatrows(node, op, a, args)
        if op in _PASSTHROUGH:
            self.values[out] = self.values[node.input[0]]
            return
        if op == "Cast" and args[0][0] == "value":
            return self.lower_cast(node, a, args)
        if op == "Cast":
            raise CompileError(f"{self.where(node)}: Cast to {onnx.TensorProto.DataType.Name(a.get('to', 0))} of a "
                               f"computed tensor is not supported (the chip path carries float32 values)")
        kinds = {x[0] for x in args if x is not None}
        if "split" in kinds:
            if op != "Transpose":
                raise CompileError(f"{self.where(node)}: a [B, S, heads, D] view is only read by a Transpose")
            return self.lower_split_transpose(node, a)
        if "merge" in kinds:
            if op != "Reshape":
                raise CompileError(f"{self.where(node)}: merged attention heads are only read by a Reshape")
            b, nh, s_, d = self.merges[node.input[0]][1]
            return self.lower_merge_reshape(node, self.reshape_target(node, a, args, (b, s_, nh, d)))
        if "heads" in kinds:
            if op == "MatMul":
                return self.lower_heads_matmul(node, args)
            if op == "Transpose":
                return self.lower_heads_transpose(node, a)
            if op in ("Shape", "Size"):  # shapes are static
                shape4 = np.array(self.heads[node.input[0]][2], dtype=np.int64)
                self.consts[out] = np.array(np.prod(shape4)) if op == "Size" else \
                    shape4[a.get("start", 0):a.get("end", len(shape4))]
                return
            if op in _RESHAPES or op in _PASSTHROUGH:  # a reshape to the same [B, heads, S, D]: no data moves
                shape4 = self.heads[node.input[0]][2]
                new = shape4 if op in _PASSTHROUGH else self.reshape_target(node, a, args, shape4)
                if tuple(new) != tuple(shape4):
                    raise CompileError(f"{self.where(node)}: reshaping attention heads {shape4} to {tuple(new)} "
                                       f"is not supported")
                self.heads[node.output[0]] = self.heads[node.input[0]]
                return
            return self.lower_per_head(node, args)
        if args and args[0] is not None and args[0][0] == "grouped":
            if op == "Transpose":
                return self.lower_grouped_transpose(node, a)
            new = self.reshape_target(node, a, args, self.grouped[node.input[0]][1])
            return self.finish_grouped(node, new)
        if op == "Concat":
            return self.lower_concat(node, a, args)
        if op == "Pad":
            return self.lower_pad(node, a, args)
        if op == "Expand":
            return self.lower_expand(node, args)
        if op == "Tile":
            return self.lower_tile(node, args)
        if op == "Gather":
            return self.lower_gather(node, a, args)
        if op == "GatherElements":
            return self.lower_gather_elements(node, a, args)
        if op == "GatherND":
            return self.lower_gather_nd(node, a, args)
        if op in ("ArgMax", "ArgMin"):
            return self.lower_argmax(node, op, a, args)
        if op == "Resize":
            return self.lower_resize(node, a, args)
        if op == "Range":
            return self.lower_range(node, args)
        if op == "ConstantOfShape":
            raise CompileError(f"{self.where(node)}: ConstantOfShape of a computed shape: the output's size would "
                               f"depend on data, which a static schedule cannot have (a constant or Shape-derived "
                               f"shape is folded on the host)")
        if op == "Einsum":
            return self.lower_einsum(node, a, args)
        if op == "Slice":
            return self.lower_slice(node, a, args)
        if op == "Split":
            return self.lower_split(node, a, args)
        if op == "LRN":
            return self.lower_lrn(node, a, args)
        if op == "Transpose":
            return self.lower_transpose(node, a, args)
        if op == "Pow":
            return self.lower_pow(node, args)
        if op == "Where":
            return self.lower_where(node, args)
        if op in _RESHAPES:
            return self.lower_reshape(node, op, a, args)
        if op in ("MatMul", "Gemm"):
            return self.lower_matmul(node, op, a, args)
        if op in ("GlobalAveragePool", "GlobalMaxPool") and args[0][0] == "value" and len(args[0][2]) >= 3:
            return self.lower_global_pool(node, op, args)  # lower_reduce.py
        if self.lower_spatial_nd_unary(node, op, a, args):  # on a 1-D/3-D conv's channels-last output
            return
        if op in _SPATIAL and self.spatial_nd_wanted(node, op, a, args):  # 1-D, 3-D, per-axis strides
            return self.lower_spatial_nd(node, op, a, args)  # lower_spatial_nd.py
        if op in _SPATIAL:
            return self.lower_spatial(node, op, a, args)
        if op == "BatchNormalization":
            return self.lower_batchnorm(node, a, args)
        if op == "Sum":
            return self.lower_sum(node, args)
        if op in _BINARY:
            return self.lower_binary(node, op, args)
        if op in ("Softmax", "LogSoftmax", "LayerNormalization") and self.norm_elsewhere(node, op, a, args):
            return self.lower_norm(node, op, a, args)  # lower_norms.py: any axes, LayerNorm's Mean/InvStdDev
        if op in ("Softmax", "LogSoftmax"):
            return self.lower_softmax(node, op, a, args)
        if op == "LayerNormalization":
            return self.lower_layernorm(node, a, args)
        if op in _REDUCE:
            return self.lower_reduction(node, op, a, args)
        if op in _UNARY or op == "Clip":
            return self.lower_unary(node, op, a, args)
        raise CompileError(f"{self.where(node)}: operator {op} is not supported yet "
                           f"(supported: {', '.join(SUPPORTED_OPS)})")

    # ----- host-side constant folding -------------------------------------------------------------------
    def fold(self, node, op, a, xs):
        import onnx.reference  # the ONNX project's own evaluator: exact ONNX semantics for folding

        renamed = onnx.helper.make_node(op, [f"c{i}" if x is not None else "" for i, x in enumerate(xs)],
                                        list(node.output), domain=node.domain, **a)
        graph = onnx.helper.make_graph([renamed], "fold", [], [onnx.helper.make_tensor_value_info(
            o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
            initializer=[numpy_helper.from_array(np.asarray(x), f"c{i}") for i, x in enumerate(xs) if x is not None])
        opset = [o for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        model = onnx.helper.make_model(graph, opset_imports=opset)
        try:
            evaluator = onnx.reference.ReferenceEvaluator(model)
            return np.asarray(evaluator.run(None, {})[0])
        except Exception as e:
            first = e
        try:  # the reference evaluator has gaps (GatherElements with a longer data axis): onnxruntime
            import onnxruntime as ort
            feeds = {f"c{i}": np.asarray(x) for i, x in enumerate(xs) if x is not None}
            inputs = [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                      for k, v in feeds.items()]
            typed = onnx.helper.make_model(onnx.helper.make_graph([renamed], "fold", inputs, []),
                                           opset_imports=opset)
            typed.ir_version = min(typed.ir_version, 10)
            typed = onnx.shape_inference.infer_shapes(typed, strict_mode=True)
            typed.graph.output.extend(vi for vi in typed.graph.value_info if vi.name == node.output[0])
            session = ort.InferenceSession(typed.SerializeToString(), providers=["CPUExecutionProvider"])
            return np.asarray(session.run([node.output[0]], feeds)[0])
        except Exception:
            raise CompileError(f"{self.where(node)}: folding constant {op} failed: {first}") from None

    # ----- shapes ---------------------------------------------------------------------------------------
    def reshape_target(self, node, a, args, shape) -> tuple:
        """The output shape of a Reshape/Flatten/Squeeze/Unsqueeze of a tensor of `shape`."""
        op = node.op_type
        if op == "Flatten":
            axis = a.get("axis", 1)
            axis = axis + len(shape) if axis < 0 else axis  # axis == rank is valid: (all, 1)
            new = (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
        elif op == "Reshape":
            if args[1] is None or args[1][0] != "const":
                raise CompileError(f"{self.where(node)}: the target shape must be constant")
            target = [int(v) for v in args[1][1]]
            target = [shape[i] if v == 0 and not a.get("allowzero", 0) else v for i, v in enumerate(target)]
            new = tuple(np.empty(shape, dtype=np.bool_).reshape(target).shape) if shape else tuple(target)
        else:
            axes = a.get("axes")
            if axes is None and len(args) > 1 and args[1] is not None:
                axes = [int(v) for v in args[1][1]]
            if op == "Squeeze":
                new = tuple(np.squeeze(np.empty(shape, dtype=np.bool_), axis=tuple(axes) if axes else None).shape)
            else:
                new = tuple(np.expand_dims(np.empty(shape, dtype=np.bool_), tuple(axes)).shape)
        return tuple(int(v) for v in new)

    def lower_reshape(self, node, op, a, args):
        kind, ir_name, shape = args[0]
        new = self.reshape_target(node, a, args, shape)
        t = self.tensors[ir_name]
        if t.geom is None and t.kind == "value" and all(o.name != node.output[0] for o in self.model.graph.output) \
                and self.split_reshape(node, ir_name, shape, new):  # (a graph output is never a pending split)
            return  # [B, S, H] -> [B, S, heads, D]: attention heads (lower_heads.py)
        new_rows, new_cols = as_matrix(new)
        if (new_rows, new_cols) == (t.rows, t.cols) and same_layout(shape, new):
            self.values[node.output[0]] = (ir_name, new)  # same rows of the same vectors: a pure view
        elif t.geom is not None and len(new) == 2 and new[0] == t.geom[0] and t.kind != "input":
            self.flat[node.output[0]] = (ir_name, tuple(shape))  # [N, C, H, W] -> [N, C*H*W]
        elif len(new) == 4 and new[1:3] == (1, 1) and (t.rows, t.cols) == (new[0], new[3]) and t.geom is None:
            self.maskrows[node.output[0]] = (ir_name, new)  # [B, K] -> [B, 1, 1, K]: attention mask rows
        elif self.flatten_rows(node, ir_name, shape, new):  # [R, C] -> [R*C, 1] (lower_flatrows.py)
            return
        elif t.kind == "input":
            # The host lays out inputs, so a reshaped input is just another view of the same host array.
            name = self.add_tensor(self.fresh(node.output[0]), new, "input", onnx_input=t.onnx_input)
            self.inputs.append(name)
            self.values[node.output[0]] = (name, new)
        elif t.geom is not None and len(shape) == 4 and self.grouped_reshape(node, ir_name, shape, new):
            return  # a 5-D view for a channel shuffle (lower_moves.py)
        elif len(new) == 4 and new[:3] == (1, 1, 1) and (t.rows, t.cols) == (1, new[3]):
            self.maskrows[node.output[0]] = (ir_name, new)  # [K] -> [1, 1, 1, K]: an attention mask's row
        elif (new_rows, new_cols) == (t.cols, t.rows) and 1 in (t.rows, t.cols) and max(t.rows, t.cols) <= 320 \
                and len(new) != 4 and len(shape) != 4:
            # a column to a row or back (an exported attention mask's Flatten): an SXM transpose of one vector
            out = self.add_tensor(self.fresh(node.output[0]), new, "value")
            self.nodes.append(Node("transpose", node.name or node.output[0], node.op_type, out,
                                   sources=[View(ir_name)], fusable=False))
            self.derived[out] = self.tensor_magnitude(node, ir_name)
            self.values[node.output[0]] = (out, new)
        elif not self.reshape_relayout(node, ir_name, shape, new) and \
                not self.reshape_regroup(node, ir_name, shape, new):  # any other (lower_norms.py)
            raise CompileError(f"{self.where(node)}: reshaping a computed {t.rows}x{t.cols} tensor to "
                               f"{new_rows}x{new_cols} moves data between lanes, which needs the SXM "
                               f"(not supported yet)")

    # ----- contractions ---------------------------------------------------------------------------------
    def lower_matmul(self, node, op, a, args):
        x, w = args[0], args[1]
        if op == "Gemm" and a.get("transA", 0) and x[0] == "value":  # A^T on the SXM (lower_transpose.py)
            shape = (x[2][1], x[2][0])
            x = ("value", self.permute(node, x[1], tuple(x[2]), [1, 0], shape, "transA",
                                       self.tensor_magnitude(node, x[1])), shape)
        if x[0] == "value" and w[0] == "value" and op == "MatMul":
            return self.lower_computed_matmul(node, x, w)
        if x[0] == "const" or w[0] != "const":
            raise CompileError(f"{self.where(node)}: only activation @ constant weights, or a MatMul of two "
                               f"computed matrices, is supported yet")
        wmat = np.asarray(w[1], dtype=np.float32)
        if op == "Gemm":
            if a.get("transB", 0):
                wmat = wmat.T
            wmat = wmat * np.float32(a.get("alpha", 1.0))
        if wmat.ndim != 2:
            raise CompileError(f"{self.where(node)}: weights of rank {wmat.ndim} are not supported yet (rank 2)")
        _, xname, xshape = x
        image = self.flat.get(node.input[0])
        if image is not None:
            xshape = (image[1][0], int(np.prod(image[1][1:])))
        if xshape[-1] != wmat.shape[0]:
            raise CompileError(f"{self.where(node)}: inner dimensions differ: {tuple(xshape)} @ {wmat.shape}")
        out_shape = tuple(xshape[:-1]) + (wmat.shape[1],)
        out = self.add_tensor(self.fresh(node.output[0]), out_shape, "value")
        if image is not None:
            # x is an NCHW image flattened to [N, C*H*W]: sum over pixels (h, w) of pixel @ W[c*H*W + h*W + w]
            img_name, (n, c, h, wd) = image
            w4 = wmat.reshape(c, h, wd, wmat.shape[1])
            terms = [(View(img_name, dh=i, dw=j, spatial=True), self.const_tensor(np.ascontiguousarray(w4[:, i, j]), "w"))
                     for i in range(h) for j in range(wd)]
        else:
            terms = [(View(xname), self.const_tensor(wmat, "w"))]
        self.nodes.append(Node("matmul", node.name or node.output[0], op, out, terms=terms))
        self.values[node.output[0]] = (out, out_shape)
        if op == "Gemm" and len(args) > 2 and args[2] is not None:
            c = args[2]
            if c[0] == "const":
                c = ("const", np.asarray(c[1], dtype=np.float32) * np.float32(a.get("beta", 1.0)))
            elif a.get("beta", 1.0) != 1.0:
                raise CompileError(f"{self.where(node)}: beta != 1 with a computed C is not supported yet")
            self.emit_binary(node, "ADD", ("value", out, out_shape), c, node.output[0])

    def lower_computed_matmul(self, node, x, w):
        """x @ w with w computed: w's rows are loaded into a plane as weights (at most 320 x 320 per tile)."""
        _, xname, xshape = x
        _, wname, wshape = w
        if any(d != 1 for d in wshape[:-2]) or len(wshape) < 2 or any(d != 1 for d in xshape[:-2]):
            raise CompileError(f"{self.where(node)}: a MatMul of computed {tuple(xshape)} @ {tuple(wshape)} with "
                               f"batch dimensions is not supported yet (one matrix each)")
        if xshape[-1] != wshape[-2]:
            raise CompileError(f"{self.where(node)}: inner dimensions differ: {tuple(xshape)} @ {tuple(wshape)}")
        out_shape = tuple(np.broadcast_shapes(tuple(xshape[:-2]), tuple(wshape[:-2]))) + (xshape[-2], wshape[-1])
        out = self.add_tensor(self.fresh(node.output[0]), out_shape, "value")
        self.nodes.append(Node("matmul", node.name or node.output[0], "MatMul", out, terms=[(View(xname), wname)]))
        self.values[node.output[0]] = (out, out_shape)

    # ----- convolution and pooling ----------------------------------------------------------------------
    def _window(self, node, a, shape, kernel):
        """(strides, dilations, pads top/left/bottom/right, output H, W) for a Conv/Pool node."""
        n, c, h, w = shape
        kh, kw = kernel
        strides = list(a.get("strides", [1, 1]))
        dil = list(a.get("dilations", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0, 0, 0, 0]
            for i, (size, k) in enumerate(((h, kh), (w, kw))):
                out = -(-size // strides[i])
                total = max(0, (out - 1) * strides[i] + (k - 1) * dil[i] + 1 - size)
                small, big = total // 2, total - total // 2
                pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        ceil = a.get("ceil_mode", 0)
        outs = []
        for i, (size, k) in enumerate(((h, kh), (w, kw))):
            span = size + pads[i] + pads[i + 2] - (k - 1) * dil[i] - 1
            o = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
            if ceil and (o - 1) * strides[i] >= size + pads[i]:
                o -= 1  # the last window must start inside the input or its top/left padding
            outs.append(o)
        if min(outs) < 1:
            raise CompileError(f"{self.where(node)}: the window does not fit the {h}x{w} input")
        return strides, dil, pads, outs

    def lower_spatial(self, node, op, a, args):
        kind, xname, shape = args[0]
        if len(shape) != 4:
            raise CompileError(f"{self.where(node)}: only 2-D images (NCHW) are supported, got shape {tuple(shape)}")
        n, c, h, w = shape
        if op.startswith("Global"):
            kernel, a = (h, w), {}
        elif op == "Conv":
            if args[1][0] != "const":
                raise CompileError(f"{self.where(node)}: convolution weights must be constant")
            kernel = tuple(np.asarray(args[1][1]).shape[2:])
        else:
            kernel = tuple(a["kernel_shape"])
        if len(kernel) != 2:
            raise CompileError(f"{self.where(node)}: only 2-D kernels are supported")
        strides, dil, pads, (ho, wo) = self._window(node, a, shape, kernel)
        taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]

        def view(i, j):
            return View(xname, dh=i, dw=j, stride=strides[0], dilation=dil[0], pad_top=pads[0], pad_left=pads[1],
                        spatial=True)
        if strides[0] != strides[1] or dil[0] != dil[1]:
            raise CompileError(f"{self.where(node)}: different strides or dilations along H and W are not "
                               f"supported yet")
        if op == "Conv":
            weight = np.asarray(args[1][1], dtype=np.float32)
            cout, cin_g = weight.shape[:2]
            group = a.get("group", 1)
            out_shape = (n, cout, ho, wo)
            out = self.add_tensor(self.fresh(node.output[0]), out_shape, "value")
            terms = []
            src = self.tensors[xname]
            if src.kind == "input" and group == 1 and c * len(taps) <= 320 and len(taps) > 1 and src.pad == 0:
                # A convolution straight off a graph input with few channels (the stem of a CNN): the host
                # lays the input out as patches (as it lays out any input), one matmul replaces the taps.
                patches = self.add_tensor(self.fresh(xname + ".im2col"), (n, c * len(taps), ho, wo), "input",
                                          onnx_input=src.onnx_input)
                self.tensors[patches].im2col = (tuple(kernel), tuple(strides), tuple(pads), tuple(dil), src.shape)
                self.inputs.append(patches)
                terms.append((View(patches), self.const_tensor(weight.reshape(cout, -1).T.copy(), "w")))
                taps = []
            cout_g = cout // group
            for i, j in taps:
                # dense [Cin, Cout] per tap; grouped and depthwise convolutions are block diagonal (exact zeros)
                dense = np.zeros((c, cout), dtype=np.float32)
                for g in range(group):
                    dense[g * cin_g:(g + 1) * cin_g, g * cout_g:(g + 1) * cout_g] = \
                        weight[g * cout_g:(g + 1) * cout_g, :, i, j].T
                terms.append((view(i, j), self.const_tensor(dense, "w")))
            self.nodes.append(Node("matmul", node.name or node.output[0], op, out, terms=terms))
            self.values[node.output[0]] = (out, out_shape)
            if len(args) > 2 and args[2] is not None:
                bias = np.asarray(args[2][1], dtype=np.float32).reshape(1, cout, 1, 1)
                self.emit_binary(node, "ADD", ("value", out, out_shape), ("const", bias), node.output[0])
            return
        out_shape = (n, c, ho, wo)
        out = self.add_tensor(self.fresh(node.output[0]), out_shape, "value")
        if op in ("MaxPool", "GlobalMaxPool"):
            if len(taps) > 16:
                raise CompileError(f"{self.where(node)}: a max pool over {len(taps)} taps exceeds the VXM's 16 "
                                   f"ALUs (not supported yet)")
            if len(node.output) > 1 and node.output[1]:
                raise CompileError(f"{self.where(node)}: the Indices output of MaxPool is not supported")
            sources = [view(i, j) for i, j in taps]
            steps = [Step("COPY", [("src", 0)])] if len(taps) == 1 else [Step("MAX", [("src", 0), ("src", 1)])]
            for k in range(2, len(taps)):
                steps.append(Step("MAX", [("step", len(steps) - 1), ("src", k)]))
            self.nodes.append(Node("vector", node.name or node.output[0], op, out, sources=sources, steps=steps))
        else:  # average: identity weights on the MXM sum the taps exactly, the VXM divides
            count_pad = a.get("count_include_pad", 0)
            eye = self.const_tensor(np.eye(c, dtype=np.float32), "eye")
            terms = [(view(i, j), eye) for i, j in taps]
            sources, steps = [], [Step("MUL", [("acc",), ("imm", 1.0 / len(taps))])]
            # The divisor counts the taps inside the image (count_include_pad=0) or inside the padded image;
            # windows that overhang it (ceil_mode) count less. Unequal counts: a constant per row.
            lo_h, hi_h = (-pads[0], h + pads[2]) if count_pad else (0, h)
            lo_w, hi_w = (-pads[1], w + pads[3]) if count_pad else (0, w)
            counts = np.zeros((n, ho, wo), dtype=np.float32)
            for i, j in taps:
                hh = np.arange(ho) * strides[0] + i * dil[0] - pads[0]
                ww = np.arange(wo) * strides[1] + j * dil[1] - pads[1]
                counts += ((hh >= lo_h) & (hh < hi_h))[:, None] & ((ww >= lo_w) & (ww < hi_w))[None, :]
            if np.any(counts != len(taps)):
                inv = np.repeat((1.0 / counts).reshape(-1, 1), c, axis=1).astype(np.float32)
                sources = [View(self.const_tensor(inv, "count"))]
                steps = [Step("MUL", [("acc",), ("src", 0)])]
            self.nodes.append(Node("matmul", node.name or node.output[0], op, out, terms=terms,
                                   sources=sources, steps=steps))
        self.values[node.output[0]] = (out, out_shape)

    def lower_batchnorm(self, node, a, args):
        if any(x is None or x[0] != "const" for x in args[1:5]):
            raise CompileError(f"{self.where(node)}: BatchNormalization needs constant scale, bias, mean, var")
        if a.get("training_mode", 0):
            raise CompileError(f"{self.where(node)}: training_mode BatchNormalization is not supported")
        scale, bias, mean, var = (np.asarray(x[1], dtype=np.float32) for x in args[1:5])
        eps = np.float32(a.get("epsilon", 1e-5))
        mul = scale / np.sqrt(var + eps)
        add = bias - mean * mul
        _, name, shape = args[0]
        bshape = (1, -1) + (1,) * (len(shape) - 2)
        tmp = self.fresh(node.output[0])
        self.emit_binary(node, "MUL", args[0], ("const", mul.reshape(bshape)), tmp)
        self.emit_binary(node, "ADD", ("value",) + self.values[tmp], ("const", add.reshape(bshape)), node.output[0])

    def lower_sum(self, node, args):
        if len(args) == 1:
            self.values[node.output[0]] = self.values[node.input[0]]
            return
        acc = args[0]
        for i, x in enumerate(args[1:]):
            name = node.output[0] if i == len(args) - 2 else self.fresh(node.output[0])
            self.emit_binary(node, "ADD", acc, x, name)
            acc = ("value",) + self.values[name]

    # ----- elementwise ----------------------------------------------------------------------------------
    def operand(self, node, x, out_shape):
        """A binary operand as a chain argument: ('imm', v), or ('src', tensor name) for a row/full tensor."""
        if x[0] == "const":
            arr = np.asarray(x[1], dtype=np.float32)
            if arr.size == 1:
                return ("imm", float(arr.reshape(())))
            rows, cols = as_matrix(out_shape)
            as_rows = to_rows(np.broadcast_to(arr, out_shape), out_shape)
            if rows > 1 and np.all(as_rows == as_rows[:1]):
                return ("src", self.const_tensor(as_rows[:1].copy(), "c"))  # one row, read for every row
            return ("src", self.const_tensor(np.ascontiguousarray(as_rows), "c"))
        _, name, shape = x
        if tuple(shape) == tuple(out_shape):
            return ("src", name)
        rows, cols = as_matrix(shape)
        orows, ocols = as_matrix(out_shape)
        if cols == ocols and rows == 1 and (len(shape) == len(out_shape) or len(out_shape) != 4):
            return ("src", name)
        if cols == 1 and ocols > 1 and (rows == orows or rows == 1) and (len(shape) == 4) <= (len(out_shape) == 4):
            # (..., 1) across the lanes (x - ReduceMean(x) in an exported LayerNorm): lane 0 copied to every
            # lane on the MXM
            y, _ = self.select_lanes(node, name, tuple(shape) or (1,), np.zeros(ocols, dtype=np.int64),
                                     self.fresh("bcast"))
            self.derived[y] = self.tensor_magnitude(node, name)
            return ("src", y)
        return self.broadcast_operand(node, name, shape, out_shape)  # lower_norms.py

    def tensor_magnitude(self, node, ir_name: str) -> float:
        """The calibrated magnitude of the ONNX input of `node` that holds `ir_name` (0 when unknown)."""
        onnx_name = next((i for i in node.input if i in self.values and self.values[i][0] == ir_name), None)
        return self.magnitudes.get(onnx_name, 0.0) if onnx_name else self.derived.get(ir_name, 0.0)

    def emit_binary(self, node, vop, x, y, out_name):
        shapes = [x[1].shape if x[0] == "const" else x[2] for x in (x, y)]
        try:
            out_shape = tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
        except ValueError:
            raise CompileError(f"{self.where(node)}: shapes {shapes[0]} and {shapes[1]} do not broadcast") from None
        ax, ay = self.operand(node, x, out_shape), self.operand(node, y, out_shape)
        sources, args = [], []
        for kind, v in (ax, ay):
            if kind == "imm":
                args.append(("imm", v))
            else:
                if View(v) not in sources:  # x * x reads x once
                    sources.append(View(v))
                args.append(("src", sources.index(View(v))))
        out = self.add_tensor(self.fresh(out_name), out_shape, "value")
        self.nodes.append(Node("vector", node.name or out_name, node.op_type, out, sources=sources,
                               steps=[Step(vop, args)]))
        self.values[out_name] = (out, out_shape)

    def lower_binary(self, node, op, args):
        if len(args) == 1 and op in ("Max", "Min"):
            return self.lower_one_input(node, args)  # lower_norms.py
        if len(args) < 2 or (len(args) > 2 and op not in ("Max", "Min")):
            raise CompileError(f"{self.where(node)}: {op} with {len(args)} inputs is not supported")
        acc = args[0]
        for i, x in enumerate(args[1:]):  # variadic Max/Min: a chain of binary nodes
            name = node.output[0] if i == len(args) - 2 else self.fresh(node.output[0])
            self.emit_binary(node, _BINARY[op], acc, x, name)
            acc = ("value",) + self.values[name]
        if op == "Div" and self.integer_typed(node.output[0]):  # integer division truncates toward zero
            self.lower_cast(_Renamed(node, node.output[0]), {"to": onnx.TensorProto.INT64},
                            [("value",) + self.values[node.output[0]]], force=True)

    def integer_typed(self, name: str) -> bool:
        """Whether ONNX types the value `name` as an integer (onnx shape inference, computed once)."""
        if not hasattr(self, "_elem_types"):
            try:
                inferred = onnx.shape_inference.infer_shapes(without_large_initializers(self.model, values=False))
                infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
            except Exception:
                infos = list(self.model.graph.input) + list(self.model.graph.output)
            self._elem_types = {v.name: v.type.tensor_type.elem_type for v in infos}
        elem = self._elem_types.get(name)
        return elem in HOST_TYPES and elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL)

    def lower_pow(self, node, args):
        x, p = args
        if p[0] != "const" or np.asarray(p[1]).size != 1 or float(np.asarray(p[1]).reshape(())) not in _POW:
            return self.lower_pow_general(node, args)  # lower_norms.py: any exponent, negative bases
        e = float(np.asarray(p[1]).reshape(()))
        chain = _POW.get(e, [("LOG", [("in",)]), ("MUL", [("step", 0), ("imm", e)]), ("EXP", [("step", 1)])])
        self.emit_chain(node, x, chain)

    def lower_where(self, node, args):
        # c * a + (1 - c) * b with c in {1.0, 0.0}: exact whenever the unselected value is finite
        c, x, y = args
        inf = [v[0] == "const" and np.asarray(v[1]).size == 1 and np.isinf(np.asarray(v[1], np.float64)).all()
               for v in (x, y)]
        if inf[0] != inf[1] and c[0] == "value":
            # an infinite branch (an attention mask's -inf): finite + log(c) (log 1 = 0, log 0 = -inf), never 0 * inf
            finite, infinite = (y, x) if inf[0] else (x, y)
            sign = float(np.sign(np.asarray(infinite[1]).reshape(())))
            cond = c
            if inf[0]:  # the infinity is taken where c is 1: log(1 - c)
                t = self.fresh(node.output[0])
                self.emit_binary(node, "SUB", ("const", np.float32(1.0)), c, t)
                cond = ("value",) + self.values[t]
            logc = self.fresh(node.output[0])
            self.emit_chain(node, cond, [("LOG", [("in",)])], out_name=logc)
            self.emit_binary(node, "SUB" if sign > 0 else "ADD", finite, ("value",) + self.values[logc],
                             node.output[0])
            return
        t1 = self.fresh(node.output[0])
        self.emit_binary(node, "MUL", c, x, t1)
        c_name = self.fresh(node.output[0])
        self.emit_binary(node, "SUB", ("const", np.float32(1.0)), c, c_name)
        t2 = self.fresh(node.output[0])
        self.emit_binary(node, "MUL", ("value",) + self.values[c_name], y, t2)
        self.emit_binary(node, "ADD", ("value",) + self.values[t1], ("value",) + self.values[t2], node.output[0])

    def emit_chain(self, node, x, chain, out_name=None):
        _, name, shape = x
        out_name = out_name or node.output[0]
        steps = [Step(vop, [("src", 0) if arg == ("in",) else arg for arg in vargs]) for vop, vargs in chain]
        out = self.add_tensor(self.fresh(out_name), shape, "value")
        self.nodes.append(Node("vector", node.name or node.output[0], node.op_type, out, sources=[View(name)],
                               steps=steps))
        self.values[out_name] = (out, shape)

    def lower_unary(self, node, op, a, args):
        _, name, shape = args[0]
        if op == "LeakyRelu" and not 0.0 <= a.get("alpha", 0.01) <= 1.0:
            raise CompileError(f"{self.where(node)}: LeakyRelu alpha={a['alpha']} outside [0, 1] is not supported")
        if op == "Clip":
            if any(x is not None and x[0] != "const" for x in args[1:]):
                raise CompileError(f"{self.where(node)}: Clip bounds must be constants (computed bounds are not "
                                   f"supported)")
            lo = args[1][1] if len(args) > 1 and args[1] is not None else a.get("min")
            hi = args[2][1] if len(args) > 2 and args[2] is not None else a.get("max")
            for bound in (lo, hi):
                if bound is not None and not isinstance(bound, (float, int)) and np.asarray(bound).size != 1:
                    raise CompileError(f"{self.where(node)}: Clip bounds must be constant scalars")
            chain = []
            if lo is not None:
                chain.append(("MAX", [("in",), ("imm", float(np.asarray(lo)))]))
            if hi is not None:
                chain.append(("MIN", [("step", len(chain) - 1) if chain else ("in",), ("imm", float(np.asarray(hi)))]))
            if not chain:
                chain = [("COPY", [("in",)])]
        elif op == "Gelu" and a.get("approximate", b"none") not in (b"none", "none"):
            # two nodes: the tanh form's delay lines would need more than the VXM's 16 ALUs in one chain
            inner = _gelu(a)[:6]
            t = self.fresh(node.output[0])
            self.emit_chain(node, args[0], inner, out_name=t)
            self.nodes[-1].fusable = False
            _, t_ir, _ = ("value",) + self.values[t]
            steps = [Step("ADD", [("src", 1), ("imm", 1.0)]), Step("MUL", [("src", 0), ("imm", 0.5)]),
                     Step("MUL", [("step", 1), ("step", 0)])]
            out = self.add_tensor(self.fresh(node.output[0]), shape, "value")
            self.nodes.append(Node("vector", node.name or node.output[0], op, out,
                                   sources=[View(name), View(t_ir)], steps=steps))
            self.values[node.output[0]] = (out, shape)
            return
        else:
            chain = _UNARY[op](a)
        steps = [Step(vop, [("src", 0) if arg == ("in",) else arg for arg in vargs]) for vop, vargs in chain]
        out = self.add_tensor(self.fresh(node.output[0]), shape, "value")
        self.nodes.append(Node("vector", node.name or node.output[0], op, out, sources=[View(name)], steps=steps))
        self.values[node.output[0]] = (out, shape)

    def finish(self) -> Graph:
        outputs, names = [], []
        for o in self.model.graph.output:
            if o.name in self.consts:
                raise CompileError(f"output '{o.name}' is a constant; nothing to run on the chip")
            if o.name not in self.values:
                raise CompileError(f"output '{o.name}' is not produced by any node")
            ir_name, shape = self.q_state.get("outputs", {}).get(o.name) or self.values[o.name]  # int8/uint8 codes
            if self.tensors[ir_name].kind == "input":  # a view of an input: the chip copies it
                copy = self.add_tensor(self.fresh(o.name), shape, "value")
                self.nodes.append(Node("vector", o.name, "Identity", copy, sources=[View(ir_name)],
                                       steps=[Step("COPY", [("src", 0)])]))
                ir_name = copy
            self.tensors[ir_name].shape = tuple(shape)
            outputs.append(ir_name)
            names.append(o.name)
        used = {name for node in self.nodes for name in node_inputs(node)}
        inputs = [name for name in self.inputs if name in used]  # e.g. an image read only as host patches
        origin = {ir_name: onnx_name for onnx_name, (ir_name, _) in self.values.items()}
        return Graph(self.tensors, self.nodes, inputs, outputs, names, dict(self.input_shapes), origin,
                     derived=self.derived)


def import_onnx(model: onnx.ModelProto, shapes: dict | None = None, magnitudes: dict | None = None) -> Graph:
    """`magnitudes` (calibrate.py): max |value| per ONNX tensor, for the lowerings and the fp16 scales."""
    lowering = _Lowering(model, resolve_input_shapes(model, shapes), magnitudes or {})
    lowering.run()
    graph = lowering.finish()
    graph.magnitudes = dict(magnitudes or {})
    # bool/integer inputs (converted on the host, `host_input`) and integer outputs (`decode_output`)
    graph.input_kinds = {k: v for k, v in lowering.kinds.items() if k in graph.onnx_inputs}
    graph.output_types = {}
    for o in model.graph.output:
        elem = o.type.tensor_type.elem_type
        if elem in HOST_TYPES and elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL):
            graph.output_types[o.name] = np.dtype(HOST_TYPES[elem])
    return graph
