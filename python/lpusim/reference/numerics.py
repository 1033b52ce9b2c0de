"""Exact numerics for the reference interpreter (docs/isa.md section 4).

Everything that rounds goes through `round_to_float_bits`, an exact round-to-nearest-even of a rational number
(a Python int or Fraction) to binary32 or binary16, so no value is ever rounded twice.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

# (mantissa bits, exponent bits, bias)
F32 = (23, 8, 127)
F16 = (10, 5, 15)

INT_RANGE = {"i8": (-128, 127), "u8": (0, 255), "i32": (-(2**31), 2**31 - 1)}
WIDTH = {"i8": 1, "u8": 1, "f16": 2, "i32": 4, "f32": 4}
NP_DTYPE = {"i8": "<i1", "u8": "<u1", "f16": "<f2", "i32": "<i4", "f32": "<f4"}
BITS_DTYPE = {1: "<u1", 2: "<u2", 4: "<u4"}
VXM_TRANSCENDENTAL = {"DIV", "EXP", "TANH", "RSQRT", "RCP", "SIGMOID", "ERF", "LOG", "SQRT", "SIN", "COS"}
VXM_COMPARE = {"EQ": np.equal, "NE": np.not_equal, "LT": np.less, "LE": np.less_equal, "GT": np.greater,
               "GE": np.greater_equal}


def _floor_log2(a: Fraction) -> int:
    """floor(log2(a)) for a rational a > 0, exactly."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    # 2^e is within a factor 2 of a: fix it up exactly
    if Fraction(2) ** e > a:
        e -= 1
    elif Fraction(2) ** (e + 1) <= a:
        e += 1
    return e


def round_to_float_bits(x, fmt=F32) -> int:
    """Round the exact rational `x` (int or Fraction) to the nearest float of `fmt`, ties to even; overflow to
    infinity. Zero gives +0. Returns the bit pattern as an int."""
    mbits, ebits, bias = fmt
    sign_bit = 1 << (mbits + ebits)
    x = Fraction(x)
    if x == 0:
        return 0
    sign = sign_bit if x < 0 else 0
    a = -x if x < 0 else x
    e = max(_floor_log2(a), 1 - bias)          # exponent of the binade (subnormals share the lowest one)
    quantum = Fraction(2) ** (e - mbits)
    m = a / quantum                              # the significand in units of the last place
    n = m.numerator // m.denominator
    rest = m - n
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n % 2 == 1):
        n += 1
    if n == 1 << (mbits + 1):                    # rounded up into the next binade
        n >>= 1
        e += 1
    if e > bias:                                 # beyond the largest finite exponent
        return sign | (((1 << ebits) - 1) << mbits)
    if n < (1 << mbits):                         # subnormal (only possible in the lowest binade)
        return sign | n
    return sign | ((e + bias) << mbits) | (n - (1 << mbits))


def float_bits_value(bits: int, fmt=F32):
    """Decode a float bit pattern: a Fraction for finite values, or 'nan', '+inf', '-inf'."""
    mbits, ebits, bias = fmt
    sign = (bits >> (mbits + ebits)) & 1
    exp = (bits >> mbits) & ((1 << ebits) - 1)
    man = bits & ((1 << mbits) - 1)
    if exp == (1 << ebits) - 1:
        if man:
            return "nan"
        return "-inf" if sign else "+inf"
    if exp == 0:
        v = Fraction(man) * Fraction(2) ** (1 - bias - mbits)
    else:
        v = Fraction(man + (1 << mbits)) * Fraction(2) ** (exp - bias - mbits)
    return -v if sign else v


def round_half_even_int(v: Fraction) -> int:
    """Round a rational to the nearest integer, ties to even (Fraction.__round__ does exactly this)."""
    return round(v)


def saturate(n: int, dtype: str) -> int:
    lo, hi = INT_RANGE[dtype]
    return min(max(n, lo), hi)


