//! Python bindings (`lpusim._lpusim`), compiled only with the `python` feature.
//!
//! A thin layer: convert arguments, call the pure-Rust core, convert results and errors. The simulation itself runs
//! with the GIL released.
//!
//! `ChipMemory` keeps one chip's MEM contents across runs (`LoadedProgram.run(..., memory=m)`,
//! `LoadedProgram.install_static(m)`); only MEM persists, the rest of the chip starts fresh every run (the module
//! doc of rust/src/sim/mem.rs). Systems run on one memory per chip the same way (`simulate_system(...,
//! memories=)`, `LoadedSystem.run(..., memories=)`, `LoadedSystem.install_static(chip, m)`; docs/system.md).

use crate::config::ChipConfig;
use crate::error::{AsmError, ConfigError as RsConfigError, SimError};
use crate::isa::{self, QueueName};
use crate::sim::{self, Num, RunOptions, Stats};
use crate::sim::mem::ChipMemory as Memory;
use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

create_exception!(_lpusim, LpusimError, PyException, "Base class of every lpusim error.");
create_exception!(_lpusim, AssemblyError, LpusimError, "Bad assembly text or program binary.");
create_exception!(_lpusim, ConfigError, LpusimError, "Bad chip configuration.");
create_exception!(
    _lpusim,
    SimulationError,
    LpusimError,
    "A fault while loading or running a program; attributes kind, cycle, queue, index, instruction, message."
);

fn asm_err(py: Python<'_>, e: AsmError) -> PyErr {
    let err = AssemblyError::new_err(e.to_string());
    let v = err.value(py);
    let _ = v.setattr("line", e.line);
    let _ = v.setattr("text", e.text);
    let _ = v.setattr("message", e.message);
    err
}

fn cfg_err(py: Python<'_>, e: RsConfigError) -> PyErr {
    let err = ConfigError::new_err(e.to_string());
    let v = err.value(py);
    let _ = v.setattr("field", e.field);
    let _ = v.setattr("message", e.message);
    err
}

fn sim_err(py: Python<'_>, e: SimError) -> PyErr {
    let err = SimulationError::new_err(e.to_string());
    let v = err.value(py);
    let _ = v.setattr("kind", e.kind.name());
    let _ = v.setattr("cycle", e.cycle);
    let _ = v.setattr("queue", e.queue);
    let _ = v.setattr("index", e.index);
    let _ = v.setattr("instruction", e.instruction);
    let _ = v.setattr("message", e.message);
    err
}

fn config_from(py: Python<'_>, json: Option<&str>) -> PyResult<ChipConfig> {
    match json {
        None => Ok(ChipConfig::tsp_v1()),
        Some(j) => ChipConfig::from_json(j).map_err(|e| cfg_err(py, e)),
    }
}

/// The JSON of a built-in chip configuration.
#[pyfunction]
#[pyo3(signature = (name = "tsp_v1"))]
fn chip_config_json(py: Python<'_>, name: &str) -> PyResult<String> {
    ChipConfig::by_name(name).map(|c| c.to_json()).map_err(|e| cfg_err(py, e))
}

/// Validate a configuration; return it normalised (pretty JSON, every field).
#[pyfunction]
fn validate_chip_config(py: Python<'_>, json_text: &str) -> PyResult<String> {
    config_from(py, Some(json_text)).map(|c| c.to_json())
}

/// Assembly text -> program binary.
#[pyfunction]
fn assemble<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyBytes>> {
    let b = crate::assemble(text).map_err(|e| asm_err(py, e))?;
    Ok(PyBytes::new(py, &b))
}

/// Program binary -> canonical assembly text.
#[pyfunction]
fn disassemble(py: Python<'_>, data: &[u8]) -> PyResult<String> {
    crate::disassemble(data).map_err(|e| asm_err(py, e))
}

/// Assembly text -> canonical assembly text.
#[pyfunction]
fn canonicalize(py: Python<'_>, text: &str) -> PyResult<String> {
    isa::text::canonicalize(text).map_err(|e| asm_err(py, e))
}

/// Queue names in index order.
#[pyfunction]
#[pyo3(signature = (config_json = None))]
fn queue_names(py: Python<'_>, config_json: Option<&str>) -> PyResult<Vec<String>> {
    let c = config_from(py, config_json)?;
    Ok(QueueName::all(&c).iter().map(|q| q.to_string()).collect())
}

/// Slice and queue name -> position on the belt.
#[pyfunction]
#[pyo3(signature = (config_json = None))]
fn positions<'py>(py: Python<'py>, config_json: Option<&str>) -> PyResult<Bound<'py, PyDict>> {
    let c = config_from(py, config_json)?;
    let d = PyDict::new(py);
    for q in QueueName::all(&c) {
        d.set_item(q.to_string(), q.position(&c).unwrap_or(0))?;
    }
    d.set_item("VXM", c.vxm_position())?;
    d.set_item("SXM.W", c.sxm_position(false))?;
    d.set_item("SXM.E", c.sxm_position(true))?;
    for j in 0..c.planes_per_side() {
        d.set_item(format!("MXM.W{j}"), c.mxm_position(false, j))?;
        d.set_item(format!("MXM.E{j}"), c.mxm_position(true, j))?;
    }
    Ok(d)
}

/// The energy events of a run (docs/isa.md "Energy events"), by field name.
fn events_dict<'py>(py: Python<'py>, e: &sim::Events) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("mxm_int8_vectors", e.mxm_int8_vectors)?;
    d.set_item("mxm_fp16_vectors", e.mxm_fp16_vectors)?;
    d.set_item("mxm_weight_vectors", e.mxm_weight_vectors)?;
    d.set_item("mem_read_vectors", e.mem_read_vectors)?;
    d.set_item("mem_write_vectors", e.mem_write_vectors)?;
    d.set_item("stream_hops", e.stream_hops)?;
    d.set_item("vxm_ops", e.vxm_ops)?;
    d.set_item("vxm_transcendental_ops", e.vxm_transcendental_ops)?;
    d.set_item("sxm_ops", e.sxm_ops)?;
    d.set_item("c2c_vectors", e.c2c_vectors)?;
    d.set_item("instructions", e.instructions)?;
    Ok(d)
}

