"""The scheduler of one chip of a tensor-parallel program (multichip/tensor.py): a stage scheduler that joins an
all-gather after each split node, in lockstep with the other chips' schedulers."""
from __future__ import annotations

import threading

from lpusim.compiler.schedule.c2c import StageScheduler
from lpusim.compiler.schedule.storage import Store


class Lockstep:
    """The chips' schedulers meet here (one thread per chip): a barrier, each chip's frontier, the send plans."""

    def __init__(self, n: int):
        self.barrier = threading.Barrier(n)
        self.front = [0] * n
        self.plans: dict = {}

    def wait(self):
        self.barrier.wait()


class TensorScheduler(StageScheduler):
    """One chip's scheduler; between nodes it joins the all-gather after each split node."""

    def __init__(self, chip, graph, c: int, n: int, parts: dict, ctx: dict, sync: Lockstep):
        super().__init__(chip, graph, keep=set(parts), rel_drift=ctx["rel"], max_free=ctx["max_free"])
        self.c, self.n, self.parts, self.ctx, self.sync = c, n, parts, ctx, sync
        self.exchanges = 0

    def _between_nodes(self, i, n, node):
        if i > 0 and self.graph.nodes[i - 1].output in self.parts:
            self.exchange(self.graph.nodes[i - 1].output)
        super()._between_nodes(i, n, node)

    def exchange(self, part: str) -> None:
        full, fmts, blocks = self.parts[part]
        ctx, sync, c, n = self.ctx, self.sync, self.c, self.n
        interval, system = ctx["interval"], ctx["system"]
        ex = self.exchanges
        self.exchanges += 1
        sync.front[c] = self.frontier()
        sync.wait()
        at = max(sync.front)
        resume = self.barrier(at, self.deskew_delay(at, ctx["rel"]))
        peers = [q for q in range(n) if q != c]
        for idx, p in enumerate(peers):
            plan = self.schedule_sends({part: fmts}, system.link(c, p)[0], interval, resume, rotate=idx,
                                       single=True)
            sync.plans[(ex, c, p)] = (plan, resume)
        sync.wait()
        avoid = set()  # the slices the sends read while the receives write
        for f in fmts:
            st = self.stores[(part, f)]
            for segs in st.tiles:
                for sg in segs:
                    avoid.update(range(sg.slice, sg.slice + st.width))
        lags = {}
        for q in peers:
            plan, resume_q = sync.plans[(ex, q, c)]
            link, _, _ = system.link(c, q)
            info = next(lk for lk in system.links if {lk["chip_a"], lk["chip_b"]} == {c, q})
            last = plan[-1][5] + (plan[-1][4] - 1) * interval
            lag = ctx["lag"](info, last - resume_q, last - resume)
            lags[q] = self.schedule_receives(plan, link, interval, lag, avoid, single=True, slack=interval)
            ctx["check_buffer"](info, lags[q], last - resume_q, last + lags[q] - resume)
        for f in fmts:  # the full tensor: the blocks' stores side by side
            stores = [self.stores[(f"{full}#tp{q}", f)] for q in range(n)]
            t = self.graph.tensors[full]
            st = Store.for_tensor(t, f)
            for s in stores:
                st.tiles += s.tiles
                st.ready += s.ready
                st.last_access = max(st.last_access, s.last_access)
            self.stores[(full, f)] = st
        self.transfer_log.append({"after": full, "chip": c, "barrier": at, "lags": lags,
                                  "vectors_per_link": sum(p[4] for p in sync.plans[(ex, c, peers[0])][0])
                                  if peers else 0})

    transfer_log: list
