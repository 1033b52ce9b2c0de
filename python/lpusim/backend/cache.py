"""The key of the backend's compiled programs: one program per distinct run-time key (input shapes and bound
parameter values), least recently used first out.

A key holds the input shapes and a digest of every bound value (name, dtype, shape and bytes), so two runs with
equal parameters share one program and any difference compiles another. The programs live in a
`runtime.cache.ProgramCache` (bounded: a model whose bound inputs change on every run would otherwise keep every
program it ever compiled).
"""
from __future__ import annotations

import hashlib

import numpy as np



def key(shapes: dict, values: dict) -> tuple:
    """The cache key of a run: its input shapes and a digest of its bound values."""
    digest = hashlib.sha256()
    for name in sorted(values):
        a = np.ascontiguousarray(values[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return tuple(sorted(shapes.items())), digest.hexdigest()