fn stats_dict<'py>(py: Python<'py>, s: &Stats, cfg: &ChipConfig, timing_only: bool) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("cycles", s.cycles)?;
    d.set_item("seconds", s.cycles as f64 / cfg.clock_hz)?;
    d.set_item("instructions", s.instructions)?;
    let b = PyDict::new(py);
    b.set_item("mem", s.busy.mem)?;
    b.set_item("vxm", s.busy.vxm)?;
    b.set_item("mxm", s.busy.mxm)?;
    b.set_item("sxm", s.busy.sxm)?;
    b.set_item("c2c", s.busy.c2c)?;
    b.set_item("icu", s.busy.icu)?;
    d.set_item("busy", b)?;
    d.set_item("events", events_dict(py, &s.events)?)?;
    d.set_item("per_queue_issues", s.per_queue_issues.clone())?;
    d.set_item("timing_only", timing_only)?;
    let dumps = PyList::empty(py);
    for r in &s.dumps {
        let e = PyDict::new(py);
        e.set_item("slice", &r.slice)?;
        e.set_item("addr", r.addr)?;
        e.set_item("dtype", r.dtype.name())?;
        match &r.values {
            None => e.set_item("values", py.None())?,
            Some(rows) => {
                let outer = PyList::empty(py);
                for row in rows {
                    let inner = PyList::empty(py);
                    for v in row {
                        match *v {
                            Num::I(i) => inner.append(i)?,
                            Num::F(f) => inner.append(f)?,
                        }
                    }
                    outer.append(inner)?;
                }
                e.set_item("values", outer)?;
            }
        }
        dumps.append(e)?;
    }
    d.set_item("dumps", dumps)?;
    let configs = PyList::empty(py);
    for c in &s.configs {
        let e = PyDict::new(py);
        e.set_item("cycle", c.cycle)?;
        e.set_item("queue", &c.queue)?;
        e.set_item("mask", c.mask)?;
        configs.append(e)?;
    }
    d.set_item("configs", configs)?;
    Ok(d)
}

/// Run a program on one chip.
///
/// mem_init: (global MEM slice, first address, uint8 array (n, lanes)) written before the run.
/// dumps: (global MEM slice, first address, n) read after the run as uint8 (n, lanes) arrays (None if timing_only).
/// Returns (stats dict, list of dump arrays).
#[pyfunction]
#[pyo3(signature = (config_json, program, mem_init = Vec::new(), dumps = Vec::new(), timing_only = false, max_cycles = None))]
fn simulate<'py>(
    py: Python<'py>,
    config_json: &str,
    program: &Bound<'py, PyAny>,
    mem_init: Vec<(usize, usize, Bound<'py, PyAny>)>,
    dumps: Vec<(usize, usize, usize)>,
    timing_only: bool,
    max_cycles: Option<u64>,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
    let cfg = config_from(py, Some(config_json))?;
    let prog = single_program(py, program)?;
    // Borrow the arrays' bytes (no copy) when they are C-contiguous; copy the others.
    let mut guards = Vec::with_capacity(mem_init.len());
    let mut copies: Vec<Option<Vec<u8>>> = Vec::with_capacity(mem_init.len());
    for (k, (slice, addr, arr)) in mem_init.iter().enumerate() {
        let a = mem_array(&cfg, "mem_init", k, *slice, *addr, arr)?;
        let ro = a.readonly();
        copies.push(if timing_only || ro.as_slice().is_ok() { None } else { Some(ro.as_array().iter().copied().collect()) });
        guards.push(ro);
    }
    let images: Vec<(usize, usize, &[u8])> = mem_init
        .iter()
        .zip(guards.iter().zip(&copies))
        .map(|((slice, addr, _), (ro, copy))| {
            let data: &[u8] = match copy {
                Some(v) => v.as_slice(),
                None if timing_only => &[],
                None => ro.as_slice().unwrap_or(&[]),
            };
            (*slice, *addr, data)
        })
        .collect();
    check_dumps(&cfg, &dumps)?;
    let opts = RunOptions { timing_only, max_cycles };
    let result = py.detach(|| sim::simulate(&cfg, &prog, &images, &dumps, &opts));
    run_result(py, result, &cfg, timing_only)
}

fn single_program<'py>(py: Python<'py>, program: &Bound<'py, PyAny>) -> PyResult<isa::Program> {
    if let Ok(s) = program.cast::<PyString>() {
        isa::text::parse(&s.to_cow()?).map_err(|e| asm_err(py, e))
    } else if let Ok(b) = program.cast::<PyBytes>() {
        crate::parse_program(b.as_bytes()).map_err(|e| asm_err(py, e))
    } else {
        Err(PyValueError::new_err("program: expected str (assembly text) or bytes (program binary)"))
    }
}

/// `what[k]`: a uint8 array of shape (n, lanes) to write at `slice`, `addr`.
fn mem_array<'a, 'py>(
    cfg: &ChipConfig,
    what: &str,
    k: usize,
    slice: usize,
    addr: usize,
    arr: &'a Bound<'py, PyAny>,
) -> PyResult<&'a Bound<'py, PyArray2<u8>>> {
    let lanes = cfg.lanes;
    let bad = || PyValueError::new_err(format!("{what}[{k}]: expected a uint8 numpy array of shape (n, {lanes})"));
    let a = arr.cast::<PyArray2<u8>>().map_err(|_| bad())?;
    if a.shape()[1] != lanes {
        return Err(bad());
    }
    let n = a.shape()[0];
    if slice >= cfg.mem_slices {
        return Err(PyValueError::new_err(format!("{what}[{k}]: slice {slice} is outside 0..{}", cfg.mem_slices - 1)));
    }
    if addr + n > cfg.mem_words {
        return Err(PyValueError::new_err(format!("{what}[{k}]: addresses run past {}", cfg.mem_words - 1)));
    }
    Ok(a)
}