def parse_number(text: str, dtype: str) -> int:
    """Parse an immediate / .init value as `dtype` (docs/isa.md 9.10); returns the element's bit pattern.

    Integer types: `0x` hex is the type's bit pattern (it must fit the width); a decimal must fit the range.
    Float types: a decimal is read as binary64 (Python float, like strtod), then rounded once to the type (RNE);
    inf, -inf and nan are accepted (nan is the canonical quiet NaN)."""
    t = text.strip()
    w = 8 * WIDTH[dtype]
    if t.lower().startswith("0x") and dtype in ("f32", "f16"):
        raise ValueError(f"{text}: a float immediate is written in decimal (or inf, -inf, nan)")
    if t.lower().startswith("0x"):
        n = int(t[2:], 16)
        if n >= 1 << w:
            raise ValueError(f"{text} does not fit {dtype}")
        return n
    if dtype in ("f32", "f16"):
        fmt = F32 if dtype == "f32" else F16
        mbits, ebits, _ = fmt
        low = t.lower()
        if low in ("nan", "+nan"):
            return CANONICAL_NAN[dtype]
        v = float(low)  # binary64, correctly rounded from the decimal text; accepts inf / -inf
        return float64_to_bits(v, dtype)
    n = parse_int(t)
    lo, hi = INT_RANGE[dtype]
    if not lo <= n <= hi:
        raise ValueError(f"{text} is outside the range of {dtype}")
    return n & ((1 << w) - 1)


CANONICAL_NAN = {"f32": 0x7FC00000, "f16": 0x7E00}


def float64_to_bits(v: float, dtype: str) -> int:
    """Round a Python float (binary64) to f32/f16 bits, RNE, keeping the sign of zero and infinities."""
    fmt = F32 if dtype == "f32" else F16
    mbits, ebits, _ = fmt
    sign = (1 << (mbits + ebits)) if math.copysign(1.0, v) < 0 else 0
    if math.isnan(v):
        return CANONICAL_NAN[dtype]
    if math.isinf(v):
        return sign | (((1 << ebits) - 1) << mbits)
    return sign | round_to_float_bits(Fraction(abs(v)), fmt)


def parse_int(text: str) -> int:
    t = text.strip().lower()
    neg = t.startswith("-")
    if t.startswith(("-", "+")):
        t = t[1:]
    if t.startswith("0x"):
        n = int(t[2:], 16)
    else:
        if not t.isdigit():
            raise ValueError(f"not an integer: {text!r}")
        n = int(t, 10)
    return -n if neg else n


# ----------------------------------------------------------------------------------------------------------
# Conversions (CVT.S.D), element by element through exact values


def exact_value(bits: int, dtype: str):
    """The exact value of an element: int for integer types, Fraction/'nan'/'+inf'/'-inf' for floats."""
    if dtype == "f32":
        return float_bits_value(bits, F32)
    if dtype == "f16":
        return float_bits_value(bits, F16)
    w = 8 * WIDTH[dtype]
    if dtype == "u8":
        return bits
    return bits - (1 << w) if bits >> (w - 1) else bits


def convert_element(bits: int, src: str, dst: str) -> int:
    """CVT.src.dst of one element (docs/isa.md 9.9), returning dst's bit pattern. The source value is taken
    exactly; to a float: RNE (overflow to infinity, a NaN is the canonical NaN, the sign of zero kept); to an
    integer: NaN -> 0, else round half to even and saturate (infinities saturate)."""
    v = exact_value(bits, src)
    negative_zero = src in ("f32", "f16") and v == 0 and bits >> (8 * WIDTH[src] - 1)
    if dst in ("f32", "f16"):
        fmt = F32 if dst == "f32" else F16
        mbits, ebits, _ = fmt
        inf = ((1 << ebits) - 1) << mbits
        sign = 1 << (mbits + ebits)
        if v == "nan":
            return CANONICAL_NAN[dst]
        if v == "+inf":
            return inf
        if v == "-inf":
            return sign | inf
        if negative_zero:
            return sign
        return round_to_float_bits(v, fmt)
    lo, hi = INT_RANGE[dst]
    if v == "nan":
        n = 0
    elif v == "+inf":
        n = hi
    elif v == "-inf":
        n = lo
    else:
        n = saturate(round_half_even_int(Fraction(v)), dst)
    return n & ((1 << (8 * WIDTH[dst])) - 1)


