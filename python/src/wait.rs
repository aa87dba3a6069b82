//! Waiting without holding the GIL, and without deafness to Ctrl-C: a wait is cut into slices of
//! [`SLICE`]; between two slices the GIL is taken back and Python's signal handlers run, so a
//! `KeyboardInterrupt` ends the wait within a slice.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// How long a wait goes without looking at Python's signals.
pub(crate) const SLICE: Duration = Duration::from_millis(50);

/// The module's one tokio runtime (a single worker): commands and timed waits run on it.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("thingsbus-py")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| PyRuntimeError::new_err(format!("cannot start the thingsbus runtime: {e}")))
}

/// Runs `fut` on the runtime and waits for it with the GIL released, running Python's signal
/// handlers between slices. A `KeyboardInterrupt` (or any signal handler's exception) aborts
/// the future and is raised.
pub(crate) fn run<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime()?;
    let mut handle = rt.spawn(fut);
    loop {
        let step =
            py.detach(|| rt.block_on(async { tokio::time::timeout(SLICE, &mut handle).await }));
        match step {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(join)) => {
                return Err(PyRuntimeError::new_err(format!(
                    "a thingsbus task failed: {join}"
                )))
            }
            Err(_elapsed) => {
                if let Err(e) = py.check_signals() {
                    handle.abort();
                    return Err(e);
                }
            }
        }
    }
}

/// Calls `attempt(slice)` with the GIL released until it gives `Some`, or `timeout` (None:
/// forever) is over (then `None`); Python's signal handlers run between two attempts.
pub(crate) fn poll<T, F>(
    py: Python<'_>,
    timeout: Option<f64>,
    mut attempt: F,
) -> PyResult<Option<T>>
where
    F: FnMut(Duration) -> Option<T> + Send,
    T: Send,
{
    // A deadline past what the clock can hold is no deadline.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(seconds(t)));
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            None => SLICE,
        };
        if let Some(v) = py.detach(|| attempt(slice)) {
            return Ok(Some(v));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

/// Seconds from Python as a duration: negative and NaN are zero, anything beyond a century (infinity
/// included) is a century, so that adding to it never overflows.
pub(crate) fn seconds(s: f64) -> Duration {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    if s.is_nan() || s <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(s).map_or(CENTURY, |d| d.min(CENTURY))
    }
}
