//! The two libzmq calls thingsbus needs that the `zmq` crate does not wrap, each a few lines of
//! `unsafe` around one C call, so that the rest of the workspace can keep `unsafe_code = "forbid"`:
//!
//! - [`set_zap_enforce_domain`]: `ZMQ_ZAP_ENFORCE_DOMAIN`, so that a socket with a ZAP domain
//!   refuses peers when no ZAP handler answers (a dead handler must not let everyone in);
//! - [`curve_public`]: `zmq_curve_public`, the CURVE public key that belongs to a secret key.
//!
//! ```
//! let ctx = zmq::Context::new();
//! let mut router = ctx.socket(zmq::ROUTER)?;
//! router.set_zap_domain("thingsbus")?;
//! thingsbus_zmq_extra::set_zap_enforce_domain(&mut router, true)?;
//! assert!(thingsbus_zmq_extra::zap_enforce_domain(&mut router)?);
//! # Ok::<(), zmq::Error>(())
//! ```

use std::ffi::{c_char, c_int, c_void, CStr};

/// Turns `ZMQ_ZAP_ENFORCE_DOMAIN` on or off for `socket`. With it on and a ZAP domain set
/// (`set_zap_domain`), a peer is refused when no ZAP handler is bound in the socket's context
/// (`inproc://zeromq.zap.01`); with it off (libzmq's default) such a peer is let in: with the
/// NULL mechanism unauthenticated, with CURVE encrypted but not authenticated.
///
/// Set it before `bind`: libzmq reads the option when a connection's handshake starts.
///
/// # Errors
/// What libzmq says (`EINVAL` from a libzmq that does not know the option).
#[allow(unsafe_code)]
pub fn set_zap_enforce_domain(socket: &mut zmq::Socket, enforce: bool) -> zmq::Result<()> {
    let value = c_int::from(enforce);
    // SAFETY: `as_mut_ptr` is the live libzmq socket `socket` owns, and `&mut` keeps any other
    // thread from using it during the call (libzmq sockets are not thread-safe). The value is
    // a C int, the size passed is its size, and libzmq only reads it during the call.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_ZAP_ENFORCE_DOMAIN as c_int,
            std::ptr::from_ref(&value).cast::<c_void>(),
            std::mem::size_of::<c_int>(),
        )
    };
    check(rc)
}

/// Whether `ZMQ_ZAP_ENFORCE_DOMAIN` is on for `socket`.
///
/// # Errors
/// What libzmq says.
#[allow(unsafe_code)]
pub fn zap_enforce_domain(socket: &mut zmq::Socket) -> zmq::Result<bool> {
    let mut value: c_int = 0;
    let mut size = std::mem::size_of::<c_int>();
    // SAFETY: as in `set_zap_enforce_domain`; libzmq writes at most `size` bytes (a C int) to
    // `value` and the new length to `size`, both alive for the call.
    let rc = unsafe {
        zmq_sys::zmq_getsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_ZAP_ENFORCE_DOMAIN as c_int,
            std::ptr::from_mut(&mut value).cast::<c_void>(),
            &mut size,
        )
    };
    check(rc).map(|()| value != 0)
}

/// The CURVE public key that belongs to the 32-byte secret key `secret` (libzmq's
/// `zmq_curve_public`).
///
/// # Errors
/// `ENOTSUP` from a libzmq built without CURVE.
#[allow(unsafe_code)]
pub fn curve_public(secret: &[u8; 32]) -> zmq::Result<[u8; 32]> {
    // 32 bytes are 40 Z85 characters; libzmq reads and writes them NUL-terminated.
    let secret_z85 = zmq::z85_encode(secret).map_err(|_| zmq::Error::EINVAL)?;
    let mut secret_c = [0u8; 41];
    secret_c[..40].copy_from_slice(secret_z85.as_bytes());
    let mut public_c = [0u8; 41];
    // SAFETY: both buffers are 41 bytes, alive for the call: libzmq reads the 40 characters and
    // the NUL of `secret_c` and writes 40 characters and a NUL to `public_c`, nothing more.
    let rc = unsafe {
        zmq_sys::zmq_curve_public(
            public_c.as_mut_ptr().cast::<c_char>(),
            secret_c.as_ptr().cast::<c_char>(),
        )
    };
    check(rc)?;
    let public_z85 = CStr::from_bytes_until_nul(&public_c)
        .ok()
        .and_then(|c| c.to_str().ok())
        .ok_or(zmq::Error::EINVAL)?;
    let bytes = zmq::z85_decode(public_z85).map_err(|_| zmq::Error::EINVAL)?;
    bytes.try_into().map_err(|_| zmq::Error::EINVAL)
}

