//! `Client`, `Thing`, `Event`, `Subscription`: the live directory mirror for Python.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use thingsbus_client::{EventKind, SubscribeOptions};
use thingsbus_protocol::discovery::Discovery;

use crate::convert::{text_to_py, to_json};
use crate::errors::{client_error, command_error, ClosedError, InvalidNamespace, ThingsbusError};
use crate::{keys, wait};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn nameserver_addr(nameserver: Option<&str>) -> PyResult<Option<std::net::SocketAddr>> {
    nameserver
        .map(|s| {
            s.parse().map_err(|_| {
                PyValueError::new_err(format!(
                    "nameserver={s:?} is not IP:PORT (for example \"127.0.0.1:53\")"
                ))
            })
        })
        .transpose()
}

/// A live mirror of a broker's directory, kept by a background thread.
///
/// `Client(zone="example.org")` finds the broker through the SRV record
/// `_thingsbus._tcp.example.org`; `Client(url="tcp://host:7954")` connects to it directly.
/// Reads (`get`, `thing`, `children`, `walk`, iteration) answer from the mirror at once.
#[pyclass(module = "thingsbus_rs._native", frozen)]
pub(crate) struct Client {
    inner: Mutex<Option<thingsbus_client::Client>>,
}

impl Client {
    fn client(&self) -> PyResult<thingsbus_client::Client> {
        lock(&self.inner)
            .clone()
            .ok_or_else(|| ClosedError::new_err("the client is closed"))
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (zone=None, url=None, *, server_key=None, key_file=None, nameserver=None,
        snapshot_url=None, command_url=None, instant_snapshot=true, include_stale=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        zone: Option<&str>,
        url: Option<&str>,
        server_key: Option<&str>,
        key_file: Option<PathBuf>,
        nameserver: Option<&str>,
        snapshot_url: Option<&str>,
        command_url: Option<&str>,
        instant_snapshot: bool,
        include_stale: bool,
    ) -> PyResult<Self> {
        let mut b = thingsbus_client::Client::builder()
            .instant_snapshot(instant_snapshot)
            .include_stale(include_stale);
        b =
            match (zone, url) {
                (Some(z), None) => b.zone(z),
                (None, Some(u)) => b.url(u),
                _ => return Err(PyValueError::new_err(
                    "give exactly one of zone=\"example.org\" (DNS SRV) or url=\"tcp://host:7954\"",
                )),
            };
        if let Some(ns) = nameserver_addr(nameserver)? {
            b = b.nameserver(ns);
        }
        if let Some(u) = snapshot_url {
            b = b.snapshot_url(u);
        }
        if let Some(u) = command_url {
            b = b.command_url(u);
        }
        match keys::from_args(server_key, key_file)? {
            keys::Keys::None => {}
            keys::Keys::Given(k) => b = b.curve(k),
            keys::Keys::Own(k) => b = b.key_pair(k),
        }
        let client = wait::run(py, b.connect())?.map_err(client_error)?;
        Ok(Client {
            inner: Mutex::new(Some(client)),
        })
    }

    /// The directory URL of the broker in use.
    #[getter]
    fn url(&self) -> PyResult<String> {
        Ok(self.client()?.url())
    }

    /// `(age_seconds, data)` of the thing, as 0.2.x's `get_data()`; None if it has no value.
    fn get<'py>(&self, py: Python<'py>, ns: &str) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(t) = self.client()?.get(ns) else {
            return Ok(None);
        };
        let data = text_to_py(py, &t.data)?;
        Ok(Some(PyTuple::new(
            py,
            [t.age().into_pyobject(py)?.into_any(), data],
        )?))
    }

    /// The thing with its timestamp, documentation URL and flags; None if it has no value.
    fn thing(&self, ns: &str) -> PyResult<Option<Thing>> {
        Ok(self.client()?.get(ns).map(Thing::from))
    }

    /// True when `ns` is known, as a thing or as a prefix of one.
    fn exists(&self, ns: &str) -> PyResult<bool> {
        Ok(self.client()?.exists(ns))
    }

    /// The namespaces directly below `ns` ("" is the root), in order.
    #[pyo3(signature = (ns=""))]
    fn children(&self, ns: &str) -> PyResult<Vec<String>> {
        valid(ns)?;
        Ok(self
            .client()?
            .children(ns)
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect())
    }

    /// Every thing with a value at or below `ns`, in namespace order.
    #[pyo3(signature = (ns=""))]
    fn walk(&self, ns: &str) -> PyResult<Vec<Thing>> {
        valid(ns)?;
        Ok(self
            .client()?
            .walk(ns)
            .into_iter()
            .map(Thing::from)
            .collect())
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let things = PyList::new(py, self.walk("")?)?;
        things.try_iter().map(Bound::into_any)
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.client()?.len())
    }

    fn __contains__(&self, ns: &str) -> PyResult<bool> {
        Ok(self.client()?.get(ns).is_some())
    }

    /// True once a whole snapshot has been applied.
    #[getter]
    fn is_filled(&self) -> PyResult<bool> {
        Ok(self.client()?.is_filled())
    }

    /// Waits until the mirror holds the whole directory, at most `timeout` seconds (None:
    /// forever). False on time-out. Ctrl-C interrupts it.
    #[pyo3(signature = (timeout=None))]
    fn wait_filled(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let client = self.client()?;
        Ok(wait::poll(py, timeout, |slice| {
            client.wait_filled_blocking(slice).then_some(())
        })?
        .is_some())
    }

    /// Events of `ns` (with `tree=True` also of everything below it; with `snapshots=True` also
    /// values replayed from snapshots) from now on. Iterate it, with `for` or `async for`.
    #[pyo3(signature = (ns, *, tree=false, snapshots=false, capacity=1024))]
    fn subscribe(
        &self,
        ns: &str,
        tree: bool,
        snapshots: bool,
        capacity: usize,
    ) -> PyResult<Subscription> {
        let options = SubscribeOptions::new()
            .tree(tree)
            .snapshots(snapshots)
            .capacity(capacity);
        let sub = self
            .client()?
            .subscribe(ns, options)
            .map_err(client_error)?;
        Ok(Subscription {
            inner: Mutex::new(Some(sub)),
            missed: AtomicU64::new(0),
        })
    }

    /// Sends `data` as a command to the thing `ns` and returns the data of its reply, waiting at
    /// most `timeout` seconds. Raises a `CommandError` subclass: `NoRoute`, `Timeout`, `Gone`,
    /// `Busy`, `BadRequest`, `NotAllowed`, `Refused` (`.error`, `.detail`), `NoAnswer`.
    #[pyo3(signature = (ns, data=None, timeout=5.0))]
    fn command<'py>(
        &self,
        py: Python<'py>,
        ns: &str,
        data: Option<&Bound<'py, PyAny>>,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = match data {
            Some(d) => to_json(d)?,
            None => serde_json::Value::Null,
        };
        let client = self.client()?;
        let ns = ns.to_owned();
        let timeout = wait::seconds(timeout);
        let reply = wait::run(
            py,
            async move { client.command(&ns, &value, timeout).await },
        )?;
        match reply {
            Ok(v) => crate::convert::to_py(py, &v),
            Err(e) => Err(command_error(py, e)),
        }
    }

    /// Counters: updates, snapshots, sequence gaps, fail-overs, ...
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.client()?.stats();
        let d = PyDict::new(py);
        d.set_item("updates", s.updates)?;
        d.set_item("snapshot_messages", s.snapshot_messages)?;
        d.set_item("snapshots", s.snapshots)?;
        d.set_item("bad_messages", s.bad_messages)?;
        d.set_item("seq_gaps", s.seq_gaps)?;
        d.set_item("missed_updates", s.missed_updates)?;
        d.set_item("seq_resets", s.seq_resets)?;
        d.set_item("last_seq", s.last_seq)?;
        d.set_item("snapshot_replies", s.snapshot_replies)?;
        d.set_item("failovers", s.failovers)?;
        Ok(d)
    }

    /// Stops the mirror; subscriptions end. Later calls raise `ClosedError`.
    fn close(&self, py: Python<'_>) {
        let client = lock(&self.inner).take();
        // The last handle joins the background thread: wait for it without the GIL.
        py.detach(move || drop(client));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        match lock(&self.inner).as_ref() {
            Some(c) => format!("<thingsbus_rs.Client url={:?} things={}>", c.url(), c.len()),
            None => "<thingsbus_rs.Client closed>".to_owned(),
        }
    }
}

