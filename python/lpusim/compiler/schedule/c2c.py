"""Scheduler jobs for chip-to-chip transfers and the runtime deskew barriers of a pipeline stage.

A stage's program has three phases on its chip's program clock (cycle 0 = the common start of every chip):
1. receive (chip k > 0): a `RUNTIME_DESKEW d` barrier in every queue the stage uses, then for every vector the
   previous chip sends, `RECV` on the link at its send cycle plus the transfer lag, the vector streamed from the
   link's position to its MEM slice and written (`RECV -> stream -> WRITE`), bursts of one row per send interval;
2. compute: the stage's nodes, placed by the ordinary scheduler, never before the barrier's end;
3. send (all but the last chip): once every effect of the compute phase is over, another barrier, then per live
   tensor, format, column tile and byte plane a burst `READ -> stream -> SEND` on the link toward chip k+1.

A barrier is a cycle B at which the chip is quiescent (every earlier instruction's last effect is before B) and no
queue issues in [B, B + d): every queue with later work issues `RUNTIME_DESKEW d` at B, and the scheduler places
nothing before B + d (`FloorReservations`). The stall is d minus the drift the chip accumulated since its last
realignment, so after it the chip's program cycle again counts the root chip's cycles (docs/system.md section 3).
Nothing is in flight across a barrier, so a stall of any length changes no value.
"""
from __future__ import annotations

import math
from collections import defaultdict

from lpusim.compiler.emit import emit_assembly
from lpusim.compiler.ir import View, out_geom
from lpusim.compiler.schedule.storage import WIDTH, MemRun, segment_runs, view_runs
from lpusim.compiler.schedule.costs import static_cost
from lpusim.compiler.schedule.resources import Clash, Issue, Reservations
from lpusim.compiler.schedule.scheduler import Scheduler
from lpusim.errors import CompileError


class FloorReservations(Reservations):
    """Reservations that refuse any queue slot before `floor` (the end of the latest barrier)."""

    floor = 0

    def take_queue(self, queue, start, end, offset=0):
        if start < self.floor:
            raise Clash(self.floor - offset)
        return super().take_queue(queue, start, end, offset)

    def check_queue(self, queue, start, end, offset=0):
        if start < self.floor:
            raise Clash(self.floor - offset)
        return super().check_queue(queue, start, end, offset)

    def queue_free_from(self, queue, start, end):
        return start >= self.floor and super().queue_free_from(queue, start, end)

    # An outer transaction around many jobs (a tentative exchange, multichip/tensor.py): every committed job's
    # journal is kept too, so the whole can be undone.
    _outer: list | None = None

    def begin_outer(self) -> None:
        self._outer, self._outer_mark = [], len(self.issues)

    def commit(self) -> None:
        if self._outer is not None:
            self._outer.extend(self._journal)
        super().commit()

    def commit_outer(self) -> None:
        self._outer = None

    def rollback_outer(self) -> None:
        """Undo every job committed since begin_outer (the entries in reverse order, as `rollback` does)."""
        self._journal, self._issue_mark, self._outer = self._outer, self._outer_mark, None
        self.rollback()


