//! A chip's oscillator and its hardware-aligned counter (docs/system.md section 2), and the chip's software-aligned
//! counter with the resume cycles of DESKEW and RUNTIME_DESKEW (section 3).
//!
//! Time is exact: global time is an integer number of *ticks*, `TICKS_PER_CYCLE` per nominal cycle. A chip's
//! cycle `k` starts at global time `k * period`. The HAC is kept *unwrapped* (`hac(k)`, a count that never wraps;
//! the hardware register holds `hac(k) mod hac_period`). The tree alignment makes every HAC count cycles of the
//! root chip's clock (a child repeats or skips a count when its own clock is faster or slower), plus an offset
//! fixed by the alignment: `hac(k) = floor(k * period / root_period) + offset`. A lone chip is its own root, so
//! `hac(k) = k + offset` (docs/isa.md section 3).

use super::Chip;

/// Ticks per nominal cycle: 10^12, so drift is representable to 10^-6 ppm and cycle times stay integers.
pub const TICKS_PER_CYCLE: u128 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// This chip's cycle length in ticks.
    pub period: u128,
    /// The root chip's cycle length in ticks (the HAC counts root cycles).
    pub root_period: u128,
    /// HAC value at cycle 0 (after alignment), in `0..hac_period`.
    pub hac_offset: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { period: TICKS_PER_CYCLE, root_period: TICKS_PER_CYCLE, hac_offset: 0 }
    }
}

impl Clock {
    /// Global time of the start of cycle `k`.
    pub fn time(&self, k: u64) -> u128 {
        k as u128 * self.period
    }

    /// The unwrapped HAC at cycle `k`.
    pub fn hac(&self, k: u64) -> u128 {
        k as u128 * self.period / self.root_period + self.hac_offset as u128
    }

    /// The first cycle `k` with `hac(k) >= x`.
    pub fn first_hac_at_least(&self, x: u128) -> u64 {
        let off = self.hac_offset as u128;
        if x <= off {
            return 0;
        }
        let n = (x - off) * self.root_period;
        let k = n.div_ceil(self.period);
        k.min(u64::MAX as u128) as u64
    }

    /// The first cycle whose start is at or after global time `t` (a vector arriving at `t` is in the receive
    /// buffer from that cycle on: the clock-domain crossing samples on the next edge).
    pub fn first_cycle_at_or_after(&self, t: u128) -> u64 {
        t.div_ceil(self.period).min(u64::MAX as u128) as u64
    }

    /// The cycle in progress at global time `t` (for naming "the same instant" on another chip's clock).
    pub fn cycle_at(&self, t: u128) -> u64 {
        (t / self.period).min(u64::MAX as u128) as u64
    }
}

/// Synchronisation (docs/system.md section 3): the SAC and the resume cycles of DESKEW and RUNTIME_DESKEW.
impl Chip {
    /// The SAC (unwrapped) at cycle `c`.
    pub fn sac(&self, c: u64) -> u128 {
        let (k, u) = self.sac.range(..=c).next_back().map(|(k, u)| (*k, *u)).unwrap_or((0, self.clock.hac(0)));
        u + (c - k) as u128
    }

    /// Realign the SAC to the HAC at cycle `k` (the resume cycle of a DESKEW / RUNTIME_DESKEW issued at `t`).
    fn realign(&mut self, t: u64, k: u64) {
        let u = self.clock.hac(k);
        self.sac.insert(k, u);
        // Anchors older than the one in force at `t` are never read again (issue cycles only grow).
        if let Some((&keep, _)) = self.sac.range(..=t).next_back() {
            self.sac = self.sac.split_off(&keep);
        }
    }

    /// DESKEW issued at `t`: resume at the first cycle after `t` where the HAC starts a new epoch.
    pub(super) fn deskew_resume(&mut self, t: u64) -> u64 {
        let h = self.cfg.hac_period as u128;
        let epoch_end = (self.clock.hac(t) / h + 1) * h;
        let k = self.clock.first_hac_at_least(epoch_end).max(t + 1);
        self.realign(t, k);
        k
    }

    /// RUNTIME_DESKEW d issued at `t`: resume when the HAC reaches SAC(t) + d, i.e. after d - delta cycles where
    /// delta = HAC(t) - SAC(t) is the drift accumulated since the last alignment. Errors when delta cannot be
    /// measured (|delta| >= hac_period / 2: the counters are compared modulo the period) or absorbed (delta >= d).
    pub(super) fn runtime_deskew_resume(&mut self, t: u64, d: u64) -> Result<u64, String> {
        let h = self.cfg.hac_period as i128;
        let sac = self.sac(t);
        let delta = self.clock.hac(t) as i128 - sac as i128;
        if 2 * delta.abs() >= h {
            return Err(format!(
                "the SAC has drifted {delta} cycles from the HAC since the last alignment; the counters are compared modulo hac_period {h}, so drift of {} or more cannot be measured: deskew more often",
                (h + 1) / 2
            ));
        }
        let target = sac + d as u128;
        let k = self.clock.first_hac_at_least(target);
        if k <= t {
            return Err(format!(
                "the chip is {delta} cycles behind the HAC, more than the RUNTIME_DESKEW delay {d} can absorb"
            ));
        }
        self.realign(t, k);
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hac_of_a_lone_chip_counts_cycles() {
        let c = Clock { hac_offset: 5, ..Clock::default() };
        assert_eq!(c.hac(0), 5);
        assert_eq!(c.hac(10), 15);
        assert_eq!(c.first_hac_at_least(252), 247);
        assert_eq!(c.first_hac_at_least(3), 0);
    }

    #[test]
    fn slow_chip_hac_skips_counts() {
        // 1% slow: cycle k starts at 1.01 k root cycles.
        let c = Clock { period: TICKS_PER_CYCLE * 101 / 100, root_period: TICKS_PER_CYCLE, hac_offset: 0 };
        assert_eq!(c.hac(100), 101);
        let k = c.first_hac_at_least(101);
        assert_eq!(k, 100);
        assert!(c.hac(k - 1) < 101);
        for x in [1u128, 7, 250, 1000, 123457] {
            let k = c.first_hac_at_least(x);
            assert!(c.hac(k) >= x && (k == 0 || c.hac(k - 1) < x));
        }
    }
}
