//! `Adaptor`: publish things, and serve commands with a Python handler.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::convert::{to_json, to_py};
use crate::errors::{adaptor_error, ClosedError};
use crate::{keys, wait};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Publishes things under the base namespace `ns`.
///
/// `Adaptor("shop.shopbot", zone="example.org")` finds the broker through DNS SRV;
/// `url="tcp://host:7955"` sends JSON over ZMQ to the broker's input; `udp="host:7955"` sends
/// MessagePack datagrams. `send` never blocks: over ZMQ updates wait in a bounded queue while the
/// broker is unreachable (the oldest is dropped when it is full). Call `close()` before a script
/// ends so that what is queued is delivered.
#[pyclass(module = "thingsbus_rs._native", frozen)]
pub(crate) struct Adaptor {
    inner: Mutex<Option<thingsbus_adaptor::Adaptor>>,
    /// The base namespace (kept for `repr` after `close`).
    ns: String,
}

impl Adaptor {
    fn adaptor(&self) -> PyResult<thingsbus_adaptor::Adaptor> {
        lock(&self.inner)
            .clone()
            .ok_or_else(|| ClosedError::new_err("the adaptor is closed"))
    }
}

#[pymethods]
impl Adaptor {
    #[new]
    #[pyo3(signature = (ns, zone=None, url=None, udp=None, *, documentation_url=None,
        command_url=None, server_key=None, key_file=None, nameserver=None, prefer_udp=false,
        queue_capacity=10_000))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        ns: &str,
        zone: Option<&str>,
        url: Option<&str>,
        udp: Option<&str>,
        documentation_url: Option<&str>,
        command_url: Option<&str>,
        server_key: Option<&str>,
        key_file: Option<PathBuf>,
        nameserver: Option<&str>,
        prefer_udp: bool,
        queue_capacity: usize,
    ) -> PyResult<Self> {
        let mut b = thingsbus_adaptor::Adaptor::builder(ns)
            .queue_capacity(queue_capacity)
            .prefer_udp(prefer_udp);
        b =
            match (zone, url, udp) {
                (Some(z), None, None) => b.zone(z),
                (None, Some(u), None) => b.url(u),
                (None, None, Some(a)) => b.udp(a),
                _ => return Err(PyValueError::new_err(
                    "give exactly one of zone=\"example.org\" (DNS SRV), url=\"tcp://host:7955\" \
                     (ZMQ) or udp=\"host:7955\" (MessagePack datagrams)",
                )),
            };
        if let Some(d) = documentation_url {
            b = b.documentation_url(d);
        }
        if let Some(u) = command_url {
            b = b.command_url(u);
        }
        if let Some(s) = nameserver {
            let addr = s.parse().map_err(|_| {
                PyValueError::new_err(format!(
                    "nameserver={s:?} is not IP:PORT (for example \"127.0.0.1:53\")"
                ))
            })?;
            b = b.nameserver(addr);
        }
        match keys::from_args(server_key, key_file)? {
            keys::Keys::None => {}
            keys::Keys::Given(k) => b = b.curve(k),
            keys::Keys::Own(k) => b = b.key_pair(k),
        }
        let adaptor = wait::run(py, b.connect())?.map_err(adaptor_error)?;
        Ok(Adaptor {
            ns: adaptor.namespace().as_str().to_owned(),
            inner: Mutex::new(Some(adaptor)),
        })
    }

    /// The base namespace.
    #[getter]
    fn ns(&self) -> &str {
        &self.ns
    }

    /// Publishes `data` (anything `json.dumps` takes) as the base thing; the broker stamps it.
    fn send(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = to_json(data)?;
        self.adaptor()?.send(&value).map_err(adaptor_error)
    }

    /// Publishes `data` as the thing `<ns>.<sub_ns>` ("" for the base thing); `ts` in seconds
    /// since 1970, or None for "now" (the broker stamps it).
    #[pyo3(signature = (sub_ns, data, ts=None))]
    fn send_to(&self, sub_ns: &str, data: &Bound<'_, PyAny>, ts: Option<f64>) -> PyResult<()> {
        let value = to_json(data)?;
        self.adaptor()?
            .send_to(sub_ns, &value, ts)
            .map_err(adaptor_error)
    }

    /// Serves commands for the things at and below `<ns>.<prefix>` ("" for the whole base):
    /// each command runs `handler(ns, data)` and what it returns is the caller's reply; an
    /// exception it raises is a refusal, its text the caller's `Refused.error`. `handler` may be
    /// a plain function (run in a worker thread) or an `async def` (run on the event loop that
    /// was running when `serve` was called, else on a loop of the adaptor's own).
    #[pyo3(signature = (prefix, handler))]
    fn serve(&self, py: Python<'_>, prefix: &str, handler: Py<PyAny>) -> PyResult<()> {
        if !handler.bind(py).is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "serve(prefix, handler): handler must be callable as handler(ns, data)",
            ));
        }
        // The caller's running loop, if any: coroutine handlers run there.
        let aio = py.import("thingsbus_rs._aio")?;
        let running = aio.getattr("running_loop")?.call0()?.unbind();
        let call_handler = aio.getattr("call_handler")?.unbind();
        let adaptor = self.adaptor()?;
        adaptor
            .serve_blocking(prefix, move |ns, data, deadline| {
                Python::attach(|py| {
                    let left = deadline
                        .duration_since(std::time::SystemTime::now())
                        .map_or(0.0, |d| d.as_secs_f64());
                    let data = to_py(py, &data).map_err(|e| e.to_string())?;
                    let args = (handler.bind(py), ns.as_str(), data, running.bind(py), left);
                    match call_handler.bind(py).call1(args) {
                        Ok(reply) => to_json(&reply).map_err(|e| {
                            format!("the handler's reply cannot be sent: {}", describe(py, &e))
                        }),
                        Err(e) => Err(describe(py, &e)),
                    }
                })
            })
            .map_err(adaptor_error)
    }

    /// True once the broker has confirmed a `serve` registration.
    #[getter]
    fn is_serving(&self) -> PyResult<bool> {
        Ok(self.adaptor()?.is_serving())
    }

    /// Waits until every queued update has been handed to the network, at most `timeout`
    /// seconds. False on time-out (for example while no broker is reachable).
    #[pyo3(signature = (timeout=2.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let adaptor = self.adaptor()?;
        let flushed = wait::poll(py, Some(timeout), |slice| {
            adaptor.flush(slice).then_some(())
        })?;
        Ok(flushed.is_some())
    }

    /// Stops serving, stops taking updates and delivers what is queued, for at most `timeout`
    /// seconds. False if updates were left undelivered. Closing twice is harmless.
    #[pyo3(signature = (timeout=2.0))]
    fn close(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let Some(adaptor) = lock(&self.inner).take() else {
            return Ok(true);
        };
        // Delivery first, interruptibly; then the close itself has nothing left to wait for.
        let flushed = wait::poll(py, Some(timeout), |slice| {
            adaptor.flush(slice).then_some(())
        })?;
        let closed = py.detach(|| adaptor.close(std::time::Duration::from_millis(100)));
        Ok(flushed.is_some() && closed)
    }

    /// Counters: sent, dropped, queued, connected, commands, command_replies,
    /// commands_abandoned.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.adaptor()?.stats();
        let d = PyDict::new(py);
        d.set_item("sent", s.sent)?;
        d.set_item("dropped", s.dropped)?;
        d.set_item("queued", s.queued)?;
        d.set_item("connected", s.connected)?;
        d.set_item("commands", s.commands)?;
        d.set_item("command_replies", s.command_replies)?;
        d.set_item("commands_abandoned", s.commands_abandoned)?;
        Ok(d)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py, 2.0)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = if lock(&self.inner).is_some() {
            "open"
        } else {
            "closed"
        };
        format!("<thingsbus_rs.Adaptor ns={:?} {state}>", self.ns)
    }
}

/// An exception as the caller of a command reads it: its text, or its class name when empty.
fn describe(py: Python<'_>, e: &PyErr) -> String {
    let text = e.value(py).to_string();
    if text.is_empty() {
        e.get_type(py)
            .name()
            .map_or_else(|_| "the handler failed".to_owned(), |n| n.to_string())
    } else {
        text
    }
}
