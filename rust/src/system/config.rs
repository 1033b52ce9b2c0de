//! The system configuration (docs/system.md section 1): how many chips, how they are linked, and the numbers of
//! the links and oscillators. Every field is optional in JSON (the defaults are below); unknown, mistyped and bad
//! fields are errors naming the field, like the chip configuration.

use super::rng::Rng;
use crate::config::ChipConfig;
use crate::error::ConfigError;
use crate::sim::clock::TICKS_PER_CYCLE;
use serde::{Deserialize, Serialize};

/// Local links join chips of one node; global links join nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Local,
    Global,
}

/// One link of an explicit list (`topology: "links"`). Links are bidirectional: a SEND on `link_a` of `chip_a`
/// lands in the receive buffer of `link_b` of `chip_b`, and the other way round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub chip_a: usize,
    pub link_a: usize,
    pub chip_b: usize,
    pub link_b: usize,
    /// Mean latency in nominal cycles; default by kind (`local_latency_cycles` / `global_latency_cycles`).
    #[serde(default)]
    pub latency_cycles: Option<f64>,
    /// Half-width of the seeded uniform draw around the mean; default `latency_spread_cycles`.
    #[serde(default)]
    pub spread_cycles: Option<f64>,
    #[serde(default = "local")]
    pub kind: LinkKind,
}

fn local() -> LinkKind {
    LinkKind::Local
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemConfig {
    /// Number of chips. "node": 1..=8 (default 8, fully connected); "rack": 72; "dragonfly": 8 * nodes;
    /// "links": required.
    pub chips: Option<usize>,
    /// The chip at every position: a built-in name ("tsp_v1") or an inline chip configuration object.
    pub chip: serde_json::Value,
    /// "node" (published: 8 chips fully connected by 7 local links each), "rack" (published: 9 nodes, 72 chips),
    /// "dragonfly" (`nodes` nodes, every pair of nodes joined by global links), or "links" (the explicit `links`).
    pub topology: String,
    /// Dragonfly: number of 8-chip nodes, 1..=33 (32 global ports per node, published 4 per chip).
    pub nodes: Option<usize>,
    /// The explicit link list of topology "links".
    pub links: Vec<LinkSpec>,
    /// Seed of every random draw (root HAC phase, oscillator drifts, link latencies; docs/system.md 1).
    pub seed: u64,
    /// Published: measured mean in-node link latency 216.3-217.4 cycles (Hot Chips 34).
    pub local_latency_cycles: f64,
    /// Chosen from the published "one hop about 722 ns" (650 cycles at 900 MHz) for links between nodes.
    pub global_latency_cycles: f64,
    /// Chosen: each link's fixed latency is drawn uniformly within +-3 cycles of the mean (published sigma
    /// 2.6-2.9 cycles over 100K transfers; lpusim fixes one latency per link, plus the sub-cycle phase).
    pub latency_spread_cycles: f64,
    /// Published: a vector is 320 bytes.
    pub vector_bytes: u64,
    /// Published: a vector travels as a 328-byte flit.
    pub flit_bytes: u64,
    /// Published: about 100 Gb/s per link. With `flit_bytes` and the chip clock it fixes the minimum time
    /// between two SENDs on a link (`min_send_interval_cycles`); links have no back-pressure, so an earlier SEND
    /// is `LinkBusy`. The defaults of this field and `flit_bytes` are also the rate of a lone chip's `.link`
    /// loopback (`send_interval_ticks`; docs/isa.md section 4).
    pub link_gbps: f64,
    /// Chosen: every chip's oscillator is off nominal by a seeded uniform draw in +-drift_ppm parts per million
    /// (common crystal oscillators are specified at +-20..50 ppm; Groq publishes no figure).
    pub drift_ppm: f64,
    /// Optional explicit drift per chip (ppm, positive = fast), overriding the draw.
    pub chip_drift_ppm: Option<Vec<f64>>,
    /// Chosen: a child's HAC may be adjusted by at most this many counts per epoch ("rate-limited adjustment",
    /// published without a number); a chip whose clock differs from the root's by more than
    /// hac_adjust_per_epoch / hac_period cannot keep its HAC aligned (DriftOverrun at start).
    pub hac_adjust_per_epoch: u64,
    /// The root of the HAC spanning tree.
    pub root_chip: usize,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            chips: None,
            chip: serde_json::Value::String("tsp_v1".into()),
            topology: "node".into(),
            nodes: None,
            links: Vec::new(),
            seed: 0,
            local_latency_cycles: 217.0,
            global_latency_cycles: 650.0,
            latency_spread_cycles: 3.0,
            vector_bytes: 320,
            flit_bytes: 328,
            link_gbps: 100.0,
            drift_ppm: 25.0,
            chip_drift_ppm: None,
            hac_adjust_per_epoch: 1,
            root_chip: 0,
        }
    }
}

