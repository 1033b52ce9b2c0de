"""A generation on the chip checked against onnxruntime: the report behind `lpusim generate --json` and
`Decoder.check` (docs/llm.md section 3.6).

* `tokens` (the chip's greedy tokens) against `reference_tokens`: onnxruntime's greedy decode of the same model
  (for int8, the same quantised model) with its own dynamic KV cache (lpusim.llm.reference).
* `logits_match`: teacher-forced, every step's logits within the fp16 rule of check/compare.py against
  onnxruntime's. When the tokens agree the generation itself was fed the reference tokens; otherwise the chip runs
  again fed them, so one near-tie does not make every later step differ.
* `first_divergence`: the first step where the tokens differ, with onnxruntime's logit gap between its token and
  the chip's. A `near_tie` when the gap is within the rule's tolerance at the reference token's logit.

Exit status of the command: 0 when the logits match and the tokens match or first diverge at a near tie, else 1.
"""
from __future__ import annotations

import time

import numpy as np

from lpusim.check.compare import TOLERANCES, compare
from lpusim.compiler.schedule.scheduler import WEIGHT_SLOTS, weight_bytes
from lpusim.energy import run_energy
from lpusim.llm.generate import Decoder, prompt_arrays
from lpusim.llm.reference import greedy_decode, reference_logit_gap


def installed_weight_bytes(decoder: Decoder) -> int:
    """Bytes of weights the decode step installs in the MXM (every matrix once per token: docs/llm.md 3.4)."""
    lanes = decoder.chip.lanes
    total = 0
    for program in getattr(decoder.decode, "stages", [decoder.decode]):
        graph = program._graph
        names = {w for node in graph.nodes for _, w in node.terms if graph.tensors[w].kind == "const"}
        total += sum(weight_bytes(graph.tensors[w].data, graph.tensors[w].dtype, lanes) for w in names)
    return total


def install_bytes_per_cycle(decoder: Decoder) -> int:
    """What the planes can install per cycle: every plane loads WEIGHT_SLOTS rows of 2-byte lanes per cycle."""
    chip = decoder.chip
    return chip.mxm_planes * WEIGHT_SLOTS * chip.lanes * 2


def generation_energy(decoder: Decoder, gen) -> dict:
    """Energy per generated token (one decode step, shared by the batch's sequences) and of the whole prefill,
    every chip powered throughout (docs/energy.md)."""
    chips, chip = decoder.chips, decoder.chip
    # the generation's events are already summed over its chips
    step = run_energy(chip, gen.decode_events, gen.decode_cycles, chips=chips)
    prefill = run_energy(chip, gen.prefill_events, gen.prefill_cycles, chips=chips)
    per_token = step.total_j / decoder.batch
    return {"energy_j": per_token, "j_per_token": per_token, "power_w": step.power_w,
            "per_step": step.to_json(), "prefill": prefill.to_json(),
            "model": "docs/energy.md (per-event energies and static power are chosen, not published)"}


