"""The two programs of a generation: prefill (chunks of `prefill_chunk` tokens) and decode (one token), compiled
from one decoder with the KV cache at the same SRAM addresses (docs/llm.md section 3.5).

A decoder is an ONNX model in the Optimum KV-cache layout with dynamic axes (an export: path or ModelProto), or a
builder called as `builder(seq=, past=)` (`functools.partial(lpusim.models.llama_decoder, ...)`). Each program is
the decoder with its shapes fixed: `seq` new tokens after a past of `max_context - seq` rows, so its present has
`max_context` rows, the cache region every program shares (compiler/schedule/kv_cache.py).

precision="int8": the decoder is quantised once, by onnxruntime's quantiser as `lpusim.compile` does, calibrated on
seeded random inputs of the decode step's shapes. A builder's graphs differ by shape, so each is quantised and then
given the decode step's scales and zero points (the same tensor names): every program and the onnxruntime
reference then compute with the same quantisation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx

from lpusim.compiler import random_inputs
from lpusim.compiler.frontend.load import input_kinds, load_model
from lpusim.compiler.frontend.quantize import quantize_model
from lpusim.compiler.schedule.kv_cache import CacheRegion
from lpusim.errors import CompileError, ModelError
from lpusim.llm.layout import DecoderLayout, decoder_layout, past_names, present_names
from lpusim.multichip.pipeline import compile_multichip
from lpusim.runtime.program import Program, compile_program


@dataclass
class DecoderSource:
    """Where the graph of each (seq, past) comes from, in the precision the chip runs (int8: quantised)."""

    layout: DecoderLayout
    graph_for: Callable[[int, int], onnx.ModelProto]  # (seq, past) -> a graph with those shapes possible
    dynamic: bool  # one graph with dynamic axes (shapes given to the compiler) or one static graph per shape
    reference: Any  # what lpusim.llm.reference takes: the (quantised) graph, or a builder of (quantised) graphs


def decoder_source(model, precision: str, max_context: int, batch: int) -> DecoderSource:
    if callable(model) and not isinstance(model, (str, os.PathLike)):
        return _builder_source(model, precision, max_context)
    proto = load_model(model)
    layout = decoder_layout(proto)
    if layout.static:
        raise ModelError(f"{_where(model)}: the decoder's sequence and past lengths are fixed "
                         f"(seq {layout.seq}, past {layout.past}); generation needs the dynamic axes of an "
                         f"Optimum-style export (or a builder of static graphs)")
    if precision == "int8":
        shapes = program_shapes(layout, batch, 1, max_context)
        proto = quantize_model(proto, random_inputs(shapes, 0, input_kinds(proto)))
    return DecoderSource(layout, lambda seq, past: proto, True, proto)


def _builder_source(builder, precision: str, max_context: int) -> DecoderSource:
    layout = decoder_layout(builder(seq=1, past=0))
    if precision != "int8":
        return DecoderSource(layout, lambda seq, past: builder(seq=seq, past=past), False, builder)
    step = builder(seq=1, past=max_context - 1)
    shapes = static_shapes(step)
    step_q = quantize_model(step, random_inputs(shapes, 0, input_kinds(step)))
    scales = {i.name: i for i in step_q.graph.initializer if i.name.endswith(("_scale", "_zero_point"))}
    cache: dict[tuple[int, int], onnx.ModelProto] = {(1, max_context - 1): step_q}

    def quantised(seq: int, past: int) -> onnx.ModelProto:
        if (seq, past) not in cache:
            graph = builder(seq=seq, past=past)
            shapes_ = static_shapes(graph)
            q = quantize_model(graph, random_inputs(shapes_, 0, input_kinds(graph)))
            for init in q.graph.initializer:
                src = scales.get(init.name)
                if src is not None and tuple(src.dims) == tuple(init.dims):
                    init.CopyFrom(src)
            cache[(seq, past)] = q
        return cache[(seq, past)]

    return DecoderSource(layout, quantised, False, quantised)


def static_shapes(graph: onnx.ModelProto) -> dict[str, tuple]:
    """The input shapes of a builder's static graph."""
    return {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in graph.graph.input}


def _where(model) -> str:
    return "the given ModelProto" if isinstance(model, onnx.ModelProto) else os.fspath(model)


def program_shapes(layout: DecoderLayout, batch: int, seq: int, max_context: int) -> dict[str, tuple]:
    """The input shapes of the program of `seq` new tokens whose present fills the `max_context`-row region."""
    shapes = {"input_ids": (batch, seq), "attention_mask": (batch, max_context), "position_ids": (batch, seq)}
    for i in range(layout.layers):
        for name in past_names(i):
            shapes[name] = (batch, layout.kv_heads, max_context - seq, layout.head_dim)
    return shapes


