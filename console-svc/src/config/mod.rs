//! console-svc's configuration: one typed struct, read once at start.
//!
//! Sources, later ones winning: built-in defaults, a TOML file
//! (`--config` or `PORTHOLE_CONSOLE_SVC_CONFIG`),
//! `PORTHOLE_CONSOLE_SVC_<SECTION>_<KEY>` environment variables (for example
//! `PORTHOLE_CONSOLE_SVC_CONSOLE_PORT_RANGE=10000:10100`), then command-line
//! flags; porthole-common's loader layers them. Option names follow Ironic's `[console]` section where Ironic has
//! one; README.md has the full reference.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use porthole_common::tls::{ClientTls, ServerTls};
use serde::Deserialize;

mod console;
mod etcd;
mod rmcp;
mod vnc;

pub use console::{Backend, ConsoleConfig, NativeConfig};
pub use etcd::EtcdConfig;
pub use rmcp::{RmcpConfig, RmcpUdp};
pub use vnc::{VncAuthScheme, VncConfig, VncUpstreamSecurity};

pub use porthole_common::config::ConfigError;
pub use porthole_common::config::Layered;

/// The top-level tables, which environment variable names start with.
const SECTIONS: &[&str] = &["service", "console", "native", "rmcp", "vnc", "etcd"];

/// The environment prefix and sections porthole-common's loader reads.
pub const LAYOUT: porthole_common::config::Layout<'static> = porthole_common::config::Layout {
    prefix: "PORTHOLE_CONSOLE_SVC_",
    sections: SECTIONS,
};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub service: ServiceConfig,
    pub console: ConsoleConfig,
    pub native: NativeConfig,
    pub rmcp: RmcpConfig,
    pub vnc: VncConfig,
    pub etcd: EtcdConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// This replica's name, reported as console owner.
    pub replica_id: String,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Where to serve Prometheus metrics (`GET /metrics`); unset: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain and private key: gRPC is served over TLS
    /// (neither set: plaintext). Read once at start.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA: a client must present a certificate it signed (mutual TLS).
    pub tls_client_ca_file: Option<PathBuf>,
    /// How long a client may take over its TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// PEM CA that signed the other replicas' certificates, for calls one
    /// replica forwards to another (default: `tls_client_ca_file`, else the
    /// system's roots). The replica presents its own certificate.
    pub tls_peer_ca_file: Option<PathBuf>,
    /// Name checked in the other replicas' certificates (default: the
    /// address each advertises).
    pub tls_peer_server_name: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A list, or one string of comma-separated items (for `PORTHOLE_CONSOLE_SVC_VNC_*`).
fn list_or_csv<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Csv(String),
        List(Vec<toml::Value>),
    }
    let items: Vec<toml::Value> = match Raw::deserialize(d)? {
        Raw::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| toml::Value::String(s.to_ascii_lowercase()))
            .collect(),
        Raw::List(v) => v,
    };
    items
        .into_iter()
        .map(|v| v.try_into().map_err(serde::de::Error::custom))
        .collect()
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 50051)),
            replica_id: default_replica_id(),
            log_format: LogFormat::Text,
            metrics_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_handshake_timeout: porthole_common::tls::DEFAULT_HANDSHAKE_TIMEOUT,
            tls_peer_ca_file: None,
            tls_peer_server_name: None,
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

    /// How this replica calls another one: `None` when it serves plaintext
    /// (so do its peers), else TLS with its own certificate as the client's.
    pub fn peer_tls(&self) -> Result<Option<ClientTls>, ConfigError> {
        Ok(self.server_tls()?.map(|server| ClientTls {
            ca_file: self
                .tls_peer_ca_file
                .clone()
                .or_else(|| server.client_ca_file.clone()),
            cert_file: Some(server.cert_file),
            key_file: Some(server.key_file),
            server_name: self.tls_peer_server_name.clone(),
        }))
    }
}

impl porthole_common::config::Layered for Config {
    const LAYOUT: porthole_common::config::Layout<'static> = LAYOUT;

