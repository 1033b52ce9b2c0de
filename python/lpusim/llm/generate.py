"""Generation on the chip: prefill the prompt, then decode greedily, one token per step, with the KV cache kept in
the chip's SRAM from one program run to the next (docs/llm.md section 3.5).

`compile_decoder(model, max_context=, prefill_chunk=)` compiles the decode step and a prefill chunk with the cache
at the same addresses (llm/programs.py); `Decoder.generate(prompt_ids, new_tokens)` runs them on one
`ChipMemory`. Only token ids, the attention mask and positions go to the chip, and only the logits come back.

The cache is a window of `max_context` rows per (batch row, KV head) that slides by the tokens each run adds:
`attention_mask` [batch, max_context] marks which rows hold tokens, so the rows before the prompt read as left
padding. The prompt is left-padded to a whole number of prefill chunks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lpusim.chip import Chip
from lpusim.energy import add_events, all_chips
from lpusim.errors import ModelError
from lpusim.llm.layout import DecoderLayout, past_names
from lpusim.llm.programs import check_prompt, compile_programs, decoder_source, region_bytes
from lpusim.llm.reference import positions, prompt_and_mask
from lpusim.runtime.memory import ChipMemory
from lpusim.runtime.program import Program


@dataclass
class Generation:
    """One greedy generation on the chip. Cycles are the simulator's (equal to the schedule's prediction)."""

    tokens: np.ndarray  # [batch, new_tokens] int64, the first from the prefill
    logits: np.ndarray  # [new_tokens, batch, vocab]: the logits each token was chosen from
    prefill_cycles: int  # every prefill run of the prompt: the time to the first token
    prefill_runs: int
    decode_cycles: int  # one decode step (every step runs the same static program)
    decode_steps: int
    wall_simulate_s: float
    step_cycles: list[int] = field(default_factory=list)  # every decode step's cycles (all equal)
    # energy events (docs/energy.md), over every chip: all the prefill runs together, and one decode step (every
    # step runs the same static program, so every step counts the same events)
    prefill_events: dict[str, int] = field(default_factory=dict)
    decode_events: dict[str, int] = field(default_factory=dict)


class Decoder:
    """A decoder compiled for generation on one chip (`compile_decoder`)."""

    def __init__(self, source, decode, prefill: Program | None, max_context: int, prefill_chunk: int,
                 precision: str, batch: int, compile_s: float):
        self.source = source
        self.layout: DecoderLayout = source.layout
        self.decode = decode  # a Program, or a MultiProgram (a pipeline of chips)
        self.prefill = prefill
        self.max_context = max_context
        self.prefill_chunk = prefill_chunk
        self.precision = precision
        self.batch = batch
        self.compile_s = compile_s
        self.chip: Chip = decode.chip
        self.chips: int = getattr(decode, "chips", 1)  # the decode step is a pipeline over several chips

    def _memory(self):
        """Fresh SRAM for a generation: one ChipMemory, or one per chip of the pipeline."""
        if self.chips == 1:
            return ChipMemory(self.chip)
        return [ChipMemory(self.chip) for _ in range(self.chips)]

    def _run(self, program, feeds: dict, memory):
        """One run on the generation's memory, the cache resident, only the logits read back."""
        kept = {"memory": memory} if self.chips == 1 else {"memories": memory}
        return program.run(feeds, resident=self._past(), outputs=["logits"], **kept)

    @property
    def sram_bytes(self) -> int:
        """The larger program's SRAM footprint (weights, constants, cache, activations) on its fullest chip: the two
        programs never hold the chip at once, and the cache regions are part of both."""
        return max(p.sram_bytes for p in (self.decode, self.prefill) if p is not None)

    @property
    def kv_cache_bytes(self) -> int:
        """SRAM held by the cache regions (rows of head_dim lanes take whole 320-lane f32 vectors)."""
        return region_bytes(self.decode)

    @property
    def kv_cache_values_bytes(self) -> int:
        """The cache's own values: 2 x layers x batch x kv_heads x max_context x head_dim x 4 bytes (f32)."""
        lay = self.layout
        return 2 * lay.layers * self.batch * lay.kv_heads * self.max_context * lay.head_dim * 4

    def _past(self) -> list[str]:
        return [n for i in range(self.layout.layers) for n in past_names(i)]

    def generate(self, prompt_ids, new_tokens: int, *, attention_mask=None, feed=None,
                 progress: bool = False) -> Generation:
        """Greedy generation of `new_tokens` tokens after `prompt_ids` [batch, length] (left padding marked by
        `attention_mask`). `feed` [batch, new_tokens]: teacher forcing, step t is fed feed[:, t - 1] whatever the
        chip chose (the chip's own choice is still returned in `tokens`)."""
        ids, mask = prompt_arrays(prompt_ids, attention_mask)
        batch, length = ids.shape
        if batch != self.batch:
            raise ModelError(f"the programs were compiled for batch {self.batch}; the prompt has {batch} rows")
        if new_tokens < 1:
            raise ModelError(f"new_tokens must be at least 1 (got {new_tokens})")
        check_prompt(ids, self.layout.vocab)
        chunk = self.prefill_chunk if self.prefill is not None else 1
        pad = (-length) % chunk
        ids = np.concatenate([np.zeros((batch, pad), np.int64), ids], axis=1)
        mask = np.concatenate([np.zeros((batch, pad), np.int64), mask], axis=1)
        first_kept = int(np.argmax(mask.any(axis=0)))
        rows = mask.shape[1] + new_tokens - 1 - first_kept
        if rows > self.max_context:
            raise ModelError(f"a prompt of {length - first_kept + pad} positions and {new_tokens} new tokens need "
                             f"{rows} cache rows; the programs were compiled for --max-context {self.max_context}")
        forced = None if feed is None else np.asarray(feed, np.int64).reshape(batch, -1)
        memory = self._memory()
        window = np.zeros((batch, self.max_context), np.int64)
        position_ids = positions(mask)
        wall = 0.0
        program = self.prefill or self.decode
        if self.chips == 1:
            program.install_static(memory)
        prefill_cycles = runs = 0
        prefill_events: dict[str, int] = {}
        decode_events: dict[str, int] = {}
        for k in range(0, ids.shape[1], chunk):
            window = np.concatenate([window[:, chunk:], mask[:, k:k + chunk]], axis=1)
            result = self._run(program, {"input_ids": ids[:, k:k + chunk], "attention_mask": window,
                                         "position_ids": position_ids[:, k:k + chunk]}, memory)
            prefill_cycles += result.cycles
            prefill_events = add_events((prefill_events, 1), (all_chips(result.events), 1))
            runs += 1
            wall += result.wall_simulate_s
        logits = result.outputs["logits"][:, -1]
        if self.prefill is not None:
            self.decode.install_static(memory)  # the decode step's weights and constants, once per generation
        kept = mask.sum(axis=1)
        tokens, all_logits, step_cycles = [], [], []
        steps = range(new_tokens)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc="decode", unit="token", leave=False)
        for step in steps:
            all_logits.append(logits)
            tokens.append(np.argmax(logits, axis=-1).astype(np.int64))
            if step + 1 == new_tokens:
                break
            fed = tokens[-1] if forced is None else forced[:, step]
            window = np.concatenate([window[:, 1:], np.ones((batch, 1), np.int64)], axis=1)
            kept = kept + 1
            result = self._run(self.decode, {"input_ids": fed[:, None], "attention_mask": window,
                                             "position_ids": (kept - 1)[:, None].astype(np.int64)}, memory)
            step_cycles.append(result.cycles)
            decode_events = all_chips(result.events)
            wall += result.wall_simulate_s
            logits = result.outputs["logits"][:, 0]
        return Generation(np.stack(tokens, axis=1), np.stack(all_logits).astype(np.float32), prefill_cycles, runs,
                          step_cycles[0] if step_cycles else self.decode.predicted_cycles, len(step_cycles),
                          wall, step_cycles, prefill_events, decode_events)


