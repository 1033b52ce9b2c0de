"""SRAM space for the static schedule: bump allocation per slice and bank, released blocks reused or joined, a
packing placement over every slice's free addresses when that finds no room (packing.py), and bordered stores kept
whole for a later store of the same layout."""
from __future__ import annotations

from lpusim.compiler.schedule import packing
from lpusim.errors import CompileError, OutOfSram

# A released block whose old owner is read this long after the new owner's job could start is passed over: the job
# would wait for it (issue 16's detector head: blocks free 250-350K cycles past the job, beyond the scheduler's
# search limit). Waits measured on the models that fit before: none on ResNet-50/18 or MobileNetV2, at most 8,827
# cycles on BERT-base, so their placements do not change.
MAX_REUSE_WAIT = 50_000


class SramAllocator:
    """Bump allocation of MEM addresses, per slice and bank; a tensor tile of w-byte elements takes w slices."""

    def __init__(self, chip):
        self.chip = chip
        self.half = chip.mem_slices // 2
        split = chip.mem_words // 2
        self.next = [[0, split] for _ in range(chip.mem_slices)]
        self.limit = [split, chip.mem_words]  # one past each bank's last address
        # per slice and bank, one past the last address bump allocation may hand out: the bank's limit, less the
        # rows kept for SXM tables not placed yet (`keep`)
        self.top = [[split, chip.mem_words] for _ in range(chip.mem_slices)]
        self.cursor = {}  # (hemisphere, bank) -> next group start inside the hemisphere
        self.bytes_used = 0  # the footprint: every address ever handed out once
        # Released blocks: [first slice, width, bank, addr, count, not_before], by (width, hemisphere), in release
        # order. A block is reused only by a store whose writes all commit after `not_before` (the old owner's
        # last access).
        self.free: dict[tuple[int, str], list[list[int]]] = {}
        self.reserved: set[int] = set()  # slices kept for the SXM jobs' tables and scratch (alloc_at only)
        self.weights_to_come = 0  # bytes of weights not placed yet (the scheduler counts them down)
        # join released blocks (`coalesce`) once fresh room plus the weights to come pass this share of SRAM;
        # 0: whenever no released block fits (Scheduler(join_released=True), the retry after an out-of-SRAM)
        self.join_at = 1.0
        # a store's later segments first on its earlier ones' slices (`stacked`): only in the retry after an
        # out-of-SRAM (Scheduler(join_released=True)), since spread segments let a consumer read one segment while
        # its producer writes the next (stacked always: light ResNet-50 fp16 667,161 -> 811,854 cycles)
        self.stack_segments = False
        # the earliest start of the job whose stores are being placed, None if not known (the scheduler sets it)
        self.soon: int | None = None

    def alloc_at(self, first: int, width: int, count: int, bank: int, kept: bool = False) -> int:
        """`count` addresses in slices first..first+width-1 (reserved ones included): the address. `kept`: an SXM
        table, which may take the rows `keep` kept for the tables (and gives them back as it does)."""
        slices = range(first, first + width)
        addr = max(self.next[s][bank] for s in slices)
        share = {s: min(count, self.limit[bank] - self.top[s][bank]) if kept else 0 for s in slices}
        if addr + count > min(self.top[s][bank] + share[s] for s in slices):
            raise CompileError(f"out of SRAM in the slices kept for SXM tables ({first}..{first + width - 1})")
        for s in slices:
            self.next[s][bank] = addr + count
            self.top[s][bank] += share[s]
        self.bytes_used += width * count * self.chip.lanes
        return addr

    def keep(self, first: int, width: int, count: int, bank: int) -> bool:
        """Keep `count` free addresses of `bank` in slices first..first+width-1 for the SXM tables: other stores
        (weights may share those slices) stop `count` short of the bank's end until `alloc_at(kept=True)` takes
        them. Whether they were free."""
        slices = range(first, first + width)
        if max(self.next[s][bank] for s in slices) + count > min(self.top[s][bank] for s in slices):
            return False
        for s in slices:
            self.top[s][bank] -= count
        return True

    def release(self, slice_index: int, width: int, addr: int, count: int, not_before: int) -> None:
        bank = int(addr >= self.limit[0])
        key = (width, "W" if slice_index < self.half else "E")
        self.free.setdefault(key, []).append([slice_index, width, bank, addr, count, not_before])

    def short_of_room(self, extra: int = 0) -> bool:
        """Fresh room plus the weights to come would pass `join_at` of SRAM with `extra` more bytes: then reuse
        that costs waiting for an old owner's last access (joined blocks, bordered stores) is worth it."""
        return self.bytes_used + self.weights_to_come + extra > self.join_at * self.chip.sram_bytes

    def too_late(self, not_before: int) -> bool:
        return self.soon is not None and not_before > self.soon + MAX_REUSE_WAIT

    def alloc_reusable(self, width: int, count: int, hemisphere: str, bank: int, avoid: set,
                       near: int | None = None) -> tuple[int, int, int]:
        """Like `alloc` (same hemisphere, `near` as there), preferring released blocks: (first slice, address,
        not_before)."""
        got = self.take_released(width, count, hemisphere, avoid)
        if got is None and self.short_of_room(width * count * self.chip.lanes):
            self.coalesce()
            got = self.take_released(width, count, hemisphere, avoid)
        if got is not None:
            return got
        try:
            s, addr = self.alloc(width, count, hemisphere, bank, avoid, same_hemisphere=True, near=near)
        except CompileError:  # no fresh room: released blocks joined where they meet, or part of a wider one
            self.coalesce()
            got = self.take_released(width, count, hemisphere, avoid) or \
                self.split_wider(width, count, hemisphere, avoid)
            if got is None:
                raise
            return got
        return s, addr, -1

    def take_released(self, width: int, count: int, hemisphere: str, avoid: set) -> tuple[int, int, int] | None:
        """`count` addresses of the first released block of exactly `width` slices that holds them."""
        blocks = self.free.get((width, hemisphere), ())
        for i, block in enumerate(blocks):
            s, w, b, addr, n, not_before = block
            if n < count or self.too_late(not_before):
                continue
            if any(x in avoid or x in self.reserved for x in range(s, s + w)):
                continue
            if n == count:
                del blocks[i]
            else:
                block[3] += count
                block[4] -= count
            return s, addr, not_before
        return None

    def coalesce(self) -> None:
        """Join released blocks of the same slices and bank whose addresses continue one another (the later
        not_before of the two): at batch > 1 many [S]-row blocks of per-part stores meet [B*S]-row requests.
        Only when fresh room would run short (`alloc_reusable`): joined blocks change later placements (measured
        4-7% more cycles on BERT-base at batch 1 when done at every release)."""
        for key, blocks in self.free.items():
            blocks.sort(key=lambda bl: (bl[0], bl[2], bl[3]))
            joined = []
            for bl in blocks:
                last = joined[-1] if joined else None
                if last and last[0] == bl[0] and last[2] == bl[2] and last[3] + last[4] == bl[3]:
                    last[4] += bl[4]
                    last[5] = max(last[5], bl[5])
                else:
                    joined.append(list(bl))
            self.free[key] = joined

    def split_wider(self, width: int, count: int, hemisphere: str, avoid: set) -> tuple[int, int, int] | None:
        """The first `width` slices and `count` addresses of a released block of more slices (an f32 store's
        space for an f16 or i8 one): the rest stays free as a block of the other slices (all its addresses) and
        one of these slices' remaining addresses."""
        for wider in sorted(k[0] for k in self.free if k[1] == hemisphere and k[0] > width):
            blocks = self.free[(wider, hemisphere)]
            for i, block in enumerate(blocks):
                s, w, b, addr, n, not_before = block
                if n < count or self.too_late(not_before) or \
                        any(x in avoid or x in self.reserved for x in range(s, s + width)):
                    continue
                del blocks[i]
                self.free.setdefault((w - width, hemisphere), []).append([s + width, w - width, b, addr, n,
                                                                           not_before])
                if n > count:
                    self.free.setdefault((width, hemisphere), []).append([s, width, b, addr + count, n - count,
                                                                          not_before])
                return s, addr, not_before
        return None

    def alloc(self, width: int, count: int, hemisphere: str, bank: int, avoid: set | None = None,
              same_hemisphere: bool = False, use_reserved: bool = False, near: int | None = None) -> tuple[int, int]:
        """`width` consecutive slices of one hemisphere with `count` free addresses each: (first slice, address).

        Tries the slice group starting at `near` first (a store's earlier segment: its segments stacked in few
        slices, `stacked`), then the preferred hemisphere and bank, then the other bank, then (unless
        `same_hemisphere`) the other hemisphere."""
        if near is not None:
            got = self.stacked(near, width, count, bank, avoid or set(), use_reserved)
            if got is not None:
                self.bytes_used += width * count * self.chip.lanes
                return got
        other = "E" if hemisphere == "W" else "W"
        order = [(hemisphere, bank), (hemisphere, 1 - bank)]
        if not same_hemisphere:
            order += [(other, bank), (other, 1 - bank)]
        for hemi, b in order:
            got = self._alloc_in(width, count, hemi, b, avoid or set(), use_reserved)
            if got is not None:
                self.bytes_used += width * count * self.chip.lanes
                return got
        raise OutOfSram(f"out of SRAM: a tile needs {width} slices x {count} vectors and no slice group has "
                           f"room ({self.bytes_used} of {self.chip.sram_bytes} bytes already placed)")

    def pack(self, width: int, count: int, hemisphere: str, bank: int, avoid: set,
             reusable: bool) -> tuple[int, int, int, int]:
        """The last resort once `alloc` / `alloc_reusable` find no room in either hemisphere: the slice group of
        `hemisphere` whose free addresses (packing.py: fresh room and, if `reusable`, released blocks of any width,
        wherever they meet) hold `count` rows in the smallest run (best fit; the preferred bank on a tie), else
        the largest run there is. (first slice, address, rows placed (<= count), not_before). Only taken when
        the fast policy fails, so models it places keep their placements (and cycles).

        A released block's not_before can lie far past the job that writes the new store (its old owner was
        read late), so runs are ranked first by how long past `self.soon` (the job's earliest start) they would
        keep it waiting, then by fit."""
        blocked = avoid | self.reserved
        base = 0 if hemisphere == "W" else self.half
        best = None
        for b in (bank, 1 - bank):
            free = packing.free_intervals(self, hemisphere, b, reusable)
            for g in range(base, base + self.half - width + 1):
                if not blocked.isdisjoint(range(g, g + width)):
                    continue
                runs = free[g]
                for s in range(g + 1, g + width):
                    runs = packing.intersect(runs, free[s])
                for lo, hi, nb in runs:
                    n = hi - lo
                    wait = max(nb - (self.soon or 0), 0)
                    key = (wait, 0, n - count, b != bank) if n >= count else (wait, 1, -n, b != bank)
                    if best is None or key < best[0]:
                        best = (key, g, b, lo, min(n, count))
        if best is None:
            raise OutOfSram(f"out of SRAM: a tile needs {width} slices x {count} vectors and no slice group of "
                            f"hemisphere {hemisphere} has a free address left ({self.bytes_used} of "
                            f"{self.chip.sram_bytes} bytes already placed)")
        _, g, b, addr, n = best
        return g, addr, n, self.take(g, width, b, addr, n, hemisphere)

    def take(self, first: int, width: int, bank: int, addr: int, count: int, hemisphere: str) -> int:
        """Take slices first.. x addresses addr.. (all free) from the released blocks and fresh room they lie in:
        the latest not_before of the blocks taken from."""
        not_before, added = -1, []
        for key, blocks in self.free.items():
            if key[1] != hemisphere:
                continue
            kept = []
            for bl in blocks:
                s, w, b, a, n, nb = bl
                if b != bank or s + w <= first or s >= first + width or a + n <= addr or a >= addr + count:
                    kept.append(bl)
                else:
                    not_before = max(not_before, nb)
                    added += packing.carve(bl, first, width, addr, count)
            blocks[:] = kept
        for s in range(first, first + width):
            nxt = self.next[s][bank]
            if addr + count > nxt:
                if addr > nxt:  # fresh room skipped over stays free
                    added.append([s, 1, bank, nxt, addr - nxt, -1])
                self.bytes_used += (addr + count - nxt) * self.chip.lanes
                self.next[s][bank] = addr + count
        for bl in added:
            self.free.setdefault((bl[1], hemisphere), []).append(bl)
        return not_before

    def stacked(self, first: int, width: int, count: int, bank: int, avoid: set, use_reserved: bool):
        """`count` fresh addresses in slices first..first+width-1 (`bank`, else the other), or None: a store's
        next segment on its previous one's slices. A store of many segments spread one segment per slice group
        (the cursor's round) touches every slice of its hemisphere, and a job streaming two such stores (a
        full-resolution image and its mask, PP-OCR det's upsampling head) then finds no slice apart from both for
        its output: out of SRAM at a third of the chip."""
        slices = range(first, first + width)
        if not (avoid if use_reserved else avoid | self.reserved).isdisjoint(slices):
            return None
        for b in (bank, 1 - bank):
            addr = max(self.next[s][b] for s in slices)
            if addr + count <= min(self.top[s][b] for s in slices):
                for s in slices:
                    self.next[s][b] = addr + count
                return first, addr
        return None

    def _alloc_in(self, width, count, hemi, bank, avoid, use_reserved=False):
        half = self.half
        base = 0 if hemi == "W" else half
        key = (hemi, bank)
        start = self.cursor.get(key, 0)
        blocked = avoid if use_reserved else avoid | self.reserved
        nxt = self.next
        for step in range(half):
            g = (start + step) % half
            if g + width > half:
                continue
            slices = range(base + g, base + g + width)
            if blocked and not blocked.isdisjoint(slices):
                continue
            addr = max([nxt[s][bank] for s in slices])
            if addr + count <= min([self.top[s][bank] for s in slices]):
                for s in slices:
                    self.next[s][bank] = addr + count
                self.cursor[key] = (g + width) % self.half
                return base + g, addr
        return None