/// One end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub chip: usize,
    pub link: usize,
}

/// A link with its latency drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub a: End,
    pub b: End,
    pub kind: LinkKind,
    /// Exact latency in ticks (`TICKS_PER_CYCLE` per nominal cycle), the same both ways.
    pub latency_ticks: u128,
}

/// Everything a run needs, with every random draw made.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub chip: ChipConfig,
    pub chips: usize,
    pub links: Vec<Link>,
    /// Per chip: the drift in ppm (as drawn) and the cycle length in ticks, `TICKS_PER_CYCLE - ppm * 10^6`.
    pub drift_ppm: Vec<f64>,
    pub periods: Vec<u128>,
    /// The root's HAC value at cycle 0 (its phase since power-on), in `0..hac_period`.
    pub root_hac_phase: u64,
    /// Minimum time between SENDs on one link, in ticks: flit bits at the link rate.
    pub send_interval_ticks: u128,
    pub flit_bytes: u64,
    pub root: usize,
    pub hac_adjust_per_epoch: u64,
}

fn err(field: &str, m: impl Into<String>) -> ConfigError {
    ConfigError::new(field, m)
}

fn ticks(cycles: f64) -> u128 {
    (cycles * TICKS_PER_CYCLE as f64).round() as u128
}

impl SystemConfig {
    /// Minimum time between two SENDs on one link, in ticks, at a chip clock of `clock_hz`: one `flit_bytes` flit
    /// at `link_gbps`, rounded up (23.616 cycles for 328 bytes at 100 Gb/s and 900 MHz). System links and a lone
    /// chip's `.link` loopback (`sim::Chip::load`, which uses the defaults: the published link) both use it.
    pub fn send_interval_ticks(&self, clock_hz: f64) -> u128 {
        let bits = self.flit_bytes as f64 * 8.0;
        ((bits / (self.link_gbps * 1e9) * clock_hz * TICKS_PER_CYCLE as f64).ceil() as u128).max(1)
    }

