"""A pipeline's cycles composed from its distinct stages (docs/multichip.md, "Composition").

The pipeline compiler (`pipeline._schedule_stages`) schedules stage k on the root's time line from the moment its
first incoming chunk may be received, `r0 = first send of stage k-1 + lag`: a barrier ends exactly at r0 (its
delay `d` covering the drift since the chip's previous realignment, the only quantity that depends on r0 itself),
and nothing of the stage is placed before. Everything after r0 (RECVs at the sender's send cycles plus the lag,
the stage's nodes, its later barriers, whose delays count from the receive barrier, its sends) is the same schedule
shifted by r0. So a stage is described once, relative to its r0 (`StageTiming`), and a pipeline of any length is
the chain r0(k+1) = r0(k) + first_send(k) + lag(k), each chip's barriers replayed through `clocks.predict_chip`.

**What must be identical** for two stages to share a `StageTiming`: the IR nodes up to their names (same kinds,
shapes, constants' sizes and nonzero tiles, so the same placement and schedule), the tensors they receive and send
(same shapes and formats, in the same order: `transfer_bursts` sorts them by name), the host inputs and outputs
they have, the sender's send plan (its vector count and shape: the receiver's RECVs follow it), the hemisphere of
the incoming and outgoing links (links 0-7 are west, 8-15 east: local links of the route are 0-6, global 8-11),
and, for the lag and the transfer's chunking, the outgoing link's latency bound (its kind's mean plus the spread).
The system's drift tolerance, send interval and HAC period must be the same. `stage_key` names a stage by its role
(first, middle, last) and link kinds; a decoder of identical layers cut at layer boundaries (`cuts`) has at most
five distinct keys on a route over nodes (first->local, local->local, local->global, global->local, ->last).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from lpusim.errors import CompileError
from lpusim.multichip.clocks import TICKS, clocks, latency_bound, predict_chip, tolerance_ppm
from lpusim.system import System


@dataclass(frozen=True)
class StageTiming:
    """One pipeline stage's schedule relative to its r0 (the end of its first receive barrier; 0 for stage 0)."""

    in_kind: str | None                    # kind of the link it receives on (None: the first stage)
    out_kind: str | None                   # kind of the link it sends on (None: the last stage)
    barriers: tuple[tuple[int, int], ...]  # (cycle - r0, d) of every barrier after the first receive barrier
    last_effect: int                       # program cycle of its last effect - r0
    first_send: int | None                 # its first SEND - r0
    lag: int | None                        # the lag of its outgoing transfer
    vectors: int = 0                       # vectors it sends
    in_plan: tuple = ()                    # the incoming send plan's shape: (first send offset, vectors) per burst
    out_plan: tuple = ()                   # its own send plan's shape
    source: dict[str, Any] = field(default_factory=dict, compare=False)  # where it came from (not compared)

    @property
    def key(self) -> tuple:
        return stage_key(self.in_kind, self.out_kind, self.in_plan)


def stage_key(in_kind: str | None, out_kind: str | None, in_plan: tuple = ()) -> tuple:
    """(role, incoming link kind, outgoing link kind, incoming plan shape): role 'first', 'middle' or 'last'
    ('only' for one stage). The incoming plan is part of a stage's identity: its RECVs follow the sender's sends,
    and the stores they fill shape its own schedule and sends (a chain settles after a few stages)."""
    role = "only" if in_kind is None and out_kind is None else "first" if in_kind is None else \
        "last" if out_kind is None else "middle"
    return role, in_kind, out_kind, tuple(in_plan)


def _plan(transfer: dict | None) -> tuple:
    return tuple(tuple(b) for b in transfer.get("plan", ())) if transfer else ()


def _r0(program, k: int) -> int:
    if k == 0:
        return 0
    t = program.transfers[k - 1]
    return int(t["first_send"]) + int(t["lag"])


def stage_timings(program) -> list[StageTiming]:
    """Every stage of a compiled pipeline (`MultiProgram` with parallel "pipeline") as a `StageTiming`."""
    if program.parallel != "pipeline":
        raise CompileError(f"stage_timings needs a pipeline, not a {program.parallel}-parallel program")
    out = []
    n = program.chips
    for k in range(n):
        r0 = _r0(program, k)
        t_in = program.transfers[k - 1] if k > 0 else None
        t_out = program.transfers[k] if k + 1 < n else None
        after = tuple((at - r0, d) for at, d in program.barriers[k] if at >= r0)
        out.append(StageTiming(
            in_kind=t_in.get("kind", "local") if t_in else None,
            out_kind=t_out.get("kind", "local") if t_out else None,
            barriers=after, last_effect=program.last_effects[k] - r0,
            first_send=int(t_out["first_send"]) - r0 if t_out else None,
            lag=int(t_out["lag"]) if t_out else None, vectors=int(t_out["vectors"]) if t_out else 0,
            in_plan=_plan(t_in), out_plan=_plan(t_out),
            source={"stage": k, "nodes": program.partition["stages"][k]["nodes"]}))
    return out


