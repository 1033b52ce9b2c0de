//! A chip's oscillator and its hardware-aligned counter (docs/system.md section 2).
//!
//! Time is exact: global time is an integer number of *ticks*, `TICKS_PER_CYCLE` per nominal cycle. A chip's
//! cycle `k` starts at global time `k * period`. The HAC is kept *unwrapped* (`hac(k)`, a count that never wraps;
//! the hardware register holds `hac(k) mod hac_period`). The tree alignment makes every HAC count cycles of the
//! root chip's clock (a child repeats or skips a count when its own clock is faster or slower), plus an offset
//! fixed by the alignment: `hac(k) = floor(k * period / root_period) + offset`. A lone chip is its own root, so
//! `hac(k) = k + offset` (docs/isa.md section 3).

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
