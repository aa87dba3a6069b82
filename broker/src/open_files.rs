//! The open-file limit: every subscriber, adaptor and HTTP client is a file descriptor, and the
//! usual soft limit of 1,024 stops a broker short of a thousand subscribers (libzmq then fails
//! to accept, and the peer waits without a word).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// What [`raise_open_file_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFiles {
    /// The soft limit was already the hard limit (`None`: unlimited).
    Kept(Option<u64>),
    /// Raised to the hard limit.
    Raised {
        /// The soft limit before.
        from: u64,
        /// The soft limit now (`None`: unlimited).
        to: Option<u64>,
    },
    /// The system refused to raise it.
    Refused {
        /// The soft limit, still in force.
        from: u64,
        /// Why.
        error: rustix::io::Errno,
    },
}

/// Raises this process's soft limit on open files to its hard limit, as a server holding many
/// connections should. A library embedding the broker decides for itself: only the binary calls
/// this.
pub fn raise_open_file_limit() -> OpenFiles {
    let now = getrlimit(Resource::Nofile);
    let Some(from) = now.current else {
        return OpenFiles::Kept(None);
    };
    if now.maximum == Some(from) {
        return OpenFiles::Kept(Some(from));
    }
    let raised = Rlimit {
        current: now.maximum,
        maximum: now.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => OpenFiles::Raised {
            from,
            to: now.maximum,
        },
        Err(error) => OpenFiles::Refused { from, error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let outcome = raise_open_file_limit();
        let now = getrlimit(Resource::Nofile);
        match outcome {
            OpenFiles::Kept(limit) | OpenFiles::Raised { to: limit, .. } => {
                assert_eq!(now.current, limit);
                assert_eq!(now.current, now.maximum);
                // A second call has nothing left to do.
                assert_eq!(raise_open_file_limit(), OpenFiles::Kept(now.maximum));
            }
            OpenFiles::Refused { from, .. } => assert_eq!(now.current, Some(from)),
        }
    }
}