def distinct_stages(timings: Sequence[StageTiming]) -> dict[tuple, StageTiming]:
    """The timings by `stage_key`; a CompileError if two stages with one key differ (they are not identical)."""
    found: dict[tuple, StageTiming] = {}
    for t in timings:
        if isinstance(t, Sequence) and not isinstance(t, StageTiming):  # several pipelines' stages
            for key, v in distinct_stages(t).items():
                if found.setdefault(key, v) != v:
                    raise CompileError(f"two pipelines' stages with role and links {key[:3]} differ: they are "
                                       f"not identical stages")
            continue
        seen = found.setdefault(t.key, t)
        if seen != t:
            raise CompileError(f"stages {seen.source.get('stage')} and {t.source.get('stage')} have the same role "
                               f"and links {t.key} but different schedules: they are not identical stages")
    return found


def _deskew_delay(at: int, resumed: int, rel: float, hac_period: int) -> int:
    """c2c.C2cJobs.deskew_delay: d for a barrier at `at` with the last realignment at `resumed`."""
    d = math.ceil(rel * (at - resumed)) + 3
    if d + 1 >= hac_period // 2:
        raise CompileError(f"a barrier at cycle {at} would need RUNTIME_DESKEW {d}, beyond what the HAC "
                           f"comparison can measure")
    return d


@dataclass
class Composition:
    """A pipeline's timing composed from its stages (`compose`)."""

    cycles: int                          # the system's cycles of a run (latest chip's end, nominal, rounded up)
    chip_cycles: list[int]               # every chip on its own clock
    r0: list[int]                        # per stage: the end of its first receive barrier (0 for stage 0)
    first_sends: list[int | None]
    barriers: list[list[tuple[int, int]]]
    last_effects: list[int]


