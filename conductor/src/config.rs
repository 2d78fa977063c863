//! The conductor's configuration: one typed struct, read once at start.
//!
//! Sources, later ones winning: defaults, a TOML file (`--config` or
//! `PORTHOLE_CONDUCTOR_CONFIG`), `PORTHOLE_CONDUCTOR_<SECTION>_<KEY>`
//! environment variables (for example
//! `PORTHOLE_CONDUCTOR_API_AUTH_STRATEGY=http_basic`), then command-line
//! flags (see `main.rs`); porthole-common's loader layers them. Option names follow Ironic's where Ironic has one
//! (`auth_strategy`, `http_basic_auth_user_file`). Called by `main.rs` and tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use porthole_common::config::ConfigError;
pub use porthole_common::config::Layered;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub database: DatabaseConfig,
    pub console: ConsoleSvcConfig,
    pub power: PowerConfig,
    pub conductor: ConductorConfig,
    pub inspect: InspectSvcConfig,
    pub deploy: DeploySvcConfig,
    /// Hardware types and interfaces (Ironic's `enabled_*`/`default_*`).
    pub drivers: crate::drivers::DriversConfig,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthStrategy {
    Noauth,
    HttpBasic,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// REST listen address.
    pub listen: SocketAddr,
    /// `noauth` (loopback only unless allowed below) or `http_basic`.
    pub auth_strategy: AuthStrategy,
    /// htpasswd file with bcrypt hashes, for `http_basic`.
    pub http_basic_auth_user_file: Option<PathBuf>,
    /// Allow `noauth` on an address other than loopback (anyone who can
    /// reach the port controls every node's power).
    pub allow_noauth_on_any_address: bool,
    /// Base URL in links; defaults to the request's Host.
    pub public_endpoint: Option<String>,
    /// `text` or `json` log lines.
    pub log_format: String,
    /// Where to serve Prometheus metrics (`GET /metrics`); unset: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The SQLite file.
    pub path: PathBuf,
    /// 32-byte key that seals passwords at rest; created when missing.
    /// Defaults to `<path>.key`.
    pub secret_key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSvcConfig {
    /// console-svc's gRPC endpoint (`http://` or `https://`).
    pub endpoint: String,
    /// Longest gRPC call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM CA that signed console-svc's certificate (enables TLS).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Name to verify in console-svc's certificate.
    pub tls_domain: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerConfig {
    pub ipmitool_path: String,
    /// Longest single BMC command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long a power action may take to show in the BMC's power state.
    #[serde(with = "humantime_serde")]
    pub state_timeout: Duration,
    /// How often to look while waiting for it.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// The inspect service (`inspect.v1`), which implements the `inspector`
/// and `agent` inspect interfaces.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InspectSvcConfig {
    /// Its gRPC endpoint, e.g. `http://127.0.0.1:50063`; unset: nodes whose
    /// `inspect_interface` is `inspector` or `agent` cannot be inspected
    /// (their interface validates false, naming this option).
    pub endpoint: Option<String>,
    /// Longest gRPC call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM CA that signed the inspect service's certificate (enables TLS).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Name to verify in the inspect service's certificate.
    pub tls_domain: Option<String>,
}

impl Default for InspectSvcConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            timeout: Duration::from_secs(30),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_domain: None,
        }
    }
}

/// The deploy service (`deploy.v1`), which implements the `iscsi` deploy
/// interface and the `ilo-virtual-media` / `redfish-virtual-media` boot
/// interfaces (`provision::deploy_grpc`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeploySvcConfig {
    /// Its gRPC endpoint, e.g. `http://127.0.0.1:50061`; unset: nodes whose
    /// `deploy_interface` is `iscsi` cannot be deployed (their interface
    /// validates false, naming this option).
    pub endpoint: Option<String>,
    /// Longest gRPC call (PrepareRamdisk waits for the BMC to fetch both
    /// media).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM CA that signed the deploy service's certificate (enables TLS).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Name to verify in the deploy service's certificate.
    pub tls_domain: Option<String>,
    /// Ironic's `[deploy] power_off_after_deploy_failure`: power a node
    /// off when it lands in `deploy failed` (any deploy interface).
    pub power_off_after_deploy_failure: bool,
}

impl Default for DeploySvcConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            timeout: Duration::from_secs(120),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_domain: None,
            power_off_after_deploy_failure: true,
        }
    }
}

