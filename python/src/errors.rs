//! The module's exceptions: one base, `ThingsbusError`, and one class per command outcome, so a
//! script catches exactly what it can handle (`except NoRoute:`).

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use thingsbus_client::CommandError as RustCommandError;

create_exception!(
    _native,
    ThingsbusError,
    PyException,
    "Base of every thingsbus_rs error."
);
create_exception!(
    _native,
    InvalidNamespace,
    PyValueError,
    "A namespace breaks the rules: dot-separated parts matching [a-z][a-z0-9_-]{0,63}."
);
create_exception!(
    _native,
    ClosedError,
    ThingsbusError,
    "The client or adaptor was closed."
);
create_exception!(
    _native,
    CommandError,
    ThingsbusError,
    "A command got no data back; the subclass says why."
);
create_exception!(
    _native,
    NoRoute,
    CommandError,
    "Nobody serves the thing or a prefix of it (no_route)."
);
create_exception!(
    _native,
    Timeout,
    CommandError,
    "The thing did not answer in time (timeout)."
);
create_exception!(
    _native,
    Gone,
    CommandError,
    "The serving adaptor went away while the command was out (gone)."
);
create_exception!(
    _native,
    Busy,
    CommandError,
    "The broker has too many commands in flight (busy)."
);
create_exception!(
    _native,
    BadRequest,
    CommandError,
    "The broker could not read the command (bad_request)."
);
create_exception!(
    _native,
    NotAllowed,
    CommandError,
    "This machine or key may not send commands to the broker (not_allowed)."
);
create_exception!(
    _native,
    Refused,
    CommandError,
    "The thing's adaptor refused; .error is its text, .detail more if it said."
);
create_exception!(
    _native,
    NoAnswer,
    CommandError,
    "No answer from the broker's command endpoint at all: is the broker running?"
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ThingsbusError", py.get_type::<ThingsbusError>())?;
    m.add("InvalidNamespace", py.get_type::<InvalidNamespace>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add("CommandError", py.get_type::<CommandError>())?;
    m.add("NoRoute", py.get_type::<NoRoute>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("Gone", py.get_type::<Gone>())?;
    m.add("Busy", py.get_type::<Busy>())?;
    m.add("BadRequest", py.get_type::<BadRequest>())?;
    m.add("NotAllowed", py.get_type::<NotAllowed>())?;
    m.add("Refused", py.get_type::<Refused>())?;
    m.add("NoAnswer", py.get_type::<NoAnswer>())?;
    Ok(())
}

/// The exception for a command's outcome; `Refused` carries `.error` and `.detail`.
pub(crate) fn command_error(py: Python<'_>, e: RustCommandError) -> PyErr {
    let text = e.to_string();
    match e {
        RustCommandError::NoRoute(_) => NoRoute::new_err(text),
        RustCommandError::Timeout(_) => Timeout::new_err(text),
        RustCommandError::Gone(_) => Gone::new_err(text),
        RustCommandError::Busy(_) => Busy::new_err(text),
        RustCommandError::BadRequest(_) => BadRequest::new_err(text),
        RustCommandError::NotAllowed(_) => NotAllowed::new_err(text),
        RustCommandError::Refused { error, detail } => {
            let err = Refused::new_err(text);
            let value = err.value(py);
            // Setting attributes on a fresh exception object cannot fail but for memory.
            let _ = value.setattr("error", error);
            let _ = value.setattr("detail", detail);
            err
        }
        RustCommandError::Transport(_) => NoAnswer::new_err(text),
        _ => CommandError::new_err(text),
    }
}

/// A client error as a Python exception.
pub(crate) fn client_error(e: thingsbus_client::Error) -> PyErr {
    match e {
        thingsbus_client::Error::Namespace(n) => InvalidNamespace::new_err(n.to_string()),
        other => ThingsbusError::new_err(other.to_string()),
    }
}

/// An adaptor error as a Python exception.
pub(crate) fn adaptor_error(e: thingsbus_adaptor::Error) -> PyErr {
    match e {
        thingsbus_adaptor::Error::Namespace(n) => InvalidNamespace::new_err(n.to_string()),
        thingsbus_adaptor::Error::Closed => ClosedError::new_err("the adaptor is closed"),
        thingsbus_adaptor::Error::Encode(t) => {
            pyo3::exceptions::PyTypeError::new_err(format!("data cannot be encoded: {t}"))
        }
        other => ThingsbusError::new_err(other.to_string()),
    }
}
