"""Resize: nearest, linear and cubic, any scales or sizes, every coordinate_transformation_mode and nearest_mode,
antialias, exclude_outside, cubic_coeff_a, tf_crop_and_resize with its roi and extrapolation_value, axes.

ONNX Resize is separable: along each resized axis d, output index o is a weighted sum of input indices,
out[.., o, ..] = sum_i M_d[o, i] * in[.., i, ..]. The host computes each M_d [out_d, in_d] with the ONNX reference
evaluator itself (the node's own attributes, on a probe: the identity matrix eye(in_d) resized along its first axis
with axis d's scale or size and roi), so every mode, rounding rule, edge clamp and coefficient is ONNX's own; a row
of M_d the reference fills with extrapolation_value (tf_crop_and_resize outside the roi) is flagged instead.

On the chip (layout: lane axis = channels of an NCHW image, else the last axis; every other axis is rows):
* a row axis (H, W, N of an image; any axis but the last otherwise): tap k of each output row is its k-th nonzero
  entry of M_d (source index and weight); the pass for tap k reads the input rows through a row-map view (ir.View
  rows: one READ per run of rows, as for Gather) and multiplies by its weights (a constant, `_resize_weights`;
  an immediate when all are equal, nothing when all are 1), adding the previous tap's result: a VXM chain in
  float32, one pass per tap.
  Nearest is one tap of weight 1 per axis: all nearest axes become one row map, one exact f32 copy. Bilinear is
  2 passes per axis (the axis that shrinks most goes first), bicubic 4, antialiased downsampling as many as the
  kernel's footprint at that scale (at most MAX_TAPS). An axis that grows (up to FUSED_TAPS taps) is one pass
  instead, every tap a source of one chain (`_resize_fused`): a slice streams one view of a tensor at a time, so
  taps past the first read copies of the input, which upsampling makes the smaller tensor; no full-size partial
  sum is stored.
* the lane axis: `x @ M^T` on the MXM (a constant [C_in, C_out] matrix): x and M pass as fp16, the sum in f32.
* extrapolation_value (tf_crop_and_resize): flagged rows have zero weights; a constant holding the value where any
  axis is outside the roi is added on the VXM at the end.
Precision: row axes are float32 on the VXM with the weights the reference computed (rounded to float32), so the
result differs from onnxruntime's float32 only by the order of the additions; a lane-axis resize is fp16 (MXM).
keep_aspect_ratio_policy (not_larger, not_smaller): the probe repeats the policy with the axis that sets the scale.
"""
from __future__ import annotations

import numpy as np

from lpusim.compiler.ir import Node, Step, View
from lpusim.compiler.lower.fold import fold
from lpusim.compiler.lower.lanes import LANES, lane_axis, lane_matmul, shared_const
from lpusim.compiler.passes import fits_vxm
from lpusim.compiler.row_layout import as_matrix, from_rows, to_rows
from lpusim.errors import CompileError


MAX_TAPS = 64  # VXM passes per row axis (antialiased downsampling by a large factor has a wide footprint)

FULL_WEIGHT_BYTES = 8 << 20  # a tap's weights as one row per output row up to this size (else through a row map)

