//! Reading the UDP input a batch at a time: one `recvmmsg` takes up to [`BATCH`] datagrams off
//! the socket into buffers allocated once, instead of one `recv_from` system call per datagram.
//!
//! Linux (and Android) only; elsewhere the same interface reads one datagram per call.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Datagrams taken off the socket per system call at most.
pub(crate) const BATCH: usize = 64;

/// Largest possible UDP payload plus one: no buffer needs to be larger.
const UDP_BUF: usize = 65_536;

/// What one datagram of the last batch was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Got {
    /// Its whole length, even when larger than the buffer (then `truncated`).
    pub(crate) len: usize,
    /// Its sender (`None` only if the kernel named no IPv4 or IPv6 sender, which UDP does not do).
    pub(crate) from: Option<SocketAddr>,
    /// It did not fit its buffer: only its head was kept.
    pub(crate) truncated: bool,
}

/// The buffers of one batch and what the last receive put in them.
pub(crate) struct UdpReceiver {
    /// [`BATCH`] buffers of `size` bytes, back to back.
    bufs: Vec<u8>,
    size: usize,
    got: Vec<Got>,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
}

impl UdpReceiver {
    /// Buffers for datagrams of up to `max_bytes` (one byte more, so that a datagram over the
    /// limit is seen as such even where the kernel does not tell its whole length).
    ///
    /// The memory is reserved once; pages of it are only touched as far as datagrams fill them.
    pub(crate) fn new(max_bytes: usize) -> Self {
        let size = max_bytes.saturating_add(1).min(UDP_BUF);
        UdpReceiver {
            bufs: vec![0; size * BATCH],
            size,
            got: Vec::with_capacity(BATCH),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            headers: nix::sys::socket::MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Takes up to `max` (at most [`BATCH`]) waiting datagrams off `socket` without blocking and
    /// returns how many; `WouldBlock` when none was waiting.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn recv(&mut self, socket: &UdpSocket, max: usize) -> io::Result<usize> {
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{recvmmsg, MsgFlags};

        self.got.clear();
        let mut chunks = self.bufs.chunks_exact_mut(self.size);
        let mut slices: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
            [IoSliceMut::new(
                chunks.next().expect("the buffer holds BATCH chunks"),
            )]
        });
        // MSG_TRUNC: the length reported is the datagram's, not what fitted the buffer.
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices[..max.clamp(1, BATCH)].iter_mut(),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            None,
        )
        .map_err(io::Error::from)?;
        for message in results {
            self.got.push(Got {
                len: message.bytes,
                from: message.address.as_ref().and_then(std_address),
                truncated: message.flags.contains(MsgFlags::MSG_TRUNC) || message.bytes > self.size,
            });
        }
        Ok(self.got.len())
    }

    /// Takes the next waiting datagram off `socket` (one per call where there is no `recvmmsg`).
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn recv(&mut self, socket: &UdpSocket, _max: usize) -> io::Result<usize> {
        self.got.clear();
        let (len, from) = socket.recv_from(&mut self.bufs[..self.size])?;
        self.got.push(Got {
            len,
            from: Some(from),
            // Only a datagram over the limit can fill the buffer (one byte larger than it).
            truncated: len >= self.size && self.size < UDP_BUF,
        });
        Ok(1)
    }

    /// The `i`-th datagram of the last batch: the bytes kept and what it was.
    pub(crate) fn datagram(&self, i: usize) -> (&[u8], Got) {
        let got = self.got[i];
        let start = i * self.size;
        (&self.bufs[start..start + got.len.min(self.size)], got)
    }
}

/// The std form of a sender's address.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn std_address(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    use std::net::{SocketAddrV4, SocketAddrV6};
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddrV4::from(*v4).into());
    }
    a.as_sockaddr_in6().map(|v6| SocketAddrV6::from(*v6).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind on loopback");
        rx.set_nonblocking(true).expect("non-blocking");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind on loopback");
        tx.connect(rx.local_addr().expect("bound"))
            .expect("connect");
        (rx, tx)
    }

    #[test]
    fn nothing_waiting_is_would_block() {
        let (rx, _tx) = pair();
        let mut r = UdpReceiver::new(100);
        let e = r.recv(&rx, BATCH).expect_err("nothing was sent");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_burst_comes_in_order_with_lengths_senders_and_truncation() {
        let (rx, tx) = pair();
        let sender = tx.local_addr().expect("bound");
        let mut sent = Vec::new();
        for i in 0..(BATCH + 10) {
            // Every seventh is over the limit of 100 bytes.
            let len = if i % 7 == 3 { 150 + i } else { 1 + i % 100 };
            let d: Vec<u8> = (0..len).map(|b| (b + i) as u8).collect();
            tx.send(&d).expect("send on loopback");
            sent.push(d);
        }
        let mut r = UdpReceiver::new(100);
        let mut seen = Vec::new();
        while seen.len() < sent.len() {
            let n = r.recv(&rx, BATCH).expect("the burst is waiting");
            assert!(n <= BATCH);
            for i in 0..n {
                let (bytes, got) = r.datagram(i);
                assert_eq!(got.from, Some(sender));
                seen.push((bytes.to_vec(), got));
            }
        }
        for (d, (bytes, got)) in sent.iter().zip(&seen) {
            assert_eq!(got.len, d.len());
            assert_eq!(got.truncated, d.len() > 101);
            assert_eq!(bytes, &d[..d.len().min(101)]);
        }
    }

    #[test]
    fn at_most_max_are_taken() {
        let (rx, tx) = pair();
        for i in 0..5u8 {
            tx.send(&[i]).expect("send on loopback");
        }
        let mut r = UdpReceiver::new(10);
        let n = r.recv(&rx, 2).expect("waiting");
        assert!((1..=2).contains(&n));
        assert_eq!(r.datagram(0).0, &[0]);
    }
}
