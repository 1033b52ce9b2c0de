"""The rack-scale plan of a decoder LLM: `lpusim llm CONFIG` and `lpusim.llm.plan.plan_llm` (docs/llm.md section 4).

A plan puts a Hugging Face decoder configuration (random weights, never downloaded) on `tp * pp` chips: `pp`
pipeline *groups* in a row along the system's route (multichip/topology.py), each group `tp` chips of one node
running consecutive layer parts (attention, MLP: two per layer) in Megatron-style tensor parallelism (llm/shard.py). Its numbers are composed from
pieces that are each compiled and simulated (timing-only: the values of random weights carry no information):

* the parts of one chip's share of a layer (attention, MLP) and of the model's ends (embedding, head), each a
  single-chip program; the `tp` chips of a group run the same program on their own weights;
* the collectives between them (multichip/collectives.py: the all-reduce after each part, the all-gathers of the
  embedding's column blocks and of the group input, the argmax exchange), each a multi-chip program simulated on
  the system model;
* the pipeline hops between groups (multichip/compose.py: one transfer under the pipeline compiler's rules, over
  the local or global link the route takes), and the return of the chosen token to the first group over the
  topology's shortest path.

Identical pieces are compiled and simulated once: every layer of a model is the same program. What is composed
and what is assumed is listed in docs/llm.md section 4.2; the composition of pipeline stages is checked against a
whole-system simulation in tests/multichip/test_rack_pipeline.py.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from lpusim.chip import Chip
from lpusim.errors import ModelError
from lpusim.llm.configs import model_size
from lpusim.energy import add_events
from lpusim.llm.plan_energy import plan_energy
from lpusim.llm.pieces import F32_PLANES, PartDoesNotFit, Piece, Pieces
from lpusim.llm.shard import DecoderShape, ShardWidths
from lpusim.multichip.topology import NODE_CHIPS, RACK_CHIPS, pipeline_route, shortest_path, system_for_chips

PRECISIONS = ("int8", "fp16")
# Prompt tokens per prefill pass (default). A chunk attends over the whole cache window as the generation's prefill
# programs do (docs/llm.md 3.5), so every chunk is the same program; the chunks follow one another through the
# pipeline. Larger chunks shorten the prefill but compile slower (the collectives' compile time grows with rows).
PREFILL_CHUNK = 16
# The longest --context planned: 8 x the 131,072 positions of the longest published contexts (Llama 3.1, Qwen2);
# a KV cache of more positions is refused before any array of that many positions is made.
MAX_CONTEXT = 1 << 20
# The most row blocks the token embedding is split into (Planner.embed_blocks): far above any published vocabulary's
# need (Llama 3's 128K tokens take 3 at tp 8, measured at d68954f), a bound on the compiles spent finding out.
MAX_EMBED_BLOCKS = 16


@dataclass
class Layout:
    """`pp` groups of `tp` chips; group g runs `parts[g]` consecutive parts of the sequence attention, MLP,
    attention, MLP, ... (2 per layer): a group boundary may fall inside a layer, between its two parts."""

    tp: int
    parts: list[int]
    per_layer: int = 2  # parts per layer: attention, then the MLP in one part or in expert groups
    # groups the token embedding's rows are split over (Planner.embed_blocks): the first `embed_blocks` groups each
    # hold one row block beside their parts, chained from the last of them to group 0 (docs/llm.md 4.1)
    embed_blocks: int = 1

    def holds_embedding(self, g: int) -> bool:
        return g < self.embed_blocks

    def kind(self, part: int) -> str:
        return "attention" if part % self.per_layer == 0 else "mlp"

    @property
    def pp(self) -> int:
        return len(self.parts)

    def ranges(self) -> list[tuple[int, int]]:
        """Per group: its first part's index and its part count."""
        starts = [sum(self.parts[:g]) for g in range(self.pp)]
        return list(zip(starts, self.parts))

    @property
    def chips(self) -> int:
        return self.tp * self.pp


def _tp_choices(shape: DecoderShape, tp: int | None) -> list[int]:
    if tp is not None:
        if not 1 <= tp <= NODE_CHIPS or NODE_CHIPS % tp:
            raise ModelError(f"--tp {tp}: a tensor-parallel group is 1, 2, 4 or 8 chips of one node")
        ShardWidths.of(shape, tp)  # raises for a tp that does not divide the heads
        return [tp]
    found = []
    for t in (1, 2, 4, 8):
        try:
            ShardWidths.of(shape, t)
        except ModelError:
            continue
        found.append(t)
    return found