def first_chunk(layout: DecoderLayout, batch: int, seq: int, max_context: int) -> dict[str, np.ndarray]:
    """The calibration run of a generation program (the largest magnitudes that set its fp16 scales,
    compiler/frontend/calibrate.py): the first `seq` tokens of a prompt (seeded random ids), on an empty cache.
    A trained model's largest activations come at the first positions (SmolLM2-135M: |x| = 844 before the
    third layer's RMSNorm, whose x * x passes fp16's 65,504); the default calibration (random positions, a random
    cache) does not see them, and the chip's fp16 sums overflowed."""
    rng = np.random.default_rng(0)
    mask = np.zeros((batch, max_context), np.int64)
    mask[:, max_context - seq:] = 1
    inputs = {"input_ids": rng.integers(0, layout.vocab, (batch, seq)).astype(np.int64), "attention_mask": mask,
              "position_ids": np.tile(np.arange(seq, dtype=np.int64), (batch, 1))}
    for i in range(layout.layers):
        for name in past_names(i):
            inputs[name] = np.zeros((batch, layout.kv_heads, max_context - seq, layout.head_dim), np.float32)
    return inputs


def cache_pairs(layout: DecoderLayout) -> list[tuple[str, str]]:
    """(present, past) of every layer's keys and values."""
    return [(present, past) for i in range(layout.layers) for present, past in zip(present_names(i), past_names(i))]


def compile_programs(source: DecoderSource, chip, precision: str, batch: int, max_context: int,
                     prefill_chunk: int, chips=1) -> tuple[Program, Program | None]:
    """(decode, prefill): the decode step placed first, the prefill chunk at the same cache addresses. No prefill
    program when `prefill_chunk` is 1 (the prompt runs through the decode step).

    `chips` other than 1 ("auto" or a number): the decode step as a pipeline over the chips (fp16), each layer's
    cache region on the chip that computes it; the prompt then runs through the decode step (a prefill chunk
    would have to put every layer on the same chip as the decode step does: not built)."""
    layout = source.layout
    if isinstance(layout.batch, int) and layout.batch != batch:
        raise ModelError(f"the decoder's graphs take batch {layout.batch}, the prompt has {batch} rows")

    def build(seq: int, regions: list[CacheRegion]) -> Program:
        shapes = program_shapes(layout, batch, seq, max_context)
        graph = source.graph_for(seq, max_context - seq)
        if not source.dynamic:
            got = static_shapes(graph)
            bad = {k: v for k, v in shapes.items() if got.get(k) != v}
            if bad:
                raise ModelError(f"the builder's graph for seq {seq}, past {max_context - seq} has inputs "
                                 f"{ {k: got.get(k) for k in bad} }, expected {bad}")
        # the default calibration (random ids, positions and cache) and the first chunk of a prompt
        calibration = [random_inputs(shapes, 0, input_kinds(graph)), first_chunk(layout, batch, seq, max_context)]
        if chips != 1 and not (chips == "auto" and precision == "int8"):  # int8 pipelines are not built
            return compile_multichip(graph, chips, chip, precision, shapes if source.dynamic else None,
                                     parallel="pipeline", cache=regions, calibration=calibration)
        return compile_program(graph, chip, "int8" if precision == "int8" else "fp16",
                               shapes if source.dynamic else None, cache=regions, calibration=calibration)

    pairs = cache_pairs(layout)
    decode = build(1, [CacheRegion(present, past) for present, past in pairs])
    tiles = decode.cache_tiles()
    missing = [present for present, _ in pairs if present not in tiles]
    if missing:
        raise CompileError(f"KV cache: {', '.join(missing)} did not get a fixed region")
    prefill = None
    if prefill_chunk > 1 and not hasattr(decode, "stages"):
        prefill = build(prefill_chunk, [CacheRegion(present, past, tiles[present]) for present, past in pairs])
    return decode, prefill


def region_bytes(program) -> int:
    """SRAM the cache regions take: every row of head_dim lanes holds a whole 320-lane f32 vector (4 slices)."""
    lanes = program.chip.lanes
    return sum((sg.hi - sg.lo) * 4 * lanes for tiles in program.cache_tiles().values() for segs in tiles
               for sg in segs)


def check_prompt(ids: np.ndarray, vocab: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ModelError(f"prompt token ids must lie in 0..{vocab - 1} (the vocabulary); got {int(ids.min())}.."
                         f"{int(ids.max())}")