fn check_dumps(cfg: &ChipConfig, dumps: &[(usize, usize, usize)]) -> PyResult<()> {
    for (k, &(slice, addr, n)) in dumps.iter().enumerate() {
        if slice >= cfg.mem_slices || addr + n > cfg.mem_words {
            return Err(PyValueError::new_err(format!(
                "dumps[{k}]: slice must be < {} and addresses < {}",
                cfg.mem_slices, cfg.mem_words
            )));
        }
    }
    Ok(())
}

type RunOutput = Result<(Stats, Vec<Option<Vec<u8>>>), SimError>;

/// (stats dict, dump arrays) of a single-chip run.
fn run_result<'py>(py: Python<'py>, result: RunOutput, cfg: &ChipConfig, timing_only: bool) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
    let lanes = cfg.lanes;
    let (stats, outs) = result.map_err(|e| sim_err(py, e))?;
    let d = stats_dict(py, &stats, cfg, timing_only)?;
    let arrays = PyList::empty(py);
    for o in outs {
        match o {
            None => arrays.append(py.None())?,
            Some(v) => {
                let n = v.len() / lanes;
                let arr = numpy::PyArray1::from_vec(py, v).reshape([n, lanes])?;
                arrays.append(arr)?;
            }
        }
    }
    Ok((d, arrays))
}

/// A program loaded once: decoded, checked and its chip built, its static memory image kept (references to the
/// caller's arrays, not copies). `run` writes only the inputs and runs a fresh copy of the chip, so repeated runs
/// pay neither decoding, nor loading, nor (timing-only) any memory image: the analogue of an onnxruntime session.
#[pyclass(module = "lpusim._lpusim", frozen)]
struct LoadedProgram {
    cfg: ChipConfig,
    loaded: sim::Loaded,
    /// (global slice, first address, uint8 array (n, lanes)), C-contiguous (copied once if they were not).
    static_init: Vec<(usize, usize, Py<PyArray2<u8>>)>,
}

#[pymethods]
impl LoadedProgram {
    /// config_json, program (assembly text or binary) and static_init (like `simulate`'s mem_init): checked now,
    /// with the errors `simulate` raises.
    #[new]
    #[pyo3(signature = (config_json, program, static_init = Vec::new()))]
    fn new<'py>(
        py: Python<'py>,
        config_json: &str,
        program: &Bound<'py, PyAny>,
        static_init: Vec<(usize, usize, Bound<'py, PyAny>)>,
    ) -> PyResult<Self> {
        let cfg = config_from(py, Some(config_json))?;
        let prog = single_program(py, program)?;
        let mut kept = Vec::with_capacity(static_init.len());
        for (k, (slice, addr, arr)) in static_init.iter().enumerate() {
            let a = mem_array(&cfg, "static_init", k, *slice, *addr, arr)?;
            let a = if a.readonly().as_slice().is_ok() { a.clone().unbind() } else { a.to_owned_array().into_pyarray(py).unbind() };
            kept.push((*slice, *addr, a));
        }
        let loaded = py.detach(|| sim::load_program(&cfg, &prog)).map_err(|e| sim_err(py, e))?;
        Ok(LoadedProgram { cfg, loaded, static_init: kept })
    }

    /// One run: mem_init (the inputs, written after the static image), dumps, timing_only and max_cycles as for
    /// `simulate`, with its results and errors. A timing-only run reads no memory image.
    ///
    /// memory: None runs on a fresh chip with the static image. A `ChipMemory` runs on its contents instead: no
    /// static image is written (`install_static` does that once), mem_init is written into it and it keeps what
    /// the run leaves; a fault leaves it as it stood, flagged. A timing-only run leaves it unchanged.
    #[pyo3(signature = (mem_init = Vec::new(), dumps = Vec::new(), timing_only = false, max_cycles = None, memory = None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        mem_init: Vec<(usize, usize, Bound<'py, PyAny>)>,
        dumps: Vec<(usize, usize, usize)>,
        timing_only: bool,
        max_cycles: Option<u64>,
        memory: Option<&ChipMemory>,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
        let cfg = &self.cfg;
        let mut inputs = Vec::with_capacity(mem_init.len());
        for (k, (slice, addr, arr)) in mem_init.iter().enumerate() {
            inputs.push((*slice, *addr, mem_array(cfg, "mem_init", k, *slice, *addr, arr)?.readonly()));
        }
        check_dumps(cfg, &dumps)?;
        let statics: Vec<_> = if timing_only || memory.is_some() {
            Vec::new()
        } else {
            self.static_init.iter().map(|(s, a, arr)| (*s, *a, arr.bind(py).readonly())).collect()
        };
        let copies: Vec<Option<Vec<u8>>> = inputs
            .iter()
            .map(|(_, _, ro)| if timing_only || ro.as_slice().is_ok() { None } else { Some(ro.as_array().iter().copied().collect()) })
            .collect();
        let mut images: Vec<sim::MemInit> = statics.iter().map(|(s, a, ro)| (*s, *a, ro.as_slice().unwrap_or(&[]))).collect();
        for ((s, a, ro), copy) in inputs.iter().zip(&copies) {
            let data: &[u8] = match copy {
                Some(v) => v.as_slice(),
                None if timing_only => &[],
                None => ro.as_slice().unwrap_or(&[]),
            };
            images.push((*s, *a, data));
        }
        let opts = RunOptions { timing_only, max_cycles };
        let loaded = &self.loaded;
        let result = match memory {
            None => py.detach(|| sim::run_loaded(loaded, &images, &dumps, &opts)),
            Some(m) => py.detach(|| loaded.run_on(&mut m.lock(), &images, &dumps, &opts)),
        };
        run_result(py, result, cfg, timing_only)
    }

    /// Write this program's constant image (its `.init`s and static_init arrays) into `memory`, copied once: runs
    /// on the memory do not write it again. Raises SimulationError if the memory is of another configuration or
    /// holds a fault.
    fn install_static(&self, py: Python<'_>, memory: &ChipMemory) -> PyResult<()> {
        let ro: Vec<_> = self.static_init.iter().map(|(s, a, arr)| (*s, *a, arr.bind(py).readonly())).collect();
        let images: Vec<sim::MemInit> = ro.iter().map(|(s, a, r)| (*s, *a, r.as_slice().unwrap_or(&[]))).collect();
        let loaded = &self.loaded;
        py.detach(|| loaded.install_static(&mut memory.lock(), &images)).map_err(|e| sim_err(py, e))
    }

    /// Whether `install_static` wrote this program's image into `memory` (since its last `clear`).
    fn installed_in(&self, memory: &ChipMemory) -> bool {
        self.loaded.installed_in(&memory.lock())
    }
}

