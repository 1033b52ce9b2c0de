"""fold_moves: constant matmuls composed with the constant 0/1 lane moves next to them.

The lowering moves lanes with constant 0/1 matrices on the MXM (lower/lanes.py, rows.select_lanes): attention's
head selection picks each head's lanes out of the Q/K/V projections, and a lane Concat places parts side by side.
When such a move reads the output of a matmul with constant weights, or feeds one, the two compose:

* selection after a constant matmul: (f(X W + b)) S = f(X (W S) + b S), when every column of S holds exactly one 1
  (S picks one column of W per output column: W S is W's columns, exact) and the producer's epilogue f is
  elementwise with constant sources only (bias rows, picked the same way). The MXM adds exact products and rounds
  once (docs/isa.md section 4), so each column of X (W S) is bit for bit that column of X W;
* placement before a constant matmul: (O S) W = O (S W), when S has at most one 1 per row and per column (S W is
  rows of W, exact) and the placement has no epilogue: the products are the same, and zero rows add nothing.

A fold needs the intermediate to have no other reader (every reader of a selection's producer is a selection and
all are folded; the placement is read by constant matmuls only) and not to be a graph output, and it must not add
MXM work: the activation vectors the folded matmuls stream (rows once per nonzero 320 x 320 weight tile; all-zero
tiles are skipped, schedule/scheduler.py) must be at most what the producer and its moves streamed, nor make any
stored tensor stream more (`_Folder.worthwhile`). A 0/1 move of a 64-lane head touches one weight tile, while W S
spans all of X's K tiles: BERT-base's heads (768 lanes in 3 tiles) would take 36 passes where the projection and its
12 selections take 21, so there the fold is refused; narrow models (all heads in one tile) are refused by the
streaming rule.

A selection's value was the producer's fp16 copy (its accumulator read an fp16 operand); folded, it is the
producer's f32 result, which readers through the MXM round to the same fp16 value, and VXM readers (rotary
embeddings) get it unrounded, closer to onnxruntime. Only fp16-path matmuls fold: int8 matmuls, i32 values and
graphs of quantised models (their float moves keep their own exact pieces, lower/attention.py) are left alone.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lpusim.compiler.ir import Graph, Node, Step, View, node_inputs
from lpusim.compiler.passes import MAX_FUSED_STEPS, fits_vxm

LANES = 320  # the MXM's weight tile (tsp_v1; the scheduler tiles by the chip's lanes, which this matches)


def weight_tiles(w: np.ndarray) -> int:
    """The 320 x 320 tiles of constant weights that hold a nonzero: the passes one row chunk of a matmul takes."""
    k, n = w.shape
    kt, nt = -(-k // LANES), -(-n // LANES)
    padded = np.zeros((kt * LANES, nt * LANES), dtype=bool)
    padded[:k, :n] = w != 0
    return int(padded.reshape(kt, LANES, nt, LANES).any(axis=(1, 3)).sum())


def picked_columns(s: np.ndarray, cols: int) -> np.ndarray | None:
    """For a selection S whose first `cols` columns each hold exactly one 1 (zeros elsewhere): the row each picks."""
    if s.ndim != 2 or not np.all((s == 0) | (s == 1)):
        return None
    part = s[:, :cols]
    if not np.all(part.sum(axis=0) == 1) or np.any(s[:, cols:]):
        return None
    return part.argmax(axis=0)


def is_partial_permutation(s: np.ndarray) -> bool:
    """0/1 with at most one 1 per row and per column: S W is rows of W, exactly."""
    return bool(np.all((s == 0) | (s == 1)) and np.all(s.sum(axis=0) <= 1) and np.all(s.sum(axis=1) <= 1))


def _float_matmul(graph: Graph, node: Node) -> bool:
    """A matmul with constant f32 weights on the fp16 path, reading and writing f32 values."""
    return node.kind == "matmul" and all(
        graph.tensors[w].kind == "const" and graph.tensors[w].dtype == "f32" for _, w in node.terms) and all(
        graph.tensors[n].dtype == "f32" for n in [node.output] + [v.tensor for v, _ in node.terms])


class _Folder:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.readers: dict[str, list[Node]] = graph.consumers()
        self.outputs = set(graph.outputs)
        self.made: dict[tuple, str] = {}  # (constant, picked columns or "rows@" move) -> the composed constant
        self.streamed: dict[str, int] = {}  # tensor -> the vectors matmuls stream from it (`vectors`)
        self.tile_counts: dict[str, int] = {}
        self.k_tiles: dict[str, np.ndarray] = {}
        self.picks: dict[tuple, np.ndarray | None] = {}  # (selection weights, columns) -> `picked_columns`
        self.count_streams(graph.nodes, 1)

    def const(self, base: str, key: tuple, make) -> str:
        """A composed constant, made once per (base, key) and named after its base."""
        if (base, key) not in self.made:
            data = np.ascontiguousarray(make(), dtype=np.float32)
            name, i = f"{base}.fold", 0
            while name in self.graph.tensors:
                i += 1
                name = f"{base}.fold{i}"
            t = self.graph.tensors[base]
            self.graph.tensors[name] = dataclasses.replace(t, name=name, rows=data.shape[0], cols=data.shape[1],
                                                           shape=data.shape, data=data, formats=set())
            self.made[(base, key)] = name
        return self.made[(base, key)]

    # ----- a constant matmul read only by lane selections -------------------------------------------------
    def vectors(self, node: Node) -> int:
        """Activation vectors a matmul streams through the MXM: its rows once per nonzero weight tile."""
        g = self.graph
        rows = g.tensors[node.output].rows
        return rows * sum(self.tiles(w) for _, w in node.terms)

    def tiles(self, w: str) -> int:
        """`weight_tiles` of constant weights (once per name), every tile of computed ones."""
        t = self.graph.tensors[w]
        if t.kind != "const":
            return -(-t.rows // LANES) * -(-t.cols // LANES)
        if w not in self.tile_counts:
            self.tile_counts[w] = weight_tiles(t.data)
        return self.tile_counts[w]

    def worthwhile(self, x: str, old: list[Node], new_vectors: int) -> bool:
        """A fold must not add MXM work, nor make x's stores stream more vectors than they did: one stored tensor
        streams one burst at a time (a MEM slice's queue), so the matmuls reading x run one after another. Twelve
        head projections reading a layer's input queue behind each other where three projections and their
        selections (reading Q, K and V) ran side by side: narrow BERTs (all heads in one tile, so the fold adds no
        tiles) took 4-17% more cycles in 5 of 7 shapes with their Q, K and V selections folded, and GPT-2 (hidden
        768) 0.6% more with its QKV Split folded, for less MXM work. `new_vectors`: what the folded matmuls
        stream, all from x."""
        before = sum(self.vectors(n) for n in old)
        x_after = self.streamed.get(x, 0) + new_vectors - sum(self.vectors(n) for n in old if n.x == x)
        return new_vectors <= before and x_after <= self.streamed.get(x, 0)

    def picked_tiles(self, w: str, cols: np.ndarray) -> int:
        """weight_tiles(W[:, cols]), from which K tiles each column of W touches (kept per weight)."""
        if w not in self.k_tiles:
            data = self.graph.tensors[w].data
            kt = -(-data.shape[0] // LANES)
            padded = np.zeros((kt * LANES, data.shape[1]), dtype=bool)
            padded[:data.shape[0]] = data != 0
            self.k_tiles[w] = padded.reshape(kt, LANES, -1).any(axis=1)  # [K tile, column]
        touched = self.k_tiles[w][:, cols]
        return sum(int(touched[:, c:c + LANES].any(axis=1).sum()) for c in range(0, len(cols), LANES))

    def count_streams(self, nodes: list[Node], sign: int) -> None:
        for n in nodes:
            if n.kind == "matmul":
                self.streamed[n.x] = self.streamed.get(n.x, 0) + sign * self.vectors(n)

    def selections(self, producer: Node) -> dict[int, np.ndarray] | None:
        """The columns each reader of `producer` picks (by reader id), if all its readers are foldable
        selections and folding adds no weight tiles; else None."""
        g = self.graph
        out = g.tensors[producer.output]
        readers = self.readers.get(producer.output, [])
        if not readers or producer.output in self.outputs or not _float_matmul(g, producer):
            return None
        if any(g.tensors[w].cols != out.cols for _, w in producer.terms):
            return None  # weights with padding columns (a lane helper): not a model matmul
        if any(v.spatial or v.rows is not None for v, _ in producer.terms):
            return None
        for v in producer.sources:  # the epilogue's sources: constants the picked columns can be taken from
            t = g.tensors[v.tensor]
            if t.kind != "const" or t.dtype != "f32" or v.spatial or v.rows is not None or t.cols != out.cols:
                return None
        picks: dict[int, np.ndarray] = {}
        for r in readers:
            if r.kind != "matmul" or len(r.terms) != 1 or not _float_matmul(g, r) or id(r) in picks:
                return None
            view, s = r.terms[0]
            if view.tensor != producer.output or view.rows is not None or any(
                    v.tensor == producer.output for v in r.sources):
                return None
            if view.spatial and not self.row_offset(view, producer):
                return None
            key = (s, g.tensors[r.output].cols)
            if key not in self.picks:
                self.picks[key] = picked_columns(g.tensors[s].data, g.tensors[r.output].cols)
            cols = self.picks[key]
            if cols is None:
                return None
            picks[id(r)] = cols
        return picks

    def row_offset(self, view: View, producer: Node) -> bool:
        """A selection of batch element b's rows (attention.select_part: a tap at dh = b*S of the producer's
        output seen as one image of B*S x 1 pixels) can read X the same way: X gets the same geometry."""
        g = self.graph
        geom = g.tensors[view.tensor].geom
        if (view.dw, view.stride, view.dilation, view.pad_top, view.pad_left) != (0, 1, 1, 0, 0) or geom is None \
                or geom[0] != 1 or geom[2] != 1:
            return False
        return all(g.tensors[v.tensor].geom in (None, geom) and g.tensors[v.tensor].rows == geom[1]
                   for v, _ in producer.terms)

    def fold_selection(self, producer: Node, reader: Node, cols: np.ndarray) -> Node:
        """The reader's output computed straight from the producer's activations with W's picked columns."""
        g = self.graph
        key = ("cols",) + tuple(int(c) for c in cols)
        view = reader.terms[0][0]
        terms = []
        for v, w in producer.terms:
            if view.spatial:  # (X takes the producer's geometry once the fold is kept: `take_geometry`)
                v = dataclasses.replace(view, tensor=v.tensor)
            terms.append((v, self.const(w, key, lambda w=w: g.tensors[w].data[:, cols])))
        sources = [View(self.const(v.tensor, key, lambda v=v: g.tensors[v.tensor].data[:, cols]))
                   for v in producer.sources]
        steps = [Step(s.op, list(s.args), s.t) for s in producer.steps]
        result = ("step", len(steps) - 1) if steps else ("acc",)
        shift, offset = len(sources), len(steps)
        for s in reader.steps:
            args = [result if a[0] == "acc" else ("step", a[1] + offset) if a[0] == "step" else
                    ("src", a[1] + shift) if a[0] == "src" else a for a in s.args]
            steps.append(Step(s.op, args, s.t))
        return Node("matmul", producer.name, f"{producer.onnx_op}+{reader.onnx_op}", reader.output,
                    sources=sources + list(reader.sources), steps=steps, terms=terms, fusable=reader.fusable,
                    purpose=producer.purpose)

    def take_geometry(self, producer: Node) -> None:
        """X seen as the producer's output is (one image of B*S x 1 pixels) when a folded selection reads it through
        a row offset: the same rows in the same order, address arithmetic only (attention.select_part)."""
        geom = self.graph.tensors[producer.output].geom
        if geom is not None:
            for v, _ in producer.terms:
                self.graph.tensors[v.tensor].geom = geom

    # ----- a lane placement read only by constant matmuls ---------------------------------------------------
    def placement_readers(self, move: Node) -> list[Node] | None:
        g = self.graph
        readers = self.readers.get(move.output, [])
        if not readers or move.output in self.outputs or move.steps or move.sources or len(move.terms) != 1 \
                or not _float_matmul(g, move):
            return None
        s = g.tensors[move.terms[0][1]].data
        if s.shape[1] != g.tensors[move.output].cols or not is_partial_permutation(s):
            return None
        for r in readers:
            if r.kind != "matmul" or not _float_matmul(g, r) or any(v.tensor == move.output for v in r.sources) \
                    or any(v.tensor != move.output or v.spatial or v.rows is not None for v, _ in r.terms):
                return None
        return readers if len({id(r) for r in readers}) == len(readers) else None

    def fold_placement(self, move: Node, reader: Node) -> Node:
        g = self.graph
        view, s = move.terms[0]
        terms = [(view, self.const(w, ("rows@", s), lambda w=w: g.tensors[s].data @ g.tensors[w].data))
                 for _, w in reader.terms]
        return dataclasses.replace(reader, terms=terms, onnx_op=f"{move.onnx_op}+{reader.onnx_op}")


