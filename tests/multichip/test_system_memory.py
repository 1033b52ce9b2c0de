"""System runs on kept memories (docs/system.md section 7): one `lpusim.ChipMemory` per chip across runs, as an LLM
pipelined over chips keeps each chip's share of its KV cache between decode steps."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from lpusim import ChipMemory
from lpusim.errors import LpusimError, SimulationError
from lpusim.system import LoadedSystem, System

HOPS = 45     # MEM.W0 (position 46) <-> C2C links 0..7 (position 2), plus the read / receive latency
SLACK = 226   # receive this long after the send: latency 217 +- 3, HAC alignment, clock phase, margin
LANES = 320


class Prog:
    """Instructions per queue at cycles counted from the first HAC epoch boundary (each queue starts with DESKEW)."""

    def __init__(self, extra: str = "") -> None:
        self.queues: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.extra = extra

    def at(self, queue: str, cycle: int, ins: str) -> "Prog":
        self.queues[queue].append((cycle, ins))
        return self

    def send(self, link: int, addr: int, cycle: int) -> "Prog":
        return self.at("MEM.W0", cycle - HOPS, f"READ {addr}, W5").at(f"C2C.{link}", cycle, "SEND W5")

    def recv(self, link: int, addr: int, cycle: int) -> "Prog":
        return self.at(f"C2C.{link}", cycle, "RECV E5").at("MEM.W0", cycle + HOPS, f"WRITE {addr}, E5")

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
                cur = c + 1
        return "\n".join(out) + "\n" + self.extra


def link(a: int, b: int) -> int:
    """Chip a's link toward chip b in a node."""
    return b if b < a else b - 1


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(1, LANES), dtype=np.uint8)


def append_step(step: int, chips: int = 3) -> list[str]:
    """One decode step of a pipeline: chip 0 sends its input (MEM.W0[0]) down the chain; every later chip stores it
    in its cache at MEM.W0[1 + step] and (but the last) passes it on."""
    progs = [Prog().send(link(0, 1), 0, HOPS)]
    for i in range(1, chips):
        arrive = HOPS + i * (SLACK + 2 * HOPS + 2) - 2 * HOPS - 2
        p = Prog().recv(link(i, i - 1), 1 + step, arrive)
        if i + 1 < chips:
            p.send(link(i, i + 1), 1 + step, arrive + 2 * HOPS + 2)
        progs.append(p)
    return [p.text() for p in progs]


def read_back(k: int) -> list[str]:
    """Chip 2 sends its cache entry k (MEM.W0[1 + k]) to chip 0, which stores it at MEM.W0[20]."""
    return [Prog().recv(link(0, 2), 20, HOPS + SLACK).text(), None, Prog().send(link(2, 0), 1 + k, HOPS).text()]


@pytest.fixture(scope="module")
def system() -> System:
    return System.load({"topology": "node", "chips": 3, "seed": 5})


def memories(system: System) -> list[ChipMemory]:
    return [ChipMemory(system.chip_config) for _ in range(system.chips)]


def test_a_cache_persists_across_system_runs(system):
    ms = memories(system)
    v = [vec(1), vec(2), vec(3)]
    for step in range(3):
        res = system.run(append_step(step), [[(0, 0, v[step])]], [[], [(0, 1, step + 1)], [(0, 1, step + 1)]],
                         memories=ms, threads=2)
        # dumps are read from the memories: every entry the steps so far appended
        for c in (1, 2):
            np.testing.assert_array_equal(res.dumps[c][0], np.concatenate(v[:step + 1]))
    np.testing.assert_array_equal(ms[0].read(0, 0, 1), v[2])       # the last input stays
    for c in (1, 2):
        np.testing.assert_array_equal(ms[c].read(0, 1, 3), np.concatenate(v))
        assert ms[c].fault is None
    # A later program reads what the earlier runs left on chip 2, given no inputs; on fresh chips it reads zeros.
    on = system.run(read_back(1), dumps=[[(0, 20, 1)]], memories=ms)
    np.testing.assert_array_equal(on.dumps[0][0], v[1])
    fresh = system.run(read_back(1), dumps=[[(0, 20, 1)]])
    assert not fresh.dumps[0][0].any()
    assert on.cycles == fresh.cycles and [c["cycles"] for c in on.chips] == [c["cycles"] for c in fresh.chips]


