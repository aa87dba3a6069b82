//! libzmq 4.3.4 with CURVE, for the `zmq` crate: the workspace's `[patch.crates-io]` puts this
//! crate in the place of crates.io's `zmq-sys`, whose build leaves libsodium out and with it CURVE
//! (`zmq::has("curve")` is false there).
//!
//! What is here, and only that: the declarations of libzmq's stable API generated from the
//! `zmq.h` that is compiled (`src/bindings.rs`, see `generate-bindings.sh`), the error numbers
//! libzmq answers with ([`errno`]), the socket option numbers the stable header leaves in its
//! draft section but the stable library handles ([`ZMQ_ZAP_ENFORCE_DOMAIN`]) and [`RawFd`].
//! The build script compiles libzmq (sources from `zeromq-src`) against the static libsodium
//! that `libsodium-sys-stable` builds from libsodium's bundled stable release.

// Generated declarations: libzmq's `zmq.h` documents them; declaring C functions is `unsafe`.
#[allow(
    unsafe_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
mod bindings;

pub use bindings::*;

pub mod errno;

impl Default for zmq_msg_t {
    /// An all-zero message, as `zmq_msg_init` expects to be handed (libzmq fills it in).
    fn default() -> Self {
        zmq_msg_t { __: [0; 64] }
    }
}

/// A file descriptor as libzmq hands it out (`ZMQ_FD`, `zmq_pollitem_t::fd`).
pub use std::os::unix::io::RawFd;

#[cfg(not(unix))]
compile_error!("thingsbus's zmq-sys is written for Unix-like systems only");

/// `ZMQ_ZAP_ENFORCE_DOMAIN`: with a ZAP domain set, refuse a peer when no ZAP handler answers
/// instead of letting it in. `zmq.h` 4.3.4 lists it among the draft options, but the stable
/// library handles it (libzmq's `src/zmq_draft.h` and `options.cpp`, outside `ZMQ_BUILD_DRAFT_API`).
pub const ZMQ_ZAP_ENFORCE_DOMAIN: u32 = 93;
