//! `[rmcp]`: settings of the `rmcp` serial backend's RMCP+ transport
//! (console-svc's `sol/native/rmcp.rs` reads them).

use serde::Deserialize;

/// How the `rmcp` backend's sessions reach their BMCs over UDP.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RmcpUdp {
    /// One unconnected UDP socket per address family for every console,
    /// datagrams handed to each session by its BMC's address.
    #[default]
    Shared,
    /// A connected UDP socket (a file descriptor) per console.
    PerConsole,
}

impl RmcpUdp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::PerConsole => "per-console",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmcpConfig {
    /// `shared` (default) or `per-console`.
    pub udp: RmcpUdp,
}