/// Ironic's `[conductor]` provisioning timeouts, in seconds as Ironic's
/// (0 disables a check; `check_provision_state_interval` 0 disables them
/// all). A node waiting past its timeout fails (`periodic`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConductorConfig {
    /// `wait call-back` → `deploy failed`.
    pub deploy_callback_timeout: u64,
    /// `inspect wait` → `inspect failed` (from inspection_started_at).
    pub inspect_wait_timeout: u64,
    /// `clean wait` → `clean failed`.
    pub clean_callback_timeout: u64,
    /// How often the timeouts are checked.
    pub check_provision_state_interval: u64,
    /// Lines of the node's serial console (from console-svc) appended to
    /// last_error when a deploy, inspection or cleaning fails; 0: none
    /// (`provision::evidence`).
    pub failure_console_log_lines: usize,
    /// Seconds to wait for that log before failing without it (with a
    /// note saying why).
    pub failure_console_log_timeout: u64,
}

impl Default for ConductorConfig {
    fn default() -> Self {
        Self {
            deploy_callback_timeout: 1800,
            inspect_wait_timeout: 1800,
            clean_callback_timeout: 1800,
            check_provision_state_interval: 60,
            failure_console_log_lines: 20,
            failure_console_log_timeout: 3,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6385)),
            auth_strategy: AuthStrategy::Noauth,
            http_basic_auth_user_file: None,
            allow_noauth_on_any_address: false,
            public_endpoint: None,
            log_format: "text".into(),
            metrics_listen: None,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            path: runtime_dir().join("conductor.sqlite"),
            secret_key_file: None,
        }
    }
}

impl Default for ConsoleSvcConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:50051".into(),
            timeout: Duration::from_secs(30),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_domain: None,
        }
    }
}

impl Default for PowerConfig {
    fn default() -> Self {
        Self {
            ipmitool_path: "ipmitool".into(),
            command_timeout: Duration::from_secs(20),
            state_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// `$XDG_RUNTIME_DIR/porthole` or `/tmp/porthole-<uid>`.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("porthole"),
        None => std::env::temp_dir().join(format!("porthole-{}", nix::unistd::getuid())),
    }
}

const SECTIONS: &[&str] = &[
    "api",
    "database",
    "console",
    "power",
    "conductor",
    "inspect",
    "deploy",
    "drivers",
];

/// The environment prefix and sections porthole-common's loader reads.
pub const LAYOUT: porthole_common::config::Layout<'static> = porthole_common::config::Layout {
    prefix: "PORTHOLE_CONDUCTOR_",
    sections: SECTIONS,
};

impl porthole_common::config::Layered for Config {
    const LAYOUT: porthole_common::config::Layout<'static> = LAYOUT;

    fn validate(&self) -> Result<(), ConfigError> {
        if self.api.auth_strategy == AuthStrategy::HttpBasic
            && self.api.http_basic_auth_user_file.is_none()
        {
            return Err(ConfigError::Invalid(
                "api.auth_strategy = http_basic needs api.http_basic_auth_user_file".into(),
            ));
        }
        porthole_common::config::check_log_format("api.log_format", &self.api.log_format)?;
        if self.power.poll_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "power.poll_interval must be above 0".into(),
            ));
        }
        if self.conductor.failure_console_log_timeout == 0 {
            return Err(ConfigError::Invalid(
                "conductor.failure_console_log_timeout must be above 0 (failure_console_log_lines = 0 turns the console evidence off)".into(),
            ));
        }
        crate::drivers::Registry::from_config(&self.drivers)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }
}

