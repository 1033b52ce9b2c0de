"""The chip's row layout of an ONNX tensor: lanes hold the last axis (an NCHW image's channels), rows the rest.

Shared by the lowering (constants placed in row layout) and the runtime (host arrays in and out).
"""
from __future__ import annotations

import numpy as np


def as_matrix(shape: tuple) -> tuple[int, int]:
    """An ONNX shape as (rows, cols): an NCHW image has channels on the lanes and a row per pixel; any other
    shape has its last dimension on the lanes and everything before it batched."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 4:
        n, c, h, w = shape
        return int(n * h * w), int(c)
    return int(np.prod(shape[:-1], dtype=np.int64)), int(shape[-1])


def geom(shape: tuple) -> tuple | None:
    return (int(shape[0]), int(shape[2]), int(shape[3])) if len(shape) == 4 else None


def to_rows(array: np.ndarray, shape: tuple) -> np.ndarray:
    """A host array of ONNX `shape` in the chip's row layout (see `as_matrix`)."""
    array = np.asarray(array)
    if len(shape) == 4:
        array = array.transpose(0, 2, 3, 1)
    rows, cols = as_matrix(shape)
    return np.ascontiguousarray(array.reshape(rows, cols))


def im2col(array: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """NCHW -> [N*Ho*Wo, C*kh*kw] patches, column (c, i, j) = c*kh*kw + i*kw + j, zero padding."""
    n, c, h, w = array.shape
    kh, kw = kernel
    padded = np.zeros((n, c, h + pads[0] + pads[2], w + pads[1] + pads[3]), dtype=array.dtype)
    padded[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w] = array
    ho = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    cols = np.empty((n, ho, wo, c, kh, kw), dtype=array.dtype)
    for i in range(kh):
        for j in range(kw):
            hs, ws = i * dilations[0], j * dilations[1]
            win = padded[:, :, hs:hs + strides[0] * (ho - 1) + 1:strides[0], ws:ws + strides[1] * (wo - 1) + 1:strides[1]]
            cols[:, :, :, :, i, j] = win.transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, c * kh * kw)


def from_rows(matrix: np.ndarray, shape: tuple) -> np.ndarray:
    """The inverse of `to_rows`."""
    if len(shape) == 4:
        n, c, h, w = shape
        return np.ascontiguousarray(matrix.reshape(n, h, w, c).transpose(0, 3, 1, 2))
    return matrix.reshape(shape)
