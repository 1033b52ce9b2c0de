"""How many VXM ALUs a chain of steps takes once it is timed: shared by the fusion pass (which must not build a
chain the VXM cannot hold) and the scheduler (which times it).

Every ALU result lives on a stream for exactly one cycle, so a step reading an earlier result that is not ready in
the same cycle needs a delay line: COPY / MUL-by-1 steps that hold the value (`delay_table`). A source or
accumulator read by several steps is first copied into a register (`with_read_copies`), so each MEM view or
accumulator is streamed once per row.
"""
from __future__ import annotations

from typing import Callable

from lpusim.compiler.ir import Step, step_out_type


def delay_table(lat: Callable[[str], int]) -> dict[int, list[str]]:
    """Gaps a delay line can bridge exactly, with the ops that make them (0: none needed)."""
    table: dict[int, list[str]] = {0: []}
    parts = [("COPY", lat("COPY")), ("MUL", lat("MUL"))]
    for gap in range(1, 64):
        for op, c in parts:
            if gap - c in table and (gap not in table or len(table[gap - c]) + 1 < len(table[gap])):
                table[gap] = table[gap - c] + [op]
    return table


def with_read_copies(steps: list[Step], copy_type: Callable[[tuple], str]) -> list[Step]:
    """`steps` with one COPY (of type `copy_type(arg)`) in front for each source or accumulator read twice."""
    refs: dict[tuple, int] = {}
    for s in steps:
        for a in s.args:
            if a[0] in ("src", "acc"):
                refs[a] = refs.get(a, 0) + 1
    multi = [a for a, n in refs.items() if n > 1]
    if not multi:
        return steps
    pre = [Step("COPY", [a], copy_type(a)) for a in multi]
    remapped = []
    for s in steps:
        args = []
        for a in s.args:
            if a in multi:
                args.append(("step", multi.index(a)))
            elif a[0] == "step":
                args.append(("step", a[1] + len(pre)))
            else:
                args.append(a)
        remapped.append(Step(s.op, args, s.t))
    return pre + remapped


def place_delay_lines(steps: list[Step], lat: Callable[[str], int], reachable: dict[int, list[str]]):
    """Each step at the first cycle where every step result it reads can be delayed to exactly that cycle.
    Returns (steps with the delay-line steps inserted, their issue times, old step index -> new index)."""
    times: list[int] = []
    out: list[Step] = []
    index_map: dict[int, int] = {}
    for j, s in enumerate(steps):
        regs = [index_map[a[1]] for a in s.args if a[0] == "step"]
        t = max([times[k] + lat(out[k].op) for k in regs], default=0)
        while any((t - times[k] - lat(out[k].op)) not in reachable for k in regs):
            t += 1
        args = []
        for a in s.args:
            if a[0] != "step":
                args.append(a)
                continue
            k = index_map[a[1]]
            for op in reachable[t - times[k] - lat(out[k].op)]:  # a delay line of COPY / MUL-by-1 steps
                out.append(Step(op, [("step", k)] + ([("imm", 1.0)] if op == "MUL" else []),
                                step_out_type(out[k])))
                times.append(times[k] + lat(out[k].op))
                k = len(out) - 1
            args.append(("step", k))
        index_map[j] = len(out)
        out.append(Step(s.op, args, s.t))
        times.append(t)
    return out, times, index_map
