//! lpusim: a cycle-level simulator of Groq-style LPUs (Tensor Streaming Processors).
//!
//! The contract is docs/isa.md. This crate is a pure-Rust core:
//! - [`config`]: the chip configuration (published and chosen numbers, all as data);
//! - [`isa`]: instructions, queue names, the assembly text format and the binary encoding;
//! - [`sim`]: one chip's state and its cycle loop;
//! - [`system`]: many chips on their own clocks, joined by C2C links (docs/system.md);
//! - [`error`]: error values (nothing here panics on bad input).
//!
//! The Python bindings live in `python.rs`, compiled only with the `python` feature, so `cargo test` exercises the
//! simulator alone.

pub mod config;
pub mod error;
pub mod isa;
pub mod numerics;
pub mod sim;
pub mod system;

#[cfg(feature = "python")]
mod python;

pub use config::ChipConfig;
pub use error::{AsmError, ConfigError, ErrorKind, SimError};
pub use isa::Program;
pub use sim::{simulate, Chip, RunOptions, Stats};

/// Parse a program given as assembly text or as a program binary (recognised by its magic header).
pub fn parse_program(data: &[u8]) -> Result<Program, AsmError> {
    if data.starts_with(b"LPUSIM\0") {
        isa::encode::decode_program(data)
    } else {
        let text = std::str::from_utf8(data).map_err(|_| AsmError::binary("neither a program binary nor UTF-8 text"))?;
        isa::text::parse(text)
    }
}

/// Assemble text to a program binary.
pub fn assemble(text: &str) -> Result<Vec<u8>, AsmError> {
    Ok(isa::encode::encode_program(&isa::text::parse(text)?))
}

/// Disassemble a program binary to canonical text.
pub fn disassemble(data: &[u8]) -> Result<String, AsmError> {
    Ok(isa::text::print(&isa::encode::decode_program(data)?))
}