def _schedulable(graph: Graph, node: Node) -> bool:
    """The folded node's chain fits the VXM (as fuse_chains requires) and it streams each tensor once."""
    read = [v.tensor for v in node.sources] + [node.x]
    return len(node.steps) <= MAX_FUSED_STEPS and fits_vxm(node.steps) and len(read) == len(set(read))


def fold_lane_moves(graph: Graph) -> Graph:
    """Compose constant matmuls with the lane selections that read them and the lane placements that feed them
    (module docstring), in one scan in graph order; the intermediates and the weights no node uses any more are
    dropped."""
    if graph.quantized:
        return graph  # a quantised model: its float moves keep their exact pieces, its codes their integers
    folder = _Folder(graph)
    used_before = {name for n in graph.nodes for name in node_inputs(n)}
    replaced: dict[int, Node | None] = {}  # id(node) -> its folded form (None: removed)
    for node in graph.nodes:
        if id(node) in replaced:
            continue
        folded, readers = None, None
        picks = folder.selections(node)
        if picks is not None:
            readers = folder.readers[node.output]
            vectors = sum(graph.tensors[r.output].rows * sum(folder.picked_tiles(w, picks[id(r)])
                                                             for _, w in node.terms) for r in readers)
            if folder.worthwhile(node.x, [node] + readers, vectors):
                folded = {id(r): folder.fold_selection(node, r, picks[id(r)]) for r in readers}
        elif node.kind == "matmul":
            readers = folder.placement_readers(node)
            if readers is not None and not any(id(r) in replaced for r in readers):
                folded = {id(r): folder.fold_placement(node, r) for r in readers}
                if not folder.worthwhile(node.x, [node] + readers, sum(folder.vectors(n) for n in folded.values())):
                    folded = None
        if folded is not None and all(_schedulable(graph, n) for n in folded.values()):
            if picks is not None and any(v.spatial for n in folded.values() for v, _ in n.terms):
                folder.take_geometry(node)
            folder.count_streams([node] + readers, -1)
            folder.count_streams(list(folded.values()), 1)
            replaced.update(folded)
            replaced[id(node)] = None
    unused = set(folder.made.values())  # composed constants of folds refused after they were made
    if not replaced:
        for name in unused:
            del graph.tensors[name]
        return graph
    removed = {n.output for n in graph.nodes if id(n) in replaced and replaced[id(n)] is None}
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if replaced.get(id(n), n) is not None]
    used = {name for n in graph.nodes for name in node_inputs(n)}
    for name in list(graph.tensors):  # the intermediates, the moves' and the replaced weights
        if name in removed or (name in used_before | unused and name not in used
                               and graph.tensors[name].kind == "const"):
            del graph.tensors[name]
    return graph