fn valid(ns: &str) -> PyResult<()> {
    thingsbus_protocol::namespace::validate(ns)
        .map_err(|e| InvalidNamespace::new_err(e.to_string()))
}

/// A thing's last value: `ns`, `data`, `ts` (seconds since 1970), `age`, `documentation_url`,
/// `seq`, `stale`, `from_snapshot`. An owned copy: it does not change when the thing does.
#[pyclass(module = "thingsbus_rs._native", frozen)]
pub(crate) struct Thing {
    t: thingsbus_client::Thing,
}

impl From<thingsbus_client::Thing> for Thing {
    fn from(t: thingsbus_client::Thing) -> Self {
        Thing { t }
    }
}

#[pymethods]
impl Thing {
    /// The thing's namespace.
    #[getter]
    fn ns(&self) -> &str {
        self.t.ns.as_str()
    }
    /// The value (dict, list, str, number, bool or None), decoded afresh on each access.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        text_to_py(py, &self.t.data)
    }
    /// The value's timestamp, seconds since 1970.
    #[getter]
    fn ts(&self) -> f64 {
        self.t.ts
    }
    /// Seconds since `ts`.
    #[getter]
    fn age(&self) -> f64 {
        self.t.age()
    }
    /// The last documentation URL the thing was given.
    #[getter]
    fn documentation_url(&self) -> Option<&str> {
        self.t.documentation_url.as_deref()
    }
    /// The broker's sequence number of this value (None from a 0.2.x broker).
    #[getter]
    fn seq(&self) -> Option<u64> {
        self.t.seq
    }
    /// True when the broker said the thing stopped reporting.
    #[getter]
    fn stale(&self) -> bool {
        self.t.stale
    }
    /// True when the value came from a snapshot.
    #[getter(from_snapshot)]
    fn came_from_snapshot(&self) -> bool {
        self.t.from_snapshot
    }
    fn __repr__(&self) -> String {
        format!(
            "<Thing {} age={:.1}s data={}>",
            self.t.ns.as_str(),
            self.t.age(),
            self.t.data
        )
    }
}