FUSED_TAPS = 4  # an upsampling axis of up to this many taps runs as one VXM pass (_resize_fused)


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def lower_resize(lw, node, a, args) -> None:
    _, x, shape = args[0]
    shape = tuple(int(d) for d in shape)
    r = len(shape)
    if any(v is not None and v[0] != "const" for v in args[1:]):
        raise CompileError(f"{lw.where(node)}: Resize needs constant roi/scales/sizes")
    mode = _s(a.get("mode", b"nearest"))
    if mode not in ("nearest", "linear", "cubic"):
        raise CompileError(f"{lw.where(node)}: Resize mode '{mode}' is not supported (nearest, linear, cubic)")
    opset = max([o.version for o in lw.model.opset_import if o.domain in ("", "ai.onnx")] or [1])
    consts = [None if v is None else np.asarray(v[1]) for v in args[1:]]
    consts = [None if c is None or c.size == 0 else c for c in consts]
    if opset < 11:  # Resize-10: (X, scales)
        roi, scales, sizes = None, consts[0] if consts else None, None
    else:
        roi, scales, sizes = (consts + [None] * 3)[:3]
    axes = [int(d) % r for d in a.get("axes", range(r))] if r else []
    out_sizes, probes = _resize_axes(lw, node, a, shape, axes, roi, scales, sizes)
    out_shape = tuple(out_sizes)
    maps, flags = {}, {}
    for d, probe in probes.items():
        m, flag = _resize_matrix(lw, node, a, opset, shape[d], out_sizes[d], probe)
        if flag.any():
            flags[d] = flag
        if m.shape == (shape[d], shape[d]) and np.array_equal(m, np.eye(shape[d], dtype=np.float32)):
            continue
        maps[d] = m
    mag = lw.magnitudes.get(node.input[0], lw.derived.get(x, 0.0))
    cur, cur_shape = x, shape
    lane = lane_axis(shape) if r else None
    if lane in maps:  # along the lanes: one constant matmul on the MXM (fp16 operands)
        m = maps.pop(lane)
        cur, cur_shape = _resize_lanes(lw, node, cur, cur_shape, m, mag, last=not maps and not flags)
        mag *= float(np.abs(m).sum(axis=1).max())
    row_axes = sorted(maps, key=lambda d: out_sizes[d] / shape[d])  # shrink first: fewer rows later
    unit = [d for d in row_axes if _taps(maps[d])[2]]  # nearest-like: one tap of weight 1
    weighted = [d for d in row_axes if d not in unit]
    groups = [[d] for d in weighted] or ([[]] if unit else [])
    if groups:
        groups[0] = groups[0] + unit  # the one-tap axes ride along the first pass's row maps
    for g, group in enumerate(groups):
        last = g == len(groups) - 1 and not flags
        cur, cur_shape = _resize_rows(lw, node, cur, cur_shape, group, maps, out_sizes, mag, last)
        for d in group:
            mag *= float(np.abs(maps[d]).sum(axis=1).max())
    if flags:  # tf_crop_and_resize outside the roi: the extrapolation value
        cur = _resize_extrapolate(lw, node, cur, out_shape, flags, float(a.get("extrapolation_value", 0.0)),
                                  mag)
    if cur == x:  # the identity
        lw.values[node.output[0]] = (x, out_shape)
        return
    lw.tensors[cur].shape = out_shape
    lw.values[node.output[0]] = (cur, out_shape)


# ----- the host's maps -------------------------------------------------------------------------------------
def _resize_axes(lw, node, a, shape, axes, roi, scales, sizes):
    """Per axis the output size and the probe's (scale | size, roi) as ONNX computes them."""
    policy = _s(a.get("keep_aspect_ratio_policy", b"stretch"))
    if scales is None and sizes is None:
        raise CompileError(f"{lw.where(node)}: Resize without scales or sizes")
    n = len(axes)
    if roi is not None:
        roi = np.asarray(roi, dtype=np.float64).ravel()
        if roi.size != 2 * n:
            raise CompileError(f"{lw.where(node)}: Resize roi of {roi.size} values for {n} axes")
    out = list(shape)
    probes = {}
    if sizes is not None:
        sizes = np.asarray(sizes, dtype=np.int64).ravel()
        if sizes.size != n:
            raise CompileError(f"{lw.where(node)}: Resize sizes of {sizes.size} values for {n} axes")
        ratio = [sizes[i] / shape[d] for i, d in enumerate(axes)]
        if policy != "stretch":
            k = int(np.argmin(ratio) if policy == "not_larger" else np.argmax(ratio))
            s = ratio[k]
            for i, d in enumerate(axes):
                out[d] = int(s * shape[d] + 0.5)
                # the probe repeats the policy with the axis that sets the scale (the same float64 ratio)
                probes[d] = (("policy", (int(sizes[i]), int(sizes[k]), shape[axes[k]], policy)), None)
        else:
            for i, d in enumerate(axes):
                out[d] = int(sizes[i])
                probes[d] = (("sizes", int(sizes[i])), None)
    else:
        scales = np.asarray(scales, dtype=np.float32).ravel()
        if scales.size != n:
            raise CompileError(f"{lw.where(node)}: Resize scales of {scales.size} values for {n} axes")
        for i, d in enumerate(axes):
            out[d] = int(float(scales[i]) * shape[d])
            probes[d] = (("scales", scales[i]), None)
    for i, d in enumerate(axes):
        if out[d] <= 0:
            raise CompileError(f"{lw.where(node)}: Resize to an empty axis {d} (zero-size tensors are not "
                               f"supported)")
        kind, _ = probes[d]
        probes[d] = (kind, None if roi is None else (roi[i], roi[n + i]))
    return out, probes


