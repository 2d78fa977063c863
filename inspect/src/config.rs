//! The inspect service's configuration: one typed struct, read once at
//! start.
//!
//! Sources, later ones winning: defaults, a TOML file (`--config` or
//! `PORTHOLE_INSPECT_CONFIG`), `PORTHOLE_INSPECT_<SECTION>_<KEY>`
//! environment variables (for example `PORTHOLE_INSPECT_INSPECTOR_ENABLED=true`),
//! then command-line flags (`main.rs`); porthole-common's loader layers
//! them. `[inspector]` keeps Ironic's option names (`enabled`,
//! `service_url`, `status_check_period`); the in-band inspection design's
//! older name for it, `[discoverd]`, is accepted too (not both at once).
//!
//! Callers: `main.rs`, [`crate::run`], tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use porthole_common::tls::ServerTls;
use serde::Deserialize;

pub use porthole_common::config::ConfigError;

/// The environment prefix and sections porthole-common's loader reads.
pub const LAYOUT: porthole_common::config::Layout<'static> = porthole_common::config::Layout {
    prefix: "PORTHOLE_INSPECT_",
    sections: &["service", "inspector", "discoverd", "agent"],
};

/// The service's settings, `[inspector]` already resolved from either name.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub service: ServiceConfig,
    pub inspector: InspectorConfig,
    /// The built-in `agent` interface (`crate::agent`).
    pub agent: crate::agent::AgentConfig,
}

/// What the file and variables hold, before `[discoverd]` is folded in.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    service: ServiceConfig,
    inspector: Option<InspectorConfig>,
    discoverd: Option<InspectorConfig>,
    agent: crate::agent::AgentConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// `text` or `json` log lines.
    pub log_format: String,
    /// Where to serve Prometheus metrics (`GET /metrics`); unset: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain and key: gRPC over TLS (neither: plaintext).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA: a client must present a certificate it signed (mutual TLS).
    pub tls_client_ca_file: Option<PathBuf>,
    /// How long a client may take over its TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 50063)),
            log_format: "text".into(),
            metrics_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_handshake_timeout: porthole_common::tls::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl ServiceConfig {
    /// The server's TLS files, `None` for plaintext.
    pub fn server_tls(&self) -> Result<Option<ServerTls>, ConfigError> {
        ServerTls::from_options(
            "service.tls_",
            self.tls_cert_file.as_deref(),
            self.tls_key_file.as_deref(),
            self.tls_client_ca_file.as_deref(),
        )
        .map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

/// The `inspector` interface: inspection through ironic-inspector.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InspectorConfig {
    /// Whether the `inspector` interface may be used at all.
    pub enabled: bool,
    /// ironic-inspector's API, e.g. `http://127.0.0.1:5050/v1` (the root
    /// without `/v1` is accepted too). No default: required when enabled.
    pub service_url: Option<String>,
    /// How often each waiting node's status is asked (Ironic's
    /// `[inspector] status_check_period`).
    #[serde(with = "humantime_serde")]
    pub status_check_period: Duration,
    /// Longest HTTP request to ironic-inspector.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A node still waiting after this long fails (Ironic's
    /// `[conductor] inspect_wait_timeout`); ironic-inspector's own
    /// `timeout` usually ends it first.
    #[serde(with = "humantime_serde")]
    pub inspect_wait_timeout: Duration,
}

impl Default for InspectorConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            service_url: None,
            status_check_period: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            inspect_wait_timeout: Duration::from_secs(1800),
        }
    }
}

