//! Queue names (docs/isa.md sections 1 and 7) and their configuration-dependent indices and positions.

use crate::config::ChipConfig;
use std::fmt;

/// The four queues of an MXM plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MxmQueue {
    Lw,
    Iw,
    Abc,
    Acc,
}

impl MxmQueue {
    pub const ALL: [MxmQueue; 4] = [MxmQueue::Lw, MxmQueue::Iw, MxmQueue::Abc, MxmQueue::Acc];
    pub fn name(self) -> &'static str {
        match self {
            MxmQueue::Lw => "LW",
            MxmQueue::Iw => "IW",
            MxmQueue::Abc => "ABC",
            MxmQueue::Acc => "ACC",
        }
    }
}

/// A queue, named independently of any configuration. The derived order (variant, then fields) is the queue index
/// order of section 7 for every configuration, so canonical text lists queues in index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueueName {
    Mem { east: bool, i: u16 },
    Vxm(u16),
    Mxm { east: bool, plane: u16, kind: MxmQueue },
    Sxm { east: bool, i: u16 },
    C2c(u16),
}

/// Which unit a queue drives (decides which instructions it accepts, and which `busy` counter it feeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Mem,
    Vxm,
    Mxm(MxmQueue),
    Sxm,
    C2c,
}

fn hemi(east: bool) -> char {
    if east {
        'E'
    } else {
        'W'
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QueueName::Mem { east, i } => write!(f, "MEM.{}{}", hemi(east), i),
            QueueName::Vxm(i) => write!(f, "VXM.{i}"),
            QueueName::Mxm { east, plane, kind } => write!(f, "MXM.{}{}.{}", hemi(east), plane, kind.name()),
            QueueName::Sxm { east, i } => write!(f, "SXM.{}.{}", hemi(east), i),
            QueueName::C2c(i) => write!(f, "C2C.{i}"),
        }
    }
}

fn parse_hemi_num(s: &str) -> Option<(bool, u16)> {
    let mut c = s.chars();
    let east = match c.next()? {
        'E' => true,
        'W' => false,
        _ => return None,
    };
    Some((east, parse_small(c.as_str())?))
}

