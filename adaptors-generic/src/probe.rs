//! Is anyone there? A ZeroMQ endpoint check that needs no ZMQ socket: connect over TCP and read
//! the 10-byte ZMTP signature that every libzmq peer sends as soon as a connection opens.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Checks that a ZMQ peer listens at `url` (`tcp://HOST:PORT`), within `timeout` per step.
///
/// # Errors
/// A sentence saying what failed: the URL, name resolution, the TCP connection, or a peer
/// that does not speak ZMTP.
pub fn zmtp(url: &str, timeout: Duration) -> Result<(), String> {
    let addr_text = url
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("{url} is not a tcp:// URL"))?;
    let addr = addr_text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr_text}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr_text} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            format!("nothing listens on {addr} (connection refused)")
        }
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            format!("no answer from {addr} within {timeout:?} (firewall, or host down?)")
        }
        _ => format!("cannot connect to {addr}: {e}"),
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut signature = [0u8; 10];
    match stream.read_exact(&mut signature) {
        Ok(()) if signature[0] == 0xff && signature[9] == 0x7f => Ok(()),
        Ok(()) => Err(format!(
            "{addr} accepts connections but is not a ZeroMQ peer (it sent {signature:02x?})"
        )),
        Err(e) => Err(format!(
            "{addr} accepts connections but sent no ZeroMQ greeting within {timeout:?} ({e})"
        )),
    }
}