class C2cJobs:
    """Mixed into a Scheduler: barriers, link receives and link sends."""

    barriers: list

    def link_position(self, link: int) -> int:
        """C2C links 0..7 sit with the west SXM, 8..15 with the east one (docs/isa.md section 1)."""
        half = self.chip.c2c_links // 2
        return self.sxm_position("W" if link < half else "E")

    def frontier(self) -> int:
        """One past the last effect of everything scheduled so far (the issues list only grows between jobs)."""
        seen, last = self.__dict__.get("_frontier", (0, -1))
        issues = self.res.issues
        if seen > len(issues):
            seen, last = 0, -1
        for iss in issues[seen:]:
            last = max(last, iss.last_effect)
        self._frontier = (len(issues), last)
        return last + 1

    def resumed(self) -> int:
        """The program cycle of the latest realignment (0: the common start)."""
        return self.barriers[-1][0] + self.barriers[-1][1] if self.barriers else 0

    def deskew_delay(self, at: int, rel: float) -> int:
        """d for a barrier at `at`: above the largest drift since the last realignment (2 cycles of rounding)."""
        d = math.ceil(rel * (at - self.resumed())) + 3
        if d + 1 >= self.chip.hac_period // 2:
            raise CompileError(f"a barrier at cycle {at} would need RUNTIME_DESKEW {d}, beyond what the HAC "
                               f"comparison can measure: the chip ran {at - self.resumed():,} cycles since its last "
                               f"realignment (at {self.resumed():,}), longer than the drift tolerance allows; a "
                               f"node that long cannot be cut (a smaller system drift_ppm allows longer runs)")
        return d

    def barrier(self, at: int, d: int) -> int:
        """A RUNTIME_DESKEW d barrier at cycle `at` (at least the frontier); returns where work may resume."""
        at = max(at, self.frontier(), self.res.floor)
        self.barriers.append((at, d))
        self.res.floor = at + d
        return at + d

    def _transfer_runs(self, store, name: str, tile: int, row0: int = 0, rows: int | None = None,
                       single: bool = False):
        """The MEM runs of a burst; `single`: one run per row, so a burst's READs or WRITEs (one row per send
        interval) hold the slice's queue only in the cycles they issue, not for the whole burst."""
        t = self.graph.tensors[name]
        rows = t.rows - row0 if rows is None else rows
        runs = segment_runs(store, tile, view_runs(View(name), store, out_geom(t), t.rows, row0, row0 + rows))
        if single:
            runs = [MemRun(r.out_start + k, r.slice, r.addr + k * r.stride, 1, r.stride, r.not_before)
                    for r in runs for k in range(r.count)]
        return runs

    def transfer_bursts(self, items: dict[str, list[str]]):
        """(tensor, format, tile, byte plane, rows, first row) for every burst of a transfer, in link order."""
        out = []
        for name, fmts in sorted(items.items()):
            t = self.graph.tensors[name]
            for fmt in fmts:
                width = WIDTH[fmt]
                for nt in range(self.ntiles(t.cols)):
                    for b in range(width):
                        out.append((name, fmt, nt, b, t.rows, 0))
        return out

    def transfer_chunks(self, items: dict[str, list[str]], max_vectors: int) -> list[list[tuple]]:
        """The bursts of a transfer cut into chunks of at most `max_vectors` vectors (a burst split by rows where
        needed), so each chunk is sent and received between realignments (docs/multichip.md, Transfers)."""
        chunks: list[list[tuple]] = [[]]
        room = max_vectors
        for name, fmt, nt, b, rows, row0 in self.transfer_bursts(items):
            while rows:
                if room == 0:
                    chunks.append([])
                    room = max_vectors
                take = min(rows, room)
                chunks[-1].append((name, fmt, nt, b, take, row0))
                row0, rows, room = row0 + take, rows - take, room - take
        return [c for c in chunks if c]

    def _link_issues(self, queue: str, t: int, text: str, rows: int, interval: int, tail: int,
                     single: bool) -> None:
        """The link queue's instructions of one burst: one REPEATed instruction, or (`single`) one instruction
        per vector, so another burst (the other direction on the same link) can issue between them."""
        if not single:
            self.res.take_queue(queue, t, t + (rows - 1) * interval, 0)
            self.res.add_issue(Issue(queue, t, text, rows, interval, 0, t + tail + (rows - 1) * interval))
            return
        for k in range(rows):
            c = t + k * interval
            self.res.take_queue(queue, c, c, c - t)
            self.res.add_issue(Issue(queue, c, text, 1, 1, 0, c + tail))

    def schedule_sends(self, items: dict[str, list[str]], link: int, interval: int, lower: int,
                       rotate: int = 0, single: bool = False, bursts: list[tuple] | None = None) -> list[tuple]:
        """READ -> stream -> SEND bursts of every live tensor (or of `bursts`, one chunk), one vector per
        `interval` cycles on `link` (`rotate`: start this many bursts into the list, so links sending one tensor at
        once read other slices). Returns per burst (tensor, format, tile, plane, rows, first send cycle, first
        row)."""
        pos = self.link_position(link)
        queue = f"C2C.{link}"
        plan = []
        nxt = lower
        bursts = self.transfer_bursts(items) if bursts is None else bursts
        if bursts:
            rotate %= len(bursts)
            bursts = bursts[rotate:] + bursts[:rotate]
        for name, fmt, nt, b, rows, row0 in bursts:
            store = self.stores[(name, fmt)]
            runs = self._transfer_runs(store, name, nt, row0, rows, single)

            def build(t, store=store, runs=runs, b=b, nt=nt, rows=rows):
                if single:  # the link queue first: its clashes are cheap to find
                    for k in range(rows):
                        self.res.check_queue(queue, t + k * interval, t + k * interval, k * interval)
                stream = self.read_view(store, nt, runs, pos, t, interval, t, planes=[b])
                self._link_issues(queue, t, f"SEND {stream}", rows, interval, 0, single)
                return t

            first = self.place(nxt, build, f"the link send of '{name}' ({fmt}, plane {b})")
            plan.append((name, fmt, nt, b, rows, first, row0))
            nxt = first + rows * interval
        return plan

    def schedule_receives(self, plan: list[tuple], link: int, interval: int, lag: int,
                          avoid: set | None = None, single: bool = False, slack: int = 0) -> int:
        """RECV -> stream -> WRITE of every burst another chip sends, at its send cycles plus `lag` (or up to
        `slack` cycles more, the first lag at which everything fits; `single`: each vector at the first cycle
        from its send cycle plus `lag` to `slack` later where its RECV and WRITE fit, the RECVs in arrival order);
        the stores for the received tensors are allocated here (away from the slices in `avoid`, which grows).
        Returns the largest delay after its send cycle of any RECV."""
        for name, fmt, nt, b, rows, first, _ in plan:
            if (name, fmt) not in self.stores:
                if avoid is None:
                    self.alloc_store(name, fmt)
                else:
                    try:
                        store = self.alloc_store(name, fmt, avoid_tile=lambda _nt: avoid)
                    except CompileError:  # every slice group is in `avoid`: the RECVs find free cycles anyway
                        store = self.alloc_store(name, fmt)
                    for segs in store.tiles:
                        for sg in segs:
                            avoid.update(range(sg.slice, sg.slice + store.width))
        if single:
            return self._receive_vectors(plan, link, interval, lag, slack)
        pos = self.link_position(link)
        queue = f"C2C.{link}"
        rl = self.chip.c2c_recv_latency
        for extra in range(slack + 1):
            self.res.begin()
            self.accesses = []
            ready = []
            try:
                for name, fmt, nt, b, rows, first, row0 in plan:
                    store = self.stores[(name, fmt)]
                    runs = self._transfer_runs(store, name, nt, row0, rows)
                    r0 = first + lag + extra
                    stream, last = self.write_view(store, runs, pos, r0 + rl, r0, planes=[b], d=interval)
                    self._link_issues(queue, r0, f"RECV {stream}", rows, interval, rl, single)
                    ready.append((store, nt, last))
            except Clash:
                self.res.rollback()
                continue
            self.res.commit()
            for st, lst in self.accesses:
                st.last_access = max(st.last_access, lst)
            for store, nt, last in ready:
                store.ready[nt] = max(store.ready[nt], last + 1)
            return lag + extra
        raise CompileError(f"internal: the receives on link {link} clash at every lag from {lag} to "
                           f"{lag + slack}")

    def _receive_vectors(self, plan: list[tuple], link: int, interval: int, lag: int, slack: int) -> int:
        """schedule_receives, one vector at a time: RECV of vector j at the first cycle in [send_j + lag,
        send_j + lag + slack] after the previous RECV where its link slot, stream and MEM write are free."""
        pos = self.link_position(link)
        queue = f"C2C.{link}"
        rl = self.chip.c2c_recv_latency
        prev, worst = -1, lag
        for name, fmt, nt, b, rows, first, row0 in plan:
            store = self.stores[(name, fmt)]
            for run in self._transfer_runs(store, name, nt, row0, rows, True):
                send = first + run.out_start * interval
                one = [MemRun(0, run.slice, run.addr, 1, run.stride, run.not_before)]
                for t in range(max(send + lag, prev + 1), send + lag + slack + 1):
                    self.res.begin()
                    self.accesses = []
                    try:
                        self.res.check_queue(queue, t, t, 0)
                        stream, last = self.write_view(store, one, pos, t + rl, t, planes=[b], d=interval)
                        self._link_issues(queue, t, f"RECV {stream}", 1, interval, rl, True)
                    except Clash:
                        self.res.rollback()
                        continue
                    self.res.commit()
                    for st, lst in self.accesses:
                        st.last_access = max(st.last_access, lst)
                    store.ready[nt] = max(store.ready[nt], last + 1)
                    prev, worst = t, max(worst, t - send)
                    break
                else:
                    raise CompileError(f"internal: the receive of a vector of '{name}' on link {link} clashes at "
                                       f"every lag from {lag} to {lag + slack}")
        return worst


