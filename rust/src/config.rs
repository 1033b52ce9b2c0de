//! The chip configuration: every number the simulator uses, as data.
//!
//! Published numbers, with their sources and how sure they are, are in docs/tsp-facts.md (section 1: one chip);
//! the timing parameters are **chosen** (docs/isa.md section 8) because Groq never published them. Each field says
//! which and why.
//! Everything else in the simulator (positions, queue indices) is derived from these fields.

use crate::error::ConfigError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChipConfig {
    /// Name of the configuration (`tsp_v1` is the first-generation chip).
    pub name: String,
    /// Published nominal clock (900 MHz). Only used to convert cycles to seconds.
    pub clock_hz: f64,
    /// Published: a vector is 320 bytes, one per lane.
    pub lanes: usize,
    /// Published: 20 superlanes (one tile of every slice each).
    pub superlanes: usize,
    /// Published: each tile is 16 lanes wide. DISTRIBUTE and TRANSPOSE are defined on 16 lanes, so this must be 16.
    pub lanes_per_superlane: usize,
    /// Published: 88 MEM slices, 44 per hemisphere (must be even).
    pub mem_slices: usize,
    /// Published: 2 banks per slice (pseudo-dual porting). The simulator models exactly 2.
    pub mem_banks_per_slice: usize,
    /// Published (derived from 2.5 MiB per slice): 8192 addresses of one 320-byte vector.
    pub mem_words: usize,
    /// Derived: mem_slices * mem_words * lanes (220 MiB for tsp_v1). Kept in the JSON so it is visible; checked.
    pub sram_bytes: u64,
    /// Published: 32 streams in each direction.
    pub streams_per_direction: usize,
    /// Published: 4 MXM planes, half per hemisphere (must be even).
    pub mxm_planes: usize,
    /// Published: each plane is 320 x 320. Must equal `lanes` (a dot product spans a whole vector).
    pub mxm_dim: usize,
    /// Chosen: accumulator rows per plane (1024), enough for a 1024-row output tile.
    pub mxm_acc_rows: usize,
    /// Published: 16 ALUs per lane, one VXM queue each.
    pub vxm_alus_per_lane: usize,
    /// Chosen: SXM queues per hemisphere (4); the published 144 queues leave 8 for the SXM.
    pub sxm_per_hemisphere_queues: usize,
    /// Published: 16 C2C links (must be even: half on each side).
    pub c2c_links: usize,
    /// Published: 144 instruction queues. Derived from the unit counts and checked.
    pub instruction_queues: usize,
    /// Chosen: one SRAM access per cycle; the vector is on the stream the next cycle.
    pub mem_read_latency: u64,
    /// Chosen: symmetric with read.
    pub mem_write_latency: u64,
    /// Chosen: a 32-bit add/compare pipeline of two stages.
    pub vxm_alu_latency: u64,
    /// Chosen: a 32-bit multiplier one stage deeper than the adder.
    pub vxm_mul_latency: u64,
    /// Chosen: iterative / table-based functions (EXP, TANH, DIV, ...).
    pub vxm_transcendental_latency: u64,
    /// Chosen: one cycle per 16x16 supercell row of the 20x20 grid (FTLPU model).
    pub mxm_array_latency: u64,
    /// Chosen from published peaks: 750 TOPS int8 vs 188 TFLOPS fp16 is a 4x ratio.
    pub mxm_fp16_cycles_per_vector: u64,
    /// Chosen: double-buffered weights make install a buffer swap.
    pub mxm_install_latency: u64,
    /// Chosen: accumulator read to stream.
    pub mxm_acc_latency: u64,
    /// Chosen: one crossbar stage and one register.
    pub sxm_latency: u64,
    /// Chosen: a broadcast wire across the die.
    pub icu_notify_latency: u64,
    /// Chosen: receive buffer to stream.
    pub c2c_recv_latency: u64,
    /// Published "shallow buffers at clock-domain crossings"; the depth (8) is chosen.
    pub c2c_rx_buffer_vectors: usize,
    /// Published: the hardware-aligned counter's epoch is under 256 cycles; 252 chosen.
    pub hac_period: u64,
    /// Chosen: lpusim preloads queues, so this only bounds a program's length per queue.
    pub instruction_queue_depth: usize,
    // ---- energy (docs/energy.md): nothing here is published for the chip; every value is derived from a
    // published per-operation figure (Horowitz, ISSCC 2014, 45 nm at 0.9 V) scaled to 14 nm by C*V^2 (0.25:
    // capacitance with feature size, 14/45 = 0.31, times (0.8 V / 0.9 V)^2), or reasoned from physics. ----
    /// Chosen: an 8-bit multiply (0.2 pJ) and a 32-bit integer accumulate (0.1 pJ) at 45 nm, x 0.25.
    pub energy_int8_mac_pj: f64,
    /// Chosen: a 16-bit float multiply (1.1 pJ) and a 32-bit float accumulate (0.9 pJ) at 45 nm, x 0.25.
    pub energy_fp16_mac_pj: f64,
    /// Chosen: a 16-byte access of a 128 KiB tile of a MEM slice, between Horowitz's 32 KiB (20 pJ per 8 bytes)
    /// and 1 MiB (100 pJ) arrays, growing as the square root of size: 40 pJ per 8 bytes at 45 nm, x 0.25.
    pub energy_sram_read_pj_per_byte: f64,
    /// Chosen: the same as a read (Horowitz gives one figure per access).
    pub energy_sram_write_pj_per_byte: f64,
    /// Chosen: one stream-register position is about 0.26 mm of die (25 mm over 95 positions); a wire of about
    /// 0.2 pF/mm at 0.8 V with half the bits toggling costs 0.064 pJ/bit/mm, so 0.017 pJ/bit, plus a flip-flop
    /// write: about 0.02 pJ/bit, 0.15 pJ per byte.
    pub energy_stream_hop_pj_per_byte: f64,
    /// Chosen: writing a weight into a plane's weight buffer is a register write plus about one position of wire,
    /// as a stream hop.
    pub energy_weight_load_pj_per_byte: f64,
    /// Chosen: one 32-bit VXM operation on one lane: the mean of a 32-bit float add (0.9 pJ) and multiply (3.7 pJ)
    /// at 45 nm, x 0.25.
    pub energy_vxm_op_pj_per_lane: f64,
    /// Chosen: EXP, TANH, DIV, RSQRT, ... on one lane: about four 32-bit float multiplies (a short polynomial or
    /// iteration), 4 x 3.7 pJ at 45 nm, x 0.25.
    pub energy_vxm_transcendental_pj_per_lane: f64,
    /// Chosen: a shift, permute or transpose moves each byte through a crossbar: about two stream hops.
    pub energy_sxm_pj_per_byte: f64,
    /// Chosen: a 30 Gb/s receiver data path in 14 nm FinFET alone takes 0.8 pJ/bit (Kull et al., ISSCC 2017);
    /// with the transmitter, clocking and equalisation for a card-to-card channel, 4 pJ/bit.
    pub energy_c2c_pj_per_bit: f64,
    /// Chosen: Horowitz's overhead of an instruction in an in-order core (about 70 pJ at 45 nm: fetch, decode,
    /// register access), x 0.25.
    pub energy_instruction_pj: f64,
    /// Chosen: leakage and the clock network of the 20 superlanes' slices (the stream registers are clocked every
    /// cycle whatever they carry): 40 W, about 19% of the published 215 W TDP. A `CONFIG` mask that powers a
    /// superlane down removes its share.
    pub static_power_superlanes_w: f64,
    /// Chosen: what no superlane mask gates: the instruction control unit, clock generation, the 16 C2C links'
    /// SerDes held up while idle (64 lanes at about 0.1 W) and the host interface: 15 W.
    pub static_power_uncore_w: f64,
}

