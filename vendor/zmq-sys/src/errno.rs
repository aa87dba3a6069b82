//! The error numbers libzmq answers with: the system's own where it has them, libzmq's
//! (`ZMQ_HAUSNUMERO` + n, from `zmq.h`) for its own states, and the `_ALT` numbers `zmq.h`
//! uses in place of the system's on platforms that lack them.

use libc as sys;

const HAUSNUMERO: i32 = 156_384_712;

macro_rules! system {
    ($($name:ident),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "` as the system defines it.")]
        pub const $name: i32 = sys::$name;
    )*};
}

macro_rules! libzmq {
    ($($name:ident = $n:literal),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`: `ZMQ_HAUSNUMERO + ", stringify!($n), "` in `zmq.h`.")]
        pub const $name: i32 = HAUSNUMERO + $n;
    )*};
}

system!(
    EACCES,
    EADDRINUSE,
    EADDRNOTAVAIL,
    EAGAIN,
    EBUSY,
    ECONNREFUSED,
    EFAULT,
    EHOSTUNREACH,
    EINPROGRESS,
    EINTR,
    EINVAL,
    EMFILE,
    EMSGSIZE,
    ENAMETOOLONG,
    ENETDOWN,
    ENOBUFS,
    ENODEV,
    ENOENT,
    ENOMEM,
    ENOTCONN,
    ENOTSOCK,
    ENOTSUP,
    EPROTO,
    EPROTONOSUPPORT,
);

// libzmq's own states.
libzmq!(EFSM = 51, ENOCOMPATPROTO = 52, ETERM = 53, EMTHREAD = 54);

// What `zmq.h` defines where the platform does not.
libzmq!(
    ENOTSUP_ALT = 1,
    EPROTONOSUPPORT_ALT = 2,
    ENOBUFS_ALT = 3,
    ENETDOWN_ALT = 4,
    EADDRINUSE_ALT = 5,
    EADDRNOTAVAIL_ALT = 6,
    ECONNREFUSED_ALT = 7,
    EINPROGRESS_ALT = 8,
    ENOTSOCK_ALT = 9,
    EMSGSIZE_ALT = 10,
    EAFNOSUPPORT_ALT = 11,
    ENETUNREACH_ALT = 12,
    ECONNABORTED_ALT = 13,
    ECONNRESET_ALT = 14,
    ENOTCONN_ALT = 15,
    ETIMEDOUT_ALT = 16,
    EHOSTUNREACH_ALT = 17,
    ENETRESET_ALT = 18,
);