def generation_report(decoder: Decoder, prompt_ids, new_tokens: int, *, attention_mask=None,
                      progress: bool = False) -> dict:
    ids, mask = prompt_arrays(prompt_ids, attention_mask)
    start = time.perf_counter()
    gen = decoder.generate(ids, new_tokens, attention_mask=mask, progress=progress)
    wall_sim = gen.wall_simulate_s
    start_ref = time.perf_counter()
    ref_tokens, ref_logits = greedy_decode(decoder.source.reference, ids, new_tokens, attention_mask=mask)
    wall_ref = time.perf_counter() - start_ref
    tokens_match = bool(np.array_equal(gen.tokens, ref_tokens))
    forced = gen if tokens_match else decoder.generate(ids, new_tokens, attention_mask=mask, feed=ref_tokens)
    if not tokens_match:
        wall_sim += forced.wall_simulate_s
    cmp = compare({"logits": forced.logits}, {"logits": ref_logits})
    tol = TOLERANCES["fp16"]
    divergence = None
    gap = reference_logit_gap(ref_logits, ref_tokens, gen.tokens)
    if gap is not None:
        step_logits = ref_logits[gap.step, gap.row].astype(np.float64)
        allowed = tol["rtol"] * abs(step_logits[gap.reference_token]) + tol["atol"] * np.abs(ref_logits).max()
        divergence = {"step": gap.step, "row": gap.row, "chip_token": gap.token,
                      "reference_token": gap.reference_token, "reference_logit_gap": gap.gap,
                      "near_tie": bool(gap.gap <= allowed)}
    chip = decoder.chip
    clock = float(chip.config["clock_hz"])
    installed = installed_weight_bytes(decoder)
    floor = installed / install_bytes_per_cycle(decoder)
    report = {
        "model": None, "precision": decoder.precision, "chips": decoder.chips, "batch": decoder.batch,
        "max_context": decoder.max_context, "prefill_chunk": decoder.prefill_chunk if decoder.prefill else 1,
        "prompt_tokens": int(mask.sum(axis=1).max()), "new_tokens": new_tokens,
        "tokens": gen.tokens.tolist(), "reference_tokens": ref_tokens.tolist(), "tokens_match": tokens_match,
        "first_divergence": divergence, "logits_match": bool(cmp["outputs_match"]),
        "logits_max_abs_error": cmp["max_abs_error"], "logits_max_rel_error": cmp["max_rel_error"],
        "tolerance": cmp["tolerance"],
        "prefill_cycles": gen.prefill_cycles, "prefill_runs": gen.prefill_runs, "decode_cycles": gen.decode_cycles,
        "ttft_us": gen.prefill_cycles / clock * 1e6, "per_token_us": gen.decode_cycles / clock * 1e6,
        "tokens_per_s": clock / gen.decode_cycles, "clock_mhz": clock / 1e6,
        "weight_floor_cycles": floor, "installed_weight_bytes": installed,
        "sram_bytes": decoder.sram_bytes, "sram_capacity_bytes": chip.sram_bytes,
        "kv_cache_bytes": decoder.kv_cache_bytes, "kv_cache_values_bytes": decoder.kv_cache_values_bytes,
        "predicted_cycles": {"prefill": decoder.prefill.predicted_cycles if decoder.prefill else None,
                             "decode": decoder.decode.predicted_cycles},
        "wall_s": {"compile": decoder.compile_s, "simulate": wall_sim, "onnxruntime": wall_ref,
                   "total": decoder.compile_s + time.perf_counter() - start},
    }
    report["energy"] = generation_energy(decoder, gen)
    report["ok"] = report["logits_match"] and (tokens_match or bool(divergence and divergence["near_tie"]))
    return report


def format_generation(r: dict) -> str:
    div = r["first_divergence"]
    lines = [
        f"model          {r['model']}",
        f"precision      {r['precision']} on {r['chips']} chip{'s' if r['chips'] > 1 else ''}, cache {r['max_context']} rows, prefill chunks of "
        f"{r['prefill_chunk']}",
        f"tokens         {' '.join(str(t) for t in r['tokens'][0])}",
        f"reference      {' '.join(str(t) for t in r['reference_tokens'][0])}  (onnxruntime, its own cache)",
        "tokens match   " + ("yes" if r["tokens_match"] else
                             f"no: step {div['step']} chip {div['chip_token']} vs {div['reference_token']}, logit "
                             f"gap {div['reference_logit_gap']:.3g}" + (" (near tie)" if div["near_tie"] else "")),
        f"logits match   {'yes' if r['logits_match'] else 'NO'} (teacher-forced; max error "
        f"{r['logits_max_abs_error']:.3g}, {r['logits_max_rel_error']:.2%} of the largest)",
        f"TTFT           {r['ttft_us']:,.2f} us ({r['prefill_cycles']:,} cycles, {r['prefill_runs']} prefill "
        f"run(s))",
        f"per token      {r['per_token_us']:,.2f} us ({r['decode_cycles']:,} cycles; weight-install floor "
        f"{r['weight_floor_cycles']:,.0f})",
        f"tokens/s       {r['tokens_per_s']:,.0f} per sequence at {r['clock_mhz']:.0f} MHz",
        f"energy         {r['energy']['j_per_token'] * 1e3:.4g} mJ per token at {r['energy']['power_w']:.1f} W "
        f"(model: docs/energy.md)",
        f"SRAM           {r['sram_bytes']:,} of {r['sram_capacity_bytes']:,} bytes (KV cache {r['kv_cache_bytes']:,})",
        f"wall           compile {r['wall_s']['compile']:.1f} s, simulate {r['wall_s']['simulate']:.1f} s, "
        f"onnxruntime {r['wall_s']['onnxruntime']:.2f} s",
    ]
    return "\n".join(lines)
