"""Energy of a simulated run (docs/energy.md): the events the simulator counts, times each event's energy from the
chip configuration, plus static power over the run's time.

The simulator counts events per chip, identically in functional and timing-only runs (docs/isa.md, "Energy
events"). Each event's energy is a named field of the chip configuration (`energy_*`, in picojoules), derived there
from published per-operation figures; static power (`static_power_*`, in watts) is paid for every cycle of the run,
the superlanes' share only for the superlanes the last `CONFIG` mask keeps powered.

Nothing here is tuned toward Groq's published chip power: the figures are compared with it in docs/results.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from lpusim.chip import Chip

PJ = 1e-12
# The per-unit terms of a breakdown, in the order reports print them.
TERMS = ("mxm", "weight_load", "sram", "streams", "vxm", "sxm", "c2c", "instructions", "static")


@dataclass(frozen=True)
class Energy:
    """Joules by term (TERMS) over `seconds` of `chips` chips."""

    joules: dict[str, float]
    seconds: float
    chips: int = 1

    @property
    def total_j(self) -> float:
        return sum(self.joules.values())

    @property
    def dynamic_j(self) -> float:
        return self.total_j - self.joules.get("static", 0.0)

    @property
    def power_w(self) -> float:
        """Average power over the run, all chips together."""
        return self.total_j / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"energy_j": self.total_j, "dynamic_j": self.dynamic_j, "power_w": self.power_w,
                "seconds": self.seconds, "chips": self.chips,
                "breakdown_j": {k: self.joules.get(k, 0.0) for k in TERMS}}


def dynamic_energy(chip: Chip, events: Mapping[str, int]) -> dict[str, float]:
    """Joules by term for the events one chip counted (or the sum over several chips' events)."""
    c = chip.config
    lanes = c["lanes"]
    macs_per_vector = c["mxm_dim"] * c["mxm_dim"]  # a vector passes a whole plane: padded rows and columns fire too
    e = lambda name: events.get(name, 0)  # noqa: E731 - events absent from an older extension count as none
    vxm_plain = e("vxm_ops") - e("vxm_transcendental_ops")
    return {
        "mxm": macs_per_vector * (e("mxm_int8_vectors") * c["energy_int8_mac_pj"]
                                  + e("mxm_fp16_vectors") * c["energy_fp16_mac_pj"]) * PJ,
        "weight_load": e("mxm_weight_vectors") * lanes * c["energy_weight_load_pj_per_byte"] * PJ,
        "sram": lanes * (e("mem_read_vectors") * c["energy_sram_read_pj_per_byte"]
                         + e("mem_write_vectors") * c["energy_sram_write_pj_per_byte"]) * PJ,
        "streams": e("stream_hops") * lanes * c["energy_stream_hop_pj_per_byte"] * PJ,
        "vxm": lanes * (vxm_plain * c["energy_vxm_op_pj_per_lane"]
                        + e("vxm_transcendental_ops") * c["energy_vxm_transcendental_pj_per_lane"]) * PJ,
        "sxm": e("sxm_ops") * lanes * c["energy_sxm_pj_per_byte"] * PJ,
        "c2c": e("c2c_vectors") * lanes * 8 * c["energy_c2c_pj_per_bit"] * PJ,
        "instructions": e("instructions") * c["energy_instruction_pj"] * PJ,
    }


def powered_fraction(chip: Chip, cycles: int, configs: Iterable[Mapping[str, Any]] = ()) -> float:
    """The superlanes' average powered fraction over `cycles`: every superlane is powered until a `CONFIG m`
    issues; each mask holds until the next (the chip has one mask, whichever queue issued it)."""
    superlanes = chip.config["superlanes"]
    if cycles <= 0:
        return 1.0
    powered, at, mask_bits = 0, 0, superlanes
    for record in sorted(configs, key=lambda r: r["cycle"]):
        t = min(max(int(record["cycle"]), at), cycles)
        powered += mask_bits * (t - at)
        at, mask_bits = t, bin(int(record["mask"]) & ((1 << superlanes) - 1)).count("1")
    powered += mask_bits * (cycles - at)
    return powered / (superlanes * cycles)


def static_energy(chip: Chip, seconds: float, powered: float = 1.0, chips: int = 1) -> float:
    """Joules of static power: every chip for `seconds`, its superlanes' share scaled by the powered fraction."""
    c = chip.config
    return chips * seconds * (c["static_power_superlanes_w"] * powered + c["static_power_uncore_w"])


def run_energy(chip: Chip, events: Mapping[str, int], cycles: int,
               configs: Iterable[Mapping[str, Any]] = (), chips: int = 1) -> Energy:
    """The energy of one run: `events` summed over its `chips` chips, which all run for `cycles`."""
    seconds = chip.seconds(cycles)
    joules = dynamic_energy(chip, events)
    joules["static"] = static_energy(chip, seconds, powered_fraction(chip, cycles, configs), chips)
    return Energy(joules, seconds, chips)


def chips_energy(chip: Chip, events: list[Mapping[str, int]], cycles: int,
                 configs: list[Iterable[Mapping[str, Any]]] | None = None) -> Energy:
    """The energy of one run over several chips: each chip's events, and every chip's static power for the whole
    run (a chip waiting for its turn still leaks and clocks), its superlanes' share by its own CONFIG masks."""
    seconds = chip.seconds(cycles)
    joules = dynamic_energy(chip, all_chips(events))
    masks = configs if configs is not None else [()] * len(events)
    joules["static"] = sum(static_energy(chip, seconds, powered_fraction(chip, cycles, m)) for m in masks)
    return Energy(joules, seconds, len(events))


def all_chips(events: Mapping[str, int] | Iterable[Mapping[str, int]]) -> dict[str, int]:
    """A run's events over all its chips: one chip's dict as it is, a multi-chip run's per-chip dicts summed."""
    return dict(events) if isinstance(events, Mapping) else add_events(*((e, 1) for e in events))


def add_events(*weighted: tuple[Mapping[str, int], int]) -> dict[str, int]:
    """Events summed by name over (events, times) pairs: several chips, or a piece that runs `times` times."""
    total: dict[str, int] = {}
    for events, times in weighted:
        for k, v in events.items():
            total[k] = total.get(k, 0) + int(v) * times
    return total
