"""Running a hand-written assembly program (docs/isa.md) on one chip: `lpusim asm FILE`."""
from __future__ import annotations

import time

from lpusim import _lpusim
from lpusim.chip import Chip
from lpusim.errors import LpusimError
from lpusim.files import MAX_ASSEMBLY_BYTES, read_text


def run_assembly_file(path: str, config=None, timing_only: bool = False) -> dict:
    """Assemble and simulate the program in `path` on the chip `config` (name, JSON file or dict): the simulator's
    statistics and memory dumps, plus `wall_s`. Errors name the file."""
    text = read_text(path, "assembly text", MAX_ASSEMBLY_BYTES)  # a regular UTF-8 text file, bounded
    chip = Chip.load(config)
    start = time.perf_counter()
    try:
        stats, _ = _lpusim.simulate(chip.to_json(), text, [], [], timing_only)
    except LpusimError as e:
        raise type(e)(f"{path}: {e}") from None
    stats["wall_s"] = time.perf_counter() - start
    return stats
