//! Python bindings (`lpusim._lpusim`), compiled only with the `python` feature.
//!
//! A thin layer: convert arguments, call the pure-Rust core, convert results and errors. The simulation itself runs
//! with the GIL released.

use crate::config::ChipConfig;
use crate::error::{AsmError, ConfigError as RsConfigError, SimError};
use crate::isa::{self, QueueName};
use crate::sim::{self, Num, RunOptions, Stats};
use numpy::{PyArray2, PyArrayMethods, PyUntypedArrayMethods};
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
    let lanes = cfg.lanes;
    let prog = if let Ok(s) = program.cast::<PyString>() {
        isa::text::parse(s.to_str()?).map_err(|e| asm_err(py, e))?
    } else if let Ok(b) = program.cast::<PyBytes>() {
        crate::parse_program(b.as_bytes()).map_err(|e| asm_err(py, e))?
    } else {
        return Err(PyValueError::new_err("program: expected str (assembly text) or bytes (program binary)"));
    };
    // Borrow the arrays' bytes (no copy) when they are C-contiguous; copy the others.
    let mut guards = Vec::with_capacity(mem_init.len());
    let mut copies: Vec<Option<Vec<u8>>> = Vec::with_capacity(mem_init.len());
    for (k, (slice, addr, arr)) in mem_init.iter().enumerate() {
        let bad = || PyValueError::new_err(format!("mem_init[{k}]: expected a uint8 numpy array of shape (n, {lanes})"));
        let a = arr.cast::<PyArray2<u8>>().map_err(|_| bad())?;
        if a.shape()[1] != lanes {
            return Err(bad());
        }
        let n = a.shape()[0];
        if *slice >= cfg.mem_slices {
            return Err(PyValueError::new_err(format!("mem_init[{k}]: slice {slice} is outside 0..{}", cfg.mem_slices - 1)));
        }
        if addr + n > cfg.mem_words {
            return Err(PyValueError::new_err(format!("mem_init[{k}]: addresses run past {}", cfg.mem_words - 1)));
        }
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
    for (k, &(slice, addr, n)) in dumps.iter().enumerate() {
        if slice >= cfg.mem_slices || addr + n > cfg.mem_words {
            return Err(PyValueError::new_err(format!(
                "dumps[{k}]: slice must be < {} and addresses < {}",
                cfg.mem_slices, cfg.mem_words
            )));
        }
    }
    let opts = RunOptions { timing_only, max_cycles };
    let result = py.detach(|| sim::simulate(&cfg, &prog, &images, &dumps, &opts));
    let (stats, outs) = result.map_err(|e| sim_err(py, e))?;
    let d = stats_dict(py, &stats, &cfg, timing_only)?;
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
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
