//! `thingsbus_rs._native`: the thingsbus client and adaptor (the Rust crates) as a Python
//! extension module. The public package is `thingsbus_rs` (python/python/thingsbus_rs), which
//! re-exports these classes and adds `thingsbus_rs.compat`, the 0.2.x API.
//!
//! Every wait (`wait_filled`, `command`, a subscription's next event, `close`) releases the GIL
//! and wakes every 50 ms to let Python run its signal handlers, so Ctrl-C ends it.

use pyo3::prelude::*;

mod adaptor;
mod client;
mod convert;
mod errors;
mod keys;
mod wait;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<client::Thing>()?;
    m.add_class::<client::Event>()?;
    m.add_class::<client::Subscription>()?;
    m.add_class::<adaptor::Adaptor>()?;
    m.add_function(wrap_pyfunction!(client::find_brokers, m)?)?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
