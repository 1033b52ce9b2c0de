//! Many chips (docs/system.md): a system configuration, the HAC alignment, and a `System` that runs one `Chip`
//! per position, each on its own oscillator, joined by C2C links, on all host cores.
//!
//! - [`config`]: `SystemConfig` (JSON, field-named errors) and its resolution into links and clocks;
//! - [`align`]: the spanning-tree HAC alignment at start;
//! - [`run`]: the windowed parallel run and its results, and `LoadedSystem`: programs loaded once, run on fresh
//!   chips or on `ChipMemory`s kept from one run to the next (an LLM's KV cache per chip between decode steps).

pub mod align;
pub mod config;
mod rng;
pub mod run;

pub use config::{LinkKind, LinkSpec, SystemConfig};
pub use run::{simulate_system, simulate_system_on, ChipResult, LinkTraffic, LoadedSystem, SystemOptions, SystemResult};

use crate::error::{ErrorKind, SimError};
use std::fmt;

/// A fault in a system run. `chip` and `cycle` say where and when (on that chip's clock); for a fault on a link,
/// `link` is the link on `chip` and `peer_*` its other end, with `peer_cycle` the cycle the peer chip was in at
/// the same instant. For `LinkOverflow` and `LinkUnreceived` (detected at the receiving chip), `queue`, `index`
/// and `instruction` name the SEND on the peer chip, as on one chip (docs/isa.md 9.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemError {
    pub kind: ErrorKind,
    pub chip: Option<usize>,
    pub cycle: u64,
    pub queue: String,
    pub index: usize,
    pub instruction: String,
    pub message: String,
    pub link: Option<usize>,
    pub peer_chip: Option<usize>,
    pub peer_link: Option<usize>,
    pub peer_cycle: Option<u64>,
}

impl SystemError {
    /// An error before any cycle runs (configuration, alignment, loading), on `chip` (cycle 0).
    pub fn config(kind: ErrorKind, chip: usize, link: Option<(usize, usize, usize)>, message: String) -> SystemError {
        SystemError {
            kind,
            chip: Some(chip),
            cycle: 0,
            queue: "-".into(),
            index: 0,
            instruction: String::new(),
            message,
            link: link.map(|l| l.0),
            peer_chip: link.map(|l| l.1),
            peer_link: link.map(|l| l.2),
            peer_cycle: link.map(|_| 0),
        }
    }

    /// An error of one chip, with no link involved.
    pub fn on_chip(chip: usize, e: SimError) -> SystemError {
        SystemError {
            kind: e.kind,
            chip: Some(chip),
            cycle: e.cycle,
            queue: e.queue,
            index: e.index,
            instruction: e.instruction,
            message: e.message,
            link: None,
            peer_chip: None,
            peer_link: None,
            peer_cycle: None,
        }
    }

    /// A system-wide error (bad arguments, bad configuration).
    pub fn general(kind: ErrorKind, message: String) -> SystemError {
        SystemError {
            kind,
            chip: None,
            cycle: 0,
            queue: "-".into(),
            index: 0,
            instruction: String::new(),
            message,
            link: None,
            peer_chip: None,
            peer_link: None,
            peer_cycle: None,
        }
    }
}

impl fmt::Display for SystemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.chip {
            write!(f, "chip {c} ")?;
        }
        write!(f, "cycle {}: {} #{} '{}': {}: {}", self.cycle, self.queue, self.index, self.instruction, self.kind, self.message)?;
        if let (Some(c), Some(l), Some(pc), Some(pl)) = (self.chip, self.link, self.peer_chip, self.peer_link) {
            write!(f, " [link {l} of chip {c} <-> link {pl} of chip {pc}")?;
            if let Some(y) = self.peer_cycle {
                write!(f, "; chip {c} at cycle {}, chip {pc} at cycle {y}", self.cycle)?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

impl std::error::Error for SystemError {}
