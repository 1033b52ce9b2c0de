"""The reference a decoder on the chip is checked against: onnxruntime's greedy decode of the same model with its
own KV cache (docs/llm.md section 2).

A decoder is given as one ONNX graph with dynamic sequence and past axes (a path or a ModelProto, as
`lpusim.llm.export` writes), as a builder of static graphs called `builder(seq=..., past=...)` (as
`lpusim.models.llama_decoder`, one graph per shape, built on first use), or as any object with a `layout`
(`DecoderLayout`) and `run(feeds) -> outputs` (both dicts of numpy arrays by the layout's names), such as a
compiled program later. Prefill feeds the prompt with an empty past; each decode step feeds one token and the
previous step's `present.N.*` as `past_key_values.N.*`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort

from lpusim.compiler.frontend.load import read_model
from lpusim.errors import ModelError
from lpusim.llm.layout import DecoderLayout, decoder_layout, past_names, present_names


class OnnxDecoder:
    """onnxruntime sessions of one decoder: a single graph with dynamic axes, or static graphs from a builder,
    one session per (seq, past) shape."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto | Callable[..., onnx.ModelProto]):
        self._builder = model if callable(model) else None
        self._sessions: dict[tuple[int, int], ort.InferenceSession] = {}
        self._single: ort.InferenceSession | None = None
        if self._builder is None:
            proto = model if isinstance(model, onnx.ModelProto) else read_model(model)
            self.layout = decoder_layout(proto)
            self._single = _session(proto)
        else:
            # The builder's past-0 prefill graph of one token fixes the cache geometry every other shape shares.
            self.layout = decoder_layout(self._builder(seq=1, past=0))

    def _session_for(self, seq: int, past: int) -> ort.InferenceSession:
        if self._single is not None:
            return self._single
        if (seq, past) not in self._sessions:
            self._sessions[(seq, past)] = _session(self._builder(seq=seq, past=past))
        return self._sessions[(seq, past)]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seq = feeds["input_ids"].shape[1]
        past = feeds[past_names(0)[0]].shape[2]
        session = self._session_for(seq, past)
        names = self.layout.output_names()
        return dict(zip(names, session.run(names, feeds)))


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread keeps the reference deterministic run to run and cheap to create in tests.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def as_decoder(model: Any):
    """`model` itself when it already has `layout` and `run`, else an `OnnxDecoder` of it."""
    if hasattr(model, "layout") and hasattr(model, "run"):
        return model
    return OnnxDecoder(model)


def empty_past(layout: DecoderLayout, batch: int) -> dict[str, np.ndarray]:
    empty = np.zeros((batch, layout.kv_heads, 0, layout.head_dim), np.float32)
    return {name: empty for i in range(layout.layers) for name in past_names(i)}


def positions(attention_mask: np.ndarray) -> np.ndarray:
    """Position ids from a (left-)padded mask, as transformers' generate computes them: each kept token's index
    among the kept tokens; padding positions get 1 (any value: their keys are masked out)."""
    pos = np.cumsum(attention_mask, axis=1) - 1
    return np.where(attention_mask == 0, 1, pos).astype(np.int64)


