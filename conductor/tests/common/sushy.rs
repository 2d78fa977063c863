//! A sushy-tools Redfish emulator for the conductor's tests (started with
//! `../shared/rig/redfish-up.sh` in its own state dir under the target
//! dir, on a free port, stopped by its pid on drop). Its fake driver
//! applies a power change 1-11 s after the request, as a real BMC takes
//! its time. Callers: `redfish.rs`, `redfish_lock.rs`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub const SYSTEM: &str = "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094";

/// A sushy-tools emulator, stopped (by its pid) on drop.
pub struct Sushy {
    pid: i32,
    pub url: String,
}

impl Sushy {
    pub async fn start() -> Result<Self> {
        let rig_dir = std::env::var_os("PORTHOLE_RIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/rig"));
        let state = Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-conductor-sushy");
        // An emulator an interrupted run of this test left in our state dir.
        let _ = tokio::process::Command::new(rig_dir.join("redfish-up.sh"))
            .arg("down")
            .env("RIG_STATE_DIR", &state)
            .output()
            .await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let out = tokio::process::Command::new(rig_dir.join("redfish-up.sh"))
            .arg("up")
            .env("RIG_STATE_DIR", &state)
            .env("REDFISH_PORT", port.to_string())
            .output()
            .await
            .context("running redfish-up.sh")?;
        if !out.status.success() {
            bail!(
                "redfish-up.sh failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pid: i32 = std::fs::read_to_string(state.join("redfish/sushy.pid"))?
            .trim()
            .parse()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("REDFISH_URL="))
            .map(str::to_owned)
            .with_context(|| format!("redfish-up.sh said: {stdout}"))?;
        Ok(Self { pid, url })
    }

    /// The emulated system's Redfish resource.
    pub async fn system(&self) -> Result<Value> {
        Ok(reqwest::get(format!("{}{SYSTEM}", self.url))
            .await?
            .json()
            .await?)
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}
