"""Speculative decoding on the rack-scale plan: `lpusim llm TARGET --speculative DRAFT` (docs/llm.md section 4.4).

A small *draft* model on its own chips proposes `k` tokens, one decode step each; the *target* checks them in one
*verify* pass of `k + 1` tokens (the last accepted token and the `k` drafts) through its pipeline with its KV
cache, and the first token it disagrees with (or, all accepted, the one after) is its own. Both models are planned
by llm/plan.py's Planner; every piece is compiled and simulated as there, the verify pass included (its parts at
`seq = k + 1` after `context - k - 1` cached positions, the head scoring all `k + 1` tokens). What is composed:

    round = k draft steps (the last without its return to the draft's first group)
          + the drafts to the target's first group + the verify pass + the chosen token back to the draft
    tokens per round = (1 - a^(k+1)) / (1 - a)     (Leviathan et al., ICML 2023: each draft accepted with
                                                      probability a, independently)
    tokens/s = tokens per round / round time

The draft's chips come after the target's on one system (the next node when the target ends inside one), and the
two hand-offs cross the topology's shortest path between them, as the plan's return hop does. One sequence: the
draft and the target wait for each other, so their pipelines are not shared between users here.
"""
from __future__ import annotations

import math
import time
from typing import Any

from lpusim.energy import add_events, dynamic_energy
from lpusim.errors import ModelError
from lpusim.llm.plan import Layout, Planner
from lpusim.llm.shard import DecoderShape
from lpusim.multichip.topology import NODE_CHIPS, pipeline_route, system_for_chips

# The acceptance rate without --acceptance: Llama 3 8B drafting for Llama 3 70B (both Instruct, Q4_K_M, llama.cpp,
# greedy, 8 drafts a round) accepted 58.7% of the drafted tokens (54.6% at 10 drafts; devquasar.com/uncategorized/
# speculative-decoding-tradeoffs-gpu-with-large-models-llama-70b-8b/, 2024). Under independent acceptance a round of k
# drafts accepts a (1 - a^k) / (1 - a) of them, so 58.7% of 8 is a = 0.880 (and 54.6% of 10 is 0.886).
DEFAULT_ACCEPTANCE = 0.88
ACCEPTANCE_SOURCE = ("Llama 3 8B drafting for Llama 3 70B: 58.7% of 8 drafted tokens accepted per round "
                     "(devquasar.com, llama.cpp, greedy), a = 0.88 under independent acceptance")
# Draft lengths tried when --draft-tokens is not given: each is one more verify pass to compile.
DRAFT_TOKENS_SEARCHED = tuple(range(1, 9))


def expected_tokens(acceptance: float, draft_tokens: int) -> float:
    """Tokens a round yields on average: the accepted drafts plus the target's own (Leviathan et al. 2023, eq. 1)."""
    a, k = acceptance, draft_tokens
    return float(k + 1) if a == 1 else (1 - a ** (k + 1)) / (1 - a)


def check_flags(acceptance: float, draft_tokens: int | None) -> None:
    if not (isinstance(acceptance, (int, float)) and 0 <= acceptance < 1):
        raise ModelError(f"--acceptance {acceptance}: a probability in [0, 1) (a draft token accepted every time "
                         f"would need no target)")
    if draft_tokens is not None and (not isinstance(draft_tokens, int) or draft_tokens < 1):
        raise ModelError(f"--draft-tokens {draft_tokens}: at least 1")


def check_pair(target: DecoderShape, draft: DecoderShape) -> None:
    """The target verifies the draft's token ids: one tokenizer, so one vocabulary size at least."""
    if target.vocab != draft.vocab:
        raise ModelError(f"--speculative {draft.name}: its vocabulary of {draft.vocab} tokens is not the target "
                         f"{target.name}'s {target.vocab}; a draft shares the target's tokenizer")


