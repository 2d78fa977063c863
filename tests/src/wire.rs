//! Raw TCP byte streams with bounded reads: a console viewer (what
//! nova-serialproxy does with a `tcp://host:port` URL) and the node side of
//! a BMC's serial line (`bmcs[i].host_console`, the simulated node's OS).
//!
//! Every read takes a deadline; a failed expectation reports, escaped, what
//! did arrive.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::rig::Bmc;

/// Longest wait for a TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One TCP connection and the bytes read from it but not yet consumed.
pub struct Wire {
    name: String,
    stream: TcpStream,
    pending: Vec<u8>,
}

/// Longest wait for an earlier node-side connection of the rig to go.
pub const BRIDGE_QUIET_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's OS side of a BMC's serial line.
///
/// The rig serves the line with `socat PTY TCP-LISTEN:...,fork`: one child
/// per connection, and every child reads the same pty. A child of an
/// earlier connection (another test's, closed a moment ago) keeps reading
/// for socat's 0.5 s close timeout, longer on a loaded machine, and the
/// bytes it reads are lost to this connection: with bare ipmitool typing,
/// 56 of 227 bytes went to such a child. So this waits until our
/// connection is the bridge's only one; a loss inside console-svc is not
/// affected by the wait.
pub async fn node_side(bmc: &Bmc) -> Result<Wire> {
    let name = format!("node side of {}", bmc.name);
    let wire = Wire::connect(&bmc.host_console.addr(), &name).await?;
    let ours = wire.stream.local_addr()?.port();
    let deadline = Instant::now() + BRIDGE_QUIET_TIMEOUT;
    loop {
        let others = bridge_connections(bmc.host_console.port, ours)?;
        if others == 0 {
            return Ok(wire);
        }
        if Instant::now() > deadline {
            bail!("{name}: {others} other connection(s) to the rig's serial bridge stayed open for {BRIDGE_QUIET_TIMEOUT:?}; they would take bytes meant for this test");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connections of the bridge listening on `port` (IPv4) other than the one
/// to our `ours` port, from `/proc/net/tcp`.
pub fn bridge_connections(port: u16, ours: u16) -> Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let port_of = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((port_of(f.get(1)?)?, port_of(f.get(2)?)?, *f.get(3)?))
        })
        // A child still reading: ESTABLISHED (01), or CLOSE_WAIT (08) while
        // it drains after its peer closed. Closing states and TIME_WAIT
        // belong to children that are gone.
        .filter(|(local, remote, state)| {
            *local == port && matches!(*state, "01" | "08") && *remote != ours
        })
        .count())
}

/// A viewer on a console URL (`tcp://host:port`).
pub async fn viewer(url: &str) -> Result<Wire> {
    let addr = url
        .strip_prefix("tcp://")
        .ok_or_else(|| anyhow!("console URL {url:?} is not tcp://host:port"))?;
    Wire::connect(addr, &format!("viewer of {url}")).await
}

impl Wire {
    pub async fn connect(addr: &str, name: &str) -> Result<Wire> {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("{name}: connect to {addr} timed out"))?
            .with_context(|| format!("{name}: connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Wire {
            name: name.to_owned(),
            stream,
            pending: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local port of this connection.
    pub fn local_port(&self) -> Result<u16> {
        Ok(self.stream.local_addr()?.port())
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        timeout(Duration::from_secs(5), self.stream.write_all(bytes))
            .await
            .map_err(|_| anyhow!("{}: write timed out", self.name))?
            .with_context(|| format!("{}: write", self.name))
    }

    /// Read once into `pending`, waiting at most until `deadline`.
    /// `Ok(false)` on timeout; an error on EOF or a reset.
    async fn fill(&mut self, deadline: Instant) -> Result<bool> {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => bail!(
                "{}: connection closed (had {})",
                self.name,
                show(&self.pending)
            ),
            Ok(Ok(n)) => {
                self.pending.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Ok(Err(e)) => Err(e).with_context(|| format!("{}: read", self.name)),
        }
    }

    /// Read until `needle` arrives; returns everything up to and including
    /// it and keeps the rest for later reads.
    pub async fn expect(&mut self, needle: &[u8], within: Duration) -> Result<Vec<u8>> {
        match self.try_expect(needle, within).await? {
            Some(got) => Ok(got),
            None => bail!(
                "{}: {} did not arrive within {within:?}; got {}",
                self.name,
                show(needle),
                show(&self.pending)
            ),
        }
    }

    /// Like [`Wire::expect`], but `None` on timeout (an error only when the
    /// connection closes); what arrived stays pending.
    pub async fn try_expect(&mut self, needle: &[u8], within: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = find(&self.pending, needle) {
                let rest = self.pending.split_off(at + needle.len());
                return Ok(Some(std::mem::replace(&mut self.pending, rest)));
            }
            if !self.fill(deadline).await? {
                return Ok(None);
            }
        }
    }

    /// Everything that arrives within `dur` (plus what was pending).
    pub async fn read_for(&mut self, dur: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + dur;
        while self.fill(deadline).await? {}
        Ok(std::mem::take(&mut self.pending))
    }

    /// Read until nothing arrives for `quiet` (at most `max`); returns it all.
    pub async fn drain(&mut self, quiet: Duration, max: Duration) -> Result<Vec<u8>> {
        let end = Instant::now() + max;
        loop {
            let deadline = (Instant::now() + quiet).min(end);
            if !self.fill(deadline).await? || Instant::now() >= end {
                return Ok(std::mem::take(&mut self.pending));
            }
        }
    }

    /// Wait for the peer to close the connection (EOF or reset), discarding data.
    pub async fn expect_closed(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline).await {
                Err(_) => return Ok(()),
                Ok(true) => self.pending.clear(),
                Ok(false) => bail!("{}: still open after {within:?}", self.name),
            }
        }
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Bytes as an escaped string, cut to a readable length.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 400;
    let cut = bytes.len().saturating_sub(MAX);
    let s: String = bytes[cut..].escape_ascii().to_string();
    if cut > 0 {
        format!("{} bytes, last {MAX}: b\"{s}\"", bytes.len())
    } else {
        format!("b\"{s}\"")
    }
}