# ----------------------------------------------------------------------------------------------------------
# VXM element operations


def f32_of_bits(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def bits_of_f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def _libm(fn, x: float) -> float:
    """The binary64 function with C-libm special values (Python's math raises where C returns inf/nan)."""
    if math.isnan(x):
        return x
    if fn == "exp":
        try:
            return math.exp(x)
        except OverflowError:
            return math.inf
    if fn == "tanh":
        return math.tanh(x)
    if fn == "erf":
        return math.erf(x)
    if fn == "rsqrt":
        if x < 0:
            return math.nan
        if x == 0:
            return math.copysign(math.inf, x)  # 1/sqrt(-0) = 1/-0 = -inf
        return 1.0 / math.sqrt(x)
    if fn == "rcp":
        if x == 0:
            return math.copysign(math.inf, x)
        return 1.0 / x
    if fn == "sigmoid":
        e = _libm("exp", -x)
        return 1.0 / (1.0 + e)
    if fn == "log":  # C: log(+-0) = -inf, log(x < 0) = NaN; math.log calls the C log for finite x > 0
        if x == 0:
            return -math.inf
        if x < 0:
            return math.nan
        if math.isinf(x):
            return x
        return math.log(x)
    if fn in ("sin", "cos"):  # C: sin/cos(+-inf) = NaN (math raises); math.sin/cos call the C functions otherwise
        if math.isinf(x):
            return math.nan
        return math.sin(x) if fn == "sin" else math.cos(x)
    raise ValueError(fn)


def transcendental_f32(op: str, a_bits: np.ndarray) -> np.ndarray:
    out = np.zeros(a_bits.shape, dtype=np.uint32)
    xs = f32_of_bits(a_bits)
    with np.errstate(all="ignore"):
        for i, x in enumerate(xs):
            y = _libm(op.lower(), float(x))
            out[i] = np.float32(y).view(np.uint32)  # one correct rounding binary64 -> binary32
    return out


def _is_nan_bits(b: int) -> bool:
    return (b & 0x7F800000) == 0x7F800000 and (b & 0x7FFFFF) != 0


def maxmin_f32(op: str, a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """MAX/MIN: NaN if either is NaN (the first NaN operand's bits), MAX(-0,+0) = +0, MIN(-0,+0) = -0."""
    out = np.zeros(a_bits.shape, dtype=np.uint32)
    for i, (ab, bb) in enumerate(zip(a_bits.tolist(), b_bits.tolist())):
        if _is_nan_bits(ab):
            out[i] = ab
            continue
        if _is_nan_bits(bb):
            out[i] = bb
            continue
        a, b = float_bits_value(ab), float_bits_value(bb)
        key = {"-inf": -math.inf, "+inf": math.inf}
        av, bv = key.get(a, a), key.get(b, b)
        if av == bv:  # equal values: only the sign of zero can differ
            neg_a, neg_b = ab >> 31, bb >> 31
            if op == "MAX":
                out[i] = ab if neg_a <= neg_b else bb
            else:
                out[i] = ab if neg_a >= neg_b else bb
        elif (av > bv) == (op == "MAX"):
            out[i] = ab
        else:
            out[i] = bb
    return out


def vxm_op(op: str, t: str, a, b):
    """One VXM operation of type t ('f32' or 'i32') on uint32 bit arrays a (and b); returns uint32 bits.
    Every f32 NaN result is the canonical quiet NaN 0x7FC00000 (docs/isa.md 9.8)."""
    r = _vxm_op(op, t, a, b)
    if t == "f32":
        nan = ((r & 0x7F800000) == 0x7F800000) & ((r & 0x7FFFFF) != 0)
        r = np.where(nan, np.uint32(0x7FC00000), r).astype(np.uint32)
    return r


def _vxm_op(op: str, t: str, a, b):
    if t == "i32":
        x = a.view(np.int32).astype(np.int64)
        y = b.view(np.int32).astype(np.int64) if b is not None else None
        if op == "ADD":
            r = x + y
        elif op == "SUB":
            r = x - y
        elif op == "MUL":
            r = x * y  # |x*y| < 2^62: exact in int64, then wrapped
        elif op == "MAX":
            r = np.maximum(x, y)
        elif op == "MIN":
            r = np.minimum(x, y)
        elif op == "RELU":
            r = np.where(x > 0, x, 0)
        elif op == "NEG":
            r = -x
        elif op == "ABS":
            r = np.abs(x)
        elif op == "COPY":
            r = x
        elif op in VXM_COMPARE:
            r = VXM_COMPARE[op](x, y).astype(np.int64)
        elif op == "AND":
            r = x & y
        elif op == "OR":
            r = x | y
        elif op == "XOR":
            r = x ^ y
        elif op == "NOT":
            r = ~x
        else:
            raise ValueError(op)
        return (r & 0xFFFFFFFF).astype(np.uint32)
    # f32
    if op in ("EXP", "TANH", "RSQRT", "RCP", "SIGMOID", "ERF", "LOG", "SIN", "COS"):
        return transcendental_f32(op, a)
    if op in ("SQRT", "FLOOR", "CEIL"):  # IEEE binary32: exact (FLOOR, CEIL) or correctly rounded (SQRT)
        fn = {"SQRT": np.sqrt, "FLOOR": np.floor, "CEIL": np.ceil}[op]
        with np.errstate(all="ignore"):
            return bits_of_f32(fn(f32_of_bits(a)).astype(np.float32)).copy()
    if op in VXM_COMPARE:  # IEEE comparisons: false with a NaN, except NE; -0 == +0
        with np.errstate(all="ignore"):
            c = VXM_COMPARE[op](f32_of_bits(a), f32_of_bits(b))
        return np.where(c, np.uint32(0x3F800000), np.uint32(0)).astype(np.uint32)
    if op in ("MAX", "MIN"):
        return maxmin_f32(op, a, b)
    if op == "RELU":
        x = f32_of_bits(a)
        nan = np.isnan(x)
        return np.where(nan, a, np.where(x > 0, a, np.uint32(0))).astype(np.uint32)
    if op == "NEG":
        return (a ^ np.uint32(0x80000000)).astype(np.uint32)
    if op == "ABS":
        return (a & np.uint32(0x7FFFFFFF)).astype(np.uint32)
    if op == "COPY":
        return a.copy()
    x, y = f32_of_bits(a), f32_of_bits(b)
    with np.errstate(all="ignore"):
        if op == "ADD":
            r = x + y
        elif op == "SUB":
            r = x - y
        elif op == "MUL":
            r = x * y
        elif op == "DIV":
            r = x / y
        else:
            raise ValueError(op)
    return bits_of_f32(r.astype(np.float32)).copy()


# ----------------------------------------------------------------------------------------------------------
# MXM fp16: exact products as integer counts of 2^-48

F16_SCALE_EXP = 24  # every finite f16 is an integer count of 2^-24


def f16_count(bits: int):
    """An f16 as ('fin', integer count of 2^-24) or ('nan',) / ('inf', +1|-1)."""
    v = float_bits_value(bits, F16)
    if v == "nan":
        return ("nan", 0)
    if v == "+inf":
        return ("inf", 1)
    if v == "-inf":
        return ("inf", -1)
    c = v * 2**F16_SCALE_EXP
    assert c.denominator == 1
    return ("fin", int(c))
