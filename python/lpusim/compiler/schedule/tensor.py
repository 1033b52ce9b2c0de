"""The scheduler of one chip of a tensor-parallel program (multichip/tensor.py): a stage scheduler that runs the
plan's collectives (all-gathers, reductions of partial sums) between its nodes, in lockstep with the other chips'
schedulers (one thread per chip; they meet once per collective to hand over their send plans).

No barrier comes with a collective: every chip's program cycles count from the common start (or from its last
realignment), a send goes out as soon as its tile is written (the read waits for the store's `ready`), and each
RECV is placed at its send cycle plus the lag that covers the link's worst latency and both chips' drift since
their last realignment (clocks.transfer_timing: the link's worst latency plus about 4 cycles on a short program),
or at the first free cycle up to (buffer depth - 2) send intervals later. If a chip finds no such cycle for some
vector, every chip undoes the collective and plans it again with sends from the latest chip's frontier on. The
ordinary rule of StageScheduler still realigns a chip that runs free for longer than `max_free` cycles."""
from __future__ import annotations

import dataclasses
import threading

from lpusim.compiler.schedule.c2c import StageScheduler
from lpusim.compiler.schedule.storage import Store
from lpusim.errors import CompileError


class Lockstep:
    """The chips' schedulers meet here (one thread per chip): a barrier and the send plans."""

    def __init__(self, n: int):
        self.barrier = threading.Barrier(n)
        self.plans: dict = {}
        self.flags: dict = {}  # (collective, chip) -> (its receives fit overlapped, its frontier before)

    def wait(self):
        self.barrier.wait()

    def run(self, make) -> list:
        """`make(c).run()` for every chip c, each in its own thread (they meet here at every collective): per chip
        (scheduler, its result). The first error of any chip is raised once every thread has stopped."""
        n = self.barrier.parties
        results: list = [None] * n
        errors: list = []

        def work(c):
            try:
                sched = make(c)
                results[c] = (sched, sched.run())
            except threading.BrokenBarrierError:  # another chip failed: its error is the one raised
                pass
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=work, args=(c,)) for c in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return results


