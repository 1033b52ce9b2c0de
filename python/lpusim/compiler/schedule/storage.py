"""Where tensors live in MEM and which addresses a view of them reads.

A `Store` is one tensor in one format: per column tile of 320 lanes, its storage rows split into `Segment`s, each in
`width` consecutive slices of one hemisphere (byte plane b in slice + b) from some address on. Image tensors keep a
border of `pad` rows around each image, so storage row of pixel (n, h, w) is (n*Hp + h + pad)*Wp + w + pad.

`view_runs` turns "output rows r0..r1 read this view" into runs of storage rows with a constant address step, and
`segment_runs` cuts those at segment boundaries into `MemRun`s: what one READ/WRITE (+ REPEAT) instruction does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lpusim.compiler.ir import Tensor, View

WIDTH = {"f32": 4, "f16": 2, "i8": 1, "u8": 1, "i32": 4}
# Longest run of rows placed in one slice group: spreads big tensors over slices (more ports, more queues). The
# scheduler's first try takes shorter ones (scheduler.SPREAD_SEGMENT_ROWS), its retry after an out-of-SRAM these.
MAX_SEGMENT_ROWS = 2048


@dataclass
class Segment:
    lo: int  # first storage row
    hi: int  # one past the last
    slice: int
    addr: int
    not_before: int = -1  # reused space: every write must commit after this cycle (the previous owner's last use)
    last_access: int = -1  # the last cycle a READ or WRITE of these rows touches a bank (its space's reuse)


@dataclass
class Store:
    tensor: str
    fmt: str
    width: int
    rows: int  # logical rows (pixels)
    geom: tuple | None
    pad: int
    storage_rows: int
    tiles: list[list[Segment]] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)  # per tile: first cycle a READ sees all of it
    # per tile: first cycle a READ sees each storage row (rows never written: 0), from every WRITE of the tile;
    # None once a write was not recorded row by row (then `ready` holds for every row). See `rows_ready`.
    row_ready: dict = field(default_factory=dict)
    last_access: int = -1  # the last cycle any READ or WRITE of it touches a bank (for reuse)
    # the last access of a run not known by segment (MemRun.seg None): every segment's space waits for it too
    loose_access: int = -1
    released: bool = False  # its space is back with the allocator

    @classmethod
    def for_tensor(cls, t: Tensor, fmt: str) -> "Store":
        if t.geom is not None and t.pad:
            n, h, w = t.geom
            storage = n * (h + 2 * t.pad) * (w + 2 * t.pad)
        else:
            storage = t.rows
        return cls(t.name, fmt, WIDTH[fmt], t.rows, t.geom, t.pad if t.geom else 0, storage)

    def record_write(self, tile: int, rows: np.ndarray | None, cycles: np.ndarray | None) -> None:
        """Storage rows `rows` of `tile` readable from `cycles` on (rows None: the write is not known row by row;
        the tile's readiness falls back to `ready`)."""
        if rows is None:
            self.row_ready[tile] = None
            return
        if tile in self.row_ready and self.row_ready[tile] is None:
            return
        arr = self.row_ready.get(tile)
        if arr is None:
            arr = self.row_ready[tile] = np.zeros(self.storage_rows, dtype=np.int64)
        np.maximum.at(arr, rows, cycles)

    def rows_ready(self, tile: int) -> np.ndarray | None:
        """Per storage row of `tile`, the first cycle a READ sees it; None: `ready[tile]` for every row. Every
        writer of a store is placed before its readers (program order), so a row no write has reached yet is one
        no write will reach: its contents are static (a border, a constant, an input)."""
        return self.row_ready.get(tile)

    def free_after(self, seg: Segment) -> int:
        """The last cycle the segment's space is used by this store: its own accesses and those not known by
        segment."""
        return max(seg.last_access, self.loose_access)

    def interior_rows(self) -> np.ndarray:
        """Storage row of every logical row, in logical order."""
        if not self.pad:
            return np.arange(self.rows)
        n, h, w = self.geom
        p = self.pad
        hp, wp = h + 2 * p, w + 2 * p
        nn, hh, ww = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
        return ((nn * hp + hh + p) * wp + ww + p).reshape(-1)


@dataclass
class MemRun:
    """`count` rows for output rows out_start.. from `slice` (+ byte plane), addresses addr, addr+stride, ..."""

    out_start: int
    slice: int
    addr: int
    count: int
    stride: int
    not_before: int = -1
    row: int = -1  # storage row of the first row (-1: not known; readiness then falls back to Store.ready)
    seg: Segment | None = None  # the segment it lies in (None: not known; its accesses count for the whole store)


def _merge(runs):
    """Join runs that continue one another with one address step (a single row takes any step)."""
    merged = []
    for o, s, c, st in runs:
        if merged:
            po, ps, pc, pst = merged[-1]
            step = pst if pc > 1 else s - ps
            if po + pc == o and step > 0 and s == ps + pc * step and (c == 1 or st == step):
                merged[-1] = (po, ps, pc + c, step)
                continue
        merged.append((o, s, c, st))
    return merged


def view_runs(view: View, store: Store, out_geom: tuple | None, out_rows: int, r0: int, r1: int):
    """(out_start relative to r0, storage row, count, stride) runs covering output rows [r0, r1)."""
    if view.rows is not None:  # a row map: runs of rows with one address step (any sign)
        storage = store.interior_rows()[np.asarray(view.rows[r0:r1], dtype=np.int64)]
        runs = []
        for i, row in enumerate(storage.tolist()):
            if runs:
                o, s0, c, st = runs[-1]
                step = st if c > 1 else row - s0
                if row == s0 + c * step:
                    runs[-1] = (o, s0, c + 1, step)
                    continue
            runs.append((i, row, 1, 1))
        return runs
    if not view.spatial:
        if store.rows == 1 and out_rows > 1:
            return [(0, 0, r1 - r0, 0)]  # a broadcast row: the same address for every output row
        if not store.pad:
            return [(0, r0, r1 - r0, 1)]
        n_, h, w = store.geom
        out_geom = store.geom
        s, dh, dw, d, pt, pl = 1, 0, 0, 1, 0, 0
    else:
        s, dh, dw, d, pt, pl = view.stride, view.dh, view.dw, view.dilation, view.pad_top, view.pad_left
    n_out, ho_n, wo_n = out_geom
    p = store.pad
    _, h_in, w_in = store.geom
    hp, wp = h_in + 2 * p, w_in + 2 * p
    runs = []
    first_line, last_line = r0 // wo_n, (r1 - 1) // wo_n
    for line in range(first_line, last_line + 1):  # one output image row (n, ho)
        n, ho = divmod(line, ho_n)
        lo = max(r0, line * wo_n)
        hi = min(r1, (line + 1) * wo_n)
        wo = lo - line * wo_n
        hin = ho * s + dh * d - pt + p
        win = wo * s + dw * d - pl + p
        runs.append((lo - r0, (n * hp + hin) * wp + win, hi - lo, s if hi - lo > 1 else 1))
    return _merge(runs)


def segment_runs(store: Store, tile: int, runs) -> list[MemRun]:
    out = []
    segs = store.tiles[tile]
    for out_start, row, count, stride in runs:
        i = 0
        while i < count:
            r = row + i * stride
            seg = next((sg for sg in segs if sg.lo <= r < sg.hi), None)
            if seg is None:
                raise AssertionError(f"storage row {r} of {store.tensor} is outside its segments")
            if stride > 0:
                n = min(count - i, (seg.hi - r + stride - 1) // stride)
            elif stride < 0:
                n = min(count - i, (r - seg.lo) // -stride + 1)
            else:
                n = count - i
            out.append(MemRun(out_start + i, seg.slice, seg.addr + (r - seg.lo), n, stride, seg.not_before, r,
                              seg))
            i += n
    return out


class StoreTable(dict):
    """(tensor, format) -> Store, with the formats stored per tensor, so the stores of a few tensors are found
    without scanning every store of the graph."""

    def __init__(self):
        super().__init__()
        self.formats: dict[str, list[str]] = {}

    def __setitem__(self, key, value):
        if key not in self:
            self.formats.setdefault(key[0], []).append(key[1])
        super().__setitem__(key, value)

    def __delitem__(self, key):
        super().__delitem__(key)
        self.formats[key[0]].remove(key[1])

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def pop(self, key, *default):
        if key in self:
            value = self[key]
            del self[key]
            return value
        return dict.pop(self, key, *default)

    def popitem(self):
        key, value = dict.popitem(self)
        self.formats[key[0]].remove(key[1])
        return key, value

    def clear(self):
        super().clear()
        self.formats.clear()


# ----- host images of stores (the constant SRAM image, and the runtime's input images) -----------------------
BYTE_ORDER = {"f32": "<f4", "f16": "<f2", "i32": "<i4", "i8": "i1", "u8": "u1"}  # numpy types of the formats


def byte_planes(values: np.ndarray, dtype: str, lanes: int) -> list[np.ndarray]:
    """A [rows, <=lanes] array as `width` uint8 [rows, lanes] byte planes (little endian), zero padded."""
    np_type = BYTE_ORDER[dtype]
    rows = values.shape[0]
    padded = np.zeros((rows, lanes), dtype=np_type)
    padded[:, :values.shape[1]] = values.astype(np_type, copy=False)
    raw = padded.view(np.uint8).reshape(rows, lanes, WIDTH[dtype])
    return [np.ascontiguousarray(raw[:, :, b]) for b in range(WIDTH[dtype])]


def store_image(store: Store, storage: np.ndarray, lanes: int):
    """mem_init entries (slice, addr, uint8 plane) that put a [storage_rows, cols] array into `store`."""
    for nt, segs in enumerate(store.tiles):
        cols = storage[:, nt * lanes:(nt + 1) * lanes]
        for seg in segs:
            for b, plane in enumerate(byte_planes(cols[seg.lo:seg.hi], store.fmt, lanes)):
                yield (seg.slice + b, seg.addr, plane)