/// One event of a subscription: the thing as it is now, and `kind`: "update" (live),
/// "snapshot" (replayed from a snapshot) or "expired" (the thing stopped reporting).
#[pyclass(module = "thingsbus_rs._native", frozen)]
pub(crate) struct Event {
    e: thingsbus_client::Event,
}

#[pymethods]
impl Event {
    /// The thing's namespace.
    #[getter]
    fn ns(&self) -> &str {
        self.e.thing.ns.as_str()
    }
    /// The value.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        text_to_py(py, &self.e.thing.data)
    }
    /// The value's timestamp, seconds since 1970.
    #[getter]
    fn ts(&self) -> f64 {
        self.e.thing.ts
    }
    /// Seconds since `ts`.
    #[getter]
    fn age(&self) -> f64 {
        self.e.thing.age()
    }
    /// "update", "snapshot" or "expired".
    #[getter]
    fn kind(&self) -> &'static str {
        match self.e.kind {
            EventKind::Update => "update",
            EventKind::Snapshot => "snapshot",
            EventKind::Expired => "expired",
            _ => "other",
        }
    }
    /// True for values replayed from a snapshot.
    #[getter]
    fn is_snapshot(&self) -> bool {
        self.e.from_snapshot()
    }
    /// The thing as it is now.
    #[getter]
    fn thing(&self) -> Thing {
        Thing::from(self.e.thing.clone())
    }
    fn __repr__(&self) -> String {
        format!(
            "<Event {} {} ts={:.3} data={}>",
            self.kind(),
            self.e.thing.ns.as_str(),
            self.e.thing.ts,
            self.e.thing.data
        )
    }
}

/// The events of one subscription, from `Client.subscribe`. An iterator (`for event in sub`,
/// blocking; Ctrl-C interrupts it) and an async iterator (`async for event in sub`). Each
/// subscription has its own bounded queue: a subscriber too slow to keep up loses the oldest
/// events (counted in `missed`) and never slows the client down. Iteration ends when the client
/// is closed.
#[pyclass(module = "thingsbus_rs._native", frozen)]
pub(crate) struct Subscription {
    inner: Mutex<Option<thingsbus_client::Subscription>>,
    missed: AtomicU64,
}

