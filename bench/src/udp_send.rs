//! The generator's UDP side: datagrams are queued into buffers allocated once and sent a batch
//! per `sendmmsg`, so that one system call carries up to [`BATCH`] of them (Linux; elsewhere one
//! `send_to` each). Also reads the kernel's receive-queue drop counter of a UDP port, so that a
//! step can tell datagrams the kernel threw away from datagrams the broker lost.

use std::net::{SocketAddr, UdpSocket};

/// Datagrams per `sendmmsg` at most.
pub(crate) const BATCH: usize = 64;
/// Room for one datagram: the bench's templates are under 100 bytes.
const SLOT: usize = 256;

/// A UDP socket sending queued datagrams to one address in batches.
pub(crate) struct UdpSender {
    socket: UdpSocket,
    to: SocketAddr,
    /// [`BATCH`] slots of [`SLOT`] bytes, back to back.
    bufs: Vec<u8>,
    lens: Vec<usize>,
    queued: usize,
}

impl UdpSender {
    /// A socket on 127.0.0.1 sending to `to`.
    pub(crate) fn new(to: SocketAddr) -> Self {
        UdpSender {
            socket: UdpSocket::bind("127.0.0.1:0").expect("bind udp"),
            to,
            bufs: vec![0; SLOT * BATCH],
            lens: vec![0; BATCH],
            queued: 0,
        }
    }

    /// Queues one datagram (sent at once if it does not fit a slot); sends the batch when full.
    pub(crate) fn push(&mut self, datagram: &[u8]) {
        if datagram.len() > SLOT {
            self.flush();
            let _ = self.socket.send_to(datagram, self.to);
            return;
        }
        let at = self.queued * SLOT;
        self.bufs[at..at + datagram.len()].copy_from_slice(datagram);
        self.lens[self.queued] = datagram.len();
        self.queued += 1;
        if self.queued == BATCH {
            self.flush();
        }
    }

    /// Sends what is queued. As with `send_to` before, a datagram the kernel refuses is lost:
    /// the subscriber's count shows it.
    #[cfg(target_os = "linux")]
    pub(crate) fn flush(&mut self) {
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

        let mut done = 0;
        while done < self.queued {
            let slices: Vec<[IoSlice<'_>; 1]> = (done..self.queued)
                .map(|i| [IoSlice::new(&self.bufs[i * SLOT..i * SLOT + self.lens[i]])])
                .collect();
            let addrs = vec![Some(SockaddrStorage::from(self.to)); slices.len()];
            // Not kept in `self`: the headers may not move between threads, and a generator
            // is made on one thread and run on another. A few allocations per batch of up to 64.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
            match sendmmsg(
                self.socket.as_raw_fd(),
                &mut headers,
                &slices,
                &addrs,
                [],
                MsgFlags::empty(),
            ) {
                Ok(sent) => match sent.count() {
                    0 => break,
                    n => done += n,
                },
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    // The datagram at `done` was refused (ENOBUFS, ICMP news...): skip it.
                    done += 1;
                }
            }
        }
        self.queued = 0;
    }

    /// Sends what is queued, one `send_to` each.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn flush(&mut self) {
        for i in 0..self.queued {
            let _ = self
                .socket
                .send_to(&self.bufs[i * SLOT..i * SLOT + self.lens[i]], self.to);
        }
        self.queued = 0;
    }
}

/// Datagrams the kernel dropped so far on the UDP socket(s) bound to `port`: the `drops`
/// column of `/proc/net/udp{,6}` (Linux; `None` elsewhere or when no socket has that port).
pub(crate) fn kernel_drops(port: u16) -> Option<u64> {
    let mut found = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        if let Some(d) = drops_in(&text, port) {
            *found.get_or_insert(0) += d;
        }
    }
    found
}

/// The sum of the `drops` column (the last) over rows whose local port is `port`.
fn drops_in(table: &str, port: u16) -> Option<u64> {
    let want = format!(":{port:04X}");
    let mut found = None;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(1).is_some_and(|local| local.ends_with(&want)) {
            let d: u64 = cols.last().and_then(|d| d.parse().ok()).unwrap_or(0);
            *found.get_or_insert(0) += d;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_read_by_local_port() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          1: 0100007F:1F13 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
          2: 0100007F:1F14 0100007F:1F13 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 5\n";
        assert_eq!(drops_in(table, 0x1F13), Some(17));
        assert_eq!(drops_in(table, 0x1F14), Some(5));
        assert_eq!(drops_in(table, 80), None);
    }

    #[test]
    fn every_queued_datagram_arrives_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let port = rx.local_addr().expect("bound").port();
        let mut tx = UdpSender::new(rx.local_addr().expect("bound"));
        let n = BATCH * 2 + 5;
        for i in 0..n {
            tx.push(format!("datagram {i}").as_bytes());
        }
        tx.flush();
        let mut buf = [0u8; 64];
        for i in 0..n {
            let len = rx.recv(&mut buf).expect("each datagram");
            assert_eq!(&buf[..len], format!("datagram {i}").as_bytes());
        }
        assert_eq!(kernel_drops(port), Some(0));
    }
}