class TensorScheduler(StageScheduler):
    """One chip's scheduler; before the nodes the plan names (and after the last) it runs the plan's collectives."""

    def __init__(self, chip, graph, c: int, n: int, plan, ctx: dict, sync: Lockstep):
        super().__init__(chip, graph, keep=plan.keep[c], rel_drift=ctx["rel"], max_free=ctx["max_free"])
        self.c, self.n, self.plan, self.ctx, self.sync = c, n, plan, ctx, sync
        self.at = plan.at[c]
        # what goes over a link is stored on the links' side of the chip: a store the VXM writes and a link reads
        # (or a link writes and the VXM reads) in the other hemisphere would cross the chip twice
        self.link_side: dict[str, str] = {}
        system = ctx["system"]
        for col in plan.collectives:
            for src, dst, items in col.sends:
                if c in (src, dst):
                    side = self._side(system.link(c, dst if src == c else src)[0])
                    for name in items:
                        self.link_side[name] = side if self.link_side.get(name, side) == side else None

    def _side(self, link: int) -> str:
        return "W" if link < self.chip.c2c_links // 2 else "E"

    def alloc_store(self, tensor, fmt, bank=1, avoid_tile=None, reuse=False):
        side = self.link_side.get(tensor)
        if side is None:
            return super().alloc_store(tensor, fmt, bank, avoid_tile, reuse)
        self.next_hemisphere = lambda: side  # every column tile on that side (the other one when it is full)
        try:
            return super().alloc_store(tensor, fmt, bank, avoid_tile, reuse)
        finally:
            del self.next_hemisphere

    def _between_nodes(self, i, n, node):
        self.collect(i)
        super()._between_nodes(i, n, node)

    def collect(self, i: int) -> None:
        for k in self.at.get(i, ()):
            self.collective(k)

    def run(self):
        """Scheduler.run, then the collectives after the last node; outputs assembled by those are added after."""
        g = self.graph
        trailing = {full for k in self.at.get(len(g.nodes), ()) for full, _, _ in
                    self.plan.collectives[k].joins.get(self.c, ())}
        outputs = list(g.outputs)
        g.outputs = [o for o in outputs if o not in trailing]
        try:
            result = super().run()
        finally:
            g.outputs = outputs
        self.collect(len(g.nodes))
        issues = self.res.issues
        last = max((iss.last_effect for iss in issues), default=-1)
        predicted = 0 if not issues else last + 1 + self.chip.superlanes - 1
        return dataclasses.replace(result, issues=issues, outputs={o: self.stores[(o, "f32")] for o in outputs},
                                   predicted_cycles=predicted, sram_bytes=self.sram.bytes_used)

    def collective(self, k: int) -> None:
        """Plan k's transfers: first overlapped with the chips' compute (each send as soon as its tile is written,
        each RECV in the first free cycle of its window); if any chip cannot receive a vector so, every chip undoes
        the collective and sends from the latest chip's frontier on (where no receiver has work placed yet)."""
        col = self.plan.collectives[k]
        sync, c, n = self.sync, self.c, self.n
        front = self.frontier()
        touched = {name for _, _, items in col.sends for name in items}
        saved = {key: (list(st.ready), st.last_access) for key, st in self.stores.items() if key[0] in touched}
        self.res.begin_outer()
        log = self.exchange(k, col, "early", self.resumed())
        sync.flags[(k, c)] = (log is not None, front)
        sync.wait()
        if all(sync.flags[(k, q)][0] for q in range(n)):
            self.res.commit_outer()
        else:
            self.res.rollback_outer()
            for key, st in self.stores.items():
                if key[0] in touched:
                    st.ready, st.last_access = saved.get(key, ([0] * len(st.ready), -1))
                    st.ready = list(st.ready)
            log = self.exchange(k, col, "late", max(sync.flags[(k, q)][1] for q in range(n)))
            if log is None:
                raise CompileError(f"internal: the {col.kind} of '{col.tensor}' cannot be received on chip {c} "
                                   f"even after every chip's last scheduled work")
        self.transfer_log.append(log)
        for full, blocks, fmts in col.joins.get(c, ()):
            self.join(full, blocks, fmts)

    def exchange(self, k: int, col, tag: str, lower: int) -> dict | None:
        """This chip's sends of collective k from cycle `lower` on, then (once every chip has planned its sends) its
        receives: their log entry, or None when a vector finds no RECV cycle in its window."""
        ctx, sync, c = self.ctx, self.sync, self.c
        interval, system = ctx["interval"], ctx["system"]
        outgoing = [(dst, items) for src, dst, items in col.sends if src == c]
        avoid = set()  # the slices the sends read while the receives write
        sent = {}
        for idx, (dst, items) in enumerate(outgoing):
            for name, fmts in items.items():
                for f in fmts:
                    st = self.stores[(name, f)]
                    for segs in st.tiles:
                        for sg in segs:
                            avoid.update(range(sg.slice, sg.slice + st.width))
            plan = self.schedule_sends(items, system.link(c, dst)[0], interval, lower, rotate=idx, single=True)
            sync.plans[(k, tag, c, dst)] = (plan, self.resumed())
            sent[dst] = {"vectors": sum(p[4] for p in plan), "first": plan[0][5],
                         "last": plan[-1][5] + (plan[-1][4] - 1) * interval}
        sync.wait()
        lags = {}
        slack = interval * max(1, self.chip.c2c_rx_buffer_vectors - 2)  # later RECVs: early arrivals wait
        for src, dst, _ in col.sends:
            if dst != c:
                continue
            plan, resume_q = sync.plans[(k, tag, src, c)]
            link = system.link(c, src)[0]
            info = next(lk for lk in system.links if {lk["chip_a"], lk["chip_b"]} == {c, src})
            last = plan[-1][5] + (plan[-1][4] - 1) * interval
            lag = ctx["lag"](info, last - resume_q, last - self.resumed())
            try:
                lags[src] = self.schedule_receives(plan, link, interval, lag, avoid, single=True, slack=slack)
                ctx["check_buffer"](info, lags[src], last - resume_q, last + lags[src] - self.resumed())
            except CompileError:
                if tag == "early":
                    return None
                raise
        return {"collective": k, "kind": col.kind, "tensor": col.tensor, "chip": c, "overlapped": tag == "early",
                "sends": sent, "lags": lags}

    def join(self, full: str, blocks: list[str], fmts: list[str]) -> None:
        """The full tensor's store in each format: its column blocks' stores side by side."""
        t = self.graph.tensors[full]
        for f in fmts:
            st = Store.for_tensor(t, f)
            for name in blocks:
                s = self.stores[(name, f)]
                st.tiles += s.tiles
                st.ready += s.ready
                st.last_access = max(st.last_access, s.last_access)
            self.stores[(full, f)] = st

    transfer_log: list
