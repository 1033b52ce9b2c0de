//! Error values. The simulator never panics on bad input: malformed text, bad operands, bad configurations and
//! runtime faults are all returned as one of these.

use std::fmt;

/// The error kinds of docs/isa.md sections 3-5 (plus `CycleLimit` for the `max_cycles` guard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidInstruction,
    QueueOverrun,
    StreamEmpty,
    StreamConflict,
    BankConflict,
    AddressOutOfRange,
    RegisterEmpty,
    WeightOverflow,
    UnitBusy,
    TypeMismatch,
    Deadlock,
    LinkEmpty,
    LinkUnconnected,
    LinkOverflow,
    LinkUnreceived,
    /// A system link used again before it finished sending the previous vector (docs/system.md).
    LinkBusy,
    /// Clock drift the synchronisation protocol cannot absorb (docs/system.md).
    DriftOverrun,
    CycleLimit,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidInstruction => "InvalidInstruction",
            QueueOverrun => "QueueOverrun",
            StreamEmpty => "StreamEmpty",
            StreamConflict => "StreamConflict",
            BankConflict => "BankConflict",
            AddressOutOfRange => "AddressOutOfRange",
            RegisterEmpty => "RegisterEmpty",
            WeightOverflow => "WeightOverflow",
            UnitBusy => "UnitBusy",
            TypeMismatch => "TypeMismatch",
            Deadlock => "Deadlock",
            LinkEmpty => "LinkEmpty",
            LinkUnconnected => "LinkUnconnected",
            LinkOverflow => "LinkOverflow",
            LinkUnreceived => "LinkUnreceived",
            LinkBusy => "LinkBusy",
            DriftOverrun => "DriftOverrun",
            CycleLimit => "CycleLimit",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault while loading or running a program.
/// Display: `cycle 1042: MEM.W3 #17 'READ 9000, W4': AddressOutOfRange: address 9000 is outside 0..8191`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    pub kind: ErrorKind,
    pub cycle: u64,
    pub queue: String,
    pub index: usize,
    pub instruction: String,
    pub message: String,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cycle {}: {} #{} '{}': {}: {}",
            self.cycle, self.queue, self.index, self.instruction, self.kind, self.message
        )
    }
}

impl std::error::Error for SimError {}

/// A syntax or validity error in assembly text (or in a program binary: `line` 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsmError {
    /// 1-based line number; 0 for errors in a binary program.
    pub line: usize,
    /// The offending line (trimmed).
    pub text: String,
    pub message: String,
}

impl AsmError {
    pub fn new(line: usize, text: &str, message: impl Into<String>) -> AsmError {
        AsmError { line, text: text.trim().to_string(), message: message.into() }
    }
    pub fn binary(message: impl Into<String>) -> AsmError {
        AsmError { line: 0, text: "<binary>".into(), message: message.into() }
    }
}

impl fmt::Display for AsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "program binary: {}", self.message)
        } else {
            write!(f, "line {}: '{}': {}", self.line, self.text, self.message)
        }
    }
}

impl std::error::Error for AsmError {}

/// A bad chip configuration; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { field: field.to_string(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chip configuration field '{}': {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}
