"""A bounded cache of compiled programs, least recently used first out: one program per distinct key (input shapes,
and for the ONNX backend the values it binds), shared by `lpusim.compile` of a model with dynamic dimensions
(runtime/dynamic.py) and the backend (backend/cache.py). Bounded because a caller whose shapes change on every run
would otherwise keep every program it ever compiled."""
from __future__ import annotations

from collections import OrderedDict

MAX_PROGRAMS = 16


class ProgramCache(OrderedDict):
    """An OrderedDict of compiled programs by key, holding at most `limit` (the least recently used leaves)."""

    def __init__(self, limit: int = MAX_PROGRAMS):
        super().__init__()
        self.limit = limit
        self.compiles = 0  # programs compiled over this cache's life (evicted ones included)

    def get_or_compile(self, k, compile_fn):
        if k in self:
            self.move_to_end(k)
            return self[k]
        program = compile_fn()
        self.compiles += 1
        self[k] = program
        while len(self) > self.limit:
            self.popitem(last=False)
        return program
