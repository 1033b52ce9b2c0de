"""The compiler's one IR: matrices of row vectors, matmul nodes and VXM vector-chain nodes.

Every tensor the chip touches is a matrix of `rows` vectors by `cols` lanes, stored in MEM in column tiles of 320
lanes. A 2-D tensor has its last dimension on the lanes and everything before it batched into rows. An image tensor
(ONNX NCHW) has its channels on the lanes and one row per pixel, in (n, h, w) order: `geom = (N, H, W)`; it may be
stored with a border of `pad` rows of `pad_value` around each image so convolutions and pools read their taps with
plain address arithmetic.

A node is either
* `matmul`: the sum over its `terms` of `view @ w` (`w` constant [K, N]) on an MXM plane: one term for MatMul and
  Gemm, one per kernel tap for Conv, followed by an optional VXM chain (its *epilogue*),
* `vector`: a VXM chain over source views (elementwise work, bias adds, activations, pools),
* `transpose`: rows <-> lanes of one source on the SXM, or
* `lookup`: rows of a constant table picked by an i32 id column (an embedding lookup: MEM GATHER,
  lower/lookup.py and schedule/lookup.py).

A `View` names which rows of a tensor meet output row r: the same row (identity), or for a spatial tap (dh, dw) of
a convolution-like node the input pixel (ho*stride + dh*dilation - pad_top, wo*stride + dw*dilation - pad_left).
A view may also read one column tile of its tensor (`tile`: lanes tile*320.., at most 320 of them), as a matrix
of that tile's width: attention reads a head's 320-lane tile this way instead of moving its lanes.

A matmul's terms may read different tensors (of one row count) against different weights, constant or computed,
each term's activation width equal to its weights' rows; with `out_tiles`, term i adds only to output column tile
out_tiles[i], its weights either as wide as that tile or as wide as the output (their tile out_tiles[i] is used).
Attention sums its heads' contexts this way straight into their final lanes (lower/attention_lanes.py).

A chain is a list of `Step`s, each one VXM operation whose arguments are a source (`("src", i)`: `sources[i]`, or
`("acc",)`: the matmul's accumulator), an earlier step (`("step", j)`) or an immediate (`("imm", value)`). The
node's result is the last step. A step has a type `t`: "f32" (the default), "i32" (integer epilogues of int8
matmuls, whose accumulators are read as i32), or "S.D" for a CVT from S to D (lower/quant.py); the scheduler emits
`OP.t` and adds the conversions to each storage format (f16 or i8 copies for the MXM). `validate()` checks every invariant the later passes rely on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lpusim.errors import CompileError

# VXM operations the chain may use (docs/isa.md section 4), with their arity.
VXM_ARITY = {
    "ADD": 2, "SUB": 2, "MUL": 2, "MAX": 2, "MIN": 2, "DIV": 2,
    "RELU": 1, "NEG": 1, "ABS": 1, "COPY": 1,
    "EXP": 1, "TANH": 1, "RSQRT": 1, "RCP": 1, "SIGMOID": 1, "ERF": 1,
    "LOG": 1, "SQRT": 1, "FLOOR": 1, "CEIL": 1, "SIN": 1, "COS": 1,
    "EQ": 2, "NE": 2, "LT": 2, "LE": 2, "GT": 2, "GE": 2,
    "AND": 2, "OR": 2, "XOR": 2, "NOT": 1, "CVT": 1,
}
# Step types (docs/isa.md section 4): every op has f32; these also have i32. CVT's type is "S.D" (source and
# destination element types); a register holds f32 or i32 (CVT to i8/u8/i32 gives i32, to f16/f32 gives f32).
I32_OPS = {"ADD", "SUB", "MUL", "MAX", "MIN", "RELU", "NEG", "ABS", "COPY", "EQ", "NE", "LT", "LE", "GT", "GE",
           "AND", "OR", "XOR", "NOT"}
CVT_TYPES = ("i8", "u8", "f16", "i32", "f32")


def step_out_type(step: "Step") -> str:
    """The type of the result register a step writes: f32 or i32."""
    if step.op == "CVT":
        return "f32" if step.t.split(".")[-1] in ("f16", "f32") else "i32"
    return step.t if step.op not in ("AND", "OR", "XOR", "NOT") else "i32"


def step_type_ok(step: "Step") -> bool:
    if step.op == "CVT":
        parts = step.t.split(".")
        return len(parts) == 2 and all(p in CVT_TYPES for p in parts)
    if step.op in ("AND", "OR", "XOR", "NOT"):
        return step.t == "i32"
    return step.t == "f32" or (step.t == "i32" and step.op in I32_OPS)


@dataclass
class Tensor:
    name: str
    rows: int
    cols: int
    kind: str  # "input" | "const" | "value"
    shape: tuple  # the ONNX shape, restored for outputs
    data: np.ndarray | None = None  # float32 [rows, cols] for constants
    formats: set = field(default_factory=set)  # storage formats in MEM: {"f32", "f16"}
    onnx_input: str | None = None  # for inputs: the ONNX graph input it is a (reshaped) view of
    geom: tuple | None = None  # (N, H, W) for image tensors: channels on lanes, one row per pixel
    pad: int = 0  # border rows stored around each image (set by the consumers that read taps)
    pad_value: float = 0.0  # what the border holds: 0 for convolutions, -inf for max pools
    # an output whose rows are the C-order flattening of its 4-D ONNX shape, not the image layout (row_layout.py):
    # attention heads returned as [B*NH*S, D] rows (lower/attention.heads_output)
    flat_rows: bool = False
    im2col: tuple | None = None  # inputs only: (kernel, strides, pads, dilations): the host lays out patches
    f16_exp: int = 0  # the f16 copy holds value * 2^-f16_exp (calibrate.py): keeps large tensors in fp16's range
    f16_saturate: bool = False  # the f16 copy clamps to +-65504 (never inf: inf times a 0 weight is NaN)
    # Element type of the values (lower/quant.py): "f32"; "i8" for int8 weights (LW.i8; activations the MXM reads
    # with them are stored as "i8"); "i32" for integer accumulations kept as i32 on the VXM and in MEM (an i32
    # constant's `data` is int32, exact beyond float32's 2^24).
    dtype: str = "f32"
    conv_pad: float = 0.0  # what a convolution's zero padding reads as: the zero point's code for int8 values


def out_geom(t: "Tensor") -> tuple:
    """The (N, H, W) geometry spatial taps index by: a 2-D output is N rows of one pixel each."""
    return t.geom if t.geom is not None else (t.rows, 1, 1)


@dataclass(frozen=True)
class View:
    """Which row of `tensor` output row r reads: the same row, a broadcast row, or a spatial tap."""

    tensor: str
    dh: int = 0
    dw: int = 0
    stride: int = 1
    dilation: int = 1
    pad_top: int = 0
    pad_left: int = 0
    spatial: bool = False
    rows: tuple | None = None  # a row map: output row r reads logical row rows[r] (lower/gather.py)
    # every column tile of the output reads the tensor's one tile of 320 lanes: a row value that fills every lane of
    # its tile (lanes.lane_sum_tile), read by nodes of wider rows without being stored once per tile
    tile0: bool = False
    tile: int | None = None  # read only this column tile of 320 lanes (a matrix of that tile's width)

    def __str__(self) -> str:
        if self.tile0:
            return f"{self.tensor}[tile 0]"
        tile = f"[tile {self.tile}]" if self.tile is not None else ""
        if self.rows is not None:
            shown = ",".join(map(str, self.rows[:6])) + (",..." if len(self.rows) > 6 else "")
            return f"{self.tensor}{tile}[rows {shown}]"
        if not self.spatial:
            return self.tensor + tile
        return f"{self.tensor}[tap {self.dh},{self.dw} s{self.stride} d{self.dilation} p{self.pad_top},{self.pad_left}]"


TILE_LANES = 320  # the lanes of a column tile (MEM stores and the MXM array; chip.lanes)


def tile_width(cols: int, tile: int) -> int:
    """The columns of column tile `tile` of a matrix of `cols` columns."""
    return min(TILE_LANES, cols - tile * TILE_LANES)


def view_cols(t: "Tensor", view: View) -> int:
    """The columns a view reads of tensor t: all of them, or those of its column tile."""
    return t.cols if view.tile is None else tile_width(t.cols, view.tile)


@dataclass
class Step:
    op: str
    args: list  # ("src", i) | ("acc",) | ("step", j) | ("imm", float)
    t: str = "f32"  # the operation's type: "f32" or "i32"; for CVT "S.D", e.g. "i32.f32", "f32.i8"

    def __str__(self) -> str:
        def arg(a):
            return {"src": lambda: f"src{a[1]}", "acc": lambda: "acc", "step": lambda: f"%{a[1]}",
                    "imm": lambda: f"#{a[1]:g}"}[a[0]]()
        typed = "" if self.t == "f32" else f".{self.t}"
        return f"{self.op}{typed}({', '.join(arg(a) for a in self.args)})"


@dataclass
class Node:
    kind: str  # "matmul" | "vector" | "transpose" (rows <-> lanes of one source, on the SXM) | "lookup"
    name: str  # the ONNX node this came from (for messages)
    onnx_op: str
    output: str
    sources: list[View] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    terms: list[tuple[View, str]] = field(default_factory=list)  # matmul: (activation view, constant weights)
    fusable: bool = True  # may fuse_chains merge a consumer into this node (False: the chain would need >16 ALUs)
    # why a matmul exists when it is not the op's own arithmetic (lanes.LANE_PURPOSES, attention's heads): the
    # MXM work `lpusim run --explain` groups by (check/explain.py); "" for the op's own work
    purpose: str = ""
    out_tiles: tuple | None = None  # matmul: per term, the one output column tile it adds to (None: all)

    @property
    def x(self) -> str | None:
        """The tensor the first matmul term reads. Every term reads it, or (precision="fp32", fp32_split.py) one
        of its fp16 residuals (a tensor of the same shape and fp16 scale), or (attention_lanes.py) a tensor of the
        same rows and fp16 scale (passes.scale_fp16)."""
        return self.terms[0][0].tensor if self.terms else None

    def describe(self) -> str:
        head = f"{self.output} = {self.kind}"
        if self.kind == "matmul":
            tiles = self.out_tiles or (None,) * len(self.terms)
            head += "(" + " + ".join(f"{v} @ {w}" + (f" ->tile {t}" if t is not None else "")
                                     for (v, w), t in zip(self.terms, tiles)) + ")"
        chain = "; ".join(f"%{i}={s}" for i, s in enumerate(self.steps))
        srcs = ", ".join(f"src{i}={v}" for i, v in enumerate(self.sources))
        return f"{head} [{srcs}] {{{chain}}}  <- {self.onnx_op} '{self.name}'"


@dataclass
class Graph:
    tensors: dict[str, Tensor]
    nodes: list[Node]
    inputs: list[str]  # IR input tensors (views of ONNX inputs)
    outputs: list[str]  # IR tensors that are ONNX outputs, in ONNX order
    output_names: list[str]  # the ONNX output names, parallel to `outputs`
    onnx_inputs: dict[str, tuple]  # ONNX input name -> concrete shape
    origin: dict[str, str] = field(default_factory=dict)  # IR tensor -> the ONNX tensor it holds (if any)
    magnitudes: dict[str, float] = field(default_factory=dict)  # ONNX tensor -> calibrated max |value|
    derived: dict[str, float] = field(default_factory=dict)  # IR tensor without an ONNX name -> expected max |v|
    # bool/integer ONNX inputs -> (numpy dtype name, low, exclusive high): how the host converts them and what
    # random inputs are drawn from (frontend/load.input_kinds)
    input_kinds: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    # ONNX outputs of an integer type -> that numpy dtype: the host turns the chip's float32 back into it
    output_types: dict[str, object] = field(default_factory=dict)
    # "fp32": every fp16 MXM operand is split into fp16 pieces, the partial products summed in one accumulator
    # (fp32_split.py); "fp16" otherwise (int8 matmuls are integer either way)
    precision: str = "fp16"
    residuals: dict[str, str] = field(default_factory=dict)  # fp32: residual piece -> the tensor it is a piece of
    # a quantised model (QDQ nodes: lower/state.precise_sums): its float moves carry exact pieces, so passes that
    # change a float's rounding (fold_moves) leave it alone
    quantized: bool = False

    def dump(self) -> str:
        lines = ["inputs: " + ", ".join(f"{n}[{self.tensors[n].rows}x{self.tensors[n].cols}]" for n in self.inputs)]
        for node in self.nodes:
            lines.append("  " + node.describe())
        lines.append("outputs: " + ", ".join(f"{o} as {n}" for o, n in zip(self.outputs, self.output_names)))
        for t in self.tensors.values():
            if t.formats:
                geom = f" image {t.geom} pad {t.pad} of {t.pad_value}" if t.geom else ""
                scale = f" f16 copy scaled by 2^-{t.f16_exp}" if t.f16_exp else ""
                lines.append(f"  {t.name}: {t.kind} {t.rows}x{t.cols} in {sorted(t.formats)}{geom}{scale}")
        return "\n".join(lines)

    def consumers(self) -> dict[str, list[Node]]:
        uses: dict[str, list[Node]] = {name: [] for name in self.tensors}
        for node in self.nodes:
            for name in node_inputs(node):
                uses[name].append(node)
        return uses


def node_inputs(node: Node) -> list[str]:
    names = []
    for v, w in node.terms:
        names += [v.tensor, w]
    return names + [v.tensor for v in node.sources]


def tile_ok(t: Tensor, view: View) -> bool:
    """A view's column tile, if any, is one of its tensor's."""
    return view.tile is None or 0 <= view.tile < -(-t.cols // TILE_LANES)


def validate_terms(graph: Graph, node: Node, out: Tensor, where: str) -> None:
    """A matmul's terms: activations of one row count (a constant-weight matmul reads one tensor, or its fp32
    residuals), each as wide as its weights' rows; weights constant or computed; `out_tiles` per term."""
    read = {v.tensor for v, _ in node.terms}
    computed = {w for _, w in node.terms if graph.tensors[w].kind == "value"}
    if not node.terms or (not computed and len(read) > 1 and not read <= {node.x} | set(graph.residuals)):
        raise CompileError(f"{where}: a matmul needs terms that all read one tensor (or its fp32 residuals)")
    tiles = node.out_tiles
    n_tiles = -(-out.cols // TILE_LANES)
    if tiles is not None and (len(tiles) != len(node.terms) or any(not 0 <= t < n_tiles for t in tiles)):
        raise CompileError(f"{where}: output tiles {tiles} for {len(node.terms)} terms and {n_tiles} tiles")
    for i, (v, wname) in enumerate(node.terms):
        x, w = graph.tensors[v.tensor], graph.tensors[wname]
        if w.kind == "input":
            raise CompileError(f"{where}: weights '{w.name}' must be constant or computed")
        x_cols = view_cols(x, v)
        rows_ok = v.spatial or x.rows == out.rows if v.rows is None else len(v.rows) == out.rows
        if tiles is None:
            padding_only = w.cols > out.cols and -(-w.cols // TILE_LANES) == n_tiles  # lower_lanes
            cols_ok = out.cols == w.cols or padding_only
        else:
            cols_ok = w.cols in (out.cols, tile_width(out.cols, tiles[i]))
        if x_cols != w.rows or not cols_ok or not rows_ok or not tile_ok(x, v) or (v.tile is not None and (
                v.spatial or v.rows is not None)):
            raise CompileError(f"{where}: shapes {x.rows}x{x_cols} @ {w.rows}x{w.cols} -> {out.rows}x{out.cols}")
        if v.spatial and x.geom is None:
            raise CompileError(f"{where}: a spatial tap needs an image tensor")


def validate(graph: Graph) -> None:
    """Raise CompileError naming the node if any IR invariant is broken (a compiler bug, not a user error)."""
    defined = set(graph.inputs) | {n for n, t in graph.tensors.items() if t.kind == "const"}
    for node in graph.nodes:
        where = f"IR check failed at {node.onnx_op} node '{node.name}'"
        for name in node_inputs(node):
            if name not in graph.tensors:
                raise CompileError(f"{where}: unknown tensor '{name}'")
            if name not in defined:
                raise CompileError(f"{where}: '{name}' is used before it is computed")
        out = graph.tensors[node.output]
        if node.kind == "matmul":
            validate_terms(graph, node, out, where)
        elif node.kind == "transpose":
            v = node.sources[0] if len(node.sources) == 1 else None
            x = graph.tensors[v.tensor] if v is not None else None
            x_rows = (len(v.rows) if v.rows is not None else x.rows) if x is not None else 0
            x_cols = view_cols(x, v) if x is not None else 0
            # B matrices of M x N (B*M rows of N lanes) -> B of N x M (schedule/sxm.py)
            batch = x_rows // out.cols if x is not None and out.cols and x_rows % out.cols == 0 else 0
            if x is None or node.steps or not batch or (out.rows, out.cols) != (batch * x_cols, x_rows // batch) \
                    or v.spatial or not tile_ok(x, v):
                raise CompileError(f"{where}: a transpose takes one source of B x {out.cols} rows and "
                                   f"{out.rows} / B lanes, no chain")
        elif node.kind == "lookup":
            ids, table = (graph.tensors[v.tensor] for v in node.sources) if len(node.sources) == 2 else (None, None)
            if ids is None or node.steps or node.terms or node.fusable or table.kind != "const" or \
                    ids.dtype != "i32" or (ids.rows, ids.cols) != (out.rows, 1) or table.cols != out.cols or \
                    any(v.rows is not None or v.spatial or v.tile is not None for v in node.sources):
                raise CompileError(f"{where}: a lookup reads an i32 id column [rows, 1] and a constant table of "
                                   f"the output's columns, no chain")
        elif node.kind != "vector":
            raise CompileError(f"{where}: unknown node kind {node.kind}")
        for v in (node.sources if node.kind not in ("transpose", "lookup") else []):
            t = graph.tensors[v.tensor]
            if v.rows is not None and (len(v.rows) != out.rows or v.spatial or min(v.rows) < 0
                                       or max(v.rows) >= t.rows):
                raise CompileError(f"{where}: row map of {v.tensor} ({t.rows} rows) for {out.rows} rows is bad")
            if not tile_ok(t, v) or (v.tile is not None and (v.spatial or v.tile0)):
                raise CompileError(f"{where}: source {v} reads column tile {v.tile} of {t.cols} columns")
            cols_ok = t.cols == 320 and out.cols > 320 and not v.spatial if v.tile0 else view_cols(t, v) == out.cols
            if not cols_ok or (not v.spatial and v.rows is None and t.rows not in (1, out.rows)):
                raise CompileError(f"{where}: source {v} is {t.rows}x{t.cols}, output {out.rows}x{out.cols}")
            if v.spatial and t.geom is None:
                raise CompileError(f"{where}: a spatial tap needs an image tensor")
        if node.kind == "vector" and not node.steps:
            raise CompileError(f"{where}: empty vector chain")
        for j, step in enumerate(node.steps):
            if step.op not in VXM_ARITY or len(step.args) != VXM_ARITY[step.op] or not step_type_ok(step):
                raise CompileError(f"{where}: bad step {step}")
            for a in step.args:
                ok = (a[0] == "src" and 0 <= a[1] < len(node.sources)) or (a[0] == "step" and 0 <= a[1] < j) \
                    or (a[0] == "acc" and node.kind == "matmul") or a[0] == "imm"
                if not ok:
                    raise CompileError(f"{where}: step {j} {step} has a bad argument {a}")
        if node.output in defined:
            raise CompileError(f"{where}: '{node.output}' is computed twice")
        defined.add(node.output)
    for o in graph.outputs:
        if o not in defined:
            raise CompileError(f"IR check failed: output '{o}' is never computed")
