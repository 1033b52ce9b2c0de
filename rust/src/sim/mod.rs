//! One chip's whole state and its cycle loop (docs/isa.md section 3).
//!
//! `Chip::step(t)` runs one cycle in the contract's order: step-1 effects due at `t` (MEM commits, accumulator
//! updates, weight installs, result-register updates, C2C arrivals), then every queue whose next issue cycle is `t`
//! in queue-index order, then the stream emits due at `t`. `Chip::next_cycle()` says which cycle has work next, so
//! `run` (and later a multi-chip `System`, each chip on its own clock) skips idle cycles. In timing-only mode every
//! check, stamp and counter is kept but no value is computed or copied: same cycles, same errors.
//!
//! A lone timing-only run (`simulate`, `run_loaded`) first tries the *fast* form (`fast.rs`): emits recorded at
//! issue on an order-free belt, no emit events, and REPEATed READ, WRITE, ALU, ABC and ACC issues taken a chunk at a
//! time. It makes every check, so it fails iff the exact run fails; when it fails, `run_loaded` reruns in the exact
//! order, which reports the very error (instruction, cycle, message) the exact order finds first.
//!
//! How the pieces fit together. `Chip` is one struct whose `impl` is spread over the files by concern; its fields
//! are visible to every file of this module:
//! - `chip.rs`: the state, construction, `load` (configuration-dependent checks, `.init`, `.link`), memory images,
//!   and `Loaded` (a program checked once, started fresh for each run);
//! - `run.rs`: the cycle loop (queue sequencing, `step`, `run`, the end-of-run checks) and the single-chip flow
//!   `simulate` / `load_program` / `run_loaded`;
//! - `exec.rs`: what each instruction does at issue, and `calendar.rs` the effects it schedules for later cycles;
//! - `fast.rs`: the fast timing-only form (chunks of repetitions taken ahead);
//! - `clock.rs`: the oscillator, the HAC, and the SAC with DESKEW / RUNTIME_DESKEW;
//! - `c2c.rs`: links, receive buffers, and delivery of vectors from other chips (called by the `System`);
//! - the units: `mem.rs` (MEM slices), `streams.rs` (the stream belt), `vxm.rs`, `mxm/` (with the GEMM kernels and
//!   helper threads in `gemm.rs`), `sxm.rs`;
//! - `stats.rs`: what a run reports.
//!
//! Runs on a kept memory: a `ChipMemory` (`mem.rs`) holds the MEM contents across runs of several programs on one
//! chip (weights installed once, a KV cache between decode steps); `Loaded::run_on` swaps it into a fresh chip
//! for the run and back (`Loaded::chip_on`, `OnMemory`: also the hook a system run uses for each chip). Only MEM
//! persists: every run starts at cycle 0 on a quiescent chip.

pub mod c2c;
mod calendar;
mod chip;
pub mod clock;
mod exec;
mod fast;
mod gemm;
pub mod mem;
pub mod mxm;
mod run;
mod stats;
pub mod streams;
pub mod sxm;
pub mod vxm;

pub use chip::{Chip, Loaded, MemInit};
pub use mem::ChipMemory;
pub use run::{load_program, run_loaded, simulate, OnMemory, RunOptions};
pub use stats::{Busy, ConfigRecord, DumpResult, Events, Num, Stats};
