"""Host-side conversions of graph inputs and outputs: integer and bool inputs to the chip's float32, and outputs
back to their ONNX type."""
from __future__ import annotations

import numpy as np

from lpusim.errors import LpusimError, ModelError


def host_input(name: str, array, kind: tuple | None) -> np.ndarray:
    """A graph input as the chip's float32: bool -> 1.0/0.0, integers exactly (ModelError naming the input when a
    value has no exact float32 form, |v| > 2^24); float inputs as before."""
    array = np.asarray(array)
    if kind is None:
        return array.astype(np.float32)
    if array.dtype.kind not in "biu":
        raise ModelError(f"input '{name}' is declared {kind[0]} and was given a {array.dtype} array")
    converted = array.astype(np.float32)
    if array.dtype.kind != "b" and np.any(converted.astype(np.float64) != array.astype(np.float64)):
        bad = array[converted.astype(np.float64) != array.astype(np.float64)].ravel()[0]
        raise ModelError(f"input '{name}': the value {int(bad)} has no exact float32 form (the chip computes in "
                         f"float32: integers up to 2^24 in magnitude)")
    return converted


def decode_output(name: str, array: np.ndarray, dtype) -> np.ndarray:
    """An output the chip computed as float32, returned as its ONNX integer type (ArgMax's int64, Cast to int):
    the values must be whole numbers (LpusimError otherwise: a compiler bug, not a rounding)."""
    if dtype is None:
        return array
    bad = ~np.isfinite(array) | (np.floor(array) != array)
    if bad.any():
        raise LpusimError(f"output '{name}' is {np.dtype(dtype).name}, but the chip produced {int(bad.sum())} "
                          f"value(s) that are not whole numbers (e.g. {array[bad].ravel()[0]!r})")
    return array.astype(dtype)
