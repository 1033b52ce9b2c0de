"""Running a hand-written assembly program (docs/isa.md) on one chip: `lpusim asm FILE`."""
from __future__ import annotations

import os
import time

from lpusim import _lpusim
from lpusim.chip import Chip
from lpusim.errors import LpusimError


MAX_ASSEMBLY_BYTES = 1 << 30  # an assembly text is read whole: larger than this is refused, not read


def run_assembly_file(path: str, config=None, timing_only: bool = False) -> dict:
    """Assemble and simulate the program in `path` on the chip `config` (name, JSON file or dict): the simulator's
    statistics and memory dumps, plus `wall_s`. Errors name the file."""
    if not os.path.exists(path):
        raise LpusimError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise LpusimError(f"{path}: not a regular file (an assembly program is a text file)")
    size = os.path.getsize(path)
    if size > MAX_ASSEMBLY_BYTES:
        raise LpusimError(f"{path}: {size:,} bytes; an assembly text larger than {MAX_ASSEMBLY_BYTES:,} bytes is "
                          f"not read")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise LpusimError(f"{path}: not assembly text (byte {e.start} is not UTF-8; a binary file?)") from None
    chip = Chip.load(config)
    start = time.perf_counter()
    try:
        stats, _ = _lpusim.simulate(chip.to_json(), text, [], [], timing_only)
    except LpusimError as e:
        raise type(e)(f"{path}: {e}") from None
    stats["wall_s"] = time.perf_counter() - start
    return stats