    /// Parse JSON: unknown, mistyped and bad fields are errors naming the field (`system.<field>`).
    pub fn from_json(text: &str) -> Result<SystemConfig, ConfigError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err("system", format!("not valid JSON: {e}")))?;
        let template = serde_json::to_value(SystemConfig::default()).map_err(|e| err("system", e.to_string()))?;
        let (Some(obj), Some(known)) = (v.as_object(), template.as_object()) else {
            return Err(err("system", "a system configuration is a JSON object"));
        };
        if let Some(k) = obj.keys().find(|k| !known.contains_key(*k)) {
            return Err(err(&format!("system.{k}"), "unknown field"));
        }
        for (k, val) in obj {
            let mut probe = template.clone();
            probe[k.as_str()] = val.clone();
            if let Err(e) = serde_json::from_value::<SystemConfig>(probe) {
                return Err(err(&format!("system.{k}"), format!("bad value: {e}")));
            }
        }
        let c: SystemConfig = serde_json::from_value(v).map_err(|e| err("system", e.to_string()))?;
        c.resolve()?;
        Ok(c)
    }

    /// Read a configuration file.
    pub fn load(path: &std::path::Path) -> Result<SystemConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("system", format!("cannot read system configuration {}: {e}", path.display())))?;
        SystemConfig::from_json(&text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    fn chip_config(&self) -> Result<ChipConfig, ConfigError> {
        match &self.chip {
            serde_json::Value::String(name) => ChipConfig::by_name(name).map_err(|e| err("system.chip", e.message)),
            v @ serde_json::Value::Object(_) => ChipConfig::from_json(&v.to_string())
                .map_err(|e| err(&format!("system.chip.{}", e.field), e.message)),
            _ => Err(err("system.chip", "a built-in chip name or a chip configuration object")),
        }
    }

    /// The links of the named topologies (docs/system.md 1) or the explicit list, as (a, b, kind, mean, spread).
    fn link_list(&self, cfg: &ChipConfig) -> Result<(usize, Vec<(End, End, LinkKind, f64, f64)>), ConfigError> {
        let (lo, gl, sp) = (self.local_latency_cycles, self.global_latency_cycles, self.latency_spread_cycles);
        let node_links = |n_nodes: usize, per_node: usize| -> Result<Vec<(End, End, LinkKind, f64, f64)>, ConfigError> {
            let mut v = Vec::new();
            for n in 0..n_nodes {
                for a in 0..per_node {
                    for b in a + 1..per_node {
                        // Chip a's link to chip b of its node is b (b < a) or b - 1 (b > a): links 0..6.
                        let ea = End { chip: n * 8 + a, link: b - 1 };
                        let eb = End { chip: n * 8 + b, link: a };
                        v.push((ea, eb, LinkKind::Local, lo, sp));
                    }
                }
            }
            if n_nodes > 1 {
                // 32 global ports per node: port p = 4 * chip + g is link 8 + g of that chip. The ports go to the
                // other nodes in order, `per_pair` consecutive ports each.
                let per_pair = 32 / (n_nodes - 1);
                let port = |n: usize, m: usize, k: usize| {
                    let r = if m < n { m } else { m - 1 };
                    let p = r * per_pair + k;
                    End { chip: n * 8 + p / 4, link: 8 + p % 4 }
                };
                for n in 0..n_nodes {
                    for m in n + 1..n_nodes {
                        for k in 0..per_pair {
                            v.push((port(n, m, k), port(m, n, k), LinkKind::Global, gl, sp));
                        }
                    }
                }
            }
            Ok(v)
        };
        let need_links = |n: usize| -> Result<(), ConfigError> {
            if cfg.c2c_links < n {
                return Err(err("system.topology", format!("needs chips with {n} C2C links, the chip has {}", cfg.c2c_links)));
            }
            Ok(())
        };
        match self.topology.as_str() {
            "node" => {
                let n = self.chips.unwrap_or(8);
                if !(1..=8).contains(&n) {
                    return Err(err("system.chips", format!("a node holds 1..8 chips, not {n}")));
                }
                need_links(n.saturating_sub(1))?;
                Ok((n, node_links(1, n)?))
            }
            "rack" | "dragonfly" => {
                let nodes = if self.topology == "rack" { 9 } else { self.nodes.unwrap_or(0) };
                if self.topology == "rack" && self.nodes.is_some_and(|x| x != 9) {
                    return Err(err("system.nodes", "a rack is 9 nodes (use topology dragonfly for other counts)"));
                }
                if !(1..=33).contains(&nodes) {
                    return Err(err("system.nodes", format!("a dragonfly has 1..33 nodes (32 global ports per node), not {nodes}")));
                }
                if let Some(c) = self.chips {
                    if c != 8 * nodes {
                        return Err(err("system.chips", format!("{nodes} nodes hold {} chips, not {c}", 8 * nodes)));
                    }
                }
                need_links(if nodes > 1 { 12 } else { 7 })?;
                Ok((8 * nodes, node_links(nodes, 8)?))
            }
            "links" => {
                let Some(n) = self.chips else {
                    return Err(err("system.chips", "topology \"links\" needs the number of chips"));
                };
                let v = self
                    .links
                    .iter()
                    .map(|l| {
                        let mean = l.latency_cycles.unwrap_or(if l.kind == LinkKind::Local { lo } else { gl });
                        let a = End { chip: l.chip_a, link: l.link_a };
                        let b = End { chip: l.chip_b, link: l.link_b };
                        (a, b, l.kind, mean, l.spread_cycles.unwrap_or(sp))
                    })
                    .collect();
                Ok((n, v))
            }
            t => Err(err("system.topology", format!("unknown topology '{t}' (node, rack, dragonfly, links)"))),
        }
    }

    /// Validate and make every random draw (docs/system.md 1): first the root's HAC phase, then each chip's drift
    /// in chip order, then each link's latency in link order.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let cfg = self.chip_config()?;
        if !(self.local_latency_cycles.is_finite() && self.local_latency_cycles >= 1.0 && self.local_latency_cycles <= 1e6) {
            return Err(err("system.local_latency_cycles", "must be in 1..1000000"));
        }
        if !(self.global_latency_cycles.is_finite() && self.global_latency_cycles >= 1.0 && self.global_latency_cycles <= 1e6) {
            return Err(err("system.global_latency_cycles", "must be in 1..1000000"));
        }
        if !(self.latency_spread_cycles.is_finite() && self.latency_spread_cycles >= 0.0) {
            return Err(err("system.latency_spread_cycles", "must be a number >= 0"));
        }
        if self.vector_bytes != cfg.lanes as u64 {
            return Err(err("system.vector_bytes", format!("must equal the chip's lanes ({})", cfg.lanes)));
        }
        if self.flit_bytes < self.vector_bytes || self.flit_bytes > 1 << 20 {
            return Err(err("system.flit_bytes", "must be at least vector_bytes (and at most 1 MiB)"));
        }
        if !(self.link_gbps.is_finite() && self.link_gbps > 0.0 && self.link_gbps <= 1e6) {
            return Err(err("system.link_gbps", "must be a positive number up to 1000000"));
        }
        if !(self.drift_ppm.is_finite() && (0.0..=100_000.0).contains(&self.drift_ppm)) {
            return Err(err("system.drift_ppm", "must be in 0..100000"));
        }
        if self.hac_adjust_per_epoch == 0 || self.hac_adjust_per_epoch >= cfg.hac_period {
            return Err(err("system.hac_adjust_per_epoch", format!("must be in 1..{}", cfg.hac_period - 1)));
        }
        let (n, list) = self.link_list(&cfg)?;
        if n == 0 || n > 100_000 {
            return Err(err("system.chips", "must be in 1..100000"));
        }
        if self.root_chip >= n {
            return Err(err("system.root_chip", format!("must be a chip, 0..{}", n - 1)));
        }
        let mut rng = Rng::new(self.seed);
        let root_hac_phase = rng.range_i128(0, cfg.hac_period as i128 - 1) as u64;
        let drift_ppm: Vec<f64> = match &self.chip_drift_ppm {
            Some(v) => {
                if v.len() != n {
                    return Err(err("system.chip_drift_ppm", format!("needs one value per chip ({n}), got {}", v.len())));
                }
                if let Some(x) = v.iter().find(|x| !(x.is_finite() && x.abs() <= 100_000.0)) {
                    return Err(err("system.chip_drift_ppm", format!("{x} is outside -100000..100000")));
                }
                v.clone()
            }
            None => {
                let m = (self.drift_ppm * 1e6).round() as i128;
                (0..n).map(|_| rng.range_i128(-m, m) as f64 / 1e6).collect()
            }
        };
        // ppm * 10^6 ticks per 10^12: positive drift = fast oscillator = shorter cycle.
        let periods = drift_ppm.iter().map(|p| (TICKS_PER_CYCLE as i128 - (p * 1e6).round() as i128) as u128).collect();
        let mut used = std::collections::HashMap::new();
        let mut links = Vec::with_capacity(list.len());
        for (i, (a, b, kind, mean, spread)) in list.into_iter().enumerate() {
            let f = format!("system.links[{i}]");
            for e in [a, b] {
                if e.chip >= n {
                    return Err(err(&f, format!("chip {} does not exist (0..{})", e.chip, n - 1)));
                }
                if e.link >= cfg.c2c_links {
                    return Err(err(&f, format!("link {} does not exist (0..{})", e.link, cfg.c2c_links - 1)));
                }
                if let Some(j) = used.insert((e.chip, e.link), i) {
                    return Err(err(&f, format!("link {} of chip {} is already used by link {j}", e.link, e.chip)));
                }
            }
            if !(mean.is_finite() && spread.is_finite() && spread >= 0.0 && mean - spread >= 1.0 && mean + spread <= 1e6) {
                return Err(err(&f, format!("latency {mean} +- {spread} must stay within 1..1000000 cycles")));
            }
            let (m, s) = (ticks(mean) as i128, ticks(spread) as i128);
            let latency_ticks = rng.range_i128(m - s, m + s) as u128;
            links.push(Link { a, b, kind, latency_ticks });
        }
        let send_interval_ticks = self.send_interval_ticks(cfg.clock_hz);
        Ok(Resolved {
            chip: cfg,
            chips: n,
            links,
            drift_ppm,
            periods,
            root_hac_phase,
            send_interval_ticks,
            flit_bytes: self.flit_bytes,
            root: self.root_chip,
            hac_adjust_per_epoch: self.hac_adjust_per_epoch,
        })
    }
}