impl ChipConfig {
    /// The first-generation chip (docs/isa.md section 8).
    pub fn tsp_v1() -> ChipConfig {
        let mut c = ChipConfig {
            name: "tsp_v1".into(),
            clock_hz: 900e6,
            lanes: 320,
            superlanes: 20,
            lanes_per_superlane: 16,
            mem_slices: 88,
            mem_banks_per_slice: 2,
            mem_words: 8192,
            sram_bytes: 0,
            streams_per_direction: 32,
            mxm_planes: 4,
            mxm_dim: 320,
            mxm_acc_rows: 1024,
            vxm_alus_per_lane: 16,
            sxm_per_hemisphere_queues: 4,
            c2c_links: 16,
            instruction_queues: 0,
            mem_read_latency: 1,
            mem_write_latency: 1,
            vxm_alu_latency: 2,
            vxm_mul_latency: 3,
            vxm_transcendental_latency: 8,
            mxm_array_latency: 20,
            mxm_fp16_cycles_per_vector: 4,
            mxm_install_latency: 1,
            mxm_acc_latency: 1,
            sxm_latency: 2,
            icu_notify_latency: 2,
            c2c_recv_latency: 1,
            c2c_rx_buffer_vectors: 8,
            hac_period: 252,
            instruction_queue_depth: 1 << 20,
            energy_int8_mac_pj: 0.075,
            energy_fp16_mac_pj: 0.5,
            energy_sram_read_pj_per_byte: 1.25,
            energy_sram_write_pj_per_byte: 1.25,
            energy_stream_hop_pj_per_byte: 0.15,
            energy_weight_load_pj_per_byte: 0.15,
            energy_vxm_op_pj_per_lane: 0.575,
            energy_vxm_transcendental_pj_per_lane: 3.7,
            energy_sxm_pj_per_byte: 0.3,
            energy_c2c_pj_per_bit: 4.0,
            energy_instruction_pj: 17.5,
            static_power_superlanes_w: 40.0,
            static_power_uncore_w: 15.0,
        };
        c.sram_bytes = c.derived_sram_bytes();
        c.instruction_queues = c.derived_instruction_queues();
        c
    }