def _resize_matrix(lw, node, a, opset, n_in, n_out, probe):
    """M [n_out, n_in] (float32) of one axis from the ONNX reference on eye(n_in), and the rows flagged as
    extrapolated (tf_crop_and_resize outside the roi: the reference writes extrapolation_value there; the
    probe asks for NaN to find them)."""
    (kind, value), roi = probe
    attrs = {k: v for k, v in a.items() if k not in ("axes", "keep_aspect_ratio_policy", "extrapolation_value")}
    crop = _s(a.get("coordinate_transformation_mode", b"half_pixel")) == "tf_crop_and_resize"
    if crop:
        attrs["extrapolation_value"] = float("nan")
    eye = np.eye(n_in, dtype=np.float32)
    roi_p = None if roi is None else np.array([roi[0], 0.0, roi[1], 1.0], dtype=np.float32)
    scales_p = np.array([value, 1.0], dtype=np.float32) if kind == "scales" else None
    sizes_p = np.array([value, n_in], dtype=np.int64) if kind == "sizes" else None
    if kind == "policy" and roi is not None:
        roi_p = np.array([roi[0], 0.0, roi[1], 1.0], dtype=np.float32)
    if opset < 11:
        xs = [eye, scales_p]
    else:
        if scales_p is None and opset < 13:
            scales_p = np.zeros(0, dtype=np.float32)
        if roi_p is None and (opset < 13 or crop):
            roi_p = np.zeros(0, dtype=np.float32) if not crop else np.array([0, 0, 1, 1], np.float32)
        xs = [eye, roi_p, scales_p, sizes_p]
    if kind == "policy":  # [n_in, n_in, in_k] resized along axes 0 and 2 under the policy; constant along 2
        size_d, size_k, in_k, policy = value
        probe3 = np.repeat(eye[:, :, None], in_k, axis=2)
        attrs.update(axes=[0, 2], keep_aspect_ratio_policy=policy)
        xs = [probe3, roi_p, None, np.array([size_d, size_k], dtype=np.int64)]
        m = np.asarray(fold(lw, node, "Resize", attrs, xs), dtype=np.float32)[:, :, 0]
    else:
        m = np.asarray(fold(lw, node, "Resize", attrs, xs), dtype=np.float32)
    if m.shape != (n_out, n_in):
        raise CompileError(f"{lw.where(node)}: Resize axis of {n_in} -> {n_out}: the reference gives "
                           f"{m.shape[0]} (internal: the probe does not reproduce ONNX's "
                           f"output size)")
    flag = np.isnan(m).all(axis=1) if crop else np.zeros(n_out, dtype=bool)
    m = np.where(np.isnan(m), 0.0, m).astype(np.float32)
    return m, flag


def _taps(m):
    """(index [n_out, T], weight [n_out, T], unit): each row's nonzero entries, padded with weight 0."""
    nz = m != 0
    t = max(int(nz.sum(axis=1).max()), 1)
    idx = np.zeros((m.shape[0], t), dtype=np.int64)
    w = np.zeros((m.shape[0], t), dtype=np.float32)
    for o in range(m.shape[0]):
        cols = np.flatnonzero(nz[o])
        idx[o, :] = cols[0] if len(cols) else 0
        idx[o, :len(cols)] = cols
        w[o, :len(cols)] = m[o, cols]
    return idx, w, t == 1 and bool(np.all(w == 1.0))