def test_only_the_chips_given_a_memory_keep_it(system):
    m2 = ChipMemory(system.chip_config)
    system.run(append_step(0), [[(0, 0, vec(4))]], memories=[None, None, m2])
    np.testing.assert_array_equal(m2.read(0, 1, 1), vec(4))
    # chip 1 ran fresh: the next step's read-back of its entry finds nothing there, chip 2's entry is kept
    res = system.run(read_back(0), dumps=[[(0, 20, 1)]], memories=[None, None, m2])
    np.testing.assert_array_equal(res.dumps[0][0], vec(4))


def test_the_constant_image_is_installed_once(system):
    # Chip 2's constant image (MEM.W0[1]: a .init, and a static image at [2]) is read back by every run, then
    # overwritten by the input chip 0 sends: later runs see the overwritten value, not the image again.
    programs = read_back(0)
    chain = Prog(".init MEM.W0 1 u8 1 2 3 250\n").send(link(2, 0), 1, HOPS)
    chain.recv(link(2, 0), 1, HOPS + SLACK + 2 * HOPS + 2 + SLACK)
    programs[2] = chain.text()
    programs[0] = (Prog().recv(link(0, 2), 20, HOPS + SLACK)
                   .send(link(0, 2), 0, HOPS + SLACK + 2 * HOPS + 2).text())
    image = vec(6)
    step = system.load_programs(programs, [[], [], [(0, 2, image)]])
    assert isinstance(step, LoadedSystem) and step.chips == 3
    ms = memories(system)
    assert not step.installed_in(2, ms[2])
    for i, m in enumerate(ms):
        step.install_static(i, m)
    assert step.installed_in(2, ms[2]) and not step.installed_in(2, ms[1])
    np.testing.assert_array_equal(ms[2].read(0, 1, 1)[0, :5], [1, 2, 3, 250, 0])
    np.testing.assert_array_equal(ms[2].read(0, 2, 1), image)
    dumps = [[(0, 20, 1)]]
    first = step.run([[(0, 0, vec(7))]], dumps, memories=ms)
    np.testing.assert_array_equal(first.dumps[0][0][0, :5], [1, 2, 3, 250, 0])
    second = step.run([[(0, 0, vec(8))]], dumps, memories=ms)
    np.testing.assert_array_equal(second.dumps[0][0], vec(7))      # what the first run left, not the image
    np.testing.assert_array_equal(ms[2].read(0, 1, 1), vec(8))
    # Without memories the loaded programs start fresh from their constant image every run.
    for _ in range(2):
        res = step.run([[(0, 0, vec(9))]], dumps)
        np.testing.assert_array_equal(res.dumps[0][0][0, :5], [1, 2, 3, 250, 0])
    # System.run (no separate constant image) writes the program's .inits into the memory before every run.
    res = system.run(programs, [[(0, 0, vec(9))]], dumps, memories=ms)
    np.testing.assert_array_equal(res.dumps[0][0][0, :5], [1, 2, 3, 250, 0])
    # Installing again rewrites the image.
    step.install_static(2, ms[2])
    np.testing.assert_array_equal(ms[2].read(0, 1, 1)[0, :5], [1, 2, 3, 250, 0])


def test_timing_only_runs_leave_memories_untouched(system):
    ms = memories(system)
    system.run(append_step(0), [[(0, 0, vec(10))]], memories=ms)
    before = [(m.read(0, 0, 4).copy(), m.allocated_bytes) for m in ms]
    res = system.run(append_step(1), [[(0, 0, vec(11))]], [[(0, 0, 1)]] * 3, memories=ms, timing_only=True)
    assert res.dumps == [[None]] * 3
    for (data, allocated), m in zip(before, ms):
        np.testing.assert_array_equal(m.read(0, 0, 4), data)
        assert m.allocated_bytes == allocated and m.fault is None
    step = system.load_programs(append_step(1))
    step.run([[(0, 0, vec(11))]], memories=ms, timing_only=True)
    for (data, _), m in zip(before, ms):
        np.testing.assert_array_equal(m.read(0, 0, 4), data)
    functional = system.run(append_step(1), [[(0, 0, vec(11))]], memories=ms)
    assert functional.cycles == res.cycles
    np.testing.assert_array_equal(ms[2].read(0, 2, 1), vec(11))