/// One chip's MEM contents, kept across runs (`LoadedProgram.run(..., memory=m)`). Only MEM persists; queues,
/// streams, MXM weights and accumulators, VXM registers and C2C buffers start fresh every run, at cycle 0.
#[pyclass(module = "lpusim._lpusim", frozen)]
struct ChipMemory {
    /// The memory's configuration, also kept outside the lock: reading it never waits for a run in progress.
    cfg: ChipConfig,
    /// Runs take the lock with the GIL released, so two threads running on one memory take turns.
    inner: std::sync::Mutex<Memory>,
}

impl ChipMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A panic during a run flags the memory itself (sim/run.rs); the contents stay usable for reading.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl ChipMemory {
    /// All zeros for a chip of this configuration (None: tsp_v1).
    #[new]
    #[pyo3(signature = (config_json = None))]
    fn new(py: Python<'_>, config_json: Option<&str>) -> PyResult<Self> {
        let cfg = config_from(py, config_json)?;
        Ok(ChipMemory { inner: std::sync::Mutex::new(Memory::new(&cfg)), cfg })
    }

    /// The configuration, as JSON.
    #[getter]
    fn config_json(&self) -> String {
        self.cfg.to_json()
    }

    /// `n` vectors of a MEM slice (global index) from `addr`: a uint8 array (n, lanes).
    fn read<'py>(&self, py: Python<'py>, slice: usize, addr: usize, n: usize) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let v = py.detach(|| self.lock().read(slice, addr, n)).map_err(PyValueError::new_err)?;
        numpy::PyArray1::from_vec(py, v).reshape([n, self.cfg.lanes])
    }

    /// Write a uint8 array (n, lanes) into a MEM slice (global index) from `addr`, between runs.
    fn write<'py>(&self, py: Python<'py>, slice: usize, addr: usize, data: Bound<'py, PyAny>) -> PyResult<()> {
        let a = mem_array(&self.cfg, "data", 0, slice, addr, &data)?.readonly();
        let bytes: std::borrow::Cow<[u8]> = match a.as_slice() {
            Ok(s) => s.into(),
            Err(_) => a.as_array().iter().copied().collect::<Vec<u8>>().into(),
        };
        py.detach(|| self.lock().write(slice, addr, &bytes)).map_err(PyValueError::new_err)
    }

    /// The SimulationError of the run that faulted on this memory (its contents are as that run left them), or
    /// None. Runs and installs are refused while it is set.
    #[getter]
    fn fault(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let e = self.lock().fault().cloned()?;
        Some(sim_err(py, e).into_value(py).into_any())
    }

    /// Accept the contents a faulted run left, so runs are allowed again.
    fn clear_fault(&self) {
        self.lock().clear_fault();
    }

    /// Back to all zeros: pages freed, no static image installed, no fault.
    fn clear(&self) {
        self.lock().clear();
    }

    /// Bytes of SRAM pages allocated (written at least once).
    #[getter]
    fn allocated_bytes(&self) -> usize {
        self.lock().allocated_bytes()
    }
}

// ---- many chips (docs/system.md) ----

fn system_err(py: Python<'_>, e: crate::system::SystemError) -> PyErr {
    let err = SimulationError::new_err(e.to_string());
    let v = err.value(py);
    let _ = v.setattr("kind", e.kind.name());
    let _ = v.setattr("cycle", e.cycle);
    let _ = v.setattr("queue", e.queue);
    let _ = v.setattr("index", e.index);
    let _ = v.setattr("instruction", e.instruction);
    let _ = v.setattr("message", e.message);
    let _ = v.setattr("chip", e.chip);
    let _ = v.setattr("link", e.link);
    let _ = v.setattr("peer_chip", e.peer_chip);
    let _ = v.setattr("peer_link", e.peer_link);
    let _ = v.setattr("peer_cycle", e.peer_cycle);
    err
}

fn system_config_from(py: Python<'_>, json: &str) -> PyResult<crate::system::SystemConfig> {
    crate::system::SystemConfig::from_json(json).map_err(|e| cfg_err(py, e))
}