# ----- the chip's passes -----------------------------------------------------------------------------------
def _resize_rows(lw, node, x, shape, group, maps, out_sizes, mag, last):
    """Resize the row axes in `group` (the first may have several taps, the others one tap of weight 1): one
    VXM pass per tap, each reading x through a row-map view, times its per-row weights, plus the pass
    before."""
    out_shape = list(shape)
    for d in group:
        out_shape[d] = out_sizes[d]
    out_shape = tuple(out_shape)
    lane = lane_axis(shape)
    small = tuple(1 if i == lane else s for i, s in enumerate(shape))
    rows_in = as_matrix(small)[0]
    grid = from_rows(np.arange(rows_in, dtype=np.int64).reshape(rows_in, 1), small)
    first = group[0]
    idx, w, _ = _taps(maps[first])
    for d in group[1:]:  # one tap each: a fixed row map
        grid = np.take(grid, _taps(maps[d])[0][:, 0], axis=d)
    if idx.shape[1] > MAX_TAPS:
        raise CompileError(f"{lw.where(node)}: Resize along axis {first} needs {idx.shape[1]} taps per output "
                           f"(at most {MAX_TAPS} VXM passes)")
    small_out = tuple(1 if i == lane else s for i, s in enumerate(out_shape))
    c = shape[lane]
    pos = np.arange(out_shape[first]).reshape([-1 if i == first else 1 for i in range(len(shape))])
    where = tuple(int(v) for v in to_rows(np.broadcast_to(pos, small_out), small_out)[:, 0])
    row_axes = [i for i in range(len(shape)) if i != lane]
    fused = _resize_fused(lw, node, x, out_shape, grid, idx, w, first, small_out, where, c, row_axes, mag, last)
    if fused is not None:
        return fused, out_shape
    prev = None
    for k in range(idx.shape[1]):
        if k and not np.any(w[:, k]):  # (tap 0 always runs: every row outside a crop gives 0)
            continue
        src = to_rows(np.take(grid, idx[:, k], axis=first), small_out)[:, 0]
        wk = w[:, k]
        sources = [View(x, rows=tuple(int(v) for v in src))]
        if np.all(wk == 1.0):
            steps = [Step("COPY", [("src", 0)])]
        elif np.all(wk == wk[0]):
            steps = [Step("MUL", [("src", 0), ("imm", float(wk[0]))])]
        else:
            sources.append(_resize_weights(lw, wk, where, c, inner=first == row_axes[-1]))
            steps = [Step("MUL", [("src", 0), ("src", 1)])]
        if prev is not None:
            sources.append(View(prev))
            steps.append(Step("ADD", [("step", len(steps) - 1), ("src", len(sources) - 1)]))
        final = last and not np.any(w[:, k + 1:])
        y = lw.add_tensor(lw.fresh(node.output[0] if final else "resized"), out_shape, "value")
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=sources,
                             steps=steps))
        lw.derived[y] = mag * float(np.abs(w[:, :k + 1]).sum(axis=1).max())
        prev = y
    return prev, out_shape


