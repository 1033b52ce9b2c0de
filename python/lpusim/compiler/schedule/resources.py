"""Reservation tables for the static schedule: queue issue slots, MEM bank ports, stream diagonals (SRAM space:
sram.py).

The scheduler tries a job at a start cycle, reserving every resource it needs; a clash raises `Clash` and the
journal rolls the attempt back. Streams are reserved as space-time diagonals: a vector emitted at position p at
cycle t on an eastward stream sits at p + d at t + d, so it occupies the positions between emitter and reader on the
diagonal p - t (westward: p + t). Two transfers clash when they share a stream, a diagonal and a position.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass



# Port cycles and stream diagonals taken are kept as arithmetic progressions (one per burst or run), each with a
# bit mask (stream positions; 1 for ports), in an index: a dict from value // 2^BLOCK to the progressions reaching
# into that block. A job's runs meet few others, so a check looks at a handful of entries whatever a run's length.
BLOCK = 8


def insert(index: dict, entry: tuple) -> list[list]:
    """Add (lo, hi, step, mask) to every block it reaches; returns those blocks (the entry is last in each)."""
    blocks = []
    for k in range(entry[0] >> BLOCK, (entry[1] >> BLOCK) + 1):
        block = index.get(k)
        if block is None:
            block = index[k] = []
        block.append(entry)
        blocks.append(block)
    return blocks


def meets(index: dict, lo: int, hi: int, step: int, mask: int) -> bool:
    """Whether an entry of `index` shares a value of lo, lo + step, ..., hi and a bit of `mask`."""
    for k in range(lo >> BLOCK, (hi >> BLOCK) + 1):
        for e in index.get(k, ()):
            if e[3] & mask and common_terms(lo, hi, step, e[0], e[1], e[2]) is not None:
                return True
    return False


def common_terms(lo: int, hi: int, step: int, lo2: int, hi2: int, step2: int) -> tuple[int, int] | None:
    """(lowest, highest) value the progressions lo, lo + step, ..., hi and lo2, lo2 + step2, ..., hi2 (steps
    positive, each ending on its last term) share, or None."""
    low, high = max(lo, lo2), min(hi, hi2)
    if low > high:
        return None
    if step == 1 and step2 == 1:
        return low, high
    if step == 1 or step2 == 1 or step == step2:
        if step == 1:
            lo, step = lo2, step2  # the terms of the other one inside [low, high]
        elif step == step2 and (lo - lo2) % step:
            return None
        first = low + (lo - low) % step
        if first > high:
            return None
        return first, high - (high - lo) % step
    if step < step2:  # walk the sparser one, testing membership in the other
        lo, step, lo2, step2 = lo2, step2, lo, step
    first = next((x for x in range(low + (lo - low) % step, high + 1, step) if (x - lo2) % step2 == 0), None)
    if first is None:
        return None
    last = next(x for x in range(high - (high - lo) % step, first - 1, -step) if (x - lo2) % step2 == 0)
    return first, last


class Clash(Exception):
    """A resource is taken; `retry_at` is the earliest later start worth trying (None: the next cycle)."""

    def __init__(self, retry_at: int | None = None):
        self.retry_at = retry_at


@dataclass
class Issue:
    """One instruction in one queue at one cycle, repeated `n` times `d` cycles apart (address step `stride`)."""

    queue: str
    cycle: int
    text: str
    n: int = 1
    d: int = 1
    stride: int = 1
    last_effect: int = 0  # the last cycle this issue changes anything (for the predicted cycle count)


class Reservations:
    """Queue intervals, MEM bank ports and stream diagonals taken so far, with a journal to undo one attempt.

    Ports are kept per (slice, bank) as the cycles they are used; streams per (direction, stream) as the diagonals
    taken, each with a bit mask of the positions taken on it. A job reserves whole runs at once (a burst of `n`
    vectors `d` cycles apart is one progression of cycles, one progression of diagonals with one mask), kept as
    such (`insert`), so the cost of a reservation or a check grows with the number of runs, not vectors."""

    def __init__(self, chip):
        self.chip = chip
        self.queue_starts: dict[str, list[int]] = {}
        self.queue_ends: dict[str, list[int]] = {}
        # indexes (see `insert`) of the cycles each (slice, bank) port is used (mask 1), and of the diagonals and
        # positions taken on each (direction, stream)
        self.ports: dict[tuple[int, int], dict[int, list[tuple]]] = {}
        self.streams: dict[tuple[str, int], dict[int, list[tuple]]] = {}
        self.issues: list[Issue] = []
        self._journal: list[tuple] = []
        self.bank_split = chip.mem_words // 2
        self.streams_taken = 0
        self.on_commit: list = []

    # ----- transactions ---------------------------------------------------------------------------------
    def begin(self) -> None:
        self._journal = []
        self._issue_mark = len(self.issues)
        self.on_commit = []  # what the attempt records once it stands (rows a WRITE makes readable, Store.record_write)
        self.streams_taken = 0  # stream reservations of this attempt (stream_conflict_span assumes none)

    def rollback(self) -> None:
        """Undo the attempt: entries in reverse order, each restoring exactly what it changed."""
        for entry in reversed(self._journal):
            kind = entry[0]
            if kind == "q":
                _, starts, ends, i = entry
                del starts[i]
                del ends[i]
            else:  # an entry inserted in the blocks of an index (ports, streams): the last one in each
                for block in entry[1]:
                    block.pop()
        del self.issues[self._issue_mark:]
        self._journal = []
        self.on_commit = []

    def commit(self) -> None:
        self._journal = []
        for action in self.on_commit:
            action()
        self.on_commit = []

    # ----- queues ---------------------------------------------------------------------------------------
    def take_queue(self, queue: str, start: int, end: int, offset: int = 0) -> None:
        """Reserve queue cycles [start, end]; `offset` is start minus the job's base cycle (for the retry hint)."""
        if start < 0:
            raise Clash(None)
        starts = self.queue_starts.setdefault(queue, [])
        ends = self.queue_ends.setdefault(queue, [])
        i, busy_until = self._overlap(queue, start, end)
        if busy_until is not None:
            raise Clash(busy_until + 1 - offset)
        starts.insert(i, start)
        ends.insert(i, end)
        self._journal.append(("q", starts, ends, i))

    def check_queue(self, queue: str, start: int, end: int, offset: int = 0) -> None:
        """Raise the Clash `take_queue` would raise for [start, end] against what is taken now; take nothing."""
        if start < 0:
            raise Clash(None)
        busy_until = self._overlap(queue, start, end)[1]
        if busy_until is not None:
            raise Clash(busy_until + 1 - offset)

    def queue_free_from(self, queue: str, start: int, end: int) -> bool:
        return self._overlap(queue, start, end)[1] is None

    def queue_busy_until(self, queue: str, start: int, end: int) -> int | None:
        """The last cycle of the reservation overlapping [start, end] (None when free): no start before it + 1
        can clear that reservation, so a search may skip to there."""
        return self._overlap(queue, start, end)[1]

    def _overlap(self, queue: str, start: int, end: int) -> tuple[int, int | None]:
        """(insertion index, end of the reserved interval overlapping [start, end] or None). Intervals are
        disjoint and sorted, so only the last one starting at or before `end` can overlap."""
        starts = self.queue_starts.get(queue, [])
        i = bisect.bisect_right(starts, end)
        if i > 0 and self.queue_ends[queue][i - 1] >= start:
            return i, self.queue_ends[queue][i - 1]
        return i, None

    # ----- MEM bank ports -------------------------------------------------------------------------------
    def take_ports(self, slice_index: int, addr: int, first: int, n: int, d: int, stride: int) -> None:
        """The bank port of address addr + i*stride at cycle first + i*d, for i < n; a port already used in its
        cycle is a clash (and nothing is taken)."""
        split = self.bank_split
        ports = self.ports
        parts = []  # (key, first cycle, last cycle, cycles apart)
        if d <= 0 or stride < 0:  # not a burst of distinct cycles with rising addresses: one port at a time
            for i in range(n):
                key = (slice_index, int(addr + i * stride >= split))
                cycle = first + i * d
                if (key in ports and meets(ports[key], cycle, cycle, 1, 1)) \
                        or any(k == key and c == cycle for k, c, _, _ in parts):
                    raise Clash(None)
                parts.append((key, cycle, cycle, 1))
        else:
            if addr >= split:
                low = 0
            elif stride == 0:
                low = n
            else:
                low = min(n, (split - addr + stride - 1) // stride)  # addresses below the split: bank 0
            if low:
                parts.append(((slice_index, 0), first, first + (low - 1) * d, d if low > 1 else 1))
            if low < n:
                parts.append(((slice_index, 1), first + low * d, first + (n - 1) * d, d if n - low > 1 else 1))
            for key, lo, hi, step in parts:
                if key in ports and meets(ports[key], lo, hi, step, 1):
                    raise Clash(None)
        for key, lo, hi, step in parts:
            index = ports.get(key)
            if index is None:
                index = ports[key] = {}
            self._journal.append(("i", insert(index, (lo, hi, step, 1))))

    # ----- streams --------------------------------------------------------------------------------------
    @staticmethod
    def stream_paths(direction: str, transfers) -> list[tuple[int, int, int, int, int]]:
        """Runs of transfers (emit position, first emit cycle, cycles between vectors, count, read position) as
        paths (lowest diagonal, highest, step, mask of the positions from emitter to reader, first diagonal): a
        vector emitted at p at cycle t on an eastward stream lies on diagonal p - t (westward: p + t), so a run
        takes the diagonals lowest, lowest + step, ..., highest."""
        paths = []
        for emit_pos, cycle, step, count, read_pos in transfers:
            lo, hi = (emit_pos, read_pos) if emit_pos <= read_pos else (read_pos, emit_pos)
            mask = ((1 << (hi - lo + 1)) - 1) << lo
            if direction == "E":
                d0 = emit_pos - cycle
                diags = range(d0, d0 - count * step, -step) if step and count > 1 else range(d0, d0 + 1)
            else:
                d0 = emit_pos + cycle
                diags = range(d0, d0 + count * step, step) if step and count > 1 else range(d0, d0 + 1)
            first, last = diags[0], diags[-1]
            low, high = (first, last) if first <= last else (last, first)
            paths.append((low, high, abs(diags.step) if low != high else 1, mask, first))
        return paths

    def stream_free(self, direction: str, stream: int, paths: list[tuple]) -> bool:
        """Whether none of `paths` (from `stream_paths`) meets a vector already on the stream."""
        occ = self.streams.get((direction, stream))
        if not occ:
            return True
        for lo, hi, step, mask, _ in paths:
            if meets(occ, lo, hi, step, mask):
                return False
        return True

    def stream_conflict_span(self, direction: str, stream: int, paths: list[tuple]) -> int:
        """-1 if `paths` are free on the stream; else the largest k such that the same paths emitted 0..k cycles
        later all still meet a vector already on it.

        Later emission moves every diagonal one step per cycle (eastward down, westward up) and keeps the
        positions. A path of consecutive diagonals that meets a taken diagonal x keeps meeting it until its far end
        has passed x; a path with gaps (vectors several cycles apart) is only known to meet it now."""
        occ = self.streams.get((direction, stream))
        if not occ:
            return -1
        span = -1
        for lo, hi, step, mask, first in paths:
            low_hit = high_hit = None
            for k in range(lo >> BLOCK, (hi >> BLOCK) + 1):
                for e in occ.get(k, ()):
                    if e[3] & mask:
                        both = common_terms(lo, hi, step, e[0], e[1], e[2])
                        if both is not None:
                            low_hit = both[0] if low_hit is None else min(low_hit, both[0])
                            high_hit = both[1] if high_hit is None else max(high_hit, both[1])
            if low_hit is None:
                continue
            if lo == hi or step != 1:
                span = max(span, 0)
            elif direction == "E":  # the diagonals descend from the first; later, all are lower
                span = max(span, first - low_hit)
            else:
                span = max(span, high_hit - first)
        return span

    def take_stream(self, direction: str, stream: int, paths: list[tuple]) -> None:
        """Reserve one stream along `paths` (from `stream_paths`); the caller checked it free."""
        self.streams_taken += 1
        occ = self.streams.get((direction, stream))
        if occ is None:
            occ = self.streams[(direction, stream)] = {}
        for lo, hi, step, mask, _ in paths:
            self._journal.append(("i", insert(occ, (lo, hi, step, mask))))

    def add_issue(self, issue: Issue) -> Issue:
        self.issues.append(issue)
        return issue
