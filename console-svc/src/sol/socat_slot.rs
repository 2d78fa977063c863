//! The socat backend's one viewer slot (`max-children=1`), and how a
//! connection that sends nothing gives it up. Used by the per-connection
//! helper ([`super::sol_exec`]) when socat runs it.
//!
//! socat accepts the next connection only once the current one's helper
//! has exited, so a TCP connection that never sends a byte would hold the
//! console for `terminal_timeout` (the node's output keeps it "active").
//! The helper therefore relays the viewer's keystrokes to ipmitool itself
//! (ipmitool's stdin is a pty of the helper's; its output still goes
//! straight to socat's pty) and notes when the viewer last typed. Every
//! [`CHECK_EVERY`], once the viewer has sent nothing for [`YIELD_AFTER`],
//! it looks whether another connection waits in the listener's accept
//! queue (the LISTEN socket's receive queue in `/proc/net/tcp{,6}`); if one
//! does, the silent viewer is told so and closed, and socat accepts the
//! waiting one. A viewer that types keeps the slot; with nobody waiting a
//! silent viewer keeps it too.
//!
//! ```text
//!  viewer ─▶ socat pty ─▶ helper (relay, notes the time) ─▶ ipmitool's pty
//!  ipmitool ─────────────────────────────────────────────▶ socat pty ─▶ viewer
//!  every CHECK_EVERY: silent ≥ YIELD_AFTER and accept queue > 0 ─▶ close this one
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::pty::PtyStream;

/// How long a viewer may send nothing before a waiting viewer takes its place.
pub const YIELD_AFTER: Duration = Duration::from_secs(5);
/// How often a silent viewer's helper looks for a waiting viewer.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Copy the viewer's keystrokes (`input`, socat's pty) to ipmitool's stdin
/// (`to_ipmitool`) until either side ends; `last_input` is set at each.
/// Ending closes ipmitool's stdin, which ends its session.
pub async fn relay_input(
    mut input: PtyStream,
    mut to_ipmitool: PtyStream,
    last_input: watch::Sender<Instant>,
) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        last_input.send_replace(Instant::now());
        if to_ipmitool.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Whether the viewer should give the slot up now: silent for
/// [`YIELD_AFTER`] and another connection waiting on `listen`.
pub fn should_yield(last_input: Instant, listen: SocketAddr) -> bool {
    last_input.elapsed() >= YIELD_AFTER && waiting(listen) > 0
}

/// Connections waiting in `listen`'s accept queue (0 when unknown).
pub fn waiting(listen: SocketAddr) -> u64 {
    let table = match listen.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    std::fs::read_to_string(table)
        .ok()
        .and_then(|t| accept_queue(&t, listen))
        .unwrap_or(0)
}

/// The receive queue of `listen`'s LISTEN entry in a `/proc/net/tcp{,6}`
/// table: for a listener, the connections not yet accepted.
fn accept_queue(table: &str, listen: SocketAddr) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, state, queues) = (f.get(1)?, f.get(3)?, f.get(4)?);
        if *state != "0A" || parse_addr(local)? != listen {
            return None;
        }
        let (_tx, rx) = queues.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// `0100007F:1F90` (the kernel's words of the address, in host order, and
/// the port) as a socket address.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:504B 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:504B 0100007F:EDEC 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0200007F:504B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";

    #[test]
    fn the_accept_queue_is_the_listeners_receive_queue() {
        if cfg!(target_endian = "big") {
            return;
        }
        let one: SocketAddr = "127.0.0.1:20555".parse().unwrap();
        let two: SocketAddr = "127.0.0.2:20555".parse().unwrap();
        let none: SocketAddr = "127.0.0.3:20555".parse().unwrap();
        assert_eq!(accept_queue(TABLE, one), Some(2));
        assert_eq!(accept_queue(TABLE, two), Some(0));
        assert_eq!(accept_queue(TABLE, none), None);
    }

    #[test]
    fn ipv6_addresses_are_four_host_order_words() {
        if cfg!(target_endian = "big") {
            return;
        }
        let a = parse_addr("00000000000000000000000001000000:0016").unwrap();
        assert_eq!(a, "[::1]:22".parse().unwrap());
    }

    /// A real listener with two connections nobody accepted: the kernel's
    /// table says 2.
    #[test]
    fn waiting_connections_are_counted_on_a_real_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(waiting(addr), 0);
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while waiting(addr) != 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(waiting(addr), 2);
        drop(l.accept().unwrap());
        assert_eq!(waiting(addr), 1);
    }
}