def _resize_fused(lw, node, x, out_shape, grid, idx, w, first, small_out, where, c, row_axes, mag, last):
    """An upsampling axis in one VXM pass: out = sum_k x[src_k] * w_k, every tap a source of the same chain.

    A MEM slice streams one view of a tensor at a time, so tap k > 0 reads its own copy of x (one f32 COPY pass
    over x's rows each). Upsampling makes x the smaller tensor: the copies cost fewer rows than the passes over the
    output they replace, and no full-size partial sum is ever stored (bilinear to 320 x 320 of one channel: 131 MB
    of f32 partial sum, more than half a chip). None when the axis does not grow, has one tap or more than
    FUSED_TAPS, or the chain does not fit the VXM (the caller then chains one pass per tap), or when
    `lw.fused_resize` is off: the output is placed apart from every slice the pass streams, and with four sources
    that can leave no room for a large output that the chained passes (two or three sources each) place."""
    taps = [k for k in range(idx.shape[1]) if k == 0 or np.any(w[:, k])]
    rows_in, rows_out = lw.tensors[x].rows, as_matrix(small_out)[0]
    if not lw.fused_resize or len(taps) < 2 or len(taps) > FUSED_TAPS or rows_in >= rows_out:
        return None
    sources, steps, terms = [], [], []
    for n, k in enumerate(taps):
        src = to_rows(np.take(grid, idx[:, k], axis=first), small_out)[:, 0]
        sources.append((n, View(None, rows=tuple(int(v) for v in src))))  # the tensor once the copies exist
        wk = w[:, k]
        if np.all(wk == 1.0):
            steps.append(Step("COPY", [("src", len(sources) - 1)]))
        elif np.all(wk == wk[0]):
            steps.append(Step("MUL", [("src", len(sources) - 1), ("imm", float(wk[0]))]))
        else:
            sources.append((None, _resize_weights(lw, wk, where, c, inner=first == row_axes[-1])))
            steps.append(Step("MUL", [("src", len(sources) - 2), ("src", len(sources) - 1)]))
        terms.append(len(steps) - 1)
    acc = terms[0]
    for t in terms[1:]:
        steps.append(Step("ADD", [("step", acc), ("step", t)]))
        acc = len(steps) - 1
    weights = [v.tensor for n, v in sources if n is None]
    if len(weights) != len(set(weights)) or not fits_vxm(steps):
        return None  # two taps with the same weight constant would stream one tensor twice
    copies = [x]
    for n in range(1, len(taps)):
        cp = lw.add_tensor(lw.fresh("resizecopy"), lw.tensors[x].shape, "value")
        lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, cp, sources=[View(x)],
                             steps=[Step("COPY", [("src", 0)])]))
        lw.derived[cp] = lw.derived.get(x, mag)
        copies.append(cp)
    views = [View(copies[n], rows=v.rows) if n is not None else v for n, v in sources]
    y = lw.add_tensor(lw.fresh(node.output[0] if last else "resized"), out_shape, "value")
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y, sources=views, steps=steps))
    lw.derived[y] = mag * float(np.abs(w).sum(axis=1).max())
    return y


def _resize_weights(lw, wk, where, c, inner: bool) -> View:
    """Tap weights per output row: a constant [out_d, C] (one row per output index along the axis) read through
    a row map where that map is rising runs (the innermost row axis, W of an image: no cost), else (H: each
    row repeated W times, which the MEM reads slower) one row per output row while that stays under
    FULL_WEIGHT_BYTES of SRAM (a row of a few channels still takes a whole vector)."""
    rows = np.asarray(where)
    stored = -(-c // LANES) * LANES * 4  # bytes a row takes in SRAM: whole vectors, however few channels
    if not inner and len(rows) * stored <= FULL_WEIGHT_BYTES:
        full = np.ascontiguousarray(np.repeat(wk[rows][:, None], c, axis=1))
        return View(shared_const(lw, ("resizew", full.shape, full.tobytes()), lambda: full))
    compact = np.ascontiguousarray(np.repeat(wk[:, None], c, axis=1))
    return View(shared_const(lw, ("resizew", compact.shape, compact.tobytes()), lambda: compact), rows=where)


def _resize_lanes(lw, node, x, shape, m, mag, last):
    """Along the lane axis: x @ M^T on the MXM (a constant [C_in, C_out])."""
    key = ("resizelanes", m.shape, m.tobytes())
    y, out_shape = lane_matmul(lw, node, x, shape, key, lambda: np.ascontiguousarray(m.T),
                               node.output[0] if last else "resizedlanes")
    lw.derived[y] = mag * float(np.abs(m).sum(axis=1).max())
    return y, out_shape


def _resize_extrapolate(lw, node, x, out_shape, flags, value, mag):
    """Add `value` where any axis is outside the roi (those rows' weights were 0)."""
    r = len(out_shape)
    mask = np.zeros(out_shape, dtype=bool)
    for d, flag in flags.items():
        shp = [1] * r
        shp[d] = len(flag)
        mask = mask | flag.reshape(shp)
    y = lw.add_tensor(lw.fresh(node.output[0]), out_shape, "value")
    extra = to_rows(np.where(mask, np.float32(value), np.float32(0.0)).astype(np.float32), out_shape)
    lw.nodes.append(Node("vector", node.name or node.output[0], node.op_type, y,
                         sources=[View(x), View(lw.const_tensor(extra, "resizeextra"))],
                         steps=[Step("ADD", [("src", 0), ("src", 1)])]))
    lw.derived[y] = max(mag, abs(value))
    return y