class Planner:
    """Plans one configuration at one precision, context and concurrency; `plan(chips, tp, pp)` composes."""

    def __init__(self, config, *, precision: str = "int8", context: int = 4096, prompt: int = 128,
                 new_tokens: int = 128, concurrency: int = 1, prefill_chunk: int | None = None, chip=None,
                 progress: bool = False, store=None):
        if precision not in PRECISIONS:
            raise ModelError(f"--precision {precision}: one of {', '.join(PRECISIONS)}")
        for flag, value, low in (("--context", context, 2), ("--prompt", prompt, 1), ("--new-tokens", new_tokens, 1),
                                 ("--concurrency", concurrency, 1)):
            if not isinstance(value, int) or value < low:
                raise ModelError(f"{flag} {value}: at least {low}")
        if context > MAX_CONTEXT:
            raise ModelError(f"--context {context:,}: at most {MAX_CONTEXT:,} positions are planned")
        chunk = min(prompt, PREFILL_CHUNK) if prefill_chunk is None else prefill_chunk
        if not isinstance(chunk, int) or not 1 <= chunk <= prompt:
            raise ModelError(f"--prefill-chunk {prefill_chunk}: between 1 and the prompt's {prompt} tokens")
        if prompt + new_tokens > context:
            raise ModelError(f"--prompt {prompt} plus --new-tokens {new_tokens} exceed --context {context}")
        self.config = config
        self.shape = DecoderShape.from_config(config)
        self.precision, self.context, self.prompt = precision, context, prompt
        self.new_tokens, self.concurrency, self.chunk = new_tokens, concurrency, chunk
        self.chip = Chip.load(chip)
        self.pieces = Pieces(self.shape, precision, self.chip, progress, store)
        self.size = model_size(config, precision, context, concurrency)
        self.rejected: dict[int, str] = {}  # tp -> why a group of that many chips cannot hold a layer
        self.split: dict[int, int] = {}     # tp -> into how many parts a layer's MLP goes (MLP groups)
        self.blocks: dict[int, int] = {}    # tp -> over how many groups the embedding's rows are split
        self.systems: dict[int, tuple] = {}  # chips -> (system, route)
        self.decodes: dict[tuple, int] = {}  # (tp, parts per layer, parts per group) -> decode pass cycles

    # ---- SRAM -------------------------------------------------------------------------------------------------
    def part_weight_bytes(self, tp: int) -> int:
        """An estimate of one chip's weight bytes for the largest part that cannot be split further (attention,
        the dense MLP, or one expert), to skip compiling a tensor-parallel degree that cannot hold it."""
        sh, per_parameter = self.shape, self.size.weights_bytes // self.size.parameters
        attention = sh.hidden * (sh.heads + 2 * sh.kv_heads) * sh.head_dim + sh.heads * sh.head_dim * sh.hidden
        mlp = (2 if sh.family == "gpt2" else 3) * sh.hidden * sh.ffn
        return max(attention, mlp) * per_parameter // tp

    def cache_row_bytes(self) -> int:
        """SRAM of one cached position of one key or value head: a row of a 320-lane f32 vector, as the compiler
        keeps an f32 cache input (docs/llm.md 3.5)."""
        return self.chip.lanes * 4

    def mlp_groups(self, tp: int) -> int:
        """Into how many parts one layer's MLP goes at `tp`: 1, or for a mixture whose experts do not fit one
        chip together, the fewest groups of experts (dividing their number) that do."""
        if tp not in self.split:
            cap, k = self.chip.sram_bytes, 1
            if self.shape.experts:  # start from the fewest groups whose weights alone can fit (no giant graphs)
                per_parameter = self.size.weights_bytes // self.size.parameters
                expert = 3 * self.shape.hidden * ShardWidths.of(self.shape, tp).ffn * per_parameter
                k = next(j for j in range(1, self.shape.experts + 1)
                         if self.shape.experts % j == 0 and (self.shape.experts // j) * expert <= cap
                         or j == self.shape.experts)
            while True:
                try:
                    if self.pieces.part("mlp", tp, 1, groups=k).sram_bytes <= cap:
                        break
                except PartDoesNotFit:
                    if not self.shape.experts or k == self.shape.experts:
                        raise
                k = next((j for j in range(k + 1, self.shape.experts + 1) if self.shape.experts % j == 0), 0)
                if not k:
                    raise PartDoesNotFit(f"one expert's share at tp {tp} does not fit one chip")
            self.split[tp] = k
        return self.split[tp]

    def per_layer(self, tp: int) -> int:
        return 1 + self.mlp_groups(tp)

    def embed_blocks(self, tp: int) -> int:
        """Over how many groups of `tp` chips the token embedding's rows go: 1 when a chip holds its column block
        of the whole table, else the fewest row blocks of which one chip holds one (Llama 3's 128K-token table at
        tp 8: 3, as the lookup stores f32 rows). Each block costs a chain step per pass (`pass_cycles`)."""
        if tp not in self.blocks:
            cap, r = self.chip.sram_bytes, 1
            while True:
                try:
                    if self.pieces.part("embed", tp, 1, groups=r).sram_bytes <= cap:
                        break
                except PartDoesNotFit:
                    pass
                if r >= MAX_EMBED_BLOCKS:
                    raise PartDoesNotFit(f"the token embedding's column block at tp {tp} does not fit {r} chips' "
                                         f"SRAM in row blocks")
                r += 1
            self.blocks[tp] = r
        return self.blocks[tp]

    def embed_bytes(self, layout: Layout) -> int:
        return self.pieces.part("embed", layout.tp, 1, groups=layout.embed_blocks).sram_bytes

    def part_bytes(self, tp: int, kind: str, groups: int | None = None, sequences: int | None = None) -> int:
        """One chip's SRAM for one part: its program's peak (activations included: an upper bound), plus for
        attention the caches of the other concurrent sequences (`sequences`, default --concurrency). `groups`:
        the MLP's (default `mlp_groups`)."""
        if kind == "mlp":
            return self.pieces.part("mlp", tp, 1, groups=groups or self.mlp_groups(tp)).sram_bytes
        w = ShardWidths.of(self.shape, tp)
        others = (self.concurrency if sequences is None else sequences) - 1
        extra = others * 2 * w.kv_heads * self.context * self.cache_row_bytes()
        return self.pieces.part("attention", tp, 1, self.context - 1).sram_bytes + extra

    def group_bytes(self, layout: Layout, start: int, count: int, first: bool, last: bool,
                    sequences: int | None = None) -> int:
        tp = layout.tp
        total = sum(self.part_bytes(tp, layout.kind(i), layout.per_layer - 1, sequences)
                    for i in range(start, start + count))
        if first:  # a row block of the embedding (the whole table's column block when embed_blocks is 1)
            total += self.embed_bytes(layout)
        if last:
            total += self.pieces.part("head", tp, 1).sram_bytes
        return total

    def fewest_groups(self, tp: int) -> Layout | None:
        """The fewest groups of `tp` chips that hold the model, filled in order, the embedding block with the
        first parts (or alone) and the head with the last (or alone); None when a part does not fit a chip."""
        cap = self.chip.sram_bytes
        estimate = self.part_weight_bytes(tp)
        if estimate > cap:
            self.rejected[tp] = (f"a layer part's weights alone take about {estimate / 1e6:.1f} MB of each of {tp} "
                                 f"chips' {cap / 1e6:.1f} MB")
            return None
        cache = self.concurrency * 2 * ShardWidths.of(self.shape, tp).kv_heads * self.context * self.cache_row_bytes()
        if cache > cap:  # known before compiling an attention part over a cache of --context positions
            self.rejected[tp] = (f"an attention part's KV cache of {self.context:,} positions alone takes "
                                 f"{cache / 1e6:.1f} MB of each of {tp} chips' {cap / 1e6:.1f} MB")
            return None
        try:
            for kind in ("attention", "mlp", "head"):
                need = self.part_bytes(tp, kind) if kind in ("attention", "mlp") else \
                    self.pieces.part(kind, tp, 1).sram_bytes
                if need > cap:
                    self.rejected[tp] = (f"the {kind} part takes {need / 1e6:.1f} MB of each of {tp} chips' "
                                         f"{cap / 1e6:.1f} MB")
                    return None
            layout = Layout(tp, [], self.per_layer(tp), self.embed_blocks(tp))
            total = layout.per_layer * self.shape.layers
            start = 0
            while start < total:
                n = 0
                while start + n < total and self.group_bytes(layout, start, n + 1,
                                                              layout.holds_embedding(layout.pp), False) <= cap:
                    n += 1
                layout.parts.append(n)  # n = 0: an embedding block alone (it does not fit beside a part)
                start += n
            while layout.pp < layout.embed_blocks:
                layout.parts.append(0)  # a model of fewer groups than embedding blocks: a group per block
            if self.group_bytes(layout, total - layout.parts[-1], layout.parts[-1],
                                layout.holds_embedding(layout.pp - 1), True) > cap:
                layout.parts.append(0)  # the head does not fit beside the last parts: a group of its own
        except PartDoesNotFit as e:
            self.rejected[tp] = str(e)
            return None
        return layout

    def spread_layout(self, tp: int, pp: int) -> Layout | None:
        """Exactly `pp` groups: whole layers spread evenly when that fits; else the parts cut so that the fullest
        chip holds as little as possible (the smallest SRAM bound under which filling groups in order needs at
        most `pp` of them), then the groups with the most parts halved until there are `pp`. None: no cut fits."""
        per = self.per_layer(tp)
        layers, total = self.shape.layers, per * self.shape.layers
        if pp < self.embed_blocks(tp):
            return None
        if pp <= layers:
            base, extra = divmod(layers, pp)
            whole = Layout(tp, [per * (base + (1 if g < extra else 0)) for g in range(pp)], per,
                           self.embed_blocks(tp))
            if self.fits(whole)[0]:
                return whole

        def fill(bound: int) -> Layout | None:
            layout, start = Layout(tp, [], per, self.embed_blocks(tp)), 0
            while start < total:
                n = 0
                while start + n < total and self.group_bytes(layout, start, n + 1, layout.holds_embedding(layout.pp),
                                                              start + n + 1 == total) <= bound:
                    n += 1
                if n == 0 and layout.parts:
                    return None
                layout.parts.append(n)
                start += n
            while layout.pp < layout.embed_blocks:
                layout.parts.append(0)
            return layout

        low, high = 0, self.chip.sram_bytes
        best = fill(high)
        if best is None or best.pp > pp or pp < best.embed_blocks:
            return None
        while high - low > 1 << 16:  # a 64 KB resolution is plenty for a bound of 230 MB
            mid = (low + high) // 2
            found = fill(mid)
            if found is not None and found.pp <= pp:
                best, high = found, mid
            else:
                low = mid
        while best.pp < pp:  # more chips than the fullest cut needs: halve the groups with the most parts
            g = max(range(best.pp), key=lambda i: best.parts[i])
            if best.parts[g] < 2:
                return None
            half = best.parts[g] // 2
            best.parts[g:g + 1] = [half, best.parts[g] - half]
        return best if self.fits(best)[0] else None

    def fits(self, layout: Layout) -> tuple[bool, int]:
        worst = max(self.group_bytes(layout, start, n, layout.holds_embedding(g), g == layout.pp - 1)
                    for g, (start, n) in enumerate(layout.ranges()))
        return worst <= self.chip.sram_bytes, worst

    def most_sequences(self, layout: Layout, limit: int = 4096) -> int:
        """The most sequences whose KV caches the layout's chips hold together (at least 1, at most `limit`)."""
        def fit(n: int) -> bool:
            return all(self.group_bytes(layout, start, count, layout.holds_embedding(g), g == layout.pp - 1, n)
                       <= self.chip.sram_bytes
                       for g, (start, count) in enumerate(layout.ranges()))
        lo, hi = 1, limit
        if fit(hi):
            return hi
        while hi - lo > 1:  # fit(lo) or lo == 1; not fit(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fit(mid) else (lo, mid)
        return lo

    # ---- time -------------------------------------------------------------------------------------------------
    def group_pieces(self, layout: Layout, g: int, seq: int, past: int,
                     logits: int = 1) -> tuple[list[Piece], list[Piece]]:
        """Group `g`'s pieces for `seq` tokens: the parts each of its `tp` chips runs, and the collectives the
        group runs together. `logits`: the tokens the head scores (a prefill chunk needs its last; a speculative
        verify pass every one)."""
        p, h, tp = self.pieces, self.shape.hidden, layout.tp
        start, count = layout.ranges()[g]
        parts = [p.part("attention", tp, seq, past) if layout.kind(i) == "attention" else
                 p.part("mlp", tp, seq, groups=layout.per_layer - 1) for i in range(start, start + count)]
        colls = [p.collective("all-reduce", tp, seq, h)] * count
        if layout.holds_embedding(g):
            parts.append(p.part("embed", tp, seq, groups=layout.embed_blocks))
        if g == 0:
            colls.append(p.collective("all-gather", tp, seq, h))
        if g == layout.pp - 1:
            parts.append(p.part("head", tp, logits))
            colls.append(p.collective("all-gather", tp, logits, tp * self.chip.lanes))  # (max, index) per chip
        return parts, colls

    def group_cycles(self, layout: Layout, g: int, seq: int, past: int, logits: int = 1) -> dict[str, int]:
        """Group `g`'s cycles for `seq` tokens, split as the breakdown reports them."""
        parts, colls = self.group_pieces(layout, g, seq, past, logits)
        return {"weight_installs": sum(x.install_cycles for x in parts),
                "compute": sum(x.cycles - x.install_cycles for x in parts),
                "c2c": sum(x.cycles - x.sync_cycles for x in colls),
                "sync_stalls": sum(x.sync_cycles for x in colls)}

    def pass_events(self, layout: Layout, system, route, seq: int, past: int, logits: int = 1) -> dict[str, int]:
        """The energy events of one pass of `seq` tokens through every group (docs/energy.md): each group's parts
        on each of its chips, its collectives, the embedding chain and the hops between groups, as `pass_cycles`
        composes them."""
        weighted: list[tuple[dict[str, int], int]] = []
        for g in range(layout.pp):
            parts, colls = self.group_pieces(layout, g, seq, past, logits)
            weighted += [(x.events, layout.tp) for x in parts] + [(x.events, 1) for x in colls]
            if 0 < g < layout.embed_blocks:
                weighted.append((self.embed_hop(layout, system, route, g, seq)[1].events, layout.tp))
            if g + 1 < layout.pp:
                _, hop, spread = self.handoff(layout, system, route, g, seq)
                weighted += [(hop.events, 1), (spread.events, 1)]
        return add_events(*weighted)

    def handoff(self, layout: Layout, system, route, g: int, seq: int) -> tuple[str, Piece, Piece]:
        """Group `g`'s output to group `g + 1`: the link kind, the hop over it, and the all-gather that spreads
        the group input to every chip of the next group."""
        kind = _link_kind(route[g * layout.tp], route[(g + 1) * layout.tp])
        h = self.shape.hidden
        return kind, self.pieces.hop(system, kind, seq, h), self.pieces.collective("all-gather", layout.tp, seq, h)

    def embed_hop(self, layout: Layout, system, route, g: int, seq: int) -> tuple[str, Piece]:
        """An embedding chain step (docs/llm.md 4.1): each chip of group `g` sends its partial column block, and
        the token ids in a lane beside each row, to its counterpart in group `g - 1`; the `tp` hops run at once."""
        kind = _link_kind(route[g * layout.tp], route[(g - 1) * layout.tp])
        block = ShardWidths.of(self.shape, layout.tp).hidden
        return kind, self.pieces.hop(system, kind, seq, block + 1)

    def entry_chip(self, layout: Layout, route) -> int:
        """Where a pass starts, the chip the token goes to: the first group's, or with the embedding's rows over
        several groups, the last of those (the chain runs from it back to group 0)."""
        return route[(layout.embed_blocks - 1) * layout.tp]

    def token_hop_events(self, system, a: int, b: int) -> dict[str, int]:
        """The energy events of token ids (one vector) from chip `a` to chip `b`, as `token_hop` times them."""
        return add_events(*((self.pieces.hop(system, kind, 1, self.chip.lanes // F32_PLANES).events, 1)
                            for kind in shortest_path(system, a, b)))

    def pass_cycles(self, layout: Layout, system, route, seq: int, past: int, logits: int = 1) -> dict[str, Any]:
        """One pass of `seq` tokens through every group: per-group cycles, the hops, and their sum."""
        groups, hops = [], []
        for g in range(layout.pp):
            groups.append(self.group_cycles(layout, g, seq, past, logits))
            if 0 < g < layout.embed_blocks:  # its embedding block's partial sum on to group g - 1, before group 0
                hop = self.embed_hop(layout, system, route, g, seq)[1]
                groups[g]["c2c"] += hop.cycles - hop.sync_cycles
                groups[g]["sync_stalls"] += hop.sync_cycles
            if g + 1 < layout.pp:
                kind, hop, spread = self.handoff(layout, system, route, g, seq)
                hops.append({"c2c": hop.cycles - hop.sync_cycles + spread.cycles - spread.sync_cycles,
                             "sync_stalls": hop.sync_cycles + spread.sync_cycles, "kind": kind,
                             "link_vectors": hop.link_vectors})
        total = {k: sum(g[k] for g in groups) + sum(x.get(k, 0) for x in hops)
                 for k in ("compute", "weight_installs", "c2c", "sync_stalls")}
        return {"groups": groups, "hops": hops, "breakdown": total, "cycles": sum(total.values())}

    def return_hop(self, layout: Layout, system, route) -> dict[str, int]:
        """The chosen token back to where a pass starts (`entry_chip`): one vector over the topology's shortest
        path."""
        return self.token_hop(system, route[layout.chips - 1], self.entry_chip(layout, route))

    def token_hop(self, system, a: int, b: int) -> dict[str, int]:
        """Token ids (one vector) from chip `a` to chip `b` of `system` over the topology's shortest path."""
        path = shortest_path(system, a, b)
        c2c = sync = 0
        for kind in path:
            hop = self.pieces.hop(system, kind, 1, self.chip.lanes // F32_PLANES)
            c2c += hop.cycles - hop.sync_cycles
            sync += hop.sync_cycles
        return {"c2c": c2c, "sync_stalls": sync, "hops": len(path)}

    def plan(self, chips: int | str = "auto", tp: int | None = None, pp: int | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        return self.plan_layout(self.choose(chips, tp, pp), start)

    def plan_layout(self, layout: Layout, start: float | None = None) -> dict[str, Any]:
        """The plan of a chosen layout (`choose`); `start`: when planning began, for `wall_s`."""
        start = time.perf_counter() if start is None else start
        system, route = self.placed(layout.chips)
        decode = self.pass_cycles(layout, system, route, 1, self.context - 1)
        back = self.return_hop(layout, system, route)
        prefill = self.pass_cycles(layout, system, route, self.chunk, self.context - self.chunk)
        chunks = math.ceil(self.prompt / self.chunk)
        prefill_beat = max(_beats(prefill, 0))
        ttft = prefill["cycles"] + (chunks - 1) * prefill_beat  # the pipeline fills, then a chunk per beat
        per_token = decode["cycles"] + back["c2c"] + back["sync_stalls"]
        breakdown = dict(decode["breakdown"])
        breakdown["c2c"] += back["c2c"]
        breakdown["sync_stalls"] += back["sync_stalls"]
        beat = max(_beats(decode, back["c2c"] + back["sync_stalls"]))
        seconds = self.chip.seconds
        per_token_s = seconds(per_token)
        ttft_s = seconds(ttft)
        throughput = min(self.concurrency / per_token_s, 1 / seconds(beat))
        fits, worst = self.fits(layout)
        link = self.busiest_link(layout, decode, per_token, system.min_send_interval_cycles)
        token_events = add_events((self.pass_events(layout, system, route, 1, self.context - 1), 1),
                                  (self.token_hop_events(system, route[layout.chips - 1],
                                                         self.entry_chip(layout, route)), 1))
        prefill_events = self.pass_events(layout, system, route, self.chunk, self.context - self.chunk)
        energy = plan_energy(self.chip, layout.chips, token_events, add_events((prefill_events, chunks)),
                             per_token_s, seconds(beat), ttft_s, self.concurrency,
                             self.most_sequences(layout))
        return {
            "model": self.shape.name, "family": self.shape.family, "simulated": True,
            "chips": layout.chips, "tp": layout.tp, "pp": layout.pp,
            "nodes": math.ceil(layout.chips / NODE_CHIPS), "racks": math.ceil(layout.chips / RACK_CHIPS),
            "topology": system.config.get("topology", "node"),
            "precision": self.precision, "context": self.context, "prompt": self.prompt,
            "new_tokens": self.new_tokens, "concurrency": self.concurrency,
            "parts_per_group": _runs(layout.parts), "parts_per_layer": layout.per_layer,
            "embedding_row_blocks": layout.embed_blocks,
            "parameters": self.size.parameters, "weights_bytes": self.size.weights_bytes,
            "kv_cache_bytes": self.size.kv_cache_bytes,
            "sram_used_fraction": round(worst / self.chip.sram_bytes, 4),
            "ttft_ms": round(ttft_s * 1e3, 4), "per_token_us": round(per_token_s * 1e6, 3),
            "tokens_per_s": round(1 / per_token_s, 2),
            "throughput_tokens_per_s": round(throughput, 2),
            "end_to_end_s": round(ttft_s + (self.new_tokens - 1) * per_token_s, 4),
            "per_token_cycles": per_token, "prefill_chunk": self.chunk, "prefill_chunks": chunks,
            "ttft_cycles": ttft, "pipeline_beat_cycles": beat,
            "cycle_breakdown": breakdown,
            "cycle_breakdown_fraction": {k: round(v / per_token, 4) for k, v in breakdown.items()},
            "link_utilization": link, "return_hops": back["hops"],
            "pieces": [p.to_json() for p in self.pieces.found.values()],
            "wall_s": round(time.perf_counter() - start, 2), "compile_s": round(self.pieces.compile_s, 2),
            "fits": fits, "energy": energy,
        }

    def busiest_link(self, layout: Layout, decode: dict, per_token: int, send: int) -> dict[str, Any]:
        """The busiest link direction's share of a token's time: the vectors it carries per token times the send
        interval `send`, over the token's cycles."""
        best = {"link": "none", "fraction": 0.0, "vectors_per_token": 0}
        if layout.tp > 1:
            ar = self.pieces.collective("all-reduce", layout.tp, 1, self.shape.hidden)
            busiest = max(layout.parts)
            vectors = ar.link_vectors * busiest
            best = {"link": f"local, within a group of {layout.tp} ({busiest} all-reduces)",
                    "fraction": round(vectors * send / per_token, 4), "vectors_per_token": vectors}
        for hop in decode["hops"]:
            fraction = hop["link_vectors"] * send / per_token
            if fraction > best["fraction"]:
                best = {"link": f"{hop['kind']}, between groups", "fraction": round(fraction, 4),
                        "vectors_per_token": hop["link_vectors"]}
        return best

    def choose(self, chips, tp, pp) -> Layout:
        auto = chips in ("auto", None)
        choices = _tp_choices(self.shape, tp)
        if not choices:
            raise ModelError(f"no tensor-parallel degree of 1, 2, 4, 8 divides the {self.shape.heads} heads")
        if auto:
            if pp is not None:
                raise ModelError("--pp needs --chips (or give --tp alone with --chips auto)")
            found = [lay for t in choices if (lay := self.fewest_groups(t)) is not None]
            if not found:
                raise ModelError(self._too_big(choices))
            fewest = min(lay.chips for lay in found)
            return self._fastest([lay for lay in found if lay.chips == fewest])
        n = int(chips)
        if n < 1:
            raise ModelError(f"--chips {chips}: at least one chip")
        if pp is not None:
            if n % pp:
                raise ModelError(f"--pp {pp} does not divide --chips {n}")
            choices = [t for t in choices if t == n // pp]
            if not choices:
                raise ModelError(f"--chips {n} / --pp {pp} = {n / pp:g} chips per group: a group is 1, 2, 4 or 8 "
                                 f"chips dividing the heads (and equal to --tp when given)")
        layouts, best = [], None
        for t in sorted(choices, reverse=True):  # larger groups first: usually the fastest, and a bound for the rest
            most = (1 + max(self.shape.experts, 1)) * self.shape.layers + 2  # groups of one part each
            if n % t or n // t > most:
                continue
            try:
                if best is not None and self.layer_floor(t) >= best:
                    continue  # its attention parts alone take longer than a whole token of a layout found
            except PartDoesNotFit:
                continue
            if self.fewest_groups(t) is None or n // t > self.per_layer(t) * self.shape.layers + 2:
                continue
            lay = self.spread_layout(t, n // t)
            first = self.split[t]
            while lay is None and self.split[t] < 4 * first and not self.shape.experts:
                # the parts are too coarse to fill n // t groups: cut each MLP into twice as many column groups
                self.split[t] *= 2
                lay = self.spread_layout(t, n // t)
            if lay is not None:
                layouts.append(lay)
                cycles = self.decode_cycles(lay)
                best = cycles if best is None else min(best, cycles)
            else:
                self.split[t] = first
        if not layouts:
            raise ModelError(self._too_few(n, choices))
        return self._fastest(layouts)

    def placed(self, chips: int) -> tuple[Any, list[int]]:
        """The system of `chips` chips and its pipeline route, made once per chip count."""
        if chips not in self.systems:
            system = system_for_chips(chips, chip=self.chip.config)
            self.systems[chips] = (system, pipeline_route(system, chips))
        return self.systems[chips]

    def decode_cycles(self, layout: Layout) -> int:
        """One decode pass through the layout's groups (without the token's return), computed once per layout."""
        key = (layout.tp, layout.per_layer, tuple(layout.parts))
        if key not in self.decodes:
            system, route = self.placed(layout.chips)
            self.decodes[key] = self.pass_cycles(layout, system, route, 1, self.context - 1)["cycles"]
        return self.decodes[key]

    def layer_floor(self, tp: int) -> int:
        """A lower bound on a decode pass at `tp`: every layer's attention part (compiled alone, the cheapest
        piece that tells tp apart), nothing else."""
        return self.shape.layers * self.pieces.part("attention", tp, 1, self.context - 1).cycles

    def _fastest(self, layouts: list[Layout]) -> Layout:
        if len(layouts) == 1:
            return layouts[0]
        return min(layouts, key=lambda lay: (self.decode_cycles(lay), lay.chips, lay.tp))

    def _need(self) -> str:
        return (f"{self.shape.name} at {self.precision}, context {self.context}"
                + (f", {self.concurrency} sequences" if self.concurrency > 1 else "")
                + f": weights {self.size.weights_bytes / 1e9:.2f} GB and KV cache {self.size.kv_cache_bytes / 1e9:.2f} GB")

    def _too_big(self, choices) -> str:
        t = max(choices)
        return (f"{self._need()}; no tensor-parallel group holds a layer: at tp {t} (the largest) "
                f"{self.rejected.get(t, 'it does not fit')}; use a shorter --context or a lower --concurrency")

    def _too_few(self, n: int, choices) -> str:
        best = [lay for t in choices if (lay := self.fewest_groups(t)) is not None]
        if not best:
            return self._too_big(choices)
        fewest = min(best, key=lambda lay: lay.chips)
        return (f"{self._need()}; {n} chips cannot hold it: it takes at least {fewest.chips} chips "
                f"(tp {fewest.tp} x pp {fewest.pp}, {self.chip.sram_bytes / 1e6:.1f} MB of SRAM per chip)")


def _link_kind(a: int, b: int) -> str:
    """A hop between chips `a` and `b` of a pipeline route: inside one node, or between nodes."""
    return "local" if a // NODE_CHIPS == b // NODE_CHIPS else "global"


def _beats(one_pass: dict[str, Any], back: int) -> list[int]:
    """Per group: its cycles per pass plus its outgoing hop (the last group's: `back`), the time it is busy."""
    hops = [h["c2c"] + h["sync_stalls"] for h in one_pass["hops"]] + [back]
    return [sum(g.values()) + hop for g, hop in zip(one_pass["groups"], hops)]


def _runs(values: list[int]) -> list[list[int]]:
    """[[value, count], ...] for consecutive equal values: 72 groups in a line."""
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return out


def plan_llm(config, *, chips: int | str = "auto", tp: int | None = None, pp: int | None = None,
             precision: str = "int8", context: int = 4096, prompt: int = 128, new_tokens: int = 128,
             concurrency: int = 1, prefill_chunk: int | None = None, chip=None,
             progress: bool = False, store=None) -> dict[str, Any]:
    """Plan and simulate a decoder configuration (a built-in name, a config.json path or a dict) on `chips` chips
    (a number, or "auto": the fewest that hold weights and KV cache, then the fastest layout of those), `tp` chips
    per tensor-parallel group and `pp` groups. `store`: a PieceCache (llm/piece_cache.py) its measured pieces
    are looked up in and saved to; None: kept for this call only. Returns the plan as a JSON-ready dict (docs/llm.md
    section 4)."""
    start = time.perf_counter()
    planner = Planner(config, precision=precision, context=context, prompt=prompt, new_tokens=new_tokens,
                      concurrency=concurrency, prefill_chunk=prefill_chunk, chip=chip, progress=progress,
                      store=store)
    result = planner.plan(chips, tp, pp)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    return result


def _energy_line(e: dict[str, Any]) -> str:
    full = e["by_concurrency"][-1]
    return (f"  energy               {e['j_per_token']:.3g} J/token at {e['concurrency']} in flight "
            f"({e['static_j_per_token'] / e['j_per_token']:.0%} static), {e['power_w'] / 1e3:.3g} kW; "
            f"{full['j_per_token']:.3g} J/token at {full['concurrency']} in flight"
            + ("" if full["fits"] else " (more caches than the SRAM holds)") + " (model: docs/energy.md)")


def format_plan(r: dict[str, Any]) -> str:
    """The plan as a short table for a terminal."""
    groups = ", ".join(f"{n} x {parts} part{'s' if parts != 1 else ''}" for parts, n in r["parts_per_group"])
    b, f = r["cycle_breakdown"], r["cycle_breakdown_fraction"]
    link = r["link_utilization"]
    lines = [
        f"{r['model']} at {r['precision']} on {r['chips']} chips ({r['racks']} rack{'s' if r['racks'] > 1 else ''}, "
        f"{r['nodes']} node{'s' if r['nodes'] > 1 else ''}): tp {r['tp']} x pp {r['pp']} groups ({groups})"
        + (f"; the embedding's rows over the first {r['embedding_row_blocks']} groups"
           if r["embedding_row_blocks"] > 1 else ""),
        f"  weights {r['weights_bytes'] / 1e9:.2f} GB, KV cache {r['kv_cache_bytes'] / 1e9:.2f} GB "
        f"(context {r['context']}, {r['concurrency']} sequence{'s' if r['concurrency'] > 1 else ''}); "
        f"the fullest chip's SRAM {r['sram_used_fraction']:.0%} used",
        f"  time to first token  {r['ttft_ms']:.3f} ms  (prompt of {r['prompt']} tokens in {r['prefill_chunks']} "
        f"chunk{'s' if r['prefill_chunks'] > 1 else ''} of {r['prefill_chunk']})",
        f"  per token            {r['per_token_us']:.1f} us  = {r['tokens_per_s']:.1f} tokens/s for one user",
        f"  throughput           {r['throughput_tokens_per_s']:.1f} tokens/s at {r['concurrency']} in flight",
        f"  per token, cycles    {r['per_token_cycles']:,}: compute {b['compute']:,} ({f['compute']:.0%}), weight "
        f"installs {b['weight_installs']:,} ({f['weight_installs']:.0%}), C2C {b['c2c']:,} ({f['c2c']:.0%}), sync "
        f"stalls {b['sync_stalls']:,} ({f['sync_stalls']:.0%})",
        f"  busiest link         {link['fraction']:.1%} busy ({link['link']})",
        _energy_line(r["energy"]),
        f"  simulated pieces     {len(r['pieces'])} in {r['wall_s']:.1f} s",
    ]
    return "\n".join(lines)
