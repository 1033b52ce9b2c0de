"""The chip configuration as the compiler sees it: numbers from the Rust `ChipConfig`, plus the floorplan.

The configuration is data (gem5 style): `Chip.load("tsp_v1")` takes the built-in default from the Rust core, and
`Chip.load("my_chip.json")` reads a file, validated by the Rust core so both sides agree on every field. The
floorplan (which slice sits at which stream position, and the queue index order) follows docs/isa.md sections 1
and 7; the Rust core computes the same from the same numbers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property

from lpusim import _lpusim
from lpusim.errors import ConfigError
from lpusim.files import MAX_JSON_BYTES, read_text


@dataclass(frozen=True)
class Chip:
    """A validated chip configuration (the Rust `ChipConfig`) and the floorplan derived from it."""

    config: dict = field(hash=False)

    @classmethod
    def load(cls, spec: "str | os.PathLike | dict | Chip | None" = None) -> "Chip":
        """A built-in configuration by name (`tsp_v1`), a JSON file path, a dict, or None for `tsp_v1`."""
        if isinstance(spec, Chip):
            return spec
        if spec is None:
            spec = "tsp_v1"
        if isinstance(spec, dict):
            text = json.dumps(spec)
        elif os.path.lexists(os.fspath(spec)):
            path = os.fspath(spec)
            text = read_text(path, "a chip configuration", MAX_JSON_BYTES, ConfigError)  # bounded, regular files only
            try:
                return cls(json.loads(_lpusim.validate_chip_config(text)))
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not JSON: {e}") from None
        else:
            spec = str(spec)
            if spec.endswith(".json") or os.sep in spec:
                raise ConfigError(f"{spec}: no such chip configuration file")
            text = _lpusim.chip_config_json(spec)
        return cls(json.loads(_lpusim.validate_chip_config(text)))

    def __getattr__(self, name: str):
        # Configuration fields read as attributes: chip.lanes, chip.mem_read_latency, ...
        try:
            return self.config[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_json(self) -> str:
        return json.dumps(self.config, indent=2)

    # ----- floorplan (docs/isa.md section 1) -------------------------------------------------------------
    @property
    def planes_per_hemisphere(self) -> int:
        return self.config["mxm_planes"] // 2

    @property
    def slices_per_hemisphere(self) -> int:
        return self.config["mem_slices"] // 2

    @cached_property
    def vxm_position(self) -> int:
        return self.planes_per_hemisphere + 1 + self.slices_per_hemisphere

    @cached_property
    def num_positions(self) -> int:
        return 2 * self.vxm_position + 1

    def mem_position(self, slice_index: int) -> int:
        """Stream position of a MEM slice by its global index (W<i> -> i, E<i> -> slices/2 + i)."""
        half = self.slices_per_hemisphere
        if slice_index < half:
            return self.vxm_position - 1 - slice_index
        return self.vxm_position + 1 + (slice_index - half)

    def mem_name(self, slice_index: int) -> str:
        half = self.slices_per_hemisphere
        return f"MEM.W{slice_index}" if slice_index < half else f"MEM.E{slice_index - half}"

    @cached_property
    def plane_names(self) -> list[str]:
        n = self.planes_per_hemisphere
        return [f"W{i}" for i in range(n)] + [f"E{i}" for i in range(n)]

    def plane_position(self, plane: str) -> int:
        i = int(plane[1:])
        n = self.planes_per_hemisphere
        if plane[0] == "W":
            return n - 1 - i
        return self.num_positions - n + i

    def plane_hemisphere(self, plane: str) -> str:
        return plane[0]

    @property
    def vxm_alus(self) -> int:
        return self.config["vxm_alus_per_lane"]

    # ----- derived timing -------------------------------------------------------------------------------
    @property
    def mxm_latency(self) -> int:
        """ABC issue to accumulator update: array depth plus the wait for the last superlane (docs/isa.md)."""
        return self.config["mxm_array_latency"] + self.config["superlanes"] - 1

    def cycles_per_vector(self, dtype: str) -> int:
        return self.config["mxm_fp16_cycles_per_vector"] if dtype == "f16" else 1

    def vxm_latency(self, op: str) -> int:
        if op == "MUL":
            return self.config["vxm_mul_latency"]
        if op in ("DIV", "EXP", "TANH", "RSQRT", "RCP", "SIGMOID", "ERF", "LOG", "SQRT", "SIN", "COS"):
            return self.config["vxm_transcendental_latency"]
        return self.config["vxm_alu_latency"]

    def seconds(self, cycles: int) -> float:
        return cycles / float(self.config["clock_hz"])