def prompt_arrays(prompt_ids, attention_mask=None) -> tuple[np.ndarray, np.ndarray]:
    """`reference.prompt_and_mask`, refusing also ids that are not integers and rows without a token."""
    if np.asarray(prompt_ids).dtype.kind not in "iu":
        raise ModelError(f"prompt ids must be integers (got {np.asarray(prompt_ids).dtype})")
    ids, mask = prompt_and_mask(prompt_ids, attention_mask)
    if not mask.any(axis=1).all():
        raise ModelError("attention_mask: every prompt row needs at least one token (a 1)")
    return ids, mask


def compile_decoder(model, *, max_context: int = 64, prefill_chunk: int = 8, precision: str = "fp16",
                    chip=None, batch: int = 1, chips=1) -> Decoder:
    """Compile a decoder for generation on one chip: the decode step and a prefill chunk of `prefill_chunk`
    tokens (1: the prompt runs through the decode step), the KV cache `max_context` rows at the same SRAM
    addresses in both. `model`: an ONNX export in the Optimum KV-cache layout with dynamic axes (path or
    ModelProto), or a builder `builder(seq=, past=)` of static graphs (docs/llm.md). `chips` ("auto" or a
    number): the decode step as a pipeline of chips, each keeping its layers' cache (fp16; the prompt then runs
    through the decode step; "auto" at int8 stays on one chip)."""
    if precision not in ("fp16", "int8"):
        raise ModelError(f"precision '{precision}': generation supports fp16 and int8")
    if not 2 <= max_context <= 1 << 16:
        raise ModelError(f"--max-context {max_context}: expected 2..65536 cache rows")
    if not 1 <= prefill_chunk < max_context:
        raise ModelError(f"--prefill-chunk {prefill_chunk}: expected 1..{max_context - 1} (below the maximum "
                         f"context {max_context})")
    if batch < 1:
        raise ModelError(f"batch {batch}: expected at least 1")
    start = time.perf_counter()
    cfg = Chip.load(chip)
    source = decoder_source(model, precision, max_context, batch)
    decode, prefill = compile_programs(source, cfg, precision, batch, max_context, prefill_chunk, chips)
    return Decoder(source, decode, prefill, max_context, prefill_chunk, precision, batch,
                   time.perf_counter() - start)
