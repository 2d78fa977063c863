//! Enable latency: from the `EnableConsole` call until the console's port
//! is in LISTEN state, for first enables of fresh node ids
//! ([`enable_fresh`]) and disable+enable cycles of one node
//! ([`enable_cycles`]); both called by `main::run_backend`, printed by
//! `report`. The listening socket is looked up through the kernel's
//! sock_diag netlink interface (as `ss -ltn`) instead of connecting,
//! because a connection to a socat console starts an ipmitool session.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use porthole_tests::rig::Bmc;

use crate::service::{port_of, Service};

/// Enable latencies: from the call until the port is in LISTEN state.
#[derive(Default)]
pub struct EnableResult {
    /// Until EnableConsole returned.
    pub rpc: Vec<Duration>,
    /// Until the port was seen listening (looked at once the reply is in).
    pub listening: Vec<Duration>,
    /// Replies after which the port was not listening yet.
    pub late: usize,
    /// Enables that failed (not in the figures), and the first error.
    pub failed: usize,
    pub first_error: Option<String>,
}

impl EnableResult {
    /// Count a failed enable; gives up once half of `n` failed.
    fn failure(&mut self, e: anyhow::Error, n: usize) -> Result<()> {
        self.failed += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
        if self.failed * 2 > n {
            bail!("{} of {n} enables failed; the first: {e:#}", self.failed);
        }
        Ok(())
    }
}

/// One timed enable; a failed one is counted, not timed.
fn timed_enable(
    svc: &Service,
    node: &str,
    bmc: &Bmc,
    out: &mut EnableResult,
    n: usize,
) -> Result<()> {
    let start = Instant::now();
    let console = match svc.enable(node, bmc) {
        Ok(c) => c,
        Err(e) => return out.failure(e, n),
    };
    out.rpc.push(start.elapsed());
    out.late += usize::from(wait_listening(port_of(&console)?, Duration::from_secs(10))?);
    out.listening.push(start.elapsed());
    Ok(())
}

/// First enables of fresh node ids, each disabled again (untimed).
pub fn enable_fresh(svc: &Service, bmcs: &[Bmc], n: usize) -> Result<EnableResult> {
    let mut out = EnableResult::default();
    for i in 0..n {
        let node = format!("bench-fresh-{i:03}");
        timed_enable(svc, &node, &bmcs[i % bmcs.len()], &mut out, n)?;
        svc.disable(&node)?;
    }
    Ok(out)
}

/// Disable (untimed) + enable (timed) of one node, `n` times.
pub fn enable_cycles(svc: &Service, bmc: &Bmc, n: usize) -> Result<EnableResult> {
    let node = "bench-cycle";
    let mut out = EnableResult::default();
    svc.enable(node, bmc)?;
    for _ in 0..n {
        svc.disable(node)?;
        timed_enable(svc, node, bmc, &mut out, n)?;
    }
    svc.disable(node)?;
    Ok(out)
}

/// Until `port` listens; `late` tells whether the first look missed it.
fn wait_listening(port: u16, timeout: Duration) -> Result<bool> {
    let end = Instant::now() + timeout;
    let mut late = false;
    while !is_listening(port)? {
        late = true;
        if Instant::now() > end {
            bail!("port {port} not listening within {timeout:?}");
        }
        thread::sleep(Duration::from_micros(200));
    }
    Ok(late)
}

/// Whether an IPv4 TCP socket is in LISTEN state on `port`.
fn is_listening(port: u16) -> io::Result<bool> {
    Ok(listening_ports_v4()?.contains(&port))
}

/// The ports of every listening IPv4 TCP socket, from the kernel's
/// sock_diag netlink interface (what `ss -ltn` asks). Reading
/// `/proc/net/tcp` takes about 2 ms on the bench machine (it walks every
/// socket hash bucket); this dump of listening sockets takes about 30 µs.
#[expect(
    unsafe_code,
    reason = "socket(2) and OwnedFd::from_raw_fd: no safe netlink socket in std or nix here"
)]
fn listening_ports_v4() -> io::Result<Vec<u16>> {
    use nix::libc as c;
    // SAFETY: socket(2) with constant arguments; the descriptor is owned
    // (and closed) by the File right below.
    let raw = unsafe {
        c::socket(
            c::AF_NETLINK,
            c::SOCK_DGRAM | c::SOCK_CLOEXEC,
            c::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let mut sock = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    sock.write_all(&sock_diag_request())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut ports = Vec::new();
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if parse_sock_diag(&buf[..n], &mut ports)? {
            return Ok(ports);
        }
    }
}

/// `SOCK_DIAG_BY_FAMILY` dump request: IPv4 TCP sockets in LISTEN state.
fn sock_diag_request() -> Vec<u8> {
    use nix::libc as c;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_LISTEN: u32 = 10;
    const LEN: u32 = 16 + 8 + 48; // nlmsghdr, inet_diag_req_v2 head, inet_diag_sockid
    let flags = (c::NLM_F_REQUEST | c::NLM_F_DUMP) as u16;
    let mut req = Vec::with_capacity(LEN as usize);
    req.extend_from_slice(&LEN.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    req.extend_from_slice(&[c::AF_INET as u8, c::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]); // no socket id filter
    req
}

/// Add the source ports of one datagram's `inet_diag_msg`s to `ports`;
/// true once the dump is done.
fn parse_sock_diag(mut data: &[u8], ports: &mut Vec<u16>) -> io::Result<bool> {
    use nix::libc as c;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"));
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        let kind = i32::from(u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes")));
        if kind == c::NLMSG_DONE {
            return Ok(true);
        }
        if kind == c::NLMSG_ERROR {
            return Err(bad("the kernel answered with an error"));
        }
        if len < 16 + 8 || len > data.len() {
            return Err(bad("truncated message"));
        }
        // inet_diag_msg: family, state, timer, retrans, then id.idiag_sport (big-endian).
        ports.push(u16::from_be_bytes([data[20], data[21]]));
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    Ok(false)
}