def test_a_memory_count_mismatch_is_one_error(system):
    ms = memories(system)
    v = [[(0, 0, vec(12))]]
    for wrong in (ms[:2], ms + [ChipMemory(system.chip_config)], []):
        with pytest.raises(SimulationError, match=f"{len(wrong)} memories for a system of 3 chips") as e:
            system.run(append_step(0), v, memories=wrong)
        assert isinstance(e.value, LpusimError) and e.value.chip is None
    with pytest.raises(SimulationError, match="2 memories for a system of 3 chips"):
        system.load_programs(append_step(0)).run(v, memories=ms[:2], timing_only=True)
    # One memory for two chips, and a memory of another chip configuration, are refused too.
    with pytest.raises(SimulationError, match="the same ChipMemory"):
        system.run(append_step(0), v, memories=[ms[0], ms[1], ms[0]])
    c = system.chip_config
    small = dict(c, mem_words=1024, sram_bytes=c["mem_slices"] * 1024 * c["lanes"])
    with pytest.raises(SimulationError, match="another configuration") as e:
        system.run(append_step(0), v, memories=[ms[0], ms[1], ChipMemory(small)])
    assert e.value.chip == 2
    with pytest.raises(TypeError, match=r"memories\[1\]"):
        system.run(append_step(0), v, memories=[ms[0], "not a memory", ms[2]])
    # nothing ran, nothing was written
    assert all(m.allocated_bytes == 0 and m.fault is None for m in ms)


def test_a_fault_flags_every_memory(system):
    # Chip 1 stores what chip 0 sends, passes it on, then receives again with nothing sent: LinkEmpty on chip 1.
    programs = append_step(0)
    late = HOPS + SLACK + 400
    bad = Prog().recv(link(1, 0), 1, HOPS + SLACK).send(link(1, 2), 1, HOPS + SLACK + 2 * HOPS + 2)
    bad.at(f"C2C.{link(1, 0)}", late, "RECV E6")
    programs[1] = bad.text()
    ms = memories(system)
    with pytest.raises(SimulationError) as e:
        system.run(programs, [[(0, 0, vec(13))]], memories=ms)
    assert (e.value.kind, e.value.chip) == ("LinkEmpty", 1)
    # the faulting chip's memory: every write committed before the fault, flagged with its error
    np.testing.assert_array_equal(ms[1].read(0, 1, 1), vec(13))
    fault = ms[1].fault
    assert isinstance(fault, SimulationError)
    assert (fault.kind, fault.cycle, fault.queue) == ("LinkEmpty", e.value.cycle, e.value.queue)
    # the other chips ran with the run: flagged with an error naming chip 1
    np.testing.assert_array_equal(ms[2].read(0, 1, 1), vec(13))
    assert all("chip 1 faulted" in m.fault.message for m in (ms[0], ms[2]))
    # later runs are refused until the faults are cleared
    with pytest.raises(SimulationError, match="faulted run"):
        system.run(append_step(1), [[(0, 0, vec(14))]], memories=ms)
    with pytest.raises(SimulationError, match="faulted run"):
        system.load_programs(append_step(1)).install_static(0, ms[0])
    for m in ms:
        m.clear_fault()
    system.run(append_step(1), [[(0, 0, vec(14))]], memories=ms)
    np.testing.assert_array_equal(ms[2].read(0, 1, 2), np.concatenate([vec(13), vec(14)]))


def test_without_memories_nothing_changes(system):
    args = (append_step(0), [[(0, 0, vec(15))]], [[(0, 0, 1)], [(0, 1, 1)], [(0, 1, 1)]])
    plain = system.run(*args, threads=1)
    for res in (system.run(*args, memories=None, threads=3), system.run(*args, memories=[None] * 3),
                system.load_programs(args[0]).run(*args[1:])):
        assert res.to_json() == plain.to_json()
        for a, b in zip(res.dumps, plain.dumps):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(plain.dumps[2][0], vec(15))