def draft_start(target_chips: int, draft_chips: int) -> int:
    """The draft's first chip on the system's route: right after the target's, or at the next node when the
    target ends inside one (a tensor-parallel group is chips of one node)."""
    if target_chips % NODE_CHIPS == 0 or target_chips + draft_chips <= NODE_CHIPS:
        return target_chips
    return math.ceil(target_chips / NODE_CHIPS) * NODE_CHIPS


def round_joules(draft_step_j: float, verify_j: float, static_w: float, draft_tokens: int,
                 round_s: float) -> float:
    """One round's energy: the dynamic joules of `draft_tokens` draft steps and of one verify pass, and both
    models' static power (`static_w`, all their chips) for the whole round: each side idles while the other works."""
    return draft_tokens * draft_step_j + verify_j + static_w * round_s


def speculative_energy(target: dict, draft: dict, verify_j: float, hops_j: float, draft_tokens: int,
                       round_s: float, tokens: float) -> dict[str, Any]:
    """J/token with and without speculation (docs/energy.md), from the two plans' `energy` blocks (a token's
    dynamic joules and the static power of all their chips), the verify pass's dynamic joules and the hand-offs':
    per round, `draft_tokens` draft steps + the verify pass + the hops, and both models' static power for the whole
    round (each side idles while the other works), over the expected tokens of a round."""
    te, de = target["energy"], draft["energy"]
    static_w = te["static_power_w"] + de["static_power_w"]
    joules = round_joules(de["dynamic_j_per_token"], verify_j + hops_j, static_w, draft_tokens, round_s)
    return {"j_per_token": joules / tokens, "j_per_token_without": te["j_per_token"],
            "static_j_per_token": static_w * round_s / tokens, "power_w": joules / round_s,
            "verify_dynamic_j": verify_j, "draft_dynamic_j_per_token": de["dynamic_j_per_token"]}