#[allow(unsafe_code)]
fn check(rc: c_int) -> zmq::Result<()> {
    if rc == -1 {
        // SAFETY: `zmq_errno` only reads the calling thread's errno.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_public_key_is_the_one_libzmq_generated_with_the_secret() {
        for _ in 0..20 {
            let pair = zmq::CurveKeyPair::new().expect("keypair");
            assert_eq!(
                curve_public(&pair.secret_key).expect("public"),
                pair.public_key
            );
        }
    }

    #[test]
    fn libzmq_has_curve() {
        // The workspace's zmq-sys builds libzmq with libsodium; crates.io's leaves it out.
        assert_eq!(zmq::has("curve"), Some(true));
    }

    #[test]
    fn the_option_reads_back_as_set() {
        let ctx = zmq::Context::new();
        let mut s = ctx.socket(zmq::ROUTER).expect("socket");
        assert!(!zap_enforce_domain(&mut s).expect("get"));
        set_zap_enforce_domain(&mut s, true).expect("set");
        assert!(zap_enforce_domain(&mut s).expect("get"));
        set_zap_enforce_domain(&mut s, false).expect("set");
        assert!(!zap_enforce_domain(&mut s).expect("get"));
    }

    /// What became of a DEALER's `hello`s to a ROUTER with a ZAP domain and no ZAP handler.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        /// A message arrived.
        Delivered(Vec<u8>),
        /// The ROUTER's monitor reported this many failed handshakes and nothing arrived.
        Refused(usize),
    }

    fn dealer_to_router(enforce: bool) -> Outcome {
        let ctx = zmq::Context::new();
        let mut router = ctx.socket(zmq::ROUTER).expect("socket");
        router.set_linger(0).expect("linger");
        router.set_zap_domain("thingsbus").expect("domain");
        set_zap_enforce_domain(&mut router, enforce).expect("enforce");
        router
            .monitor(
                "inproc://zap-monitor",
                zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw().into(),
            )
            .expect("monitor");
        let monitor = ctx.socket(zmq::PAIR).expect("socket");
        monitor.connect("inproc://zap-monitor").expect("connect");
        router.bind("tcp://127.0.0.1:*").expect("bind");
        let url = router
            .get_last_endpoint()
            .expect("endpoint")
            .expect("utf-8");
        let dealer = ctx.socket(zmq::DEALER).expect("socket");
        dealer.set_linger(0).expect("linger");
        dealer.set_reconnect_ivl(20).expect("reconnect");
        dealer.connect(&url).expect("connect");
        let _ = dealer.send("hello", zmq::DONTWAIT);
        let mut failures = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        // Until the ROUTER refuses a handshake, and a second more for a message that would
        // come after it: a message is a delivery, a refused handshake and no message a refusal.
        let mut until = deadline;
        while Instant::now() < until {
            if router.poll(zmq::POLLIN, 50).expect("poll") > 0 {
                let frames = router.recv_multipart(0).expect("recv");
                return Outcome::Delivered(frames.last().cloned().unwrap_or_default());
            }
            while monitor.recv_multipart(zmq::DONTWAIT).is_ok() {
                failures += 1;
                until = until.min(Instant::now() + Duration::from_secs(1));
            }
        }
        assert!(failures > 0, "neither delivered nor refused within 30 s");
        Outcome::Refused(failures)
    }

    #[test]
    fn without_enforcement_a_peer_gets_in_though_no_zap_handler_answers() {
        // The positive control of the next test: the same set-up delivers.
        assert_eq!(
            dealer_to_router(false),
            Outcome::Delivered(b"hello".to_vec())
        );
    }

    #[test]
    fn with_enforcement_a_peer_is_refused_when_no_zap_handler_answers() {
        assert!(matches!(dealer_to_router(true), Outcome::Refused(_)));
    }
}
