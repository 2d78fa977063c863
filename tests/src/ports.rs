//! Port slots for console-svc instances: a gRPC port and a console port
//! range each, unique across threads and test processes.
//!
//! Slot `k` is the ports `BASE + k*WIDTH .. BASE + (k+1)*WIDTH`: the first is
//! gRPC, the rest console ports. Slots are leased with a `flock` (see
//! [`crate::pool`]) in a directory shared by every test process, and a slot
//! whose ports another program holds is skipped. The base is
//! `$PORTHOLE_TEST_PORT_BASE`, default 28000: below the ephemeral range and
//! clear of the rig layouts the scripts use (demo 23000, test 24000, bench
//! 26000, each up to base+700).

use std::net::TcpListener;

use anyhow::{bail, Result};

use crate::pool::{try_lock, FileLock};

pub const PORT_BASE_ENV: &str = "PORTHOLE_TEST_PORT_BASE";
const DEFAULT_BASE: u16 = 28000;
const WIDTH: u16 = 40;
const SLOTS: u16 = 100;

/// A leased slot; released on drop.
pub struct PortSlot {
    first: u16,
    _lock: FileLock,
}

impl PortSlot {
    pub const MAX_CONSOLE_PORTS: u16 = WIDTH - 1;

    /// Lease a free slot whose gRPC port and first `ports` console ports
    /// can be bound right now.
    pub fn lease(ports: u16) -> Result<PortSlot> {
        if ports == 0 || ports > Self::MAX_CONSOLE_PORTS {
            bail!(
                "a console-svc gets 1..={} console ports, not {ports}",
                Self::MAX_CONSOLE_PORTS
            );
        }
        let base = std::env::var(PORT_BASE_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_BASE);
        let dir = std::env::temp_dir().join("porthole-test-ports");
        for k in 0..SLOTS {
            let first = base + k * WIDTH;
            let Some(lock) = try_lock(&dir.join(format!("{first}.lock")))? else {
                continue;
            };
            if (first..=first + ports).all(bindable) {
                return Ok(PortSlot { first, _lock: lock });
            }
        }
        bail!("no free port slot of {WIDTH} ports from {base} ({SLOTS} tried)")
    }

    pub fn grpc_port(&self) -> u16 {
        self.first
    }

    /// The console port range for `ports` ports: `(start, end)`, end excluded.
    pub fn console_range(&self, ports: u16) -> (u16, u16) {
        (self.first + 1, self.first + 1 + ports)
    }
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}
