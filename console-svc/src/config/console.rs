//! `[console]` (Ironic's option names where it has them) and `[native]`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::default_runtime_dir;
use crate::ports::PortRange;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Native,
    Socat,
    Rmcp,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Socat => "socat",
            Self::Rmcp => "rmcp",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `native` (default), `socat` or `rmcp` (native RMCP+ SOL, no ipmitool).
    pub backend: Backend,
    /// Ironic's `port_range`: `START:END`, END excluded.
    pub port_range: PortRange,
    /// Ironic's `socat_address`: the address console ports bind to.
    pub socat_address: IpAddr,
    /// Host put in console URLs; defaults to `socat_address`.
    pub advertise_host: Option<String>,
    /// Ironic's `terminal_pid_dir`: where started processes are recorded.
    pub terminal_pid_dir: PathBuf,
    /// Ironic's `subprocess_checking_interval`: how often socat's start is
    /// tried again while its port is still held (readiness itself is read
    /// from socat's output, not polled).
    #[serde(with = "humantime_serde")]
    pub subprocess_checking_interval: Duration,
    /// Ironic's `subprocess_timeout`: the longest a start (or an ipmitool
    /// command) may take.
    #[serde(with = "humantime_serde")]
    pub subprocess_timeout: Duration,
    /// Ironic's `kill_timeout`: SIGTERM to SIGKILL.
    #[serde(with = "humantime_serde")]
    pub kill_timeout: Duration,
    /// Ironic's `terminal_timeout`: a viewer connection with no traffic either
    /// way for this long is closed (socat's `-T`); 0 disables it.
    #[serde(with = "humantime_serde")]
    pub terminal_timeout: Duration,
    /// Longest wait between retries of a failing BMC.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    pub ipmitool_path: PathBuf,
    pub socat_path: PathBuf,
    /// The program run as `<helper> sol-exec` around each `ipmitool sol
    /// activate` (socat: per connection; native: per SOL session);
    /// defaults to this console-svc binary.
    pub sol_exec_helper: Option<PathBuf>,
    /// The longest SIGTERM may take to stop every console.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NativeConfig {
    /// Bytes of recent output replayed to a viewer that attaches.
    pub scrollback_bytes: usize,
    /// Bytes of output kept in memory for GetConsoleLog.
    pub log_ring_bytes: usize,
    /// When set, output is also appended to `<log_dir>/<node>.log`.
    pub log_dir: Option<PathBuf>,
    /// A log file that reaches this size is rotated to `<node>.log.1`.
    pub log_file_max_bytes: u64,
    /// How long the SOL session stays up after the last viewer leaves.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Viewers per console at once; a new one beyond it takes the place
    /// of the viewer that has sent nothing for the longest.
    pub max_viewers: usize,
    /// Viewers per console from one address at once (0: only
    /// `max_viewers`); a new one beyond it takes the place of that
    /// address's viewer that has sent nothing for the longest.
    pub max_viewers_per_address: usize,
    /// A viewer that has sent nothing at all this long after connecting is
    /// closed (0: never); `terminal_timeout` still applies after its first
    /// byte.
    #[serde(with = "humantime_serde")]
    pub terminal_silent_timeout: Duration,
    /// Keep the SOL session up with no viewer attached, so the log holds
    /// everything the node printed; unset: on for `rmcp`, off for `native`.
    pub always_on: Option<bool>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Native,
            port_range: PortRange::new(10000, 20000).expect("valid default"),
            socat_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise_host: None,
            terminal_pid_dir: default_runtime_dir().join("pids"),
            subprocess_checking_interval: Duration::from_millis(50),
            subprocess_timeout: Duration::from_secs(10),
            kill_timeout: Duration::from_secs(1),
            terminal_timeout: Duration::from_secs(600),
            retry_max_backoff: Duration::from_secs(30),
            ipmitool_path: "ipmitool".into(),
            socat_path: "socat".into(),
            sol_exec_helper: None,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for NativeConfig {
    fn default() -> Self {
        Self {
            scrollback_bytes: 64 * 1024,
            log_ring_bytes: 1024 * 1024,
            log_dir: None,
            log_file_max_bytes: 10 * 1024 * 1024,
            linger: Duration::from_secs(5),
            max_viewers: 16,
            max_viewers_per_address: 8,
            terminal_silent_timeout: Duration::from_secs(60),
            always_on: None,
        }
    }
}

impl ConsoleConfig {
    /// The host console URLs name.
    pub fn url_host(&self) -> String {
        match (&self.advertise_host, self.socat_address) {
            (Some(h), _) => h.clone(),
            (None, IpAddr::V6(v6)) => format!("[{v6}]"),
            (None, ip) => ip.to_string(),
        }
    }
}