impl Resolved {
    /// Derived: nominal cycles a link needs per flit, rounded up (24 for 328 bytes at 100 Gb/s and 900 MHz).
    pub fn min_send_interval_cycles(&self) -> u64 {
        self.send_interval_ticks.div_ceil(TICKS_PER_CYCLE) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_node() {
        let r = SystemConfig::default().resolve().unwrap();
        assert_eq!(r.chips, 8);
        assert_eq!(r.links.len(), 28);
        assert_eq!(r.min_send_interval_cycles(), 24);
        for l in &r.links {
            let c = l.latency_ticks as f64 / TICKS_PER_CYCLE as f64;
            assert!((214.0..=220.0).contains(&c), "{c}");
        }
        assert!(r.drift_ppm.iter().all(|d| d.abs() <= 25.0));
        let again = SystemConfig::default().resolve().unwrap();
        assert_eq!(r.periods, again.periods);
    }

    #[test]
    fn rack_and_dragonfly_use_every_port_once() {
        let r = SystemConfig { topology: "rack".into(), ..Default::default() }.resolve().unwrap();
        assert_eq!(r.chips, 72);
        assert_eq!(r.links.len(), 9 * 28 + 36 * 4);
        let d = SystemConfig { topology: "dragonfly".into(), nodes: Some(3), ..Default::default() }.resolve().unwrap();
        assert_eq!(d.chips, 24);
    }

    #[test]
    fn errors_name_the_field() {
        let f = |j: &str| SystemConfig::from_json(j).unwrap_err().field;
        assert_eq!(f(r#"{"bogus": 1}"#), "system.bogus");
        assert_eq!(f(r#"{"drift_ppm": "x"}"#), "system.drift_ppm");
        assert_eq!(f(r#"{"chips": 9}"#), "system.chips");
        assert_eq!(f(r#"{"topology": "torus"}"#), "system.topology");
        assert_eq!(f(r#"{"chip": {"name": "x"}}"#).split('.').take(2).collect::<Vec<_>>(), vec!["system", "chip"]);
        assert_eq!(f(r#"{"topology": "links", "chips": 2, "links": [{"chip_a": 0, "link_a": 0, "chip_b": 2, "link_b": 0}]}"#), "system.links[0]");
        assert_eq!(f(r#"{"topology": "links", "chips": 2, "links": [{"chip_a": 0, "link_a": 0, "chip_b": 1, "link_b": 0}, {"chip_a": 0, "link_a": 0, "chip_b": 1, "link_b": 1}]}"#), "system.links[1]");
        assert_eq!(f("[1]"), "system");
        assert!(SystemConfig::from_json(r#"{"topology": "links", "chips": 2, "links": [{"chip_a": 0, "link_a": 0, "chip_b": 1, "link_b": 0, "latency_cycles": 100, "kind": "global"}]}"#).is_ok());
    }
}