def prompt_and_mask(prompt_ids, attention_mask=None) -> tuple[np.ndarray, np.ndarray]:
    """[batch, length] int64 ids (a 1-D prompt is one row) and the mask (all ones by default); ModelError on a
    bad shape."""
    ids = np.asarray(prompt_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ModelError(f"prompt_ids: expected [batch, length] token ids with length >= 1, got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    if mask.shape != ids.shape:
        raise ModelError(f"attention_mask: shape {mask.shape} differs from prompt_ids {ids.shape}")
    return ids, mask


class _Session:
    """One sequence of steps over a decoder, carrying the cache, the mask and the next positions."""

    def __init__(self, decoder, ids: np.ndarray, mask: np.ndarray):
        self.decoder = decoder
        self.layout = decoder.layout
        if isinstance(self.layout.batch, int) and self.layout.batch != ids.shape[0]:
            raise ModelError(f"the decoder's graphs take batch {self.layout.batch}, the prompt has "
                             f"{ids.shape[0]} rows")
        self.mask = mask
        self.past = empty_past(self.layout, ids.shape[0])
        self.last_logits = self._step(ids, positions(mask))

    def _step(self, ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": self.mask, "position_ids": position_ids, **self.past}
        out = self.decoder.run(feeds)
        for i in range(self.layout.layers):
            for past, present in zip(past_names(i), present_names(i)):
                self.past[past] = out[present]
        return out["logits"][:, -1, :]

    def feed(self, tokens: np.ndarray) -> np.ndarray:
        """Append one token per batch row; the logits of the position after it."""
        self.mask = np.concatenate([self.mask, np.ones((self.mask.shape[0], 1), np.int64)], axis=1)
        position_ids = (self.mask.sum(axis=1, keepdims=True) - 1).astype(np.int64)
        self.last_logits = self._step(tokens.reshape(-1, 1).astype(np.int64), position_ids)
        return self.last_logits


def greedy_decode(model: Any, prompt_ids, new_tokens: int, *, attention_mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding with the model's own KV cache: prefill the prompt with an empty past, then one token per
    step. Returns the tokens [batch, new_tokens] (int64) and the logits each token was chosen from
    [new_tokens, batch, vocab] (float32). Ties go to the lowest token id (numpy's argmax)."""
    ids, mask = prompt_and_mask(prompt_ids, attention_mask)
    session = _Session(as_decoder(model), ids, mask)
    tokens, logits = [], []
    for step in range(new_tokens):
        logits.append(session.last_logits)
        tokens.append(np.argmax(session.last_logits, axis=-1).astype(np.int64))
        if step + 1 < new_tokens:
            session.feed(tokens[-1])
    return _stack_tokens(tokens, ids.shape[0]), _stack_logits(logits, ids.shape[0], session.layout.vocab)


def teacher_forced_logits(model: Any, prompt_ids, tokens, *, attention_mask=None) -> np.ndarray:
    """The logits at each step when step t is fed `tokens[:, t - 1]` whatever the model would have chosen:
    [len, batch, vocab], row t the logits `tokens[:, t]` is compared against. With the greedy tokens this equals
    `greedy_decode`'s logits."""
    ids, mask = prompt_and_mask(prompt_ids, attention_mask)
    forced = np.asarray(tokens, dtype=np.int64).reshape(ids.shape[0], -1)
    session = _Session(as_decoder(model), ids, mask)
    logits = [session.last_logits]
    for step in range(forced.shape[1] - 1):
        logits.append(session.feed(forced[:, step]))
    return _stack_logits(logits[:forced.shape[1]], ids.shape[0], session.layout.vocab)


def uncached_logits(model: Any, prompt_ids, tokens, *, attention_mask=None) -> np.ndarray:
    """The same logits as `teacher_forced_logits`, each recomputed from the whole sequence with an empty past:
    what the KV cache must reproduce. [len, batch, vocab]."""
    ids, mask = prompt_and_mask(prompt_ids, attention_mask)
    forced = np.asarray(tokens, dtype=np.int64).reshape(ids.shape[0], -1)
    decoder = as_decoder(model)
    logits = []
    for step in range(forced.shape[1]):
        seq = np.concatenate([ids, forced[:, :step]], axis=1)
        seq_mask = np.concatenate([mask, np.ones((ids.shape[0], step), np.int64)], axis=1)
        logits.append(_Session(decoder, seq, seq_mask).last_logits)
    return _stack_logits(logits, ids.shape[0], decoder.layout.vocab)


def _stack_tokens(tokens: list[np.ndarray], batch: int) -> np.ndarray:
    return np.stack(tokens, axis=1) if tokens else np.zeros((batch, 0), np.int64)


def _stack_logits(logits: list[np.ndarray], batch: int, vocab: int) -> np.ndarray:
    return np.stack(logits).astype(np.float32) if logits else np.zeros((0, batch, vocab), np.float32)


@dataclass(frozen=True)
class LogitGap:
    """Where a decode first left the reference: the step and batch row, the two tokens, and onnxruntime's logit
    of the reference token minus its logit of the other (>= 0; a near-tie when small against fp16 error)."""
    step: int
    row: int
    reference_token: int
    token: int
    gap: float


def reference_logit_gap(reference_logits: np.ndarray, reference_tokens, tokens) -> LogitGap | None:
    """The first divergence of `tokens` from `reference_tokens` (both [batch, steps]) and the reference's logit
    gap between the two candidates there, from `reference_logits` [steps, batch, vocab]; None if they agree.
    Later steps are not compared: after a divergence the two decodes condition on different prefixes."""
    ref = np.asarray(reference_tokens).reshape(reference_logits.shape[1], -1)
    got = np.asarray(tokens).reshape(ref.shape[0], -1)
    steps = min(ref.shape[1], got.shape[1])
    for step in range(steps):
        for row in range(ref.shape[0]):
            if ref[row, step] != got[row, step]:
                step_logits = reference_logits[step, row]
                gap = float(step_logits[ref[row, step]] - step_logits[got[row, step]])
                return LogitGap(step, row, int(ref[row, step]), int(got[row, step]), gap)
    return None
