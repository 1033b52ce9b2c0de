"""Free SRAM seen per slice: the packing placement's view (SramAllocator.pack).

The allocator's fast policy (sram.py) looks at its fresh room group by group and at released blocks of exactly the
width asked: released f16 blocks (2 slices) never serve an f32 store (4 slices), fresh room left in a few hundred
addresses per slice never holds a 2048-row segment, and a model whose estimate is half the chip runs out of SRAM
(issue 16: a YOLOv8n-like detector, 112 MB estimated of 231 MB). Here every slice's free addresses in one bank are
intervals (fresh room between its bump pointer and its top, released blocks covering it), and a slice group's free space is the
intersection of its slices' intervals, whatever blocks they came from. Each interval carries `not_before`, the last
access of the space's previous owner (-1 for fresh room)."""
from __future__ import annotations

Interval = tuple[int, int, int]  # (first address, one past the last, not_before)


def free_intervals(sram, hemisphere: str, bank: int, reusable: bool) -> dict[int, list[Interval]]:
    """Per slice of `hemisphere`: its free intervals in `bank`, sorted, those that meet joined (the later
    not_before). Released blocks count only for `reusable` stores (ones that start empty)."""
    base = 0 if hemisphere == "W" else sram.half
    slices = range(base, base + sram.half)
    found: dict[int, list[Interval]] = {s: [] for s in slices}
    if reusable:
        for (_, hemi), blocks in sram.free.items():
            if hemi != hemisphere:
                continue
            for first, width, b, addr, n, not_before in blocks:
                if b == bank:
                    for s in range(first, first + width):
                        found[s].append((addr, addr + n, not_before))
    for s in slices:
        if sram.next[s][bank] < sram.top[s][bank]:
            found[s].append((sram.next[s][bank], sram.top[s][bank], -1))
        found[s] = _join(sorted(found[s]))
    return found


def _join(intervals: list[Interval]) -> list[Interval]:
    joined: list[Interval] = []
    for lo, hi, nb in intervals:
        if joined and joined[-1][1] == lo:
            plo, _, pnb = joined[-1]
            joined[-1] = (plo, hi, max(pnb, nb))
        else:
            joined.append((lo, hi, nb))
    return joined


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Addresses free in both (sorted interval lists), with the later not_before."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi, max(a[i][2], b[j][2])))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def carve(block: list, first: int, width: int, addr: int, count: int) -> list[list]:
    """What stays free of a released block [slice, width, bank, addr, count, not_before] once slices
    first..first+width-1 x addresses addr..addr+count-1 are taken: its slices outside the group (all its addresses)
    and, on the group's slices, its addresses below and above the ones taken."""
    s0, w0, bank, a0, n0, nb = block
    s1, a1 = s0 + w0, a0 + n0
    lo, hi = max(s0, first), min(s1, first + width)
    pieces = [[s0, lo - s0, bank, a0, n0, nb], [hi, s1 - hi, bank, a0, n0, nb],
              [lo, hi - lo, bank, a0, min(a1, addr) - a0, nb],
              [lo, hi - lo, bank, max(a0, addr + count), a1 - max(a0, addr + count), nb]]
    return [p for p in pieces if p[1] > 0 and p[4] > 0]