def drift_rules(system: System, max_free: int | None = None) -> dict[str, Any]:
    """The drift tolerance numbers `clocks.transfer_timing` derives (rel, max_free) without a chip."""
    import json
    config = json.loads(system.info["config"])
    tol = tolerance_ppm(config) * 1e-6
    rel = 2 * tol / (1 - tol)
    chip = json.loads(system.info["chip_config"])
    hac = int(chip.get("hac_period", system.hac_period))
    if max_free is None:
        max_free = int((hac // 2 - 8) / rel) if rel > 0 else 10 ** 12
    return {"config": config, "tol": tol, "rel": rel, "max_free": max_free, "hac_period": system.hac_period}


def compose(stages: Sequence[StageTiming], system: System, max_free_cycles: int | None = None) -> Composition:
    """The cycles of the pipeline whose stage k has timing `stages[k]`, run on `system` (its chip k runs stage k:
    the pipeline's system, e.g. `MultiProgram.system`), by the compiler's own rules: stage k's first receive
    barrier ends at r0(k) = r0(k-1) + first_send(k-1) + lag(k-1), preceded by the idle realignments every
    `max_free / 2` cycles of a long wait; its delay is the drift since the previous realignment; the chips' own
    cycles follow from `clocks.predict_chip` with the system's drawn drifts and HAC offsets. Raises CompileError
    when a stage's link kinds do not match the system's links along the chain."""
    n = len(stages)
    if n < 1:
        raise CompileError("compose: no stages")
    if system.chips < n:
        raise CompileError(f"compose: {n} stages, the system has {system.chips} chips")
    rules = drift_rules(system, max_free_cycles)
    rel, max_free, hac = rules["rel"], rules["max_free"], rules["hac_period"]
    superlanes = int(json_chip(system).get("superlanes", 4))
    kinds = chain_kinds(system, n)
    for k, st in enumerate(stages):
        want_in = kinds[k - 1] if k > 0 else None
        want_out = kinds[k] if k + 1 < n else None
        if (st.in_kind, st.out_kind) != (want_in, want_out):
            raise CompileError(f"compose: stage {k}'s timing is for links {st.in_kind} -> {st.out_kind}, the "
                               f"system's chain has {want_in} -> {want_out}")
        if k > 0 and st.in_plan != stages[k - 1].out_plan:
            raise CompileError(f"compose: stage {k}'s timing was made for another incoming send plan than stage "
                               f"{k - 1} sends")
    r0s, sends, all_barriers, lasts = [], [], [], []
    prev_send = None
    for k, st in enumerate(stages):
        barriers: list[tuple[int, int]] = []
        if k == 0:
            r0 = 0
        else:
            r0 = prev_send + stages[k - 1].lag
            resumed = 0
            while r0 - resumed > max_free:  # a long idle wait: realign on the way (_schedule_stages)
                at = resumed + max_free // 2
                d = _deskew_delay(at, resumed, rel, hac)
                barriers.append((at, d))
                resumed = at + d
            d = _deskew_delay(r0, resumed, rel, hac)
            barriers.append((r0 - d, d))
        barriers += [(r0 + at, d) for at, d in st.barriers]
        r0s.append(r0)
        all_barriers.append(barriers)
        lasts.append(r0 + st.last_effect)
        prev_send = r0 + st.first_send if st.first_send is not None else None
        sends.append(prev_send)
    cl = clocks(system.info)
    per_chip = [predict_chip(cl[i], all_barriers[i], lasts[i], superlanes, hac) for i in range(n)]
    end = max(c * cl[i].period for i, c in enumerate(per_chip))
    return Composition(-(-end // TICKS), per_chip, r0s, sends, all_barriers, lasts)


def chain_kinds(system: System, n: int) -> list[str]:
    """The kind of the link chip k -> k+1 of the system, k = 0..n-2 (the first link joining them)."""
    first: dict[frozenset, str] = {}
    for lk in system.links:
        first.setdefault(frozenset((lk["chip_a"], lk["chip_b"])), lk.get("kind", "local"))
    out = []
    for k in range(n - 1):
        kind = first.get(frozenset((k, k + 1)))
        if kind is None:
            raise CompileError(f"compose: chips {k} and {k + 1} of the system are not linked")
        out.append(kind)
    return out


def compose_pipeline(distinct: dict[tuple, StageTiming] | Sequence, system: System, n: int | None = None,
                     max_free_cycles: int | None = None) -> Composition:
    """`compose` for an n-stage pipeline (default: every chip of `system`, the pipeline's system, e.g.
    `pipeline.pipeline_system(n, ...)[0]`) from its distinct stages only: `distinct` maps `stage_key`s to timings
    (`distinct_stages` of the stage timings of one or more compiled pipelines of the same stages, e.g. a 16-chip
    pipeline over two nodes holds every kind a route over nodes needs). Stage k is the timing whose key is its
    role, the system's link kinds around chip k and the send plan of the stage before; a missing one is a
    CompileError naming it."""
    if not isinstance(distinct, dict):
        distinct = distinct_stages(distinct)
    n = system.chips if n is None else n
    kinds = chain_kinds(system, n)
    chain: list[StageTiming] = []
    for k in range(n):
        key = stage_key(kinds[k - 1] if k > 0 else None, kinds[k] if k + 1 < n else None,
                        chain[-1].out_plan if chain else ())
        if key not in distinct:
            raise CompileError(f"compose: no stage timing for stage {k} of {n} ({key[0]}, links {key[1]} -> "
                               f"{key[2]}, after the stage before's send plan): compile a pipeline that has it")
        chain.append(distinct[key])
    return compose(chain, system, max_free_cycles)


def hop_cycles(system: System | dict, link_kind: str, vectors: int, lead: int = 0, chip=None) -> int:
    """Cycles of one pipeline hop by the pipeline compiler's rules (`_schedule_stages`), from the sender's first
    SEND to the end of the receiver's write of the last vector: the sends, one per `min_send_interval_cycles` I,
    the lag (the link kind's latency bound with the drift of both chips' free runs, the sender's counted from its
    realignment `lead` cycles before its first SEND), then the RECV -> stream -> WRITE of the last vector. One
    chunk: `vectors` at most what the receive buffer and the drift allow in one chunk (about 29,800 at 25 ppm);
    longer transfers add a realignment per chunk (a CompileError says so). `system`: a System or its
    configuration."""
    from lpusim.chip import Chip
    system = system if isinstance(system, System) else System.load(system)
    if vectors < 1:
        raise CompileError(f"hop_cycles: {vectors} vectors, at least 1")
    cfg = Chip.load(chip if chip is not None else json_chip(system))
    rules = drift_rules(system)
    config, tol, rel = rules["config"], rules["tol"], rules["rel"]
    interval = system.min_send_interval_cycles
    bound = latency_bound(config, {"kind": link_kind, "chip_a": -1, "link_a": -1, "chip_b": -1, "link_b": -1,
                                   "latency_cycles": 0.0})
    spread = float(config.get("latency_spread_cycles", 3.0))
    depth = cfg.c2c_rx_buffer_vectors
    fixed = bound * 2 * tol + 2 * spread * (1 - tol) + 7
    f_max = (depth * interval - fixed) / (2 * rel) if rel > 0 else float("inf")
    chunk = max(1, int(min(f_max / 2 * 0.8, rules["max_free"] / 2) // interval))
    if vectors > chunk:
        raise CompileError(f"hop_cycles: {vectors:,} vectors take {math.ceil(vectors / chunk)} chunks of at most "
                           f"{chunk:,} over a {link_kind} link (one chunk is modelled)")
    span = (vectors - 1) * interval
    free = (span + lead) + span
    lag = math.ceil(bound * (1 + tol) + 3 + rel * free)
    return span + lag + cfg.c2c_recv_latency + cfg.num_positions + cfg.mem_write_latency


def json_chip(system: System) -> dict[str, Any]:
    import json
    return json.loads(system.info["chip_config"])


def _kind(system: System, a: int, b: int) -> str:
    for lk in system.links:
        if {lk["chip_a"], lk["chip_b"]} == {a, b}:
            return lk.get("kind", "local")
    raise CompileError(f"compose: chips {a} and {b} of the system are not linked")
