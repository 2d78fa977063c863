//! The test rig (`../shared/rig/rig-up.sh`) as the tests see it: its
//! `rig.json`, found through `PORTHOLE_RIG_JSON`.
//!
//! Tests call [`Rig::from_env`] first. When the variable is unset they print
//! a notice and return early (a plain `cargo test` on a laptop); when it is
//! set, a missing or unreadable file is an error, so CI (`scripts/test.sh`,
//! which always sets it) never skips silently.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use porthole_proto::console::v1 as pb;
use serde::Deserialize;

/// The environment variable naming the rig's `rig.json`.
pub const RIG_JSON_ENV: &str = "PORTHOLE_RIG_JSON";

#[derive(Clone, Debug, Deserialize)]
pub struct Rig {
    pub host: String,
    pub run_dir: PathBuf,
    pub bmcs: Vec<Bmc>,
}

/// One simulated BMC (ipmi_sim) and the node side of its serial line.
#[derive(Clone, Debug, Deserialize)]
pub struct Bmc {
    pub name: String,
    pub host: String,
    /// IPMI lanplus, UDP.
    pub port: u16,
    pub cipher_suite: u32,
    pub username: String,
    pub password: String,
    pub password_file: PathBuf,
    /// TCP: the simulated node's OS side of the serial port.
    pub host_console: HostPort,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Rig {
    /// The rig named by `PORTHOLE_RIG_JSON`; `None` (with a notice on
    /// stderr) when the variable is unset.
    pub fn from_env() -> Result<Option<Rig>> {
        let Some(path) = std::env::var_os(RIG_JSON_ENV) else {
            eprintln!("notice: {RIG_JSON_ENV} is not set; skipping this rig test (scripts/test.sh sets it)");
            assert!(std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(), "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above");
            return Ok(None);
        };
        Self::load(Path::new(&path)).map(Some)
    }

    pub fn load(path: &Path) -> Result<Rig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{RIG_JSON_ENV}={}: cannot read", path.display()))?;
        let rig: Rig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a rig.json", path.display()))?;
        anyhow::ensure!(
            !rig.bmcs.is_empty(),
            "{}: the rig has no BMCs",
            path.display()
        );
        Ok(rig)
    }

    /// The rig's BMC password (the same for every BMC).
    pub fn bmc_password(&self) -> &str {
        &self.bmcs[0].password
    }
}

impl Bmc {
    /// The wire form of this BMC for `EnableConsole`.
    pub fn ipmi_target(&self) -> pb::IpmiTarget {
        pb::IpmiTarget {
            address: self.host.clone(),
            port: self.port.into(),
            username: self.username.clone(),
            password: self.password.clone(),
            cipher_suite: Some(self.cipher_suite),
            privilege_level: String::new(),
        }
    }

    /// An `EnableConsoleRequest` for `node` on this BMC, port chosen by the service.
    pub fn enable_request(&self, node: &str) -> pb::EnableConsoleRequest {
        pb::EnableConsoleRequest {
            node_id: node.to_owned(),
            kind: pb::ConsoleKind::Serial as i32,
            ipmi: Some(self.ipmi_target()),
            port: 0,
            vnc: None,
        }
    }
}