fn program_from<'py>(py: Python<'py>, k: usize, program: &Bound<'py, PyAny>) -> PyResult<isa::Program> {
    if program.is_none() {
        Ok(isa::Program::default())
    } else if let Ok(s) = program.cast::<PyString>() {
        isa::text::parse(&s.to_cow()?).map_err(|e| asm_err(py, e))
    } else if let Ok(b) = program.cast::<PyBytes>() {
        crate::parse_program(b.as_bytes()).map_err(|e| asm_err(py, e))
    } else {
        Err(PyValueError::new_err(format!("programs[{k}]: expected str (assembly text), bytes (program binary) or None")))
    }
}

/// The system as resolved from its configuration: every drawn latency and drift, and the HAC alignment.
#[pyfunction]
fn describe_system<'py>(py: Python<'py>, system_json: &str) -> PyResult<Bound<'py, PyDict>> {
    let sc = system_config_from(py, system_json)?;
    let r = sc.resolve().map_err(|e| cfg_err(py, e))?;
    let al = crate::system::align::align(&r).map_err(|e| system_err(py, e))?;
    let tick = crate::sim::clock::TICKS_PER_CYCLE as f64;
    let d = PyDict::new(py);
    d.set_item("config", sc.to_json())?;
    d.set_item("chip_config", r.chip.to_json())?;
    d.set_item("chips", r.chips)?;
    d.set_item("hac_period", r.chip.hac_period)?;
    d.set_item("min_send_interval_cycles", r.min_send_interval_cycles())?;
    d.set_item("send_interval_cycles", r.send_interval_ticks as f64 / tick)?;
    d.set_item("tree_height", al.height)?;
    d.set_item("root_chip", r.root)?;
    let links = PyList::empty(py);
    for l in &r.links {
        let e = PyDict::new(py);
        e.set_item("chip_a", l.a.chip)?;
        e.set_item("link_a", l.a.link)?;
        e.set_item("chip_b", l.b.chip)?;
        e.set_item("link_b", l.b.link)?;
        e.set_item("kind", if l.kind == crate::system::LinkKind::Local { "local" } else { "global" })?;
        e.set_item("latency_cycles", l.latency_ticks as f64 / tick)?;
        links.append(e)?;
    }
    d.set_item("links", links)?;
    let chips = PyList::empty(py);
    for i in 0..r.chips {
        let e = PyDict::new(py);
        e.set_item("drift_ppm", r.drift_ppm[i])?;
        e.set_item("period_cycles", r.periods[i] as f64 / tick)?;
        e.set_item("hac_offset", al.clocks[i].hac_offset)?;
        e.set_item("hac_error", al.hac_error[i])?;
        e.set_item("tree_parent", al.parent[i].map(|p| p.0))?;
        e.set_item("tree_link", al.parent[i].map(|p| p.1))?;
        e.set_item("tree_depth", al.depth[i])?;
        e.set_item("measured_latency", al.measured_latency[i])?;
        chips.append(e)?;
    }
    d.set_item("chip_info", chips)?;
    Ok(d)
}

/// `what[c][k]`: per chip, (global MEM slice, first address, uint8 array (n, lanes)), checked.
#[allow(clippy::type_complexity)]
fn system_arrays<'py>(
    cfg: &ChipConfig,
    what: &str,
    lists: &[Vec<(usize, usize, Bound<'py, PyAny>)>],
) -> PyResult<Vec<Vec<(usize, usize, Bound<'py, PyArray2<u8>>)>>> {
    let lanes = cfg.lanes;
    let mut out = Vec::with_capacity(lists.len());
    for (c, list) in lists.iter().enumerate() {
        let mut v = Vec::with_capacity(list.len());
        for (k, (slice, addr, arr)) in list.iter().enumerate() {
            let bad = || PyValueError::new_err(format!("{what}[{c}][{k}]: expected a uint8 numpy array of shape (n, {lanes})"));
            let a = arr.cast::<PyArray2<u8>>().map_err(|_| bad())?;
            if a.shape()[1] != lanes {
                return Err(bad());
            }
            if *slice >= cfg.mem_slices || addr + a.shape()[0] > cfg.mem_words {
                return Err(PyValueError::new_err(format!(
                    "{what}[{c}][{k}]: slice must be < {} and addresses < {}",
                    cfg.mem_slices, cfg.mem_words
                )));
            }
            v.push((*slice, *addr, a.clone()));
        }
        out.push(v);
    }
    Ok(out)
}

/// Per chip, the bytes of its images: borrowed from C-contiguous arrays (no copy), copied from the others; empty
/// in timing-only runs (no image is read).
struct SystemImages<'py> {
    /// Per chip: (slice, address, index into `guards` / `copies`).
    shape: Vec<Vec<(usize, usize, usize)>>,
    guards: Vec<numpy::PyReadonlyArray2<'py, u8>>,
    copies: Vec<Option<Vec<u8>>>,
    timing_only: bool,
}

impl<'py> SystemImages<'py> {
    fn new(timing_only: bool) -> Self {
        SystemImages { shape: Vec::new(), guards: Vec::new(), copies: Vec::new(), timing_only }
    }

