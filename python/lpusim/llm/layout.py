"""The ONNX interface of a decoder with a KV cache, in the layout Optimum exports (docs/llm.md section 1).

Inputs: `input_ids` [batch, seq] int64, `attention_mask` [batch, past + seq] int64, `position_ids` [batch, seq]
int64, then per layer N `past_key_values.N.key` and `past_key_values.N.value` [batch, kv_heads, past, head_dim]
float32. Outputs: `logits` [batch, seq, vocab] float32, then `present.N.key` and `present.N.value`
[batch, kv_heads, past + seq, head_dim] float32. A dimension is an int (static) or a name (dynamic axis).
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from lpusim.errors import ModelError

TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")


def past_names(layer: int) -> tuple[str, str]:
    return f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"


def present_names(layer: int) -> tuple[str, str]:
    return f"present.{layer}.key", f"present.{layer}.value"


@dataclass(frozen=True)
class DecoderLayout:
    """What the interface of one decoder graph says: layer count, cache geometry, vocabulary, and the
    sequence and past lengths (ints when the graph is static, names of dynamic axes otherwise)."""
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    batch: int | str
    seq: int | str
    past: int | str

    @property
    def static(self) -> bool:
        return isinstance(self.seq, int) and isinstance(self.past, int)

    def input_names(self) -> list[str]:
        return list(TOKEN_INPUTS) + [n for i in range(self.layers) for n in past_names(i)]

    def output_names(self) -> list[str]:
        return ["logits"] + [n for i in range(self.layers) for n in present_names(i)]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _total(past: int | str, seq: int | str) -> int | str:
    """The cache length after a step: static when both lengths are, else dynamic (any axis name)."""
    return past + seq if isinstance(past, int) and isinstance(seq, int) else "dynamic"


def _fits(got: int | str, want: int | str) -> bool:
    """A static dimension must match exactly; a dynamic one must be dynamic too (axis names may differ)."""
    return got == want if isinstance(want, int) else isinstance(got, str)


def decoder_layout(model: onnx.ModelProto | str) -> DecoderLayout:
    """Read and check a decoder's interface; any difference from the Optimum KV-cache layout is a ModelError
    naming the first tensor that differs."""
    if isinstance(model, str):
        from lpusim.compiler.frontend.load import read_model

        model = read_model(model, external_data=False)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    outputs = list(graph.output)
    where = f"decoder {graph.name or 'graph'}"
    if len(inputs) < 5 or (len(inputs) - 3) % 2:
        raise ModelError(f"{where}: {len(inputs)} inputs; the KV-cache layout has input_ids, attention_mask, "
                         f"position_ids and a key and value per layer")
    layers = (len(inputs) - 3) // 2
    probe = DecoderLayout(layers, 0, 0, 0, 0, 0, 0)
    got_in, got_out = [v.name for v in inputs], [v.name for v in outputs]
    if got_in != probe.input_names():
        raise ModelError(f"{where}: inputs {got_in} are not the KV-cache layout {probe.input_names()}")
    if got_out != probe.output_names():
        raise ModelError(f"{where}: outputs {got_out} are not the KV-cache layout {probe.output_names()}")
    by_name = {v.name: v for v in inputs + outputs}

    def check(name: str, dtype: int, rank: int) -> list[int | str]:
        value = by_name[name]
        elem = value.type.tensor_type.elem_type
        dims = _dims(value)
        if elem != dtype or len(dims) != rank:
            raise ModelError(f"{where}: {name} is {TensorProto.DataType.Name(elem)} of rank {len(dims)}, the "
                             f"layout says {TensorProto.DataType.Name(dtype)} of rank {rank}")
        return dims

    batch, seq = check("input_ids", TensorProto.INT64, 2)
    _, kv_heads, past, head_dim = check(past_names(0)[0], TensorProto.FLOAT, 4)
    if not isinstance(kv_heads, int) or not isinstance(head_dim, int):
        raise ModelError(f"{where}: {past_names(0)[0]} needs static kv_heads and head_dim, has {kv_heads}, {head_dim}")
    vocab = check("logits", TensorProto.FLOAT, 3)[2]
    if not isinstance(vocab, int):
        raise ModelError(f"{where}: logits need a static vocabulary size, have {vocab}")
    total = _total(past, seq)
    expected = {"attention_mask": [batch, total], "position_ids": [batch, seq], "logits": [batch, seq, vocab]}
    for i in range(layers):
        for n in past_names(i):
            expected[n] = [batch, kv_heads, past, head_dim]
        for n in present_names(i):
            expected[n] = [batch, kv_heads, total, head_dim]
    for name, want in expected.items():
        got = check(name, TensorProto.INT64 if name in TOKEN_INPUTS else TensorProto.FLOAT, len(want))
        if not all(_fits(g, w) for g, w in zip(got, want)):
            raise ModelError(f"{where}: {name} has shape {got}, the layout says {want}")
    return DecoderLayout(layers, kv_heads, head_dim, vocab, batch, seq, past)
