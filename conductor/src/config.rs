//! The conductor's configuration: one typed struct, read once at start.
//!
//! Sources, later ones winning: defaults, a TOML file (`--config`),
//! `PORTHOLE_<SECTION>_<KEY>` environment variables (for example
//! `PORTHOLE_API_AUTH_STRATEGY=http_basic`), then command-line flags (see
//! `main.rs`). Option names follow Ironic's where Ironic has one
//! (`auth_strategy`, `http_basic_auth_user_file`). Called by `main.rs` and tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub database: DatabaseConfig,
    pub console: ConsoleSvcConfig,
    pub power: PowerConfig,
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

const SECTIONS: &[&str] = &["api", "database", "console", "power"];

impl Config {
    /// Defaults, then `file`, then `PORTHOLE_*` from `env`, then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, &str, toml::Value)],
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => read_table(path)?,
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("PORTHOLE_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let found = SECTIONS
                .iter()
                .find_map(|s| Some((*s, rest.strip_prefix(s)?.strip_prefix('_')?)));
            if let Some((section, key)) = found {
                set(&mut table, section, key, env_value(&value));
            }
        }
        for (section, key, value) in overrides {
            set(&mut table, section, key, value.clone());
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.api.auth_strategy == AuthStrategy::HttpBasic
            && self.api.http_basic_auth_user_file.is_none()
        {
            return Err(ConfigError::Invalid(
                "api.auth_strategy = http_basic needs api.http_basic_auth_user_file".into(),
            ));
        }
        if !["text", "json"].contains(&self.api.log_format.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "api.log_format must be \"text\" or \"json\", not {:?}",
                self.api.log_format
            )));
        }
        if self.power.poll_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "power.poll_interval must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// The key file that seals passwords.
    pub fn secret_key_file(&self) -> PathBuf {
        self.database.secret_key_file.clone().unwrap_or_else(|| {
            let mut p = self.database.path.clone().into_os_string();
            p.push(".key");
            p.into()
        })
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

/// An environment value as TOML: numbers and booleans as such, else strings.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(n) = raw.parse::<i64>() {
        return toml::Value::Integer(n);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_flags_override_defaults() {
        let env = vec![
            (
                "PORTHOLE_API_AUTH_STRATEGY".to_owned(),
                "http_basic".to_owned(),
            ),
            (
                "PORTHOLE_API_HTTP_BASIC_AUTH_USER_FILE".to_owned(),
                "/x".to_owned(),
            ),
            ("PORTHOLE_POWER_STATE_TIMEOUT".to_owned(), "5s".to_owned()),
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
            "PORTHOLE_API_AUTH_STRATEGY".to_owned(),
            "http_basic".to_owned(),
        )];
        let err = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(err.contains("http_basic_auth_user_file"), "{err}");
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
            "PORTHOLE_API_METRICS_LISTEN".to_owned(),
            "127.0.0.1:9465".to_owned(),
        )];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(
            c.api.metrics_listen,
            Some("127.0.0.1:9465".parse().unwrap())
        );
    }
}