    /// Add `arrays` to chip `chip`'s images (after those added before: later ones win).
    fn add(&mut self, chip: usize, arrays: &[(usize, usize, Bound<'py, PyArray2<u8>>)]) {
        while self.shape.len() <= chip {
            self.shape.push(Vec::new());
        }
        for (slice, addr, a) in arrays {
            let ro = a.readonly();
            let copy = if self.timing_only || ro.as_slice().is_ok() { None } else { Some(ro.as_array().iter().copied().collect()) };
            self.shape[chip].push((*slice, *addr, self.guards.len()));
            self.guards.push(ro);
            self.copies.push(copy);
        }
    }

    fn views(&self) -> Vec<Vec<sim::MemInit<'_>>> {
        let bytes = |j: usize| -> &[u8] {
            match &self.copies[j] {
                Some(v) => v.as_slice(),
                None if self.timing_only => &[],
                None => self.guards[j].as_slice().unwrap_or(&[]),
            }
        };
        self.shape.iter().map(|v| v.iter().map(|&(s, a, j)| (s, a, bytes(j))).collect()).collect()
    }
}

fn check_system_dumps(cfg: &ChipConfig, dumps: &[Vec<(usize, usize, usize)>]) -> PyResult<()> {
    for (c, ds) in dumps.iter().enumerate() {
        for (k, &(slice, addr, cnt)) in ds.iter().enumerate() {
            if slice >= cfg.mem_slices || addr + cnt > cfg.mem_words {
                return Err(PyValueError::new_err(format!(
                    "dumps[{c}][{k}]: slice must be < {} and addresses < {}",
                    cfg.mem_slices, cfg.mem_words
                )));
            }
        }
    }
    Ok(())
}

/// The binding's `ChipMemory` of a `ChipMemory` argument (the Python `lpusim.ChipMemory` wrapper's handle, or the
/// binding's own object).
fn memory_ref<'py>(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, ChipMemory>> {
    let bad = || pyo3::exceptions::PyTypeError::new_err(format!("{what}: expected a ChipMemory or None"));
    let handle = if obj.is_instance_of::<ChipMemory>() { obj.clone() } else { obj.getattr("_handle").map_err(|_| bad())? };
    handle.cast_into::<ChipMemory>().map_err(|_| bad())
}

/// `memories` (one entry per chip, None: a fresh chip) as the binding's memories; the same memory twice is an
/// error (a chip's SRAM is its own).
fn system_memories<'py>(py: Python<'py>, memories: Option<Vec<Option<Bound<'py, PyAny>>>>) -> PyResult<Option<Vec<Option<Bound<'py, ChipMemory>>>>> {
    let Some(list) = memories else { return Ok(None) };
    let mut out: Vec<Option<Bound<'py, ChipMemory>>> = Vec::with_capacity(list.len());
    for (k, m) in list.iter().enumerate() {
        let m = match m {
            Some(o) if !o.is_none() => Some(memory_ref(&format!("memories[{k}]"), o)?),
            _ => None,
        };
        if let Some(b) = &m {
            if let Some(j) = out.iter().position(|o| o.as_ref().is_some_and(|x| x.is(b))) {
                let e = crate::system::SystemError::general(
                    crate::error::ErrorKind::InvalidInstruction,
                    format!("memories[{j}] and memories[{k}] are the same ChipMemory: every chip needs its own"),
                );
                return Err(system_err(py, e));
            }
        }
        out.push(m);
    }
    Ok(Some(out))
}

/// Run `f` with the memories locked (in address order, so runs sharing memories never wait on each other in a
/// cycle) and lent as `&mut`. Call with the GIL released.
fn with_memories<R>(memories: &[Option<&ChipMemory>], f: impl FnOnce(&mut [Option<&mut Memory>]) -> R) -> R {
    let mut order: Vec<usize> = (0..memories.len()).filter(|&k| memories[k].is_some()).collect();
    order.sort_by_key(|&k| memories[k].map_or(0, |m| m as *const ChipMemory as usize));
    let mut guards: Vec<Option<std::sync::MutexGuard<'_, Memory>>> = memories.iter().map(|_| None).collect();
    for k in order {
        guards[k] = memories[k].map(|m| m.lock());
    }
    let mut lent: Vec<Option<&mut Memory>> = guards.iter_mut().map(|g| g.as_deref_mut()).collect();
    f(&mut lent)
}

/// (result dict, per chip the list of dump arrays) of a system run.
fn system_result<'py>(
    py: Python<'py>,
    res: crate::system::SystemResult,
    cfg: &ChipConfig,
    timing_only: bool,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
    let lanes = cfg.lanes;
    let d = PyDict::new(py);
    d.set_item("cycles", res.cycles)?;
    d.set_item("seconds", res.seconds)?;
    d.set_item("sync_cycles", res.sync_cycles)?;
    d.set_item("tree_height", res.tree_height)?;
    d.set_item("min_send_interval_cycles", res.min_send_interval_cycles)?;
    d.set_item("windows", res.windows)?;
    d.set_item("threads", res.threads)?;
    d.set_item("timing_only", timing_only)?;
    let chips = PyList::empty(py);
    let arrays = PyList::empty(py);
    for c in res.chips {
        let e = stats_dict(py, &c.stats, cfg, timing_only)?;
        e.set_item("sync_cycles", c.stats.sync_cycles)?;
        e.set_item("link_sends", c.stats.link_sends.clone())?;
        e.set_item("drift_ppm", c.drift_ppm)?;
        e.set_item("hac_offset", c.hac_offset)?;
        e.set_item("hac_error", c.hac_error)?;
        e.set_item("tree_parent", c.tree_parent)?;
        e.set_item("tree_depth", c.tree_depth)?;
        e.set_item("measured_latency", c.measured_latency)?;
        e.set_item("end_seconds", c.seconds)?;
        chips.append(e)?;
        let per = PyList::empty(py);
        for o in c.dumps {
            match o {
                None => per.append(py.None())?,
                Some(v) => {
                    let k = v.len() / lanes;
                    per.append(numpy::PyArray1::from_vec(py, v).reshape([k, lanes])?)?;
                }
            }
        }
        arrays.append(per)?;
    }
    d.set_item("chips", chips)?;
    let links = PyList::empty(py);
    for l in &res.links {
        let e = PyDict::new(py);
        e.set_item("from_chip", l.from_chip)?;
        e.set_item("from_link", l.from_link)?;
        e.set_item("to_chip", l.to_chip)?;
        e.set_item("to_link", l.to_link)?;
        e.set_item("kind", if l.kind == crate::system::LinkKind::Local { "local" } else { "global" })?;
        e.set_item("latency_cycles", l.latency_cycles)?;
        e.set_item("vectors", l.vectors)?;
        e.set_item("bytes", l.bytes)?;
        e.set_item("busy_fraction", l.busy_fraction)?;
        links.append(e)?;
    }
    d.set_item("links", links)?;
    Ok((d, arrays))
}

