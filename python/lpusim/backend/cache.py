"""The backend's compiled programs, one per distinct run-time key (input shapes and bound parameter values),
least recently used first out.

A key holds the input shapes and a digest of every bound value (name, dtype, shape and bytes), so two runs with
equal parameters share one program and any difference compiles another. The cache is bounded (MAX_PROGRAMS): a
model whose bound inputs change on every run would otherwise keep every program it ever compiled.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

MAX_PROGRAMS = 16


def key(shapes: dict, values: dict) -> tuple:
    """The cache key of a run: its input shapes and a digest of its bound values."""
    digest = hashlib.sha256()
    for name in sorted(values):
        a = np.ascontiguousarray(values[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return tuple(sorted(shapes.items())), digest.hexdigest()


class ProgramCache(OrderedDict):
    """An OrderedDict of compiled programs by `key`, holding at most `limit` (the least recently used leaves)."""

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
