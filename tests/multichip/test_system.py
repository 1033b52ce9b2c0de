"""Many chips (docs/system.md) through the Python binding: transfers, drift, link errors, thread-count determinism."""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from lpusim import AssemblyError, ConfigError, SimulationError
from lpusim.system import System

HOPS = 45     # MEM.W0 (position 46) <-> C2C links 0..7 (position 2), plus the read / receive latency
SLACK = 226   # receive this long after the send: latency 217 +- 3, HAC alignment, clock phase, margin
LANES = 320


class Prog:
    """Instructions per queue at cycles counted from the first HAC epoch boundary (each queue starts with DESKEW)."""

    def __init__(self) -> None:
        self.queues: dict[str, list[tuple[int, str]]] = defaultdict(list)

    def at(self, queue: str, cycle: int, ins: str) -> "Prog":
        self.queues[queue].append((cycle, ins))
        return self

    def send(self, link: int, addr: int, cycle: int) -> "Prog":
        return self.at("MEM.W0", cycle - HOPS, f"READ {addr}, W5").at(f"C2C.{link}", cycle, "SEND W5")

    def recv(self, link: int, addr: int, cycle: int) -> "Prog":
        return self.at(f"C2C.{link}", cycle, "RECV E5").at("MEM.W0", cycle + HOPS, f"WRITE {addr}, E5")

    def deskew_after(self, free: int, d: int) -> "Prog":
        """Run free for `free` cycles, then RUNTIME_DESKEW d in every queue; everything else moves after it."""
        for q, evs in self.queues.items():
            self.queues[q] = [(free, f"RUNTIME_DESKEW {d}")] + [(c + free + d, i) for c, i in evs]
        return self

    def text(self) -> str:
        out = []
        for q, evs in sorted(self.queues.items()):
            out += [f".queue {q}", " DESKEW"]
            cur = 0
            for c, ins in sorted(evs):
                assert c >= cur, (q, c)
                if c > cur:
                    out.append(f" NOP {c - cur}")
                out.append(f" {ins}")
                cur = c + (int(ins.split()[1]) if ins.startswith("RUNTIME_DESKEW") else 1)
        return "\n".join(out) + "\n"


def link(a: int, b: int) -> int:
    """Chip a's link toward chip b in a node."""
    return b if b < a else b - 1


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(1, LANES), dtype=np.uint8)


def ring(n: int) -> list[Prog]:
    return [Prog().send(link(i, (i + 1) % n), 0, HOPS).recv(link(i, (i + n - 1) % n), 1, HOPS + SLACK)
            for i in range(n)]


def run_ring(system: System, progs: list[Prog], threads: int = 0):
    n = system.chips
    return system.run([p.text() for p in progs], mem_inits=[[(0, 0, vec(i))] for i in range(n)],
                      dumps=[[(0, 1, 1)] for _ in range(n)], threads=threads)


def test_ping_pong_two_chips():
    system = System.load({"topology": "node", "chips": 2, "seed": 3})
    assert system.chips == 2 and system.link(0, 1)[:2] == (0, 0)
    assert 214 <= system.link(1, 0)[2] <= 220
    back = HOPS + SLACK + 2 * HOPS + 2
    a = Prog().send(0, 0, HOPS).recv(0, 1, back + SLACK)
    b = Prog().recv(0, 1, HOPS + SLACK).send(0, 1, back)
    r = system.run([a.text(), b.text()], mem_inits=[[(0, 0, vec(7))]], dumps=[[(0, 1, 1)], [(0, 1, 1)]], threads=1)
    assert np.array_equal(r.dumps[0][0], vec(7)) and np.array_equal(r.dumps[1][0], vec(7))
    assert [lk["vectors"] for lk in r.links] == [1, 1]
    assert r.links[0]["bytes"] == 328 and 0 < r.links[0]["busy_fraction"] < 0.1
    assert r.link_summary()["vectors"] == 2
    assert r.chips[0]["cycles"] > back + SLACK
    assert r.latency_us == pytest.approx(r.cycles / 900.0, rel=1e-3)
    timing = system.run([a.text(), b.text()], timing_only=True)
    assert timing.cycles == r.cycles and timing.dumps == [[], []]


def test_ring_of_eight_identical_for_any_thread_count():
    system = System.load({"topology": "node", "chips": 8, "seed": 11, "drift_ppm": 50})
    runs = [run_ring(system, ring(8), threads=t) for t in (1, 2, 4)]
    for i in range(8):
        assert np.array_equal(runs[0].dumps[i][0], vec((i + 7) % 8))
    for other in runs[1:]:
        assert other.cycles == runs[0].cycles
        assert other.chips == runs[0].chips
        assert other.links == runs[0].links
        for i in range(8):
            assert np.array_equal(other.dumps[i][0], runs[0].dumps[i][0])
    assert [r.threads for r in runs] == [1, 2, 4]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_drift_seeds_with_runtime_deskew(seed):
    system = System.load({"chips": 8, "seed": seed, "drift_ppm": 50})
    progs = [p.deskew_after(50_000, 100) for p in ring(8)]
    r = run_ring(system, progs, threads=2)
    for i in range(8):
        assert np.array_equal(r.dumps[i][0], vec((i + 7) % 8))
    assert r.sync_cycles >= 90
    assert all(abs(c["drift_ppm"]) <= 50 for c in r.chips)


