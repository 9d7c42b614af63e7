//! capi-sync's native core: a compiled mapping plan and an Arrow record batch in, events out.
//!
//! The Python mapper (`capi_sync.mappings.mapper`) is the reference: the core writes an event only
//! where it can prove the reference writes the same bytes, and hands every other row back to it.

mod engine;
mod json;
mod nested;
mod normalize;
mod plan;
mod text;
#[rustfmt::skip] // generated: core/scripts/generate_unicode.py writes it
mod unicode_tables;
mod value;

use std::collections::HashMap;

use arrow_array::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{Array, StructArray};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyList};

/// A pipeline's mapping, compiled once per run (`capi_sync.native.compile_plan`).
#[pyclass(frozen, module = "capi_sync._core")]
struct Plan {
    inner: plan::Plan,
}

#[pymethods]
impl Plan {
    #[new]
    fn new(spec_json: &str) -> PyResult<Self> {
        plan::Plan::from_json(spec_json)
            .map(|inner| Self { inner })
            .map_err(PyValueError::new_err)
    }

    /// The customer-information keys in the order events carry them; bit i of a shape is key i.
    #[getter]
    fn user_order(&self) -> Vec<String> {
        self.inner.user_order.clone()
    }
}

/// What `build` returns for one record batch.
#[pyclass(frozen, module = "capi_sync._core")]
struct Built {
    /// One byte per row: 1 where the core wrote the event, 0 where the reference maps the row.
    #[pyo3(get)]
    native: Py<PyBytes>,
    /// Per row, its key as the reference writes it, or None where the reference must.
    #[pyo3(get)]
    row_keys: Py<PyList>,
    /// The events the core wrote, in row order, each as its JSON.
    #[pyo3(get)]
    events: Py<PyList>,
    /// Per event, the customer-information keys it carries (bits of `Plan.user_order`), and from
    /// bit `NAME_SHIFT` up its name's index in `event_names`.
    #[pyo3(get)]
    shapes: Py<PyList>,
    /// The names the events carry, each once.
    #[pyo3(get)]
    event_names: Py<PyList>,
}

/// Columns of `batch` (anything with `__arrow_c_array__`: a pyarrow RecordBatch) the core reads.
fn import_batch(batch: &Bound<'_, PyAny>) -> PyResult<StructArray> {
    let capsules = batch.call_method0("__arrow_c_array__")?;
    let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) = capsules.extract()?;
    // SAFETY: the Arrow PyCapsule interface hands out an FFI_ArrowSchema and an FFI_ArrowArray;
    // the array is moved out of its capsule (its release callback is taken over), the schema is
    // only borrowed while the capsule is alive.
    let data = unsafe {
        let array = FFI_ArrowArray::from_raw(array.pointer().cast::<FFI_ArrowArray>());
        let schema = &*schema.pointer().cast::<FFI_ArrowSchema>();
        from_ffi(array, schema)
    }
    .map_err(|e| PyTypeError::new_err(format!("not an Arrow record batch: {e}")))?;
    Ok(StructArray::from(data))
}

/// Map every row of `batch` that the core can: see `Built`. Runs without the GIL, on every core.
#[pyfunction]
fn build(
    py: Python<'_>,
    plan: &Bound<'_, Plan>,
    batch: &Bound<'_, PyAny>,
    now: f64,
) -> PyResult<Built> {
    let columns = import_batch(batch)?;
    let rows = columns.len();
    let plan = &plan.get().inner;
    let readable = columns
        .columns()
        .iter()
        .map(|array| value::Column::new(array.clone()))
        .collect();
    let (paths, declined) =
        py.allow_threads(|| engine::resolve_paths(columns.columns(), &plan.spec.paths, rows));
    let batch = engine::Batch {
        columns: readable,
        paths,
        declined,
        plan,
        now,
    };
    let parts = py.allow_threads(|| batch.build(rows));
    let outcomes = || parts.iter().flat_map(|part| part.rows.iter());
    let native: Vec<u8> = outcomes().map(|o| u8::from(o.event.is_some())).collect();
    let row_keys: Vec<Option<&str>> = outcomes().map(|o| o.row_key.as_deref()).collect();
    let row_keys = PyList::new(py, row_keys)?;
    let events: Vec<Bound<'_, PyBytes>> = parts
        .iter()
        .flat_map(|part| {
            part.rows
                .iter()
                .filter_map(|o| o.event.clone())
                .map(|span| PyBytes::new(py, &part.bytes[span]))
        })
        .collect();
    let events = PyList::new(py, events)?;
    // each part numbered its names on its own: one numbering for the batch
    let mut event_names: Vec<&str> = Vec::new();
    let mut numbers: HashMap<&str, u64> = HashMap::new();
    let renumbered: Vec<Vec<u64>> = parts
        .iter()
        .map(|part| {
            part.names
                .iter()
                .map(|name| {
                    *numbers.entry(name.as_str()).or_insert_with(|| {
                        event_names.push(name);
                        (event_names.len() - 1) as u64
                    })
                })
                .collect()
        })
        .collect();
    let shapes: Vec<u64> = parts
        .iter()
        .zip(&renumbered)
        .flat_map(|(part, number)| {
            part.rows
                .iter()
                .filter(|o| o.event.is_some())
                .map(move |o| o.shape | number[o.name as usize] << plan::NAME_SHIFT)
        })
        .collect();
    let shapes = PyList::new(py, shapes)?;
    let event_names = PyList::new(py, event_names)?;
    Ok(Built {
        native: PyBytes::new(py, &native).unbind(),
        row_keys: row_keys.unbind(),
        events: events.unbind(),
        shapes: shapes.unbind(),
        event_names: event_names.unbind(),
    })
}

/// The event_id of a row without one (`mapper.derive_event_id`), for the tests.
#[pyfunction]
fn derive_event_id(pipeline: &str, row_key: &str) -> String {
    engine::derive_event_id(pipeline, row_key)
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add("NAME_SHIFT", plan::NAME_SHIFT)?;
    // A debug build is correct but several times slower: benchmarks refuse it.
    module.add(
        "build_profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    // The Unicode of the CPython whose tables the core carries (core/scripts/generate_unicode.py).
    module.add("unicode_version", unicode_tables::UNICODE_VERSION)?;
    module.add_class::<Plan>()?;
    module.add_class::<Built>()?;
    module.add_function(wrap_pyfunction!(build, module)?)?;
    module.add_function(wrap_pyfunction!(derive_event_id, module)?)?;
    Ok(())
}