    /// A named built-in configuration.
    pub fn by_name(name: &str) -> Result<ChipConfig, ConfigError> {
        match name {
            "tsp_v1" => Ok(ChipConfig::tsp_v1()),
            _ => Err(ConfigError::new("name", format!("unknown chip configuration '{name}' (known: tsp_v1)"))),
        }
    }

    pub fn derived_sram_bytes(&self) -> u64 {
        (self.mem_slices as u64).saturating_mul(self.mem_words as u64).saturating_mul(self.lanes as u64)
    }

    pub fn derived_instruction_queues(&self) -> usize {
        self.mem_slices
            + self.vxm_alus_per_lane
            + 4 * self.mxm_planes
            + 2 * self.sxm_per_hemisphere_queues
            + self.c2c_links
    }

    /// Parse and validate JSON. Unknown, missing and mistyped fields are errors naming the field. The derived
    /// fields `sram_bytes` and `instruction_queues` may be omitted (they are computed), and are checked if given.
    pub fn from_json(text: &str) -> Result<ChipConfig, ConfigError> {
        use serde_json::Value;
        let mut v: Value = serde_json::from_str(text).map_err(|e| ConfigError::new("json", format!("not valid JSON: {e}")))?;
        let template = serde_json::to_value(ChipConfig::tsp_v1()).map_err(|e| ConfigError::new("json", e.to_string()))?;
        let (Some(obj), Some(known)) = (v.as_object_mut(), template.as_object()) else {
            return Err(ConfigError::new("json", "a chip configuration is a JSON object"));
        };
        if let Some(k) = obj.keys().find(|k| !known.contains_key(*k)) {
            return Err(ConfigError::new(k, "unknown field"));
        }
        for k in known.keys() {
            if !obj.contains_key(k) && k != "sram_bytes" && k != "instruction_queues" {
                return Err(ConfigError::new(k, "missing field"));
            }
        }
        // Find a mistyped field by trying each given value in an otherwise valid template.
        for (k, val) in obj.iter() {
            let mut probe = template.clone();
            probe[k.as_str()] = val.clone();
            if let Err(e) = serde_json::from_value::<ChipConfig>(probe) {
                return Err(ConfigError::new(k, format!("bad value {val}: {e}")));
            }
        }
        let derived_missing = (!obj.contains_key("sram_bytes"), !obj.contains_key("instruction_queues"));
        obj.entry("sram_bytes").or_insert(Value::from(0));
        obj.entry("instruction_queues").or_insert(Value::from(0));
        let mut c: ChipConfig = serde_json::from_value(v).map_err(|e| ConfigError::new("json", e.to_string()))?;
        if derived_missing.0 {
            c.sram_bytes = c.derived_sram_bytes();
        }
        if derived_missing.1 {
            c.instruction_queues = c.derived_instruction_queues();
        }
        c.validate()?;
        Ok(c)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }

    /// Check every field; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |f: &str, m: String| Err(ConfigError::new(f, m));
        if !(self.clock_hz.is_finite() && self.clock_hz > 0.0) {
            return err("clock_hz", "must be a positive number".into());
        }
        if self.lanes_per_superlane != 16 {
            return err("lanes_per_superlane", "must be 16 (DISTRIBUTE and TRANSPOSE work on 16 lanes)".into());
        }
        if self.superlanes == 0 || self.superlanes > 4096 {
            return err("superlanes", "must be in 1..4096".into());
        }
        if self.lanes != self.superlanes * self.lanes_per_superlane {
            return err("lanes", format!("must equal superlanes * lanes_per_superlane = {}", self.superlanes * 16));
        }
        if self.mem_slices == 0 || self.mem_slices % 2 != 0 || self.mem_slices > 4096 {
            return err("mem_slices", "must be even and in 2..4096".into());
        }
        if self.mem_banks_per_slice != 2 {
            return err("mem_banks_per_slice", "must be 2 (the simulator models pseudo-dual-ported slices)".into());
        }
        if self.mem_words < 2 || self.mem_words % 2 != 0 || self.mem_words > (1 << 24) {
            return err("mem_words", "must be even and in 2..16777216".into());
        }
        if self.sram_bytes != self.derived_sram_bytes() {
            return err("sram_bytes", format!("must equal mem_slices * mem_words * lanes = {}", self.derived_sram_bytes()));
        }
        if self.streams_per_direction == 0 || self.streams_per_direction > 256 {
            return err("streams_per_direction", "must be in 1..256".into());
        }
        if self.mxm_planes == 0 || self.mxm_planes % 2 != 0 || self.mxm_planes > 64 {
            return err("mxm_planes", "must be even and in 2..64".into());
        }
        if self.mxm_dim != self.lanes {
            return err("mxm_dim", format!("must equal lanes ({})", self.lanes));
        }
        if self.mxm_acc_rows == 0 || self.mxm_acc_rows > (1 << 24) {
            return err("mxm_acc_rows", "must be in 1..16777216".into());
        }
        if self.vxm_alus_per_lane == 0 || self.vxm_alus_per_lane > 256 {
            return err("vxm_alus_per_lane", "must be in 1..256".into());
        }
        if self.sxm_per_hemisphere_queues == 0 || self.sxm_per_hemisphere_queues > 256 {
            return err("sxm_per_hemisphere_queues", "must be in 1..256".into());
        }
        if self.c2c_links % 2 != 0 || self.c2c_links > 256 {
            return err("c2c_links", "must be even and at most 256".into());
        }
        if self.instruction_queues != self.derived_instruction_queues() {
            return err(
                "instruction_queues",
                format!("must equal mem_slices + vxm_alus_per_lane + 4*mxm_planes + 2*sxm_per_hemisphere_queues + c2c_links = {}", self.derived_instruction_queues()),
            );
        }
        let lat: [(&str, u64); 13] = [
            ("mem_read_latency", self.mem_read_latency),
            ("mem_write_latency", self.mem_write_latency),
            ("vxm_alu_latency", self.vxm_alu_latency),
            ("vxm_mul_latency", self.vxm_mul_latency),
            ("vxm_transcendental_latency", self.vxm_transcendental_latency),
            ("mxm_array_latency", self.mxm_array_latency),
            ("mxm_fp16_cycles_per_vector", self.mxm_fp16_cycles_per_vector),
            ("mxm_install_latency", self.mxm_install_latency),
            ("mxm_acc_latency", self.mxm_acc_latency),
            ("sxm_latency", self.sxm_latency),
            ("icu_notify_latency", self.icu_notify_latency),
            ("c2c_recv_latency", self.c2c_recv_latency),
            ("hac_period", self.hac_period),
        ];
        for (f, v) in lat {
            if v == 0 || v > 1_000_000 {
                return err(f, "must be in 1..1000000 (all latencies are at least one cycle)".into());
            }
        }
        if self.c2c_rx_buffer_vectors == 0 || self.c2c_rx_buffer_vectors > 1 << 20 {
            return err("c2c_rx_buffer_vectors", "must be in 1..1048576".into());
        }
        if self.instruction_queue_depth == 0 || self.instruction_queue_depth > 1 << 28 {
            return err("instruction_queue_depth", "must be in 1..268435456".into());
        }
        // Energies are per event in picojoules and powers in watts: zero is allowed (to leave a term out), a
        // negative, infinite or absurd value is not (1 uJ per event, 100 kW per chip bound any real chip).
        for (f, v) in self.energy_fields() {
            let bound = if f.starts_with("static_power") { 1e5 } else { 1e6 };
            if !(v.is_finite() && (0.0..=bound).contains(&v)) {
                return err(f, format!("must be a number in 0..{bound}"));
            }
        }
        Ok(())
    }

    /// The energy fields by name (docs/energy.md).
    pub fn energy_fields(&self) -> [(&'static str, f64); 13] {
        [
            ("energy_int8_mac_pj", self.energy_int8_mac_pj),
            ("energy_fp16_mac_pj", self.energy_fp16_mac_pj),
            ("energy_sram_read_pj_per_byte", self.energy_sram_read_pj_per_byte),
            ("energy_sram_write_pj_per_byte", self.energy_sram_write_pj_per_byte),
            ("energy_stream_hop_pj_per_byte", self.energy_stream_hop_pj_per_byte),
            ("energy_weight_load_pj_per_byte", self.energy_weight_load_pj_per_byte),
            ("energy_vxm_op_pj_per_lane", self.energy_vxm_op_pj_per_lane),
            ("energy_vxm_transcendental_pj_per_lane", self.energy_vxm_transcendental_pj_per_lane),
            ("energy_sxm_pj_per_byte", self.energy_sxm_pj_per_byte),
            ("energy_c2c_pj_per_bit", self.energy_c2c_pj_per_bit),
            ("energy_instruction_pj", self.energy_instruction_pj),
            ("static_power_superlanes_w", self.static_power_superlanes_w),
            ("static_power_uncore_w", self.static_power_uncore_w),
        ]
    }

    // ---- floorplan (docs/isa.md section 1), derived from the counts ----

    /// MXM planes per hemisphere.
    pub fn planes_per_side(&self) -> usize {
        self.mxm_planes / 2
    }
    /// MEM slices per hemisphere.
    pub fn mem_per_side(&self) -> usize {
        self.mem_slices / 2
    }
    /// Number of positions on the belt: `2*(planes/2) + 2 + 2*(mem/2) + 1`.
    pub fn positions(&self) -> usize {
        2 * self.planes_per_side() + 2 + 2 * self.mem_per_side() + 1
    }
    pub fn vxm_position(&self) -> usize {
        self.planes_per_side() + 1 + self.mem_per_side()
    }
    pub fn sxm_position(&self, east: bool) -> usize {
        if east {
            self.vxm_position() + self.mem_per_side() + 1
        } else {
            self.planes_per_side()
        }
    }
    /// MEM slice `i` of a hemisphere (`i = 0` is next to the VXM).
    pub fn mem_position(&self, east: bool, i: usize) -> usize {
        if east {
            self.vxm_position() + 1 + i
        } else {
            self.vxm_position() - 1 - i
        }
    }
    /// MXM plane `j` of a hemisphere (`j = 0` is the inner one).
    pub fn mxm_position(&self, east: bool, j: usize) -> usize {
        if east {
            self.sxm_position(true) + 1 + j
        } else {
            self.planes_per_side() - 1 - j
        }
    }
    /// C2C link `i`: links `0..c2c_links/2` sit with the west SXM, the rest with the east SXM.
    pub fn link_position(&self, link: usize) -> usize {
        self.sxm_position(link >= self.c2c_links / 2)
    }
    /// `mxm_latency()` of section 4: the array plus the wait for the last superlane.
    pub fn mxm_latency(&self) -> u64 {
        self.mxm_array_latency + (self.superlanes as u64 - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsp_v1_numbers() {
        let c = ChipConfig::tsp_v1();
        c.validate().unwrap();
        assert_eq!(c.sram_bytes, 230_686_720);
        assert_eq!(c.instruction_queues, 144);
        assert_eq!(c.positions(), 95);
        assert_eq!(c.vxm_position(), 47);
        assert_eq!(c.mem_position(false, 43), 3);
        assert_eq!(c.mem_position(false, 0), 46);
        assert_eq!(c.mem_position(true, 43), 91);
        assert_eq!(c.sxm_position(false), 2);
        assert_eq!(c.sxm_position(true), 92);
        assert_eq!(c.mxm_position(false, 1), 0);
        assert_eq!(c.mxm_position(false, 0), 1);
        assert_eq!(c.mxm_position(true, 0), 93);
        assert_eq!(c.mxm_position(true, 1), 94);
    }

    #[test]
    fn json_round_trip_and_errors() {
        let c = ChipConfig::tsp_v1();
        let back = ChipConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(c, back);
        let bad = c.to_json().replace("\"mem_slices\": 88", "\"mem_slices\": 87");
        let e = ChipConfig::from_json(&bad).unwrap_err();
        assert_eq!(e.field, "mem_slices");
        let unknown = c.to_json().replacen('{', "{\"bogus\": 1,", 1);
        let e = ChipConfig::from_json(&unknown).unwrap_err();
        assert_eq!(e.field, "bogus");
        let mistyped = c.to_json().replace("\"lanes\": 320", "\"lanes\": \"many\"");
        assert_eq!(ChipConfig::from_json(&mistyped).unwrap_err().field, "lanes");
        let missing = c.to_json().replace("\"hac_period\": 252,", "");
        assert_eq!(ChipConfig::from_json(&missing).unwrap_err().field, "hac_period");
        let derived = c.to_json().replace("\"sram_bytes\": 230686720,", "");
        assert_eq!(ChipConfig::from_json(&derived).unwrap(), c);
        assert_eq!(ChipConfig::from_json("[1]").unwrap_err().field, "json");
        assert_eq!(ChipConfig::from_json("{").unwrap_err().field, "json");
        assert!(ChipConfig::by_name("nope").is_err());
        let negative = c.to_json().replace("\"energy_c2c_pj_per_bit\": 4.0", "\"energy_c2c_pj_per_bit\": -1.0");
        assert_eq!(ChipConfig::from_json(&negative).unwrap_err().field, "energy_c2c_pj_per_bit");
        let absurd = c.to_json().replace("\"static_power_uncore_w\": 15.0", "\"static_power_uncore_w\": 1e9");
        assert_eq!(ChipConfig::from_json(&absurd).unwrap_err().field, "static_power_uncore_w");
    }
}
