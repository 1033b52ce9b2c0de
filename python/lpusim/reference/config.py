"""The tsp_v1 chip configuration and the floorplan (docs/isa.md sections 1, 7 and 8), written out plainly."""
from __future__ import annotations

import math

TSP_V1: dict = {
    "name": "tsp_v1",
    "lanes": 320,
    "lanes_per_superlane": 16,
    "mem_banks_per_slice": 2,
    "sram_bytes": 88 * 8192 * 320,
    "sxm_per_hemisphere_queues": 4,
    "c2c_links": 16,
    "instruction_queues": 144,
    "superlanes": 20,
    "mem_slices": 88,
    "mem_words": 8192,
    "streams_per_direction": 32,
    "mxm_planes": 4,
    "mxm_dim": 320,
    "mxm_acc_rows": 1024,
    "vxm_alus_per_lane": 16,
    "clock_hz": 900e6,
    "mem_read_latency": 1,
    "mem_write_latency": 1,
    "vxm_alu_latency": 2,
    "vxm_mul_latency": 3,
    "vxm_transcendental_latency": 8,
    "mxm_array_latency": 20,
    "mxm_fp16_cycles_per_vector": 4,
    "mxm_install_latency": 1,
    "mxm_acc_latency": 1,
    "sxm_latency": 2,
    "icu_notify_latency": 2,
    "c2c_recv_latency": 1,
    "c2c_rx_buffer_vectors": 8,
    "hac_period": 252,
    "instruction_queue_depth": 1048576,
    # energy (docs/energy.md): per event in pJ, static power in W
    "energy_int8_mac_pj": 0.075,
    "energy_fp16_mac_pj": 0.5,
    "energy_sram_read_pj_per_byte": 1.25,
    "energy_sram_write_pj_per_byte": 1.25,
    "energy_stream_hop_pj_per_byte": 0.15,
    "energy_weight_load_pj_per_byte": 0.15,
    "energy_vxm_op_pj_per_lane": 0.575,
    "energy_vxm_transcendental_pj_per_lane": 3.7,
    "energy_sxm_pj_per_byte": 0.3,
    "energy_c2c_pj_per_bit": 4.0,
    "energy_instruction_pj": 17.5,
    "static_power_superlanes_w": 40.0,
    "static_power_uncore_w": 15.0,
}

# The link a lone chip's `.link` loopback has: the system configuration's defaults (docs/system.md section 1;
# published: a vector travels as a 328-byte flit, about 100 Gb/s per link). Not chip configuration fields: the
# Rust core takes them from `SystemConfig::default()`, so they are written out here like TSP_V1.
LINK: dict = {"flit_bytes": 328, "link_gbps": 100.0}
TICKS_PER_CYCLE = 10 ** 12  # global time unit of the Rust core's clocks (rust/src/sim/clock.rs)


def send_interval_cycles(config: dict, link: dict = LINK) -> int:
    """Cycles between two SENDs on one link of a lone chip: one flit at the link rate, in ticks rounded up, then
    in whole cycles (24 for 328 bytes at 100 Gb/s and 900 MHz); the same float steps as the Rust core."""
    ticks = max(1, math.ceil(link["flit_bytes"] * 8.0 / (link["link_gbps"] * 1e9) * config["clock_hz"] * 1e12))
    return -(-ticks // TICKS_PER_CYCLE)


class Floorplan:
    """Positions of every queue and the queue index order, from the configuration numbers."""

    def __init__(self, config: dict):
        self.config = config
        self.planes_half = config["mxm_planes"] // 2
        self.mem_half = config["mem_slices"] // 2
        self.vxm_pos = self.planes_half + 1 + self.mem_half
        self.num_positions = 2 * self.vxm_pos + 1
        self.sxm_w_pos = self.planes_half
        self.sxm_e_pos = self.vxm_pos + 1 + self.mem_half
        # queue index order (section 7): MEM.W*, MEM.E*, VXM.*, MXM.W*.{LW,IW,ABC,ACC}, MXM.E*.*, SXM.W.*,
        # SXM.E.*, C2C.*
        names: list[str] = []
        units: list[str] = []
        positions: list[int] = []
        for i in range(self.mem_half):
            names.append(f"MEM.W{i}"); units.append("mem"); positions.append(self.vxm_pos - 1 - i)
        for i in range(self.mem_half):
            names.append(f"MEM.E{i}"); units.append("mem"); positions.append(self.vxm_pos + 1 + i)
        for i in range(config["vxm_alus_per_lane"]):
            names.append(f"VXM.{i}"); units.append("vxm"); positions.append(self.vxm_pos)
        for side in "WE":
            for i in range(self.planes_half):
                for part in ("LW", "IW", "ABC", "ACC"):
                    names.append(f"MXM.{side}{i}.{part}"); units.append("mxm")
                    positions.append(self.plane_position(side, i))
        for side in "WE":
            for i in range(config["sxm_per_hemisphere_queues"]):
                names.append(f"SXM.{side}.{i}"); units.append("sxm")
                positions.append(self.sxm_w_pos if side == "W" else self.sxm_e_pos)
        links = config["c2c_links"]  # the first half at the west SXM position, the rest at the east one
        for i in range(links):
            names.append(f"C2C.{i}"); units.append("c2c")
            positions.append(self.sxm_w_pos if i < links // 2 else self.sxm_e_pos)
        self.queue_names = names
        self.queue_units = units
        self.queue_positions = positions
        self.queue_index = {n: i for i, n in enumerate(names)}

    def plane_position(self, side: str, i: int) -> int:
        if side == "W":
            return self.planes_half - 1 - i
        return self.num_positions - self.planes_half + i

    def mem_global_index(self, name: str) -> int:
        """`MEM.W<i>` -> i, `MEM.E<i>` -> mem_slices/2 + i."""
        side, i = name[4], int(name[5:])
        return i if side == "W" else self.mem_half + i

    def mem_name(self, g: int) -> str:
        return f"MEM.W{g}" if g < self.mem_half else f"MEM.E{g - self.mem_half}"