class StageScheduler(C2cJobs, Scheduler):
    """The ordinary scheduler with a floor for barriers; stores in `keep` are never released (they are sent)."""

    # A barrier comes before a node when the cycles since the last realignment plus this many times the node's
    # static estimate (costs.static_cost; measured 2.5-4x low on VGG-19's 224x224 convolutions) would pass
    # max_free: the barrier after a node that ran past it could not measure the drift any more.
    LOOKAHEAD = 4

    def __init__(self, chip, graph, keep=(), rel_drift: float = 0.0, max_free: int | None = None, cache=None):
        super().__init__(chip, graph, self._between_nodes, cache=cache)
        self.res = FloorReservations(chip)
        self.keep = set(keep)
        self.barriers = []
        self.rel = rel_drift
        self.max_free = max_free
        self.node_index = -1  # the node being placed (-1: none yet), for placement-failure feedback

    def _between_nodes(self, i, n, node):
        """Before each node: a barrier if the chip has run free longer than `max_free` cycles (so its drift stays
        measurable and within the RUNTIME_DESKEW delay)."""
        self.node_index = i
        if self.max_free is None or i == 0:
            return
        at = self.frontier()
        ahead = self.LOOKAHEAD * static_cost(self.graph, node, self.chip)  # the node cannot be cut: room for it
        if at > self.resumed() and at - self.resumed() + ahead > self.max_free:
            self.barrier(at, self.deskew_delay(at, self.rel))

    def place(self, lower, build, what):
        """As Scheduler.place, from the floor on. The base search gives up SEARCH_LIMIT cycles past its first
        clash, and one retry hint (a reused block's previous owner, far ahead on a program that starts late) can
        jump that far: then search again from the largest hint seen, which every start that fits is at or after."""
        lower = max(lower, self.res.floor - 2 * self.chip.num_positions)
        hints = [lower]

        def watched(t):
            try:
                return build(t)
            except Clash as clash:
                if clash.retry_at is not None:
                    hints[0] = max(hints[0], clash.retry_at)
                raise

        while True:
            start = hints[0]
            try:
                return super().place(start, watched, what)
            except CompileError:
                if hints[0] <= start:
                    raise

    def release(self, store):
        if store.tensor in self.keep:
            return
        super().release(store)


def emit_stage(issues: list[Issue], barriers: list[tuple[int, int]], header: str = "") -> str:
    """Assembly text of one stage: emit.emit_assembly with its RUNTIME_DESKEW barriers."""
    return emit_assembly(issues, header, barriers)


def barrier_issues(issues: list[Issue], barriers: list[tuple[int, int]]) -> int:
    """RUNTIME_DESKEW instructions the emitted program issues (one per barrier per queue with later work)."""
    last = defaultdict(int)
    for iss in issues:
        last[iss.queue] = max(last[iss.queue], iss.cycle)
    return sum(1 for at, d in barriers for q, c in last.items() if c >= at + d)


__all__ = ["C2cJobs", "FloorReservations", "StageScheduler", "emit_stage", "barrier_issues"]
