//! `[etcd]`: coordination through etcd (see `coordinator::etcd`, `cluster`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::list_or_csv;

/// Coordination through etcd; without endpoints one replica owns everything.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs; a comma-separated string in the environment.
    #[serde(deserialize_with = "list_or_csv")]
    pub endpoints: Vec<String>,
    /// Prefix of every key this service writes (ends in `/`).
    pub prefix: String,
    /// This replica's lease TTL (etcd's minimum with default elections: 2 s).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The AEAD key sealing BMC/VNC passwords in etcd specs (32 raw bytes or
    /// 64 hex digits); the same file on every replica. Required with endpoints.
    pub secret_key_file: Option<PathBuf>,
    /// How long EnableConsole waits for the owner to publish the endpoint.
    #[serde(with = "humantime_serde")]
    pub enable_timeout: Duration,
    /// Claim delay per placement rank (rank r waits r × claim_step).
    #[serde(with = "humantime_serde")]
    pub claim_step: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: "/porthole/console/".into(),
            lease_ttl: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            secret_key_file: None,
            enable_timeout: Duration::from_secs(15),
            claim_step: Duration::from_millis(300),
        }
    }
}
