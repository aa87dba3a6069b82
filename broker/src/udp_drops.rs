//! How many datagrams the kernel dropped on the UDP input because its buffer was full: the
//! `drops` column of `/proc/net/udp{,6}` for the socket's inode. Linux only; elsewhere nothing
//! is found and the count stays 0.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// The inode that names `socket` in `/proc/net/udp`.
pub(crate) fn inode(socket: &UdpSocket) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .ok()
        .map(|m| m.ino())
}

/// The kernel's drop count for the socket with `inode`, if the kernel shows one.
pub(crate) fn kernel_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            drops_in(&text, inode)
        })
}

/// The `drops` column (the last) of the row whose `inode` column (the tenth) is `inode`.
fn drops_in(table: &str, inode: u64) -> Option<u64> {
    let inode = inode.to_string();
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(9) == Some(&inode.as_str()))
            .then(|| cols.last().and_then(|d| d.parse().ok()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_column_of_the_socket_s_row() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          1: 0100007F:1F13 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
          2: 0100007F:1F14 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 0\n";
        assert_eq!(drops_in(table, 4242), Some(17));
        assert_eq!(drops_in(table, 4343), Some(0));
        assert_eq!(drops_in(table, 99), None);
    }

    #[test]
    fn a_real_socket_is_found() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind on loopback");
        let inode = inode(&socket).expect("a socket has an inode");
        assert_eq!(kernel_drops(inode), Some(0));
    }
}