impl Config {
    /// The key file that seals passwords.
    pub fn secret_key_file(&self) -> PathBuf {
        self.database.secret_key_file.clone().unwrap_or_else(|| {
            let mut p = self.database.path.clone().into_os_string();
            p.push(".key");
            p.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_flags_override_defaults() {
        let env = vec![
            (
                "PORTHOLE_CONDUCTOR_API_AUTH_STRATEGY".to_owned(),
                "http_basic".to_owned(),
            ),
            (
                "PORTHOLE_CONDUCTOR_API_HTTP_BASIC_AUTH_USER_FILE".to_owned(),
                "/x".to_owned(),
            ),
            (
                "PORTHOLE_CONDUCTOR_POWER_STATE_TIMEOUT".to_owned(),
                "5s".to_owned(),
            ),
        ];
        let flags = [(
            "console",
            "endpoint",
            toml::Value::String("http://127.0.0.1:1".into()),
        )];
        let c = Config::load(None, env, &flags).unwrap();
        assert_eq!(c.api.auth_strategy, AuthStrategy::HttpBasic);
        assert_eq!(c.power.state_timeout, Duration::from_secs(5));
        assert_eq!(c.console.endpoint, "http://127.0.0.1:1");
    }

    #[test]
    fn conductor_timeouts_are_ironics_seconds() {
        let c = Config::load(None, Vec::new(), &[]).unwrap().conductor;
        assert_eq!(
            (
                c.deploy_callback_timeout,
                c.inspect_wait_timeout,
                c.clean_callback_timeout,
                c.check_provision_state_interval
            ),
            (1800, 1800, 1800, 60)
        );
        let env = vec![(
            "PORTHOLE_CONDUCTOR_CONDUCTOR_DEPLOY_CALLBACK_TIMEOUT".to_owned(),
            "0".to_owned(),
        )];
        let c = Config::load(None, env, &[]).unwrap().conductor;
        assert_eq!(c.deploy_callback_timeout, 0);
    }

    #[test]
    fn the_deploy_service_section_reads_its_env() {
        let c = Config::load(None, Vec::new(), &[]).unwrap().deploy;
        assert_eq!((c.endpoint, c.timeout), (None, Duration::from_secs(120)));
        let env = vec![
            (
                "PORTHOLE_CONDUCTOR_DEPLOY_ENDPOINT".to_owned(),
                "https://127.0.0.1:50061".to_owned(),
            ),
            (
                "PORTHOLE_CONDUCTOR_DEPLOY_TLS_CA".to_owned(),
                "/etc/porthole/ca.pem".to_owned(),
            ),
        ];
        let c = Config::load(None, env, &[]).unwrap().deploy;
        assert_eq!(c.endpoint.as_deref(), Some("https://127.0.0.1:50061"));
        assert_eq!(c.tls_ca, Some(PathBuf::from("/etc/porthole/ca.pem")));
    }

    #[test]
    fn power_off_after_deploy_failure_is_ironics_default_true() {
        let c = Config::load(None, Vec::new(), &[]).unwrap().deploy;
        assert!(c.power_off_after_deploy_failure);
        let env = vec![(
            "PORTHOLE_CONDUCTOR_DEPLOY_POWER_OFF_AFTER_DEPLOY_FAILURE".to_owned(),
            "false".to_owned(),
        )];
        let c = Config::load(None, env, &[]).unwrap().deploy;
        assert!(!c.power_off_after_deploy_failure);
    }

    #[test]
    fn log_format_is_text_or_json() {
        let s = |v: &str| toml::Value::String(v.into());
        let err = Config::load(None, Vec::new(), &[("api", "log_format", s("xml"))])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api.log_format must be \"text\" or \"json\", not \"xml\""),
            "{err}"
        );
        for ok in ["text", "json"] {
            Config::load(None, Vec::new(), &[("api", "log_format", s(ok))]).unwrap();
        }
    }

    #[test]
    fn http_basic_needs_a_user_file() {
        let env = vec![(
            "PORTHOLE_CONDUCTOR_API_AUTH_STRATEGY".to_owned(),
            "http_basic".to_owned(),
        )];
        let err = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(err.contains("http_basic_auth_user_file"), "{err}");
    }

    #[test]
    fn numeric_strings_from_the_environment_stay_strings() {
        let env = vec![(
            "PORTHOLE_CONDUCTOR_POWER_IPMITOOL_PATH".to_owned(),
            "1".to_owned(),
        )];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(c.power.ipmitool_path, "1");
    }

    /// One environment for both services: console-svc's keys (its
    /// `[console]` section has other keys) are not the conductor's; an
    /// unknown key of its own is an error naming the variable.
    #[test]
    fn console_svc_variables_are_not_ours() {
        let var = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let env = vec![
            var("PORTHOLE_CONDUCTOR_CONSOLE_ENDPOINT", "http://127.0.0.1:7"),
            var("PORTHOLE_CONSOLE_SVC_CONSOLE_PORT_RANGE", "10000:10100"),
            var("PORTHOLE_CONSOLE_SVC_SERVICE_REPLICA_ID", "1"),
        ];
        let c = Config::load(None, env.clone(), &[]).unwrap();
        assert_eq!(c.console.endpoint, "http://127.0.0.1:7");
        let mut env = env;
        env.push(var("PORTHOLE_CONDUCTOR_CONSOLE_PORT_RANGE", "10000:10100"));
        let err = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(
            err.contains("PORTHOLE_CONDUCTOR_CONSOLE_PORT_RANGE"),
            "{err}"
        );
    }

    #[test]
    fn metrics_listen_is_off_unless_an_address_is_given() {
        assert_eq!(
            Config::load(None, Vec::new(), &[])
                .unwrap()
                .api
                .metrics_listen,
            None
        );
        let env = vec![(
            "PORTHOLE_CONDUCTOR_API_METRICS_LISTEN".to_owned(),
            "127.0.0.1:9465".to_owned(),
        )];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(
            c.api.metrics_listen,
            Some("127.0.0.1:9465".parse().unwrap())
        );
    }
}