impl Config {
    /// Defaults, then `file`, then `PORTHOLE_INSPECT_*` variables from
    /// `env`, then `overrides` (`section.key = value` pairs from flags).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, &str, toml::Value)],
    ) -> Result<Self, ConfigError> {
        let raw: Raw = porthole_common::config::load(&LAYOUT, file, env, overrides)?;
        let inspector = match (raw.inspector, raw.discoverd) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "both [inspector] and [discoverd] are set: [discoverd] is the older name of [inspector]; keep one".into(),
                ))
            }
            (Some(i), None) | (None, Some(i)) => i,
            (None, None) => InspectorConfig::default(),
        };
        let config = Config {
            service: raw.service,
            inspector,
            agent: raw.agent,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.service.server_tls()?;
        let log_format = &self.service.log_format;
        porthole_common::config::check_log_format("service.log_format", log_format)?;
        let i = &self.inspector;
        for (name, d) in [
            ("status_check_period", i.status_check_period),
            ("request_timeout", i.request_timeout),
            ("inspect_wait_timeout", i.inspect_wait_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "inspector.{name} must be above 0"
                )));
            }
        }
        if self.agent.inspect_wait_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "agent.inspect_wait_timeout must be above 0".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn inspector_is_disabled_with_no_url_by_default() {
        let c = Config::load(None, vec![], &[]).unwrap();
        assert!(!c.inspector.enabled);
        assert_eq!(c.inspector.service_url, None);
        assert_eq!(c.inspector.status_check_period, Duration::from_secs(60));
    }

    #[test]
    fn inspector_from_env_and_file_under_either_name() {
        let c = Config::load(
            None,
            env(&[
                ("PORTHOLE_INSPECT_INSPECTOR_ENABLED", "true"),
                (
                    "PORTHOLE_INSPECT_INSPECTOR_SERVICE_URL",
                    "http://127.0.0.1:5050/v1",
                ),
                ("PORTHOLE_INSPECT_INSPECTOR_STATUS_CHECK_PERIOD", "2s"),
            ]),
            &[],
        )
        .unwrap();
        assert!(c.inspector.enabled);
        assert_eq!(
            c.inspector.service_url.as_deref(),
            Some("http://127.0.0.1:5050/v1")
        );
        assert_eq!(c.inspector.status_check_period, Duration::from_secs(2));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inspect.toml");
        std::fs::write(
            &file,
            "[discoverd]\nenabled = true\nservice_url = \"http://h:5050\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), vec![], &[]).unwrap();
        assert!(c.inspector.enabled);
        assert_eq!(c.inspector.service_url.as_deref(), Some("http://h:5050"));
        let c = Config::load(
            None,
            env(&[("PORTHOLE_INSPECT_DISCOVERD_ENABLED", "true")]),
            &[],
        )
        .unwrap();
        assert!(c.inspector.enabled);
    }

    #[test]
    fn other_services_variables_are_not_ours() {
        // One environment can hold every service's settings.
        let c = Config::load(
            None,
            env(&[
                ("PORTHOLE_CONDUCTOR_INSPECT_ENDPOINT", "http://127.0.0.1:1"),
                ("PORTHOLE_CONDUCTOR_INSPECT_BOGUS", "x"),
                ("PORTHOLE_CONSOLE_SVC_SERVICE_LISTEN", "not an address"),
                ("PORTHOLE_DEPLOY_SERVICE_LISTEN", "not an address"),
                ("PORTHOLE_INSPECT_SERVICE_LISTEN", "127.0.0.1:50099"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.service.listen.port(), 50099);
        assert!(!c.inspector.enabled);
    }

    #[test]
    fn both_names_unknown_keys_and_zero_periods_are_refused() {
        let err = Config::load(
            None,
            env(&[
                ("PORTHOLE_INSPECT_DISCOVERD_ENABLED", "true"),
                ("PORTHOLE_INSPECT_INSPECTOR_ENABLED", "true"),
            ]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[discoverd] is the older name of [inspector]"),
            "{err}"
        );
        let err = Config::load(
            None,
            env(&[("PORTHOLE_INSPECT_INSPECTOR_URL", "http://x")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("PORTHOLE_INSPECT_INSPECTOR_URL") && err.contains("unknown setting `url`"),
            "{err}"
        );
        let err = Config::load(
            None,
            env(&[("PORTHOLE_INSPECT_INSPECTOR_STATUS_CHECK_PERIOD", "0s")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("inspector.status_check_period must be above 0"),
            "{err}"
        );
        let err = Config::load(
            None,
            env(&[("PORTHOLE_INSPECT_SERVICE_TLS_CERT_FILE", "/c")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("service.tls_"), "{err}");
    }
}