    fn validate(&self) -> Result<(), ConfigError> {
        if self.service.server_tls()?.is_some() && self.service.tls_handshake_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "service.tls_handshake_timeout must be above 0".into(),
            ));
        }
        if self.console.subprocess_checking_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "console.subprocess_checking_interval must be above 0".into(),
            ));
        }
        if !self.etcd.endpoints.is_empty() && self.etcd.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::Invalid(
                "etcd.lease_ttl must be at least 2s (etcd's minimum TTL)".into(),
            ));
        }
        if !self.etcd.endpoints.is_empty() && self.etcd.secret_key_file.is_none() {
            return Err(ConfigError::Invalid(
                "etcd.secret_key_file is required with etcd.endpoints (it seals passwords in etcd)"
                    .into(),
            ));
        }
        if !self.etcd.prefix.ends_with('/') {
            return Err(ConfigError::Invalid("etcd.prefix must end in '/'".into()));
        }
        if self.native.max_viewers == 0 {
            return Err(ConfigError::Invalid(
                "native.max_viewers must be at least 1".into(),
            ));
        }
        self.vnc.validate()
    }
}

fn default_replica_id() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "console-svc".into())
}

/// `$XDG_RUNTIME_DIR/porthole` or `/tmp/porthole-<uid>`: private to this user.
pub fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("porthole"),
        None => std::env::temp_dir().join(format!("porthole-{}", nix::unistd::getuid())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortRange;
    use std::path::Path;

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[console]\nport_range = \"11000:11010\"\nbackend = \"socat\"\nkill_timeout = \"3s\"\n",
        )
        .unwrap();
        let env = vec![
            (
                "PORTHOLE_CONSOLE_SVC_CONSOLE_PORT_RANGE".to_owned(),
                "12000:12010".to_owned(),
            ),
            (
                "PORTHOLE_CONSOLE_SVC_NATIVE_SCROLLBACK_BYTES".to_owned(),
                "100".to_owned(),
            ),
            (
                "PORTHOLE_CONSOLE_SVC_ETCD_ENDPOINTS".to_owned(),
                "http://127.0.0.1:1, http://127.0.0.1:2".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let flags = [("console", "backend", toml::Value::String("native".into()))];
        let err = Config::load(Some(&file), env.clone(), &flags).unwrap_err();
        assert!(err.to_string().contains("secret_key_file"), "{err}");
        let mut env = env;
        env.push((
            "PORTHOLE_CONSOLE_SVC_ETCD_SECRET_KEY_FILE".to_owned(),
            "/etc/porthole/etcd.key".to_owned(),
        ));
        let c = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.console.port_range, PortRange::new(12000, 12010).unwrap());
        assert_eq!(c.console.kill_timeout, Duration::from_secs(3));
        assert_eq!(c.console.backend, Backend::Native);
        assert_eq!(c.native.scrollback_bytes, 100);
        assert_eq!(
            c.etcd.endpoints,
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
    }

    #[test]
    fn vnc_section_from_env_lists_and_checks() {
        let c = Config::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(c.vnc.auth_schemes, vec![VncAuthScheme::None]);
        assert_eq!(c.vnc.handshake_timeout, Duration::from_secs(60));
        let env = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        let c = Config::load(
            None,
            env(
                "PORTHOLE_CONSOLE_SVC_VNC_UPSTREAM_SECURITY",
                "vncauth, none",
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.vnc.upstream_security,
            vec![VncUpstreamSecurity::Vncauth, VncUpstreamSecurity::None]
        );
        let err = Config::load(
            None,
            env("PORTHOLE_CONSOLE_SVC_VNC_AUTH_SCHEMES", "none,vencrypt"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("vencrypt_cert"), "{err}");
        let err = Config::load(
            None,
            env("PORTHOLE_CONSOLE_SVC_VNC_AUTH_SCHEMES", "vnc"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("vnc"), "{err}");
    }

    #[test]
    fn tls_keys_come_in_pairs_and_the_peers_use_the_servers_certificate() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let c = Config::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(c.service.server_tls().unwrap(), None);
        assert_eq!(c.service.peer_tls().unwrap(), None);
        let err = Config::load(
            None,
            env(&[("PORTHOLE_CONSOLE_SVC_SERVICE_TLS_CERT_FILE", "/etc/p/c.pem")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("service.tls_cert_file needs service.tls_key_file"),
            "{err}"
        );
        let err = Config::load(
            None,
            env(&[(
                "PORTHOLE_CONSOLE_SVC_SERVICE_TLS_CLIENT_CA_FILE",
                "/etc/p/ca.pem",
            )]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("client_ca_file needs"), "{err}");
        let c = Config::load(
            None,
            env(&[
                ("PORTHOLE_CONSOLE_SVC_SERVICE_TLS_CERT_FILE", "/etc/p/c.pem"),
                ("PORTHOLE_CONSOLE_SVC_SERVICE_TLS_KEY_FILE", "/etc/p/c.key"),
                (
                    "PORTHOLE_CONSOLE_SVC_SERVICE_TLS_CLIENT_CA_FILE",
                    "/etc/p/ca.pem",
                ),
                ("PORTHOLE_CONSOLE_SVC_SERVICE_TLS_HANDSHAKE_TIMEOUT", "3s"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.service.tls_handshake_timeout, Duration::from_secs(3));
        let peer = c.service.peer_tls().unwrap().unwrap();
        assert_eq!(peer.ca_file.as_deref(), Some(Path::new("/etc/p/ca.pem")));
        assert_eq!(peer.cert_file.as_deref(), Some(Path::new("/etc/p/c.pem")));
        assert_eq!(peer.key_file.as_deref(), Some(Path::new("/etc/p/c.key")));
    }

    #[test]
    fn errors_name_the_problem() {
        let env = vec![(
            "PORTHOLE_CONSOLE_SVC_CONSOLE_PORT_RANGE".to_owned(),
            "9:1".to_owned(),
        )];
        let err = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(err.contains("port_range"), "{err}");
        let env = vec![(
            "PORTHOLE_CONSOLE_SVC_CONSOLE_BOGUS".to_owned(),
            "1".to_owned(),
        )];
        let err = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn rmcp_udp_from_file_env_and_flag() {
        let c = Config::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(c.rmcp.udp, RmcpUdp::Shared, "the default");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[rmcp]\nudp = \"per-console\"\n").unwrap();
        let c = Config::load(Some(&file), Vec::new(), &[]).unwrap();
        assert_eq!(c.rmcp.udp, RmcpUdp::PerConsole);
        let env = |v: &str| vec![("PORTHOLE_CONSOLE_SVC_RMCP_UDP".to_owned(), v.to_owned())];
        let c = Config::load(Some(&file), env("shared"), &[]).unwrap();
        assert_eq!(c.rmcp.udp, RmcpUdp::Shared);
        let flag = [("rmcp", "udp", toml::Value::String("per-console".into()))];
        let c = Config::load(Some(&file), env("shared"), &flag).unwrap();
        assert_eq!(c.rmcp.udp, RmcpUdp::PerConsole);
        let err = Config::load(None, env("one-each"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("one-each") && err.contains("per-console"),
            "{err}"
        );
    }

    #[test]
    fn a_numeric_replica_id_from_the_environment_is_a_string() {
        let env = vec![(
            "PORTHOLE_CONSOLE_SVC_SERVICE_REPLICA_ID".to_owned(),
            "1".to_owned(),
        )];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(c.service.replica_id, "1");
    }

    /// One environment for both services: the conductor's keys (its
    /// `[console]` section has other keys) and the old shared names are not
    /// console-svc's.
    #[test]
    fn other_services_variables_are_not_ours() {
        let env = vec![
            (
                "PORTHOLE_CONSOLE_SVC_SERVICE_REPLICA_ID".to_owned(),
                "1".to_owned(),
            ),
            (
                "PORTHOLE_CONSOLE_SVC_CONSOLE_KILL_TIMEOUT".to_owned(),
                "4s".to_owned(),
            ),
            (
                "PORTHOLE_CONDUCTOR_CONSOLE_ENDPOINT".to_owned(),
                "http://x:1".to_owned(),
            ),
            (
                "PORTHOLE_CONDUCTOR_SERVICE_REPLICA_ID".to_owned(),
                "2".to_owned(),
            ),
            (
                "PORTHOLE_CONSOLE_ENDPOINT".to_owned(),
                "http://x:1".to_owned(),
            ),
        ];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(c.service.replica_id, "1");
        assert_eq!(c.console.kill_timeout, Duration::from_secs(4));
    }

    #[test]
    fn metrics_listen_is_off_unless_an_address_is_given() {
        let c = Config::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(c.service.metrics_listen, None);
        let env = |v: &str| {
            vec![(
                "PORTHOLE_CONSOLE_SVC_SERVICE_METRICS_LISTEN".to_owned(),
                v.to_owned(),
            )]
        };
        let c = Config::load(None, env("127.0.0.1:9464"), &[]).unwrap();
        assert_eq!(
            c.service.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let err = Config::load(None, env("nowhere"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("socket address"), "{err}");
    }
}