class BorderedPool:
    """Released stores with a border, kept whole for a later store of the same layout.

    A bordered store's border is never written (it reads as zeros or its pad value from the start), so its space
    can go to a later store of the same format, geometry, border, pad value and column tiles as it is: the border
    still holds what the new owner needs, only the interior is rewritten (after the old owner's last access). A
    released bordered store goes here only while such a store is still to come (`pending`); otherwise its blocks
    go back to the allocator like any other (and lose their clean border)."""

    def __init__(self):
        self.pending: dict[tuple, int] = {}  # layout key -> stores of that layout not placed yet
        self.free: dict[tuple, list[tuple[list, int]]] = {}  # layout key -> [(tiles of segments, last access)]

    @staticmethod
    def key(store, ntiles: int, pad_value: float) -> tuple:
        return (store.fmt, store.width, store.geom, store.pad, store.storage_rows, ntiles, pad_value)

    def expect(self, key: tuple) -> None:
        self.pending[key] = self.pending.get(key, 0) + 1

    def placed(self, key: tuple) -> None:
        if self.pending.get(key):
            self.pending[key] -= 1

    def keep(self, key: tuple, tiles: list, last_access: int) -> bool:
        """Keep a released store's tiles (per column tile, (segment, its last use)) for a later store of its
        layout: whether it was kept."""
        if not self.pending.get(key):
            return False
        self.free.setdefault(key, []).append((tiles, last_access))
        return True

    def take(self, key: tuple, blocked) -> tuple[list, int] | None:
        """(tiles, last access) of a kept store none of whose column tile nt touches `blocked(nt)`, or None."""
        kept = self.free.get(key, [])
        for i, (tiles, last) in enumerate(kept):
            if all(not any(blocked(nt, sg.slice) for sg, _ in segs) for nt, segs in enumerate(tiles)):
                del kept[i]
                return tiles, last
        return None
