"""Schedule -> assembly text (docs/isa.md section 6): per queue, instructions in cycle order with NOPs between."""
from __future__ import annotations

from collections import defaultdict

from lpusim.compiler.schedule.resources import Issue
from lpusim.errors import CompileError


def emit_assembly(issues: list[Issue], header: str = "", barriers: list[tuple[int, int]] = ()) -> str:
    """Per queue, the issues in cycle order with NOPs between. `barriers` (B, d) of a multi-chip stage
    (schedule/c2c.py) put `RUNTIME_DESKEW d` at cycle B in every queue that issues anything after it; the
    instruction after it issues at program cycle B + d."""
    by_queue: dict[str, list[Issue]] = defaultdict(list)
    for issue in issues:
        by_queue[issue.queue].append(issue)
    lines = [f"; {line}" for line in header.splitlines()]
    for queue in sorted(by_queue):
        lines.append(f".queue {queue}")
        cycle = 0
        todo = sorted(barriers)
        for issue in sorted(by_queue[queue], key=lambda i: i.cycle):
            while todo and todo[0][0] + todo[0][1] <= issue.cycle:
                at, d = todo.pop(0)
                if at < cycle:
                    raise CompileError(f"internal: {queue} is busy at the barrier at cycle {at}")
                if at > cycle:
                    lines.append(f"    NOP {at - cycle}")
                lines.append(f"    RUNTIME_DESKEW {d}")
                cycle = at + d
            if issue.cycle < cycle:
                raise CompileError(f"internal scheduling error: {queue} issues '{issue.text}' at cycle "
                                   f"{issue.cycle} while busy until {cycle}")
            if issue.cycle > cycle:
                lines.append(f"    NOP {issue.cycle - cycle}")
            lines.append(f"    {issue.text}")
            if issue.n > 1:
                lines.append(f"    REPEAT {issue.n - 1}, {issue.d}, {issue.stride}")
            cycle = issue.cycle + (issue.n - 1) * issue.d + 1
    return "\n".join(lines) + "\n"


def count_instructions(issues: list[Issue]) -> int:
    """Instruction issues the run will make (repeats counted, NOPs not): the simulator's `instructions`."""
    return sum(issue.n for issue in issues)