class Speculation:
    """A target and a draft planned on one system; `plan(...)` composes the rounds."""

    def __init__(self, target, draft, *, draft_chips: int | str = "auto", precision: str = "int8",
                 context: int = 4096, prompt: int = 128, new_tokens: int = 128, concurrency: int = 1,
                 prefill_chunk: int | None = None, chip=None, progress: bool = False, store=None):
        if concurrency != 1:
            raise ModelError(f"--concurrency {concurrency} with --speculative: the plan is for one sequence (the "
                             f"draft and target wait for each other; sharing them between users is not modelled)")
        check_pair(DecoderShape.from_config(target), DecoderShape.from_config(draft))
        kw = dict(precision=precision, context=context, prompt=prompt, new_tokens=new_tokens,
                  prefill_chunk=prefill_chunk, chip=chip, progress=progress, store=store)
        self.target, self.draft = Planner(target, **kw), Planner(draft, **kw)
        self.draft_chips = draft_chips

    def verify_cycles(self, layout: Layout, draft_tokens: int) -> dict[str, Any]:
        """The target's verify pass: `draft_tokens + 1` tokens after `context - draft_tokens - 1` cached ones, the
        head scoring every one of them."""
        seq, planner = draft_tokens + 1, self.target
        if seq >= planner.context:
            raise ModelError(f"--draft-tokens {draft_tokens}: a verify pass of {seq} tokens needs a --context "
                             f"above {seq}")
        system, route = planner.placed(layout.chips)
        return planner.pass_cycles(layout, system, route, seq, planner.context - seq, logits=seq)

    def verify_joules(self, layout: Layout, draft_tokens: int) -> float:
        """The verify pass's dynamic energy: its pieces' events, as `verify_cycles` composes their cycles."""
        seq, planner = draft_tokens + 1, self.target
        system, route = planner.placed(layout.chips)
        events = planner.pass_events(layout, system, route, seq, planner.context - seq, logits=seq)
        return sum(dynamic_energy(planner.chip, events).values())

    def plan(self, chips: int | str = "auto", tp: int | None = None, pp: int | None = None,
             draft_tokens: int | None = None, acceptance: float | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        source = ACCEPTANCE_SOURCE if acceptance is None else "given (--acceptance)"
        acceptance = DEFAULT_ACCEPTANCE if acceptance is None else acceptance
        check_flags(acceptance, draft_tokens)
        t_layout = self.target.choose(chips, tp, pp)
        d_layout = self.draft.choose(self.draft_chips, None, None)
        result = self.target.plan_layout(t_layout, start)
        draft_plan = self.draft.plan_layout(d_layout)

        # both models on one system: the target's chips first, then the draft's
        first = draft_start(t_layout.chips, d_layout.chips)
        system = system_for_chips(first + d_layout.chips, chip=self.target.chip.config)
        route = pipeline_route(system, first + d_layout.chips)
        t_entry = self.target.entry_chip(t_layout, route)
        d_entry = self.draft.entry_chip(d_layout, route[first:])
        handoff = self.target.token_hop(system, route[first + d_layout.chips - 1], t_entry)
        handback = self.target.token_hop(system, route[t_layout.chips - 1], d_entry)
        handoff_events = self.target.token_hop_events(system, route[first + d_layout.chips - 1], t_entry)
        handback_events = self.target.token_hop_events(system, route[t_layout.chips - 1], d_entry)
        d_system, d_route = self.draft.placed(d_layout.chips)
        d_back = self.draft.return_hop(d_layout, d_system, d_route)
        d_decode = self.draft.decode_cycles(d_layout)
        d_back_cycles = d_back["c2c"] + d_back["sync_stalls"]

        def one_round(k: int) -> dict[str, Any]:
            verify = self.verify_cycles(t_layout, k)
            parts = {"draft": k * d_decode + (k - 1) * d_back_cycles,  # the k-th draft goes to the target instead
                     "handoff": handoff["c2c"] + handoff["sync_stalls"], "verify": verify["cycles"],
                     "handback": handback["c2c"] + handback["sync_stalls"]}
            cycles = sum(parts.values())
            tokens = expected_tokens(acceptance, k)
            return {"draft_tokens": k, "round_cycles": cycles, "round_breakdown_cycles": parts,
                    "verify_breakdown": verify["breakdown"], "expected_tokens_per_round": round(tokens, 4),
                    "tokens_per_s": round(tokens / self.target.chip.seconds(cycles), 2), "_verify": verify}

        tried = [draft_tokens] if draft_tokens is not None else list(DRAFT_TOKENS_SEARCHED)
        rounds = [one_round(k) for k in tried]
        best = max(rounds, key=lambda r: r["tokens_per_s"])
        for r in rounds:  # the verify pass dicts were for choosing k; the energy is composed from its events
            r.pop("_verify", None)
        seconds = self.target.chip.seconds(best["round_cycles"])
        without = result["tokens_per_s"]
        result["speculative"] = {
            "draft": {k: draft_plan[k] for k in ("model", "chips", "tp", "pp", "parts_per_group", "per_token_us",
                                                  "tokens_per_s", "per_token_cycles", "sram_used_fraction",
                                                  "weights_bytes", "kv_cache_bytes", "ttft_ms", "fits")},
            "acceptance": acceptance,
            "acceptance_source": source,
            "draft_tokens": best["draft_tokens"],
            "draft_tokens_chosen": "given (--draft-tokens)" if draft_tokens is not None else
            f"the fastest of {tried[0]}..{tried[-1]}",
            "expected_tokens_per_round": best["expected_tokens_per_round"],
            "round_cycles": best["round_cycles"], "round_us": round(seconds * 1e6, 3),
            "round_breakdown_cycles": best["round_breakdown_cycles"],
            "verify_breakdown": best["verify_breakdown"],
            "verify_over_decode": round(best["round_breakdown_cycles"]["verify"] / result["per_token_cycles"], 3),
            "draft_step_cycles": d_decode + d_back_cycles,
            "tokens_per_s": best["tokens_per_s"], "tokens_per_s_without": without,
            "speedup": round(best["tokens_per_s"] / without, 3),
            "chips_total": t_layout.chips + d_layout.chips, "system_chips": first + d_layout.chips,
            "draft_first_chip": first, "handoff_hops": handoff["hops"], "handback_hops": handback["hops"],
            "search": rounds,
            "energy": speculative_energy(result, draft_plan, self.verify_joules(t_layout, best["draft_tokens"]),
                                         sum(dynamic_energy(self.target.chip, add_events((handoff_events, 1),
                                                                                         (handback_events, 1))
                                                            ).values()),
                                         best["draft_tokens"], seconds, best["expected_tokens_per_round"]),
        }
        # the verify passes' pieces too (compiled after the target's plan), then the draft's
        result["pieces"] = [p.to_json() for p in self.target.pieces.found.values()] + draft_plan["pieces"]
        result["wall_s"] = round(time.perf_counter() - start, 2)
        result["compile_s"] = round(self.target.pieces.compile_s + self.draft.pieces.compile_s, 2)
        return result


def plan_speculative(target, draft, *, chips: int | str = "auto", tp: int | None = None, pp: int | None = None,
                     draft_chips: int | str = "auto", draft_tokens: int | None = None,
                     acceptance: float | None = None, **planner) -> dict[str, Any]:
    """The target's plan (plan_llm's dict) with a `speculative` block: `draft` (a built-in name, config.json or
    dict) on `draft_chips` chips of its own (a number or "auto": the fewest that hold it) proposing
    `draft_tokens` tokens a round (None: the fastest of DRAFT_TOKENS_SEARCHED), each accepted with probability
    `acceptance` (None: DEFAULT_ACCEPTANCE). `planner`: Planner's keywords (precision, context, ...)."""
    check_flags(DEFAULT_ACCEPTANCE if acceptance is None else acceptance, draft_tokens)  # before minutes of planning
    spec = Speculation(target, draft, draft_chips=draft_chips, **planner)
    return spec.plan(chips, tp, pp, draft_tokens, acceptance)


def format_speculative(r: dict[str, Any]) -> str:
    """The speculative block as a few lines under the target's plan."""
    s, d = r["speculative"], r["speculative"]["draft"]
    b = s["round_breakdown_cycles"]
    energy = s["energy"]
    lines = [
        f"speculative decoding: draft {d['model']} on {d['chips']} chips of its own (tp {d['tp']} x pp {d['pp']}, "
        f"{d['tokens_per_s']:.1f} tokens/s alone), {s['chips_total']} chips in all",
        f"  {s['draft_tokens']} draft tokens a round ({s['draft_tokens_chosen']}), acceptance {s['acceptance']} "
        f"({s['acceptance_source']}): {s['expected_tokens_per_round']:.2f} tokens a round",
        f"  round                {s['round_us']:.1f} us = {s['round_cycles']:,} cycles: draft {b['draft']:,}, "
        f"hand-off {b['handoff']:,} ({s['handoff_hops']} hops), verify {b['verify']:,} "
        f"({s['verify_over_decode']:.2f} x a decode step), back {b['handback']:,} ({s['handback_hops']} hops)",
        f"  tokens/s, one user   {s['tokens_per_s']:.1f} with, {s['tokens_per_s_without']:.1f} without: "
        f"{s['speedup']:.2f} x",
        f"  J/token              {energy['j_per_token']:.3g} with, {energy['j_per_token_without']:.3g} without "
        f"({energy['static_j_per_token'] / energy['j_per_token']:.0%} static; model: docs/energy.md)",
    ]
    if len(s["search"]) > 1:
        lines.append("  draft tokens tried   " + ", ".join(f"{x['draft_tokens']}: {x['tokens_per_s']:.0f}"
                                                           for x in s["search"]) + " tokens/s")
    return "\n".join(lines)