enum Next {
    Event(thingsbus_client::Event),
    End,
}

impl Subscription {
    /// One attempt of at most `slice`: an event, the end, or nothing yet (lags are counted).
    fn attempt(&self, slice: std::time::Duration) -> Option<Next> {
        let mut guard = lock(&self.inner);
        let Some(sub) = guard.as_mut() else {
            return Some(Next::End);
        };
        let rt = wait::runtime().ok()?;
        loop {
            return match rt.block_on(async { tokio::time::timeout(slice, sub.next()).await }) {
                Err(_elapsed) => None,
                Ok(None) => Some(Next::End),
                Ok(Some(Ok(e))) => Some(Next::Event(e)),
                Ok(Some(Err(lag))) => {
                    self.missed.fetch_add(lag.missed, Ordering::Relaxed);
                    continue;
                }
            };
        }
    }
}

#[pymethods]
impl Subscription {
    /// Events dropped because this subscriber was too slow, since it was made.
    #[getter]
    fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// The next event, waiting at most `timeout` seconds (None: until one comes); None on
    /// time-out or once the subscription has ended.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Event>> {
        Ok(
            match wait::poll(py, timeout, |slice| self.attempt(slice))? {
                Some(Next::Event(e)) => Some(Event { e }),
                Some(Next::End) | None => None,
            },
        )
    }

    /// The next event if one is waiting, else None. Never blocks.
    fn try_next(&self) -> Option<Event> {
        let mut guard = lock(&self.inner);
        let sub = guard.as_mut()?;
        loop {
            match sub.try_next()? {
                Ok(e) => return Some(Event { e }),
                Err(lag) => {
                    self.missed.fetch_add(lag.missed, Ordering::Relaxed);
                }
            }
        }
    }

    /// True once the subscription has ended (closed, or its client closed).
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).is_none()
    }

    /// Polls for at most `timeout` seconds without looking at signals (for the async iterator,
    /// which runs it in a worker thread): `(event, False)`, `(None, False)` on time-out,
    /// `(None, True)` once the subscription has ended.
    fn _poll(&self, py: Python<'_>, timeout: f64) -> (Option<Event>, bool) {
        let slice = wait::seconds(timeout);
        match py.detach(|| self.attempt(slice)) {
            Some(Next::Event(e)) => (Some(Event { e }), false),
            Some(Next::End) => (None, true),
            None => (None, false),
        }
    }

    /// Ends the subscription.
    fn close(&self) {
        lock(&self.inner).take();
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Event> {
        match wait::poll(py, None, |slice| self.attempt(slice))? {
            Some(Next::Event(e)) => Ok(Event { e }),
            _ => Err(PyStopIteration::new_err(())),
        }
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("thingsbus_rs._aio")?
            .getattr("anext")?
            .call1((slf,))
    }
}

/// The brokers the SRV record `_thingsbus._tcp.<zone>` names, in the order to try them: a list
/// of dicts with `host`, `port`, `directory_url`, `input_url`, `udp_addr`, `snapshot_url`,
/// `command_url`.
#[pyfunction]
#[pyo3(signature = (zone, *, nameserver=None, timeout=3.0))]
pub(crate) fn find_brokers<'py>(
    py: Python<'py>,
    zone: &str,
    nameserver: Option<&str>,
    timeout: f64,
) -> PyResult<Bound<'py, PyList>> {
    let mut d = Discovery::new().timeout(wait::seconds(timeout));
    if let Some(ns) = nameserver_addr(nameserver)? {
        d = d.nameserver(ns);
    }
    let zone = zone.to_owned();
    let brokers = wait::run(py, async move { d.brokers(&zone).await })?
        .map_err(|e| ThingsbusError::new_err(e.to_string()))?;
    let list = PyList::empty(py);
    for b in brokers {
        let item = PyDict::new(py);
        item.set_item("host", &b.host)?;
        item.set_item("port", b.port)?;
        item.set_item("directory_url", b.directory_url())?;
        item.set_item("input_url", b.input_url())?;
        item.set_item("udp_addr", b.udp_addr())?;
        item.set_item("snapshot_url", b.snapshot_url())?;
        item.set_item("command_url", b.command_url())?;
        list.append(item)?;
    }
    Ok(list)
}