fn parse_small(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl QueueName {
    /// Parse `MEM.W3`, `VXM.0`, `MXM.E1.ABC`, `SXM.W.2`, `C2C.15` (case-insensitive).
    pub fn parse(text: &str) -> Option<QueueName> {
        let up = text.trim().to_ascii_uppercase();
        let parts: Vec<&str> = up.split('.').collect();
        match parts.as_slice() {
            ["MEM", s] => parse_hemi_num(s).map(|(east, i)| QueueName::Mem { east, i }),
            ["VXM", n] => parse_small(n).map(QueueName::Vxm),
            ["MXM", p, k] => {
                let (east, plane) = parse_hemi_num(p)?;
                let kind = MxmQueue::ALL.into_iter().find(|q| q.name() == *k)?;
                Some(QueueName::Mxm { east, plane, kind })
            }
            ["SXM", h, n] => {
                let east = match *h {
                    "E" => true,
                    "W" => false,
                    _ => return None,
                };
                Some(QueueName::Sxm { east, i: parse_small(n)? })
            }
            ["C2C", n] => parse_small(n).map(QueueName::C2c),
            _ => None,
        }
    }

    pub fn unit(&self) -> Unit {
        match *self {
            QueueName::Mem { .. } => Unit::Mem,
            QueueName::Vxm(_) => Unit::Vxm,
            QueueName::Mxm { kind, .. } => Unit::Mxm(kind),
            QueueName::Sxm { .. } => Unit::Sxm,
            QueueName::C2c(_) => Unit::C2c,
        }
    }

    /// Index in section 7 order, or `None` if the configuration has no such queue.
    pub fn index(&self, c: &ChipConfig) -> Option<usize> {
        let mem = c.mem_slices;
        let half_mem = c.mem_per_side();
        let vxm_base = mem;
        let mxm_base = vxm_base + c.vxm_alus_per_lane;
        let sxm_base = mxm_base + 4 * c.mxm_planes;
        let c2c_base = sxm_base + 2 * c.sxm_per_hemisphere_queues;
        let pps = c.planes_per_side();
        let q = c.sxm_per_hemisphere_queues;
        match *self {
            QueueName::Mem { east, i } => {
                let i = i as usize;
                (i < half_mem).then(|| if east { half_mem + i } else { i })
            }
            QueueName::Vxm(i) => ((i as usize) < c.vxm_alus_per_lane).then(|| vxm_base + i as usize),
            QueueName::Mxm { east, plane, kind } => {
                let p = plane as usize;
                (p < pps).then(|| mxm_base + 4 * (if east { pps + p } else { p }) + kind as usize)
            }
            QueueName::Sxm { east, i } => {
                let i = i as usize;
                (i < q).then(|| sxm_base + if east { q + i } else { i })
            }
            QueueName::C2c(i) => ((i as usize) < c.c2c_links).then(|| c2c_base + i as usize),
        }
    }

    /// Position on the belt (section 1), or `None` if the configuration has no such queue.
    pub fn position(&self, c: &ChipConfig) -> Option<usize> {
        self.index(c)?;
        Some(match *self {
            QueueName::Mem { east, i } => c.mem_position(east, i as usize),
            QueueName::Vxm(_) => c.vxm_position(),
            QueueName::Mxm { east, plane, .. } => c.mxm_position(east, plane as usize),
            QueueName::Sxm { east, .. } => c.sxm_position(east),
            QueueName::C2c(i) => c.link_position(i as usize),
        })
    }

    /// The global MEM slice index of the Python API (`W<i> -> i`, `E<i> -> mem_slices/2 + i`).
    pub fn mem_global(&self, c: &ChipConfig) -> Option<usize> {
        match self {
            QueueName::Mem { .. } => self.index(c),
            _ => None,
        }
    }

    /// All queue names of a configuration in index order.
    pub fn all(c: &ChipConfig) -> Vec<QueueName> {
        let mut v = Vec::with_capacity(c.instruction_queues);
        for east in [false, true] {
            for i in 0..c.mem_per_side() {
                v.push(QueueName::Mem { east, i: i as u16 });
            }
        }
        for i in 0..c.vxm_alus_per_lane {
            v.push(QueueName::Vxm(i as u16));
        }
        for east in [false, true] {
            for plane in 0..c.planes_per_side() {
                for kind in MxmQueue::ALL {
                    v.push(QueueName::Mxm { east, plane: plane as u16, kind });
                }
            }
        }
        for east in [false, true] {
            for i in 0..c.sxm_per_hemisphere_queues {
                v.push(QueueName::Sxm { east, i: i as u16 });
            }
        }
        for i in 0..c.c2c_links {
            v.push(QueueName::C2c(i as u16));
        }
        v
    }

    /// A configuration-free 32-bit code for the binary format: unit (4 bits), east (1), MXM kind (2), index (16).
    pub fn code(&self) -> u32 {
        let (unit, east, kind, i) = match *self {
            QueueName::Mem { east, i } => (0, east, 0, i),
            QueueName::Vxm(i) => (1, false, 0, i),
            QueueName::Mxm { east, plane, kind } => (2, east, kind as u32, plane),
            QueueName::Sxm { east, i } => (3, east, 0, i),
            QueueName::C2c(i) => (4, false, 0, i),
        };
        unit | (east as u32) << 4 | kind << 5 | (i as u32) << 8
    }

    pub fn from_code(code: u32) -> Option<QueueName> {
        let east = code >> 4 & 1 == 1;
        let kind = MxmQueue::ALL[(code >> 5 & 3) as usize];
        if code >> 24 != 0 || code >> 7 & 1 != 0 {
            return None;
        }
        let i = (code >> 8) as u16;
        Some(match code & 0xf {
            0 => QueueName::Mem { east, i },
            1 => QueueName::Vxm(i),
            2 => QueueName::Mxm { east, plane: i, kind },
            3 => QueueName::Sxm { east, i },
            4 => QueueName::C2c(i),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_section_7() {
        let c = ChipConfig::tsp_v1();
        let all = QueueName::all(&c);
        assert_eq!(all.len(), 144);
        for (k, q) in all.iter().enumerate() {
            assert_eq!(q.index(&c), Some(k), "{q}");
            assert_eq!(QueueName::parse(&q.to_string()), Some(*q));
            assert_eq!(QueueName::from_code(q.code()), Some(*q));
        }
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, all);
        assert_eq!(QueueName::parse("MXM.W0.LW").unwrap().index(&c), Some(104));
        assert_eq!(QueueName::parse("mxm.e1.acc").unwrap().index(&c), Some(119));
        assert_eq!(QueueName::parse("SXM.E.0").unwrap().index(&c), Some(124));
        assert_eq!(QueueName::parse("C2C.15").unwrap().index(&c), Some(143));
        assert_eq!(QueueName::parse("MEM.E0").unwrap().index(&c), Some(44));
        assert_eq!(QueueName::parse("MEM.W44").unwrap().index(&c), None);
        assert_eq!(QueueName::parse("C2C.8").unwrap().position(&c), Some(92));
    }
}