def test_over_drift_is_an_error_naming_both_chips():
    system = System.load({"chips": 2, "chip_drift_ppm": [0, 2000]})
    start = 100_000
    a = Prog().send(0, 0, start)
    b = Prog().recv(0, 1, start + SLACK)
    with pytest.raises(SimulationError) as ei:
        system.run([a.text(), b.text()])
    e = ei.value
    assert e.kind == "LinkEmpty"
    assert (e.chip, e.link, e.peer_chip, e.peer_link) == (1, 0, 0, 0)
    assert e.peer_cycle + 150 < e.cycle
    assert "chip 0" in str(e) and "chip 1" in str(e)
    b.at("C2C.0", start, "RUNTIME_DESKEW 10")
    with pytest.raises(SimulationError) as ei:
        system.run([a.text(), b.text()])
    assert (ei.value.kind, ei.value.chip) == ("DriftOverrun", 1)
    with pytest.raises(SimulationError) as ei:
        System.load({"chips": 2, "chip_drift_ppm": [0, 5000]}).run([a.text(), b.text()])
    assert (ei.value.kind, ei.value.chip, ei.value.peer_chip) == ("DriftOverrun", 1, 0)


def test_link_busy():
    system = System.load({"chips": 2})
    assert system.min_send_interval_cycles == 24
    a = Prog().send(0, 0, HOPS).send(0, 0, HOPS + 23)
    with pytest.raises(SimulationError) as ei:
        system.run([a.text(), None])
    e = ei.value
    assert (e.kind, e.chip, e.link, e.peer_chip, e.peer_link) == ("LinkBusy", 0, 0, 1, 0)
    assert abs(e.cycle - e.peer_cycle) <= 1
    ok = Prog().send(0, 0, HOPS).send(0, 0, HOPS + 24)
    ok_b = Prog().recv(0, 1, HOPS + SLACK).recv(0, 2, HOPS + SLACK + 24)
    r = system.run([ok.text(), ok_b.text()])
    assert r.links[0]["vectors"] == 2


def test_config_errors_and_loading(tmp_path):
    with pytest.raises(ConfigError) as ei:
        System.load({"drift_ppm": "lots"})
    assert ei.value.field == "system.drift_ppm"
    with pytest.raises(ConfigError) as ei:
        System.load({"bogus": 1})
    assert ei.value.field == "system.bogus"
    with pytest.raises(ConfigError):
        System.load(tmp_path / "missing.json")
    f = tmp_path / "sys.json"
    f.write_text(json.dumps({"topology": "links", "chips": 2, "links": [
        {"chip_a": 0, "link_a": 3, "chip_b": 1, "link_b": 9, "latency_cycles": 300, "spread_cycles": 0}]}))
    s = System.load(f)
    assert s.link(1, 0) == (9, 3, 300.0)
    assert System.load(str(f), seed=5).config["seed"] == 5
    with pytest.raises(AssemblyError):
        s.run(["not an instruction"])
    with pytest.raises(ValueError):
        s.run([None, None, None])


def test_describe_system_reports_the_alignment():
    s = System.load({"topology": "dragonfly", "nodes": 2, "seed": 2})
    assert s.chips == 16
    kinds = {lk["kind"] for lk in s.links}
    assert kinds == {"local", "global"}
    info = s.info["chip_info"]
    assert info[0]["tree_depth"] == 0 and max(c["tree_depth"] for c in info) == s.info["tree_height"]
    assert all(abs(c["hac_error"]) <= 2 * c["tree_depth"] for c in info)


@pytest.mark.slow
def test_rack_rings_many_threads():
    """72 chips: a ring inside every node (local links), identical on one thread and on all cores."""
    s = System.load({"topology": "rack", "seed": 1})
    n = s.chips
    progs = []
    for i in range(n):
        nxt, prv = 8 * (i // 8) + (i % 8 + 1) % 8, 8 * (i // 8) + (i % 8 + 7) % 8
        progs.append(Prog().send(s.link(i, nxt)[0], 0, HOPS).recv(s.link(i, prv)[0], 1, HOPS + SLACK))
    r1 = run_ring(s, progs, threads=1)
    r2 = run_ring(s, progs, threads=0)
    assert r1.chips == r2.chips and r1.cycles == r2.cycles
    for i in range(n):
        assert np.array_equal(r1.dumps[i][0], vec(8 * (i // 8) + (i % 8 + 7) % 8))


def test_runtime_deskew_on_one_chip_matches_the_reference():
    """On a lone chip there is no drift: RUNTIME_DESKEW d resumes exactly d cycles later, in both executors."""
    from lpusim import _lpusim
    from lpusim.reference import run as reference_run

    text = ".queue VXM.0\n DESKEW\n RUNTIME_DESKEW 100\n COPY.f32 -, #1.0\n.queue MEM.W0\n RUNTIME_DESKEW 7\n IFETCH\n"
    assert _lpusim.canonicalize(text).count("RUNTIME_DESKEW") == 2
    assert _lpusim.disassemble(_lpusim.assemble(text)) == _lpusim.canonicalize(text)
    stats, _ = _lpusim.simulate(_lpusim.chip_config_json(), text)
    ref, _ = reference_run(text)
    assert stats["cycles"] == ref["cycles"] == 252 + 100 + 2 + 20
    assert stats["busy"]["icu"] == ref["busy"]["icu"] == 4
    with pytest.raises(AssemblyError):
        _lpusim.assemble(".queue VXM.0\n RUNTIME_DESKEW 0\n")
    with pytest.raises(AssemblyError):
        _lpusim.assemble(".queue VXM.0\n RUNTIME_DESKEW 5\n REPEAT 1, 1\n")
