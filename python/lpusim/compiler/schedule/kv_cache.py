"""A KV cache kept in SRAM from one program run to the next (docs/llm.md section 3.5).

A decoder step reads `past_key_values.N.*` [B, kv, P, D] and writes `present.N.*` [B, kv, P + S, D]: the past with
S new rows appended. Every program of one generation (prefill chunks of S tokens, decode steps of 1) keeps each
layer's present at the same MEM addresses: a *cache region* of B*kv*T rows of D lanes (T = P + S, the maximum
context, the same in every program), f32, in the row layout of `heads_output` (block (b, h) is rows
(b*kv + h)*T ...). A program reads its past from that region shifted by its own S rows per block: past row
(b, h, i) is region row (b*kv + h)*T + S + i, the newest P rows of what the last program wrote. So the cache
slides: each step drops its S oldest rows, which the attention mask hides until the window is full (the rows
before the prompt are padding, masked as a left-padded prompt is). Nothing is sent to the host between steps.

The first program compiled places the regions first (before anything else, away from the slices kept for SXM
tables); later ones claim the same addresses before anything else. A program writes its present only after its
last read of the past (`not_before`: both views are of the same rows), and never releases either.
"""
from __future__ import annotations

from dataclasses import dataclass

from lpusim.compiler.schedule.storage import Segment, Store
from lpusim.errors import CompileError

@dataclass
class CacheRegion:
    """One layer's keys or values: the ONNX output `present` and input `past` that share the region. `tiles`:
    the region's MEM segments from an earlier program (None: this program places it)."""

    present: str
    past: str
    tiles: list[list[Segment]] | None = None


def region_slices(store: Store) -> frozenset[int]:
    """Every MEM slice a region's segments use (all byte planes)."""
    return frozenset(sg.slice + b for segs in store.tiles for sg in segs for b in range(store.width))


def claim(sram, tiles: list[list[Segment]], width: int, what: str) -> None:
    """Take exactly these segments from a fresh allocator (before anything else is placed in their slices)."""
    for segs in tiles:
        for sg in segs:
            bank = int(sg.addr >= sram.limit[0])
            for s in range(sg.slice, sg.slice + width):
                if sram.next[s][bank] > sg.addr:
                    raise CompileError(f"{what}: MEM slice {s} from address {sg.addr} is already taken; the KV "
                                       f"cache cannot stay where the earlier program put it")
                sram.next[s][bank] = sg.addr + (sg.hi - sg.lo)
            sram.bytes_used += width * (sg.hi - sg.lo) * sram.chip.lanes


def past_tiles(region: Store, blocks: int, past_rows: int, shift: int) -> list[list[Segment]]:
    """The past's segments inside the region: block b's rows i = 0..past_rows-1 are region rows
    b*T + shift + i (T = region rows per block), cut where the region's own segments end."""
    total = region.storage_rows // blocks
    if shift + past_rows != total:
        raise CompileError(f"KV cache: a past of {past_rows} rows and {shift} new rows do not make the region's "
                           f"{total} rows per block")
    tiles = []
    for segs in region.tiles:
        out = []
        for b in range(blocks):
            lo, hi = b * total + shift, (b + 1) * total  # region rows of this block's past
            for sg in segs:
                a, z = max(lo, sg.lo), min(hi, sg.hi)
                if a < z:
                    first = b * past_rows + (a - lo)
                    out.append(Segment(first, first + (z - a), sg.slice, sg.addr + (a - sg.lo)))
        tiles.append(out)
    return tiles
