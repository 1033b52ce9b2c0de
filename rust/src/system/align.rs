//! HAC alignment at start (docs/system.md section 2): a breadth-first spanning tree from the root chip; each child
//! measures its link's latency from an exchange of HAC values and sets its HAC to the parent's plus that latency.
//! The exchanges are computed exactly (global time in ticks, each chip's clock), not stepped cycle by cycle.

use super::config::Resolved;
use super::SystemError;
use crate::error::ErrorKind;
use crate::sim::clock::Clock;
use std::collections::VecDeque;

/// The result of the alignment.
#[derive(Debug, Clone)]
pub struct Alignment {
    /// Per chip: its clock with the HAC offset the alignment gave it.
    pub clocks: Vec<Clock>,
    /// Per chip: (parent chip, link on this chip, link on the parent); `None` for the root and unreachable chips.
    pub parent: Vec<Option<(usize, usize, usize)>>,
    /// Per chip: depth in the tree (root 0); `None` if no link path reaches it from the root.
    pub depth: Vec<Option<usize>>,
    /// Per chip: the latency its exchange measured (cycles, rounded), 0 for the root.
    pub measured_latency: Vec<u64>,
    /// Per chip: HAC error against the root, in cycles (HAC minus the root's cycle count at the same instant,
    /// both taken modulo the period and mapped to -period/2..period/2).
    pub hac_error: Vec<i64>,
    pub height: usize,
}

/// Build the tree and align every reachable chip; a chip whose oscillator is too far from the root's for the
/// rate-limited HAC adjustment is `DriftOverrun`.
pub fn align(r: &Resolved) -> Result<Alignment, SystemError> {
    let n = r.chips;
    let h = r.chip.hac_period;
    let root_p = r.periods[r.root];
    let mut clocks: Vec<Clock> =
        r.periods.iter().map(|&p| Clock { period: p, root_period: root_p, hac_offset: 0 }).collect();
    clocks[r.root].hac_offset = r.root_hac_phase;
    // Adjacency in link order (deterministic).
    let mut adj: Vec<Vec<(usize, usize, usize, u128)>> = vec![Vec::new(); n];
    for l in &r.links {
        adj[l.a.chip].push((l.b.chip, l.a.link, l.b.link, l.latency_ticks));
        adj[l.b.chip].push((l.a.chip, l.b.link, l.a.link, l.latency_ticks));
    }
    let mut parent = vec![None; n];
    let mut depth = vec![None; n];
    let mut measured = vec![0u64; n];
    let mut hac_error = vec![0i64; n];
    depth[r.root] = Some(0);
    let mut queue = VecDeque::from([r.root]);
    let mut height = 0;
    while let Some(p) = queue.pop_front() {
        for &(c, link_p, link_c, lat) in &adj[p] {
            if depth[c].is_some() {
                continue;
            }
            let d = depth[p].unwrap_or(0) + 1;
            depth[c] = Some(d);
            height = height.max(d);
            parent[c] = Some((p, link_c, link_p));
            let (cp, cc) = (clocks[p], clocks[c]);
            // Tracking: the child's HAC must gain or lose |period - root_period| / root_period counts per cycle.
            let diff = cc.period.abs_diff(root_p);
            if diff * h as u128 > r.hac_adjust_per_epoch as u128 * root_p {
                return Err(SystemError::config(
                    ErrorKind::DriftOverrun,
                    c,
                    Some((link_c, p, link_p)),
                    format!(
                        "chip {c} runs {:.1} ppm from the root chip {}: its HAC would need more than hac_adjust_per_epoch = {} adjustment(s) per {h}-cycle epoch to follow its parent chip {p}",
                        r.drift_ppm[c] - r.drift_ppm[r.root],
                        r.root,
                        r.hac_adjust_per_epoch
                    ),
                ));
            }
            // Round trip from the child's cycle 0: the parent answers on the cycle the ping arrives.
            let at_parent = cp.first_cycle_at_or_after(lat);
            let back = cc.first_cycle_at_or_after(cp.time(at_parent) + lat);
            let l_est = back.div_ceil(2);
            measured[c] = l_est;
            // The parent's HAC sent at its cycle 0 reaches the child at `arrive`; the child sets its HAC there to
            // that value plus the measured latency.
            let arrive = cc.first_cycle_at_or_after(lat);
            let want = cp.hac(0) as i128 + l_est as i128;
            let natural = (arrive as u128 * cc.period / root_p) as i128;
            clocks[c].hac_offset = (want - natural).rem_euclid(h as i128) as u64;
            let e = (clocks[c].hac_offset as i128 - r.root_hac_phase as i128).rem_euclid(h as i128);
            hac_error[c] = if 2 * e >= h as i128 { e - h as i128 } else { e } as i64;
            queue.push_back(c);
        }
    }
    // A chip no link path reaches keeps a free-running HAC on its own clock.
    for c in 0..n {
        if depth[c].is_none() {
            clocks[c].root_period = clocks[c].period;
        }
    }
    Ok(Alignment { clocks, parent, depth, measured_latency: measured, hac_error, height })
}