/// Run one program per chip on a system (docs/system.md).
///
/// programs[i]: assembly text, program binary or None (idle) for chip i; mem_inits[i]: (global MEM slice, first
/// address, uint8 array (n, lanes)); dumps[i]: (global MEM slice, first address, n). threads = 0: all cores.
/// memories: None (fresh chips), or one `ChipMemory` or None per chip (another count is a SimulationError): chip i
/// then runs on that memory's contents, with its program's `.init`s and mem_inits[i] written into it before the
/// run, every run (`LoadedSystem` installs a constant image once instead); the memory keeps what the run leaves
/// and dumps[i] are read from it. A faulted run flags every memory of the run; a timing-only run changes none
/// (docs/system.md section 7). Returns (result dict, per chip the list of dump arrays).
#[pyfunction]
#[pyo3(signature = (system_json, programs, mem_inits = Vec::new(), dumps = Vec::new(), timing_only = false, threads = 0, max_cycles = None, memories = None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn simulate_system<'py>(
    py: Python<'py>,
    system_json: &str,
    programs: Vec<Bound<'py, PyAny>>,
    mem_inits: Vec<Vec<(usize, usize, Bound<'py, PyAny>)>>,
    dumps: Vec<Vec<(usize, usize, usize)>>,
    timing_only: bool,
    threads: usize,
    max_cycles: Option<u64>,
    memories: Option<Vec<Option<Bound<'py, PyAny>>>>,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
    let sc = system_config_from(py, system_json)?;
    let r = sc.resolve().map_err(|e| cfg_err(py, e))?;
    let (cfg, n) = (r.chip.clone(), r.chips);
    for (what, len) in [("programs", programs.len()), ("mem_inits", mem_inits.len()), ("dumps", dumps.len())] {
        if len > n {
            return Err(PyValueError::new_err(format!("{what}: {len} entries for a system of {n} chips")));
        }
    }
    let progs = programs.iter().enumerate().map(|(k, p)| program_from(py, k, p)).collect::<PyResult<Vec<_>>>()?;
    let arrays = system_arrays(&cfg, "mem_inits", &mem_inits)?;
    let mut images = SystemImages::new(timing_only);
    for (c, a) in arrays.iter().enumerate() {
        images.add(c, a);
    }
    let views = images.views();
    check_system_dumps(&cfg, &dumps)?;
    let memories = system_memories(py, memories)?;
    let refs: Option<Vec<Option<&ChipMemory>>> = memories.as_ref().map(|v| v.iter().map(|m| m.as_ref().map(|b| b.get())).collect());
    let opts = crate::system::SystemOptions { timing_only, max_cycles, threads };
    let result = py.detach(|| match &refs {
        None => crate::system::simulate_system(&sc, &progs, &views, &dumps, &opts),
        Some(refs) => with_memories(refs, |ms| crate::system::simulate_system_on(&sc, &progs, &views, &dumps, ms, &opts)),
    });
    let res = result.map_err(|e| system_err(py, e))?;
    system_result(py, res, &cfg, timing_only)
}

/// A system's programs loaded once (decoded, checked, the HACs aligned), each chip's static memory image kept
/// (references to the caller's arrays, not copies): the system analogue of `LoadedProgram`. Runs go on fresh
/// chips or on `ChipMemory`s kept from one run to the next, each chip's static image written into its memory once
/// (`install_static`).
#[pyclass(module = "lpusim._lpusim", frozen)]
struct LoadedSystem {
    cfg: ChipConfig,
    system: crate::system::LoadedSystem,
    /// Per chip: (global slice, first address, uint8 array (n, lanes)), C-contiguous (copied once if they were not).
    static_inits: Vec<Vec<StaticImage>>,
}

/// (global slice, first address, uint8 array (n, lanes)).
type StaticImage = (usize, usize, Py<PyArray2<u8>>);

#[pymethods]
impl LoadedSystem {
    /// system_json, programs (as `simulate_system`'s) and static_inits (per chip, like mem_inits): checked now,
    /// with the errors `simulate_system` raises before its first cycle.
    #[new]
    #[pyo3(signature = (system_json, programs, static_inits = Vec::new()))]
    fn new<'py>(
        py: Python<'py>,
        system_json: &str,
        programs: Vec<Bound<'py, PyAny>>,
        static_inits: Vec<Vec<(usize, usize, Bound<'py, PyAny>)>>,
    ) -> PyResult<Self> {
        let sc = system_config_from(py, system_json)?;
        let r = sc.resolve().map_err(|e| cfg_err(py, e))?;
        let (cfg, n) = (r.chip.clone(), r.chips);
        for (what, len) in [("programs", programs.len()), ("static_inits", static_inits.len())] {
            if len > n {
                return Err(PyValueError::new_err(format!("{what}: {len} entries for a system of {n} chips")));
            }
        }
        let progs = programs.iter().enumerate().map(|(k, p)| program_from(py, k, p)).collect::<PyResult<Vec<_>>>()?;
        let arrays = system_arrays(&cfg, "static_inits", &static_inits)?;
        let kept = arrays
            .into_iter()
            .map(|v| {
                v.into_iter()
                    .map(|(s, a, arr)| {
                        let arr = if arr.readonly().as_slice().is_ok() { arr.unbind() } else { arr.to_owned_array().into_pyarray(py).unbind() };
                        (s, a, arr)
                    })
                    .collect()
            })
            .collect();
        let system = py.detach(|| crate::system::LoadedSystem::load(&sc, &progs)).map_err(|e| system_err(py, e))?;
        Ok(LoadedSystem { cfg, system, static_inits: kept })
    }

