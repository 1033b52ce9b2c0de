"""Pipeline parallelism over N chips: `lpusim.compile(model, chips=N, parallel="pipeline")`.

Design (docs/multichip.md has the long form):
* **Stages** (`multichip/partition.py`): the IR node list cut into N consecutive stages balanced by predicted
  cycles (the single-chip schedule's per-node frontier), every stage fitting one chip's SRAM; a model too large for
  one chip goes to the fewest chips that hold it (`chips="auto"`). Stage k runs on chip k: of an 8-chip node
  (fully connected, so chip k talks to chip k+1 over their direct link) up to 8 chips; beyond, of the sub-system
  made of a route's chips (`pipeline_system`, `multichip/topology.py`: a node's chips over local links, then one
  global link to the next node), chip k being route[k] of the full system. A matmul larger than a chip is first split
  into column blocks, its reader into row blocks with an f32 partial sum (`partition.split_oversized`); a stage the
  allocator cannot place is cut short where it failed and the cuts are searched again (`StageOutOfSram`).
* **Transfers** (`compiler/schedule_c2c.py`): each tensor live across cut k travels chip k -> chip k+1 (a chain:
  tensors needed further on are forwarded), in the formats later stages read, one vector per row per byte plane,
  one SEND per `min_send_interval_cycles`. The receiver's RECV of vector j is at the sender's send cycle plus a
  constant lag: the link's worst latency (mean + spread), the clock-domain crossing, and the worst timing error
  both chips may have accumulated (below). Buffer occupancy is checked against `c2c_rx_buffer_vectors`; a transfer
  too long for that (or for the drift to stay measurable) goes in chunks, both chips realigning before each.
* **Time and sync.** All chips start at global time 0 (docs/system.md section 2) and every chip's program counts
  cycles from there; the SAC starts equal to the HAC, so `RUNTIME_DESKEW d` realigns a chip to the root chip's
  time measured from that common start. Each stage has a barrier (every queue issues `RUNTIME_DESKEW d` while the
  chip is quiescent) just before its first RECV and just before its first SEND, so at a transfer each chip's
  error is at most 2 cycles (realignment rounding) plus `2 * drift_ppm` of the cycles since its barrier; `d` is
  the worst drift the chip can have accumulated since its previous alignment plus 3 (the stall is `d - delta`,
  always >= 1). No leading DESKEW: it would add the HAC alignment error, and with the root's HAC phase within that
  error of an epoch boundary two chips would wait for different epochs and start 252 cycles apart.
* **Cycles.** A chip's program cycles are exact on the root's time line; its own cycle count is predicted by
  replaying its barriers through the HAC/SAC rules with the system's drawn drifts and HAC offsets
  (`predict_chip`). `cycles` of a run is the system's: the latest chip's end in nominal cycles, rounded up (the
  last stage's last write is normally that end). Both it and every chip's own count must equal the prediction.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

from lpusim import _lpusim
from lpusim.chip import Chip
from lpusim.compiler import PRECISIONS, build_graph, ir, sram_needed
from lpusim.compiler.schedule.c2c import StageScheduler
from lpusim.compiler.schedule.costs import node_costs, static_cost
from lpusim.compiler.schedule.sxm import needs_sxm_slices
from lpusim.errors import CompileError, OutOfSram
from lpusim.multichip.clocks import latency_bound, tolerance_ppm, transfer_timing
from lpusim.multichip.partition import Partitioner, split_oversized, vectors
from lpusim.multichip.program import MultiProgram
from lpusim.multichip.topology import NODE_CHIPS, pipeline_route, sub_system, system_config
from lpusim.multichip.tensor import compile_tensor, split_nodes, stage_program
from lpusim.runtime.program import compile_program
from lpusim.system import System

PARALLEL = ("auto", "pipeline", "tensor")
MAX_PLACEMENT_RETRIES = 24  # stages shortened after the allocator failed to place them, per compile
TENSOR_FITS = ("parallel='tensor' replicates everything but the split matmuls: the model must fit one chip (use "
               "'pipeline', which also splits a node larger than a chip by columns)")


def _system_for(chips: int, chip: Chip, system) -> System:
    if isinstance(system, System):
        return system
    config: dict[str, Any] = system_config(chips, chip.config) if chips > NODE_CHIPS else \
        {"topology": "node", "chips": chips, "chip": chip.config}
    if chips > NODE_CHIPS:
        config.pop("seed")  # the default seed unless the configuration gives one
    if isinstance(system, dict):
        config.update(system)
    elif system is not None:
        config.update(System.load(system).config)
    return System.load(config)


def pipeline_system(chips: int, chip: Chip, system) -> tuple[System, list[int] | None]:
    """The system an n-stage pipeline runs on, and its route in the full system (None: chips 0..n-1 of `system`).

    Up to 8 chips on a system whose chips 0..n-1 are linked in a chain (a node): that system, stage k on chip k.
    Otherwise (more than 8 chips; default: `topology.system_for_chips`, the smallest published topology holding
    them) the route's chips renumbered 0..n-1 with every link among them (`topology.sub_system`), so stage k runs
    on chip k of the sub-system, route[k] of the full one."""
    full = _system_for(chips, chip, system)
    if full.chips < chips:
        raise CompileError(f"the system has {full.chips} chips, the pipeline needs {chips}")
    route = pipeline_route(full, chips)
    if route == list(range(chips)) and chips <= NODE_CHIPS:
        return full, None
    return sub_system(full, route), route


def compile_multichip(model, chips, chip=None, precision: str = "fp16", shapes=None, dump=None,
                     calibration=None, parallel: str = "pipeline", system=None, costs: str = "schedule",
                     max_free_cycles: int | None = None, tensor_rows: bool | None = None, cache=None, cuts=None):
    """A pipeline-parallel MultiProgram (or a single-chip Program when one chip is chosen).

    `chips`: a number, or "auto" for the fewest chips whose SRAM holds the model; `system`: a system configuration
    (dict, JSON file, or System; default an N-chip node with the default drift); its `drift_ppm` is the tolerance the
    program is built for. `costs="schedule"` balances stages by a single-chip schedule's per-node cycles (when the
    model fits one chip), `"static"` by an estimate. `max_free_cycles`: the longest a chip runs between
    realignments (default: the longest whose drift RUNTIME_DESKEW can still measure). `tensor_rows` (tensor
    parallelism): True splits the matmul readers of a column split by rows (f32 partial sums reduced over the
    links); False keeps every chip's arithmetic one chip's (column splits and all-gathers only: bit-identical
    outputs); None (default) compiles the row-split plan and the column-only one and keeps the faster, both
    free to split a part's K range over idle planes. `cuts` (pipeline): where stages 1..N-1 start instead of the
    balanced search, N-1 IR node indices or names (a name: the first IR node after the previous cut whose name is
    it or starts with it, e.g. "layer5." for a decoder's sixth layer), so that stages hold whole layers (what
    `multichip.compose` composes); the stages must still fit SRAM."""
    if parallel not in PARALLEL:
        raise CompileError(f"parallel='{parallel}': choose one of {', '.join(PARALLEL)}")
    if precision not in PRECISIONS:
        raise CompileError(f"precision '{precision}' is not supported yet (supported: {', '.join(PRECISIONS)})")
    if precision != "fp16" and chips != 1:
        raise CompileError(f"precision '{precision}' on several chips is not supported yet (fp16 only)")
    start = time.perf_counter()
    cfg = Chip.load(chip)
    proto, graph = build_graph(model, precision, shapes, dump, calibration)
    one_chip = sram_needed(graph, cfg)
    probe = _system_for(2, cfg, system if not isinstance(system, System) else None)
    interval = probe.min_send_interval_cycles
    part = Partitioner(graph, cfg, interval)
    part.forbidden = cache_spans(graph, cache)
    fewest = 1 if one_chip <= cfg.sram_bytes else part.fewest_chips()
    column_splits: list[dict] = []
    if fewest is None:  # a node larger than a chip: split it by output columns, its readers by rows
        if parallel == "tensor":
            raise CompileError(TENSOR_FITS)
        graph, column_splits = split_oversized(graph, cfg, interval)
        part = Partitioner(graph, cfg, interval)
        part.forbidden = cache_spans(graph, cache)
        fewest = part.fewest_chips()
    if fewest is None:
        raise CompileError(f"one IR node alone needs more SRAM than one {cfg.name} chip has "
                           f"({cfg.sram_bytes:,} bytes): pipeline stages cannot split it")
    auto = chips in ("auto", None, 0)
    if auto:
        n = fewest
        reason = (f"the model needs {one_chip:,} bytes of SRAM; one {cfg.name} chip has {cfg.sram_bytes:,}"
                  + (f": {n} chips are the fewest whose stages each fit (a stage filled to at most "
                     f"{Partitioner.HEADROOM:.0%} of a chip's SRAM)" if n > 1 else ": one chip holds it"))
        for sp in column_splits:
            reason += (f"; {sp['onnx_op']} node '{sp['node']}' alone is larger than a chip: split into "
                       f"{sp['parts']} column blocks")
    else:
        n = int(chips)
        if n < 1:
            raise CompileError(f"chips={chips}: at least one chip is needed")
        if n < fewest:
            raise CompileError(f"the model needs {one_chip:,} bytes of SRAM and one {cfg.name} chip has "
                               f"{cfg.sram_bytes:,}: it takes at least {fewest} chips (asked for {n})")
        reason = f"{n} chips requested"
    if cache and parallel == "tensor":
        raise CompileError("a KV cache kept on the chips needs parallel='pipeline' (tensor splits are not built "
                           "for it)")
    if cache:
        parallel = "pipeline"
    placement_failed = None  # chips="auto": the one-chip placement ran out of SRAM, so 2 chips are tried
    if n == 1:
        try:
            program = compile_program(proto, chip=cfg, precision=precision, shapes=shapes, calibration=calibration,
                                      cache=cache)
        except OutOfSram as e:
            if not auto or precision != "fp16":
                raise
            placement_failed = str(e)
            n = 2
            reason = (f"the model needs {one_chip:,} bytes of SRAM by the estimate, which one {cfg.name} chip "
                      f"holds; placement on 1 chip ran {getattr(e, 'cause', e)}; 2 chips")
        else:
            program.partition = {"chips": 1, "parallel": "none", "reason": reason, "sram_needed": one_chip}
            return program
    if parallel == "tensor" and n > NODE_CHIPS:
        raise CompileError(f"chips={n}: tensor parallelism spans one {NODE_CHIPS}-chip node (at most "
                           f"{NODE_CHIPS} chips; pipelines take more)")
    if parallel == "auto" and n > NODE_CHIPS:
        parallel = "pipeline"
    sysm, route = pipeline_system(n, cfg, system)
    cfg = Chip.load(json.loads(sysm.info["chip_config"]))
    if parallel == "tensor":
        if one_chip > cfg.sram_bytes:
            raise CompileError(TENSOR_FITS)
        return _compile_tensor(graph, n, cfg, sysm, interval, reason, one_chip, start, max_free_cycles,
                               tensor_rows)
    tensor, tensor_error = None, None
    if parallel == "auto" and one_chip <= cfg.sram_bytes and not placement_failed:
        if split_nodes(graph, n, cfg.lanes):  # both may be possible: compile both, keep the faster
            try:
                tensor = _compile_tensor(graph, n, cfg, sysm, interval, reason, one_chip, start,
                                         max_free_cycles, tensor_rows)
            except CompileError as e:  # the pipeline may still work
                tensor_error = str(e)
    if n > len(graph.nodes):  # no pipeline of n stages
        if tensor is not None:
            tensor.partition["auto"] = {"chosen": "tensor", "pipeline_error": f"only {len(graph.nodes)} IR nodes"}
            return tensor
        raise CompileError(f"chips={n}: the model has only {len(graph.nodes)} IR nodes to split into stages"
                           + (f" (and the tensor split failed: {tensor_error})" if tensor_error else ""))
    given = _resolve_cuts(graph, cuts, n, part.forbidden) if cuts is not None else None
    node_cost = node_costs(graph, cfg) if costs == "schedule" and one_chip <= cfg.sram_bytes and \
        not placement_failed and given is None else None
    balance = "cuts given" if given is not None else "single-chip schedule" if node_cost else "static estimate"
    if node_cost is None:
        node_cost = [static_cost(graph, node, cfg) for node in graph.nodes]
    check_sram = one_chip > cfg.sram_bytes or bool(placement_failed)
    repairs: list[dict] = []
    while True:  # cut, schedule; a stage the allocator cannot place is shortened and the cuts searched again
        if given is not None:
            bounds = list(zip([0] + given, given + [len(graph.nodes)]))
            for i, j in bounds:
                if check_sram and not part.fits(i, j):
                    raise CompileError(f"cuts: the stage of IR nodes {i}..{j} needs {part.sram(i, j):,} bytes of "
                                       f"SRAM, more than {Partitioner.HEADROOM:.0%} of a chip's "
                                       f"{cfg.sram_bytes:,}")
        else:
            bounds = part.split(n, node_cost, check_sram=check_sram)
        if not bounds and auto and repairs and n < len(graph.nodes):
            n += 1  # the placement limits leave no split into n stages: one more chip
            sysm, route = pipeline_system(n, cfg, system)
            continue
        if not bounds:
            raise CompileError(f"no split of the model into {n} stages fits each stage in one chip's SRAM"
                               + (f" (after {len(repairs)} placement retries)" if repairs else ""))
        stages = part.stages(bounds, node_cost)
        try:
            programs, barriers, last_effects, transfers = _schedule_stages(graph, stages, cfg, sysm, interval,
                                                                           max_free_cycles, cache)
            break
        except StageOutOfSram as e:
            i, j = bounds[e.stage]
            if given is not None:
                raise CompileError(f"cuts: stage {e.stage} (IR nodes {i}..{j}) does not place in SRAM: "
                                   f"{e.cause}") from None
            if len(repairs) >= MAX_PLACEMENT_RETRIES:
                raise CompileError(f"stage {e.stage} (IR nodes {i}..{j}) does not place in SRAM after "
                                   f"{len(repairs)} retries: {e.cause}") from None
            part.limit(i, i + max(e.node, 0))
            check_sram = True
            repairs.append({"stage": e.stage, "nodes": [i, j], "failed_at_node": i + e.node, "error": e.cause})
    binaries = [_lpusim.assemble(p.assembly) for p in programs]
    partition = {
        "chips": n, "parallel": "pipeline", "reason": reason, "sram_needed": one_chip, "balance": balance,
        "stages": [{"chip": s.index, "nodes": [bounds[s.index][0], bounds[s.index][1]],
                    "first": s.nodes[0].name, "last": s.nodes[-1].name, "predicted_node_cycles": s.cost,
                    "sram_bytes": programs[s.index].sram_bytes, "sram_estimate": s.sram_bytes,
                    "receives": s.receives, "sends": s.sends,
                    "program_cycles": programs[s.index].predicted_cycles} for s in stages],
        "transfers": transfers,
    }
    if route is not None:  # stage k on chip k of the route's sub-system: chip route[k] of the full system
        partition["route"] = route
        partition["links"] = [t["kind"] for t in transfers]
    if placement_failed:
        partition["one_chip_placement_error"] = placement_failed
    if repairs:
        partition["placement_retries"] = repairs
        if auto and n > fewest:
            partition["reason"] += (f"; {n} chips, not {fewest}: the allocator could not place a stage the SRAM "
                                    f"estimate fits (placement_retries)")
    if column_splits:
        partition["column_splits"] = column_splits
    mp = MultiProgram(cfg, n, "pipeline", sysm, programs, barriers, last_effects, tolerance_ppm(sysm.config),
                      transfers, partition, dict(graph.onnx_inputs), list(graph.output_names),
                      time.perf_counter() - start, binaries)
    if tensor_error is not None:
        mp.partition["auto"] = {"chosen": "pipeline", "tensor_error": tensor_error}
    if tensor is not None:
        cycles = {"pipeline": mp.predicted_cycles, "tensor": tensor.predicted_cycles}
        best = tensor if cycles["tensor"] < cycles["pipeline"] else mp
        best.partition["auto"] = {"predicted_cycles": cycles, "chosen": best.parallel}
        best.compile_s = time.perf_counter() - start
        return best
    return mp


def _resolve_cuts(graph: ir.Graph, cuts, n: int, forbidden: set[int]) -> list[int]:
    """`cuts` (N-1 IR node indices or names) as the IR node indices where stages 1..N-1 start."""
    cuts = list(cuts)
    if len(cuts) != n - 1:
        raise CompileError(f"cuts: {len(cuts)} given, a pipeline of {n} stages needs {n - 1}")
    out, prev = [], 0
    names = [node.name for node in graph.nodes]
    for c in cuts:
        if isinstance(c, str):
            k = next((k for k in range(prev + 1, len(names)) if names[k] == c), None)
            if k is None:
                k = next((k for k in range(prev + 1, len(names)) if names[k].startswith(c)), None)
            if k is None:
                raise CompileError(f"cuts: no IR node named '{c}' (or starting so) after IR node {prev}")
            c = k
        if isinstance(c, bool) or not isinstance(c, int) or not prev < c < len(names):
            raise CompileError(f"cuts: {c!r} is not an IR node index in {prev + 1}..{len(names) - 1} (cuts must "
                               f"increase; the model has {len(names)} IR nodes)")
        if c in forbidden:
            raise CompileError(f"cuts: IR node {c} ('{names[c]}') would part a KV-cache region's past from its "
                               f"present")
        out.append(c)
        prev = c
    return out


def cache_spans(graph: ir.Graph, cache) -> set[int]:
    """Cut positions that would part a KV-cache region's past from its present: the chip that reads a layer's past
    (the first node reading it) must also write its present, where the region is kept."""
    if not cache:
        return set()
    first_read: dict[str, int] = {}
    for k, node in enumerate(graph.nodes):
        for name in ir.node_inputs(node):
            first_read.setdefault(name, k)
    onnx_of = {name: graph.tensors[name].onnx_input for name in graph.inputs}
    writer = {node.output: k for k, node in enumerate(graph.nodes)}
    out_ir = dict(zip(graph.output_names, graph.outputs))
    spans = set()
    for region in cache:
        end = writer.get(out_ir.get(region.present))
        starts = [first_read[n] for n, o in onnx_of.items() if o == region.past and n in first_read]
        if end is not None and starts:
            spans.update(range(min(starts) + 1, end + 1))
    return spans


class StageOutOfSram(OutOfSram):
    """The allocator found no room in stage `stage` while placing its node `node` (its index in the stage; -1:
    the tensors it receives); the partitioner then limits that stage to the nodes before it."""

    def __init__(self, stage: int, node: int, cause: str):
        super().__init__(f"stage {stage}, node {node}: {cause}")
        self.stage, self.node, self.cause = stage, node, cause


def _compile_tensor(graph, n, cfg, sysm, interval, reason, one_chip, start, max_free, rows=None):
    """The tensor-parallel MultiProgram for `tensor_rows` = `rows` (compile_multichip); with None the faster of
    the row-split and column-only plans (partition.row_splits says which was kept and both predictions)."""
    args = (graph, n, cfg, sysm, interval, reason, one_chip, start, max_free)
    if rows is not None:
        return _tensor_program(*args, rows=rows, kplanes=rows)
    found, errors = {}, []
    try:
        found["row splits"] = _tensor_program(*args, rows=True, kplanes=True)
    except CompileError as e:
        errors.append(e)
    if not found or any(sp["split"] == "rows" for sp in found["row splits"].partition["splits"]):
        try:
            found["columns only"] = _tensor_program(*args, rows=False, kplanes=True)
        except CompileError as e:
            errors.append(e)
    if not found:
        raise errors[0]
    best = min(found.values(), key=lambda p: p.predicted_cycles)
    if len(found) == 2:
        best.partition["row_splits"] = {"predicted_cycles": {k: p.predicted_cycles for k, p in found.items()},
                                        "chosen": next(k for k, p in found.items() if p is best)}
    best.compile_s = time.perf_counter() - start
    return best


def _tensor_program(graph, n, cfg, sysm, interval, reason, one_chip, start, max_free, rows, kplanes):
    ctx = transfer_timing(sysm, cfg, interval, max_free)
    programs, barriers, last_effects, plan, log = compile_tensor(graph, n, cfg, sysm, interval, ctx, rows, kplanes)
    binaries = [_lpusim.assemble(p.assembly) for p in programs]
    partition = {"chips": n, "parallel": "tensor", "reason": reason, "sram_needed": one_chip, "splits": plan.splits,
                 "exact": plan.exact, "exchanges": log, "program_cycles": [p.predicted_cycles for p in programs]}
    if plan.output_blocks:
        partition["output_blocks"] = plan.output_blocks
    return MultiProgram(cfg, n, "tensor", sysm, programs, barriers, last_effects, ctx["tol"] * 1e6, log,
                        partition, dict(graph.onnx_inputs), list(graph.output_names), time.perf_counter() - start,
                        binaries, plan.output_blocks)


def _schedule_stages(graph: ir.Graph, stages, chip: Chip, system: System, interval: int,
                     max_free: int | None = None, cache=None):
    timing = transfer_timing(system, chip, interval, max_free)
    config, tol, rel, max_free = timing["config"], timing["tol"], timing["rel"], timing["max_free"]
    depth = chip.c2c_rx_buffer_vectors
    programs, barriers, last_effects, transfers = [], [], [], []
    incoming = None  # (plan, receiver link, lag)
    for st in stages:
        k = st.index
        sub = ir.Graph(graph.tensors, st.nodes, st.inputs, st.outputs,
                       [graph.output_names[graph.outputs.index(o)] for o in st.outputs],
                       {n: s for n, s in graph.onnx_inputs.items()
                        if any(graph.tensors[i].onnx_input == n for i in st.inputs)},
                       graph.origin, graph.magnitudes, graph.derived)
        sub.input_kinds = {n: k for n, k in graph.input_kinds.items() if n in sub.onnx_inputs}
        regions = [r for r in cache or () if r.present in sub.output_names]
        sched = StageScheduler(chip, sub, keep=set(st.sends), rel_drift=rel, max_free=max_free, cache=regions)
        if needs_sxm_slices(st.nodes):
            sched.reserve_sxm_slices()
        try:
            if incoming is not None:
                plans, link, lag = incoming
                for plan in plans:  # one barrier before each chunk's first RECV
                    r0 = plan[0][5] + lag
                    while r0 - sched.resumed() > max_free:  # a long idle wait: realign on the way
                        at = sched.resumed() + max_free // 2
                        sched.barrier(at, sched.deskew_delay(at, rel))
                    d = sched.deskew_delay(r0, rel)
                    sched.barrier(r0 - d, d)
                    if sched.barriers[-1][0] != r0 - d:
                        raise CompileError(f"internal: stage {k}'s receive barrier at {r0 - d} falls before the "
                                           f"previous chunk's last write ({sched.barriers[-1][0]})")
                    sched.schedule_receives(plan, link, interval, lag)
            result = sched.run()
        except OutOfSram as e:
            raise StageOutOfSram(k, sched.node_index, str(e)) from None
        incoming = None
        if k + 1 < len(stages):
            out_link, in_link, _ = system.link(k, k + 1)
            link_info = next(lk for lk in system.links if {lk["chip_a"], lk["chip_b"]} == {k, k + 1})
            bound = latency_bound(config, link_info)
            spread = float(config.get("latency_spread_cycles", 3.0))
            # A chunk is sent and received between realignments of both chips: its free run F (the sender's since
            # its barrier plus the receiver's, about twice the chunk) must keep the early arrivals within the
            # receive buffer and the drift measurable; the longest chunk sets one lag for all of them.
            fixed = bound * 2 * tol + 2 * spread * (1 - tol) + 7
            f_max = (depth * interval - fixed) / (2 * rel) if rel > 0 else float("inf")
            chunk = max(1, int(min(f_max / 2 * 0.8, max_free / 2) // interval))
            plans, free, lower = [], 0, 0
            gap = chip.c2c_recv_latency + chip.num_positions + chip.mem_write_latency + 8
            for bursts in sched.transfer_chunks(st.sends, chunk):
                at = max(sched.frontier(), lower)
                resume = sched.barrier(at, sched.deskew_delay(at, rel))
                plan = sched.schedule_sends(st.sends, out_link, interval, resume, bursts=bursts)
                first, last = plan[0][5], plan[-1][5] + (plan[-1][4] - 1) * interval
                free = max(free, (last - resume) + (last - first))
                plans.append(plan)
                # the next chunk starts once the receiver has written this one and realigned (its barrier delay
                # grows with the cycles since its previous one: rel * (chunk + gap))
                lower = last + gap + math.ceil(rel * (last - first + gap + 2 * interval)) + 4
            first = plans[0][0][5]
            lag = math.ceil(bound * (1 + tol) + 3 + rel * free)
            # vectors waiting in the receive buffer when a RECV takes one: arrivals up to this much after its own
            early = lag + 2 + rel * free - (bound - 2 * spread) * (1 - tol)
            waiting = int(early // interval) + 1
            if waiting > depth:
                raise CompileError(f"the transfer chip {k} -> {k + 1} could hold {waiting} vectors in a receive "
                                   f"buffer of {depth}")
            nvec = vectors(graph, st.sends, chip.lanes)
            transfers.append({"from_chip": k, "to_chip": k + 1, "link": out_link, "peer_link": in_link,
                              "kind": link_info.get("kind", "local"),
                              "tensors": st.sends, "vectors": nvec, "bytes": nvec * chip.lanes,
                              "first_send": first, "last_send": last, "lag": lag, "latency_bound": bound,
                              "chunks": len(plans),
                              # the send plan's shape: per burst (first send - the transfer's first, vectors)
                              "plan": [[b[5] - first, b[4]] for plan in plans for b in plan]})
            incoming = (plans, in_link, lag)
        prog, last_effect = stage_program(chip, sched, result, f"pipeline stage {k} of {len(stages)}", sub,
                                          dict(sub.onnx_inputs), list(sub.output_names))
        programs.append(prog)
        barriers.append(list(sched.barriers))
        last_effects.append(last_effect)
    return programs, barriers, last_effects, transfers
