//! ZeroMQ endpoint URLs as users write them.

use std::borrow::Cow;

/// Rewrites a connect URL written for the libzmq of 2015, which took `*` as "this host":
/// `tcp://*:7955` becomes `tcp://127.0.0.1:7955` (libzmq 4.3 rejects `*` in a connect address).
/// Returns the URL to use and whether it was rewritten, so the caller can log it once.
///
/// ```
/// use thingsbus_protocol::endpoint::connect_url;
/// assert_eq!(connect_url("tcp://*:7955"), ("tcp://127.0.0.1:7955".into(), true));
/// assert_eq!(connect_url("tcp://broker:7955"), ("tcp://broker:7955".into(), false));
/// ```
pub fn connect_url(url: &str) -> (Cow<'_, str>, bool) {
    match url.strip_prefix("tcp://*:") {
        Some(port) => (Cow::Owned(format!("tcp://127.0.0.1:{port}")), true),
        None => (Cow::Borrowed(url), false),
    }
}

/// `tcp://host:P` → `tcp://host:P+n` (the input is P+1, the snapshot endpoint P+2); `None` when
/// the URL has no numeric port or the sum overflows.
///
/// ```
/// use thingsbus_protocol::endpoint::port_plus;
/// assert_eq!(port_plus("tcp://broker:7954", 1).as_deref(), Some("tcp://broker:7955"));
/// assert_eq!(port_plus("tcp://broker", 1), None);
/// ```
pub fn port_plus(url: &str, n: u16) -> Option<String> {
    let (head, port) = url.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!("{head}:{}", port.checked_add(n)?))
}
