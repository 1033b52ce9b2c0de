"""Where a one-chip program's time goes (`lpusim run --explain`): MXM and MAC utilisation, every cycle of the
schedule given to one cause, and the cycles and MXM work of each ONNX node.

Everything is read from the compiled schedule, which is exactly what the simulator executes (a run checks that
its cycle count equals the compiler's prediction), so the numbers are exact and the same on every run. The
definitions (docs/results.md, "Where the time goes: lpusim run --explain"):

* An instruction *occupies* its unit for one cycle per issue, except an ABC, which holds its plane
  `cycles_per_vector` cycles (4 at fp16, 1 at int8), as the simulator counts plane busy time.
* `cycles_by_cause`: each cycle goes to the first cause in `CAUSES` that occupies any unit in it, `waiting` when
  none does (results in flight: MXM, VXM, install and stream latencies, and the final drain). A cause earlier in
  the list is the scarcer resource: a cycle in which a plane computes is MXM time however much else overlaps it;
  MEM reads and writes go with nearly every job, so they only claim the cycles nothing else uses. The causes sum
  to the cycles exactly.
* the *owner* of a cycle: among the instructions of its cause, the one from the earliest graph node (the
  scheduler places nodes in program order, so the oldest work still in flight is what later work waits behind).
  Waiting cycles have no owner.
* MXM work: plane-busy cycles (ABC vectors x cycles per vector); `mxm_utilization` = that / (planes x cycles),
  equal to the simulator's `utilization["mxm"]`; `planes_computing` = that / the cycles any plane computes in.
* model MACs: output rows x K x N of each weight matrix of the model's own matmuls and convolutions (a
  convolution's kernel taps are terms of their own; a grouped convolution's zero blocks are counted), not of the
  compiler's helper matmuls (lane sums, maxima, moves). `mac_utilization` = sum over those nodes of MACs x cycles
  per vector at the node's precision / (planes x lanes x lanes x cycles): the fraction of the MXM's peak at each
  node's own precision (409,600 MACs a cycle at int8 on tsp_v1, a quarter of it at fp16).
  `mxm_array_fill` = the same MACs over the model matmuls' own plane-busy cycles x lanes x lanes.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from collections import defaultdict

import numpy as np

from lpusim.compiler.passes import is_int8

# in priority order (see the module docstring); a cycle none of them occupies is "waiting"
CAUSES = ("mxm_compute", "weight_load", "vxm", "sxm", "c2c", "mxm_readout", "mem", "other")
WAITING = "waiting"
_MXM_QUEUES = {"ABC": "mxm_compute", "LW": "weight_load", "IW": "weight_load", "ACC": "mxm_readout"}
_UNITS = {"VXM": "vxm", "SXM": "sxm", "C2C": "c2c", "MEM": "mem"}
# the ONNX ops whose own arithmetic is a matmul: the "model MACs"
CONTRACTIONS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "MatMulInteger", "ConvInteger",
                          "QLinearMatMul", "QLinearConv"})
SETUP = "(before the first node)"


def cause_of(queue: str) -> str:
    unit, _, rest = queue.partition(".")
    if unit == "MXM":
        return _MXM_QUEUES.get(rest.rsplit(".", 1)[-1], "other")
    return _UNITS.get(unit, "other")


def base_op(onnx_op: str) -> str:
    """The ONNX op a (possibly fused: "MatMul+Add") IR node began as."""
    return re.split(r"[+(]", onnx_op, maxsplit=1)[0]


def purpose_of(node) -> str:
    """Why a matmul node runs: the compiler's tag with its op ("lane max/min (Softmax)"), or the model's own."""
    op = base_op(node.onnx_op)
    if node.purpose:
        return f"{node.purpose} ({op})"
    return "model matmuls" if op in CONTRACTIONS else f"{op} on the MXM"


def model_macs(graph, node) -> int:
    out = graph.tensors[node.output]
    return sum(out.rows * graph.tensors[w].rows * graph.tensors[w].cols for _, w in node.terms)


def explain(program, top: int = 10) -> dict:
    """The breakdown of a compiled one-chip `Program` (runtime/program.py): see the module docstring."""
    sched, graph, chip = program._schedule, program._graph, program.chip
    cycles, nodes = program.predicted_cycles, graph.nodes
    n_owners = len(nodes) + 1  # the last: issues placed before the first node
    marks = list(sched.node_marks)
    ranks = {c: r for r, c in enumerate(CAUSES)}
    # per cycle, rank * n_owners + owner; painted from the largest key down so the smallest covering key stays
    key_of = np.full(cycles, len(CAUSES) * n_owners, dtype=np.int64)
    busy = np.zeros((len(CAUSES), cycles), dtype=bool)
    plane_cycles, vectors = np.zeros(n_owners, np.int64), np.zeros(n_owners, np.int64)
    spans = []
    for i, iss in enumerate(sched.issues):
        owner = bisect_right(marks, i) - 1
        owner = owner if owner >= 0 else len(nodes)
        cause = cause_of(iss.queue)
        width = 1
        if cause == "mxm_compute":
            width = chip.cycles_per_vector(iss.text.split()[0].split(".")[1])
            plane_cycles[owner] += iss.n * width
            vectors[owner] += iss.n
        spans.append((ranks[cause] * n_owners + owner, iss.cycle, iss.n, iss.d, width))
    spans.sort(reverse=True)
    for key, start, n, d, width in spans:
        rank = key // n_owners
        if d <= width or n == 1:  # one run of cycles
            end = min(cycles, start + (n - 1) * d + width)
            key_of[start:end] = key
            busy[rank, start:end] = True
        else:
            at = (start + d * np.arange(n))[:, None] + np.arange(width)
            at = at.ravel()[at.ravel() < cycles]
            key_of[at] = key
            busy[rank, at] = True
    counts = np.bincount(key_of, minlength=(len(CAUSES) + 1) * n_owners).reshape(len(CAUSES) + 1, n_owners)
    by_cause = {c: int(counts[r].sum()) for r, c in enumerate(CAUSES)}
    by_cause[WAITING] = int(counts[len(CAUSES)].sum())

    work = defaultdict(lambda: [0, 0])  # purpose -> [plane cycles, vectors]
    macs = mac_cycles = model_plane = 0
    for i, node in enumerate(nodes):
        if node.kind != "matmul" or not vectors[i]:
            continue
        p = purpose_of(node)
        work[p][0] += int(plane_cycles[i])
        work[p][1] += int(vectors[i])
        if p == "model matmuls":
            m = model_macs(graph, node)
            macs += m
            mac_cycles += m * chip.cycles_per_vector("i8" if is_int8(graph, node) else "f16")
            model_plane += int(plane_cycles[i])
    total_work = int(plane_cycles.sum())
    lanes2 = chip.lanes * chip.lanes
    return {
        "cycles": cycles,
        "mxm_utilization": total_work / (chip.mxm_planes * cycles) if cycles else 0.0,
        "mac_utilization": mac_cycles / (chip.mxm_planes * lanes2 * cycles) if cycles else 0.0,
        "mxm_array_fill": mac_cycles / (lanes2 * model_plane) if model_plane else 0.0,
        # how many planes work at once in the cycles any does: 1 means one plane at a time
        "planes_computing": total_work / int(busy[0].sum()) if busy[0].any() else 0.0,
        "model_macs": macs,
        "mxm_plane_cycles": total_work,
        "cycles_by_cause": by_cause,
        "cycles_busy": {c: int(busy[r].sum()) for r, c in enumerate(CAUSES)},  # overlapping: no sum
        "mxm_work_by_purpose": {p: {"plane_cycles": w[0], "vectors": w[1],
                                    "share": w[0] / total_work if total_work else 0.0}
                                for p, w in sorted(work.items(), key=lambda kv: (-kv[1][0], kv[0]))},
        "top_nodes": _by_onnx_node(nodes, counts, plane_cycles, vectors, cycles)[:top],
    }


def _by_onnx_node(nodes, counts, plane_cycles, vectors, cycles) -> list[dict]:
    """Per ONNX node (the IR nodes lowered from it share its name): the cycles it owns, by cause, and its MXM
    work by purpose; most cycles first."""
    rows: dict[str, dict] = {}
    for i in range(len(nodes) + 1):
        node = nodes[i] if i < len(nodes) else None
        name = node.name if node is not None else SETUP
        row = rows.setdefault(name, {"name": name, "ops": [], "cycles": 0, "cycles_by_cause": {},
                                     "mxm_vectors": 0, "mxm_plane_cycles": 0, "mxm_work_by_purpose": {}})
        op = re.sub(r"\(tap \d+\)", "(taps)", node.onnx_op) if node is not None else None  # one per pool
        if op is not None and op not in row["ops"]:
            row["ops"].append(op)
        for r, c in enumerate(CAUSES):
            if counts[r, i]:
                row["cycles_by_cause"][c] = row["cycles_by_cause"].get(c, 0) + int(counts[r, i])
                row["cycles"] += int(counts[r, i])
        if vectors[i]:
            row["mxm_vectors"] += int(vectors[i])
            row["mxm_plane_cycles"] += int(plane_cycles[i])
            p = purpose_of(node) if node is not None else SETUP
            row["mxm_work_by_purpose"][p] = row["mxm_work_by_purpose"].get(p, 0) + int(plane_cycles[i])
    out = [r for r in rows.values() if r["cycles"] or r["mxm_vectors"]]
    for r in out:
        r["share"] = r["cycles"] / cycles if cycles else 0.0
    return sorted(out, key=lambda r: (-r["cycles"], -r["mxm_plane_cycles"], r["name"]))


def format_explain(e: dict) -> str:
    """The short table `lpusim run --explain` prints."""
    c = e["cycles"] or 1
    lines = [f"MXM            planes busy {e['mxm_utilization']:.1%} of the time, {e['planes_computing']:.2f} at once "
             "while any computes",
             f"MACs           {e['mac_utilization']:.1%} of peak; the array {e['mxm_array_fill']:.1%} full on the "
             "model's matmuls",
             "time by cause  " + "  ".join(f"{k} {v / c:.1%}" for k, v in e["cycles_by_cause"].items() if v)]
    if e["mxm_work_by_purpose"]:
        lines.append("MXM work       " + "  ".join(f"{p} {w['share']:.0%}"
                                                   for p, w in e["mxm_work_by_purpose"].items()))
    lines.append(f"{'top nodes':14} {'cycles':>9} {'share':>6} {'MXM vectors':>11}  op, name")
    for r in e["top_nodes"]:
        lines.append(f"{'':14} {r['cycles']:9,} {r['share']:6.1%} {r['mxm_vectors']:11,}  "
                     f"{', '.join(r['ops']) or '-'}, {r['name']}")
    return "\n".join(lines)