    /// The number of chips.
    #[getter]
    fn chips(&self) -> usize {
        self.system.chips()
    }

    /// One run: mem_inits (each chip's inputs), dumps, timing_only, threads and max_cycles as for
    /// `simulate_system`, with its results and errors.
    ///
    /// memories: None runs every chip fresh: zeroed SRAM, its `.init`s and static_inits, then mem_inits. Else one
    /// `ChipMemory` or None per chip (another count is a SimulationError, raised before anything runs). None: that
    /// chip runs fresh. A memory: the chip runs on its contents; no static image is written (`install_static` does
    /// that once), mem_inits[i] is written into it, it keeps what the run leaves and dumps[i] are read from it. A
    /// faulted run flags every memory of the run (the faulting chip's with its error, the others' with one naming
    /// it); a timing-only run changes no memory (docs/system.md section 7).
    #[pyo3(signature = (mem_inits = Vec::new(), dumps = Vec::new(), timing_only = false, threads = 0, max_cycles = None, memories = None))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        mem_inits: Vec<Vec<(usize, usize, Bound<'py, PyAny>)>>,
        dumps: Vec<Vec<(usize, usize, usize)>>,
        timing_only: bool,
        threads: usize,
        max_cycles: Option<u64>,
        memories: Option<Vec<Option<Bound<'py, PyAny>>>>,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
        let (cfg, n) = (&self.cfg, self.system.chips());
        for (what, len) in [("mem_inits", mem_inits.len()), ("dumps", dumps.len())] {
            if len > n {
                return Err(PyValueError::new_err(format!("{what}: {len} entries for a system of {n} chips")));
            }
        }
        let arrays = system_arrays(cfg, "mem_inits", &mem_inits)?;
        check_system_dumps(cfg, &dumps)?;
        let memories = system_memories(py, memories)?;
        let mut images = SystemImages::new(timing_only);
        for c in 0..n {
            let on_memory = memories.as_ref().is_some_and(|m| m.get(c).is_some_and(|x| x.is_some()));
            if !timing_only && !on_memory {
                if let Some(st) = self.static_inits.get(c) {
                    let bound: Vec<_> = st.iter().map(|(s, a, arr)| (*s, *a, arr.bind(py).clone())).collect();
                    images.add(c, &bound);
                }
            }
            if let Some(a) = arrays.get(c) {
                images.add(c, a);
            }
        }
        let views = images.views();
        let refs: Option<Vec<Option<&ChipMemory>>> = memories.as_ref().map(|v| v.iter().map(|m| m.as_ref().map(|b| b.get())).collect());
        let opts = crate::system::SystemOptions { timing_only, max_cycles, threads };
        let system = &self.system;
        let result = py.detach(|| match &refs {
            None => system.run(&views, &dumps, &opts),
            Some(refs) => with_memories(refs, |ms| system.run_on(&views, &dumps, ms, &opts)),
        });
        let res = result.map_err(|e| system_err(py, e))?;
        system_result(py, res, cfg, timing_only)
    }

    /// Write chip `chip`'s constant image (its program's `.init`s and static_inits[chip]) into `memory`, copied
    /// once: runs with this memory at position `chip` do not write it again. Raises SimulationError if the chip is
    /// not in the system, or the memory is of another configuration or holds a fault.
    fn install_static(&self, py: Python<'_>, chip: usize, memory: &Bound<'_, PyAny>) -> PyResult<()> {
        let memory = memory_ref("memory", memory)?;
        let empty = Vec::new();
        let st = self.static_inits.get(chip).unwrap_or(&empty);
        let ro: Vec<_> = st.iter().map(|(s, a, arr)| (*s, *a, arr.bind(py).readonly())).collect();
        let images: Vec<sim::MemInit> = ro.iter().map(|(s, a, r)| (*s, *a, r.as_slice().unwrap_or(&[]))).collect();
        let (system, m) = (&self.system, memory.get());
        py.detach(|| system.install_static(chip, &mut m.lock(), &images)).map_err(|e| system_err(py, e))
    }

    /// Whether `install_static(chip, memory)` of this object wrote into `memory` (since the memory's last
    /// `clear`). Raises SimulationError if the chip is not in the system.
    fn installed_in(&self, py: Python<'_>, chip: usize, memory: &Bound<'_, PyAny>) -> PyResult<bool> {
        let memory = memory_ref("memory", memory)?;
        if chip >= self.system.chips() {
            let m = format!("chip {chip}: the system has {} chips", self.system.chips());
            return Err(system_err(py, crate::system::SystemError::general(crate::error::ErrorKind::InvalidInstruction, m)));
        }
        let installed = self.system.installed_in(chip, &memory.get().lock());
        Ok(installed)
    }
}

#[pymodule]
fn _lpusim(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LpusimError", py.get_type::<LpusimError>())?;
    m.add("AssemblyError", py.get_type::<AssemblyError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("SimulationError", py.get_type::<SimulationError>())?;
    m.add_function(wrap_pyfunction!(chip_config_json, m)?)?;
    m.add_function(wrap_pyfunction!(validate_chip_config, m)?)?;
    m.add_function(wrap_pyfunction!(assemble, m)?)?;
    m.add_function(wrap_pyfunction!(disassemble, m)?)?;
    m.add_function(wrap_pyfunction!(canonicalize, m)?)?;
    m.add_function(wrap_pyfunction!(queue_names, m)?)?;
    m.add_function(wrap_pyfunction!(positions, m)?)?;
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_class::<LoadedProgram>()?;
    m.add_class::<ChipMemory>()?;
    m.add_function(wrap_pyfunction!(describe_system, m)?)?;
    m.add_function(wrap_pyfunction!(simulate_system, m)?)?;
    m.add_class::<LoadedSystem>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
