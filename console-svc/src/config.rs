//! console-svc's configuration: one typed struct, read once at start.
//!
//! Sources, later ones winning: built-in defaults, a TOML file
//! (`--config`), `PORTHOLE_<SECTION>_<KEY>` environment variables (for
//! example `PORTHOLE_CONSOLE_PORT_RANGE=10000:10100`), then command-line
//! flags. Option names follow Ironic's `[console]` section where Ironic has
//! one; README.md has the full reference.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ports::PortRange;

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
    pub service: ServiceConfig,
    pub console: ConsoleConfig,
    pub native: NativeConfig,
    pub vnc: VncConfig,
    pub etcd: EtcdConfig,
}

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

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// This replica's name, reported as console owner.
    pub replica_id: String,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Native,
    Socat,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Socat => "socat",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `native` (default) or `socat`.
    pub backend: Backend,
    /// Ironic's `port_range`: `START:END`, END excluded.
    pub port_range: PortRange,
    /// Ironic's `socat_address`: the address console ports bind to.
    pub socat_address: IpAddr,
    /// Host put in console URLs; defaults to `socat_address`.
    pub advertise_host: Option<String>,
    /// Ironic's `terminal_pid_dir`: where started processes are recorded.
    pub terminal_pid_dir: PathBuf,
    /// Ironic's `subprocess_checking_interval`: how often to look whether a
    /// started process is ready.
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
    /// The program socat runs per connection as `<helper> sol-exec`;
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
    /// Viewers per console at once; more are refused with a message.
    pub max_viewers: usize,
}

/// A security type offered to VNC viewers (nova's `[vnc] auth_schemes`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VncAuthScheme {
    /// RFB security type 1.
    None,
    /// RFB security type 19, subtype X509None (260): TLS with client
    /// certificates.
    Vencrypt,
}

/// An upstream security method, in order of preference.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VncUpstreamSecurity {
    /// VeNCrypt: X509Vnc/X509None over TLS (needs `upstream_ca_certs`), or
    /// its plain VncAuth/None subtypes.
    Vencrypt,
    /// VNC authentication (type 2, DES challenge).
    Vncauth,
    /// No authentication (type 1).
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VncConfig {
    /// Serve VNC consoles at all.
    pub enabled: bool,
    /// Security types offered to viewers, in order: `none`, `vencrypt`
    /// (nova's `auth_schemes`). A list, or a comma-separated string.
    #[serde(deserialize_with = "list_or_csv")]
    pub auth_schemes: Vec<VncAuthScheme>,
    /// Our TLS certificate (PEM) for VeNCrypt viewers.
    pub vencrypt_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub vencrypt_key: Option<PathBuf>,
    /// CA (PEM) that viewers' client certificates must chain to.
    pub vencrypt_ca_certs: Option<PathBuf>,
    /// How long a viewer may take for its part of the handshake (nova waits
    /// for the browser's choice in the middle of it).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Bytes a viewer may send before its handshake completes (TLS included).
    pub max_handshake_bytes: usize,
    /// One viewer per console at a time; others are refused with a reason.
    pub exclusive: bool,
    /// Upstream security methods in order of preference, among those the
    /// VNC server offers: `vencrypt`, `vncauth`, `none`.
    #[serde(deserialize_with = "list_or_csv")]
    pub upstream_security: Vec<VncUpstreamSecurity>,
    /// CA certificates (PEM) trusted for VeNCrypt X509 upstreams. A
    /// self-signed server certificate listed here is trusted as is.
    pub upstream_ca_certs: Option<PathBuf>,
    /// Bound on connecting to an upstream plus its handshake.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
}

impl Default for VncConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            auth_schemes: vec![VncAuthScheme::None],
            vencrypt_cert: None,
            vencrypt_key: None,
            vencrypt_ca_certs: None,
            handshake_timeout: Duration::from_secs(60),
            max_handshake_bytes: 64 * 1024,
            exclusive: false,
            upstream_security: vec![
                VncUpstreamSecurity::Vencrypt,
                VncUpstreamSecurity::Vncauth,
                VncUpstreamSecurity::None,
            ],
            upstream_ca_certs: None,
            upstream_timeout: Duration::from_secs(10),
        }
    }
}

impl VncConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("vnc.{m}")));
        let dups = |n: usize, v: Vec<String>| {
            v.iter().collect::<std::collections::HashSet<_>>().len() != n
        };
        if self.auth_schemes.is_empty() {
            return bad("auth_schemes must name at least one of none, vencrypt");
        }
        if dups(
            self.auth_schemes.len(),
            self.auth_schemes.iter().map(|s| format!("{s:?}")).collect(),
        ) {
            return bad("auth_schemes names a scheme twice");
        }
        if self.upstream_security.is_empty() {
            return bad("upstream_security must name at least one of vencrypt, vncauth, none");
        }
        let tls = [
            &self.vencrypt_cert,
            &self.vencrypt_key,
            &self.vencrypt_ca_certs,
        ];
        if self.auth_schemes.contains(&VncAuthScheme::Vencrypt) && tls.iter().any(|p| p.is_none()) {
            return bad(
                "auth_schemes vencrypt needs vencrypt_cert, vencrypt_key and vencrypt_ca_certs",
            );
        }
        if self.handshake_timeout.is_zero() || self.upstream_timeout.is_zero() {
            return bad("handshake_timeout and upstream_timeout must be above 0");
        }
        if self.max_handshake_bytes < 1024 {
            return bad("max_handshake_bytes must be at least 1024");
        }
        Ok(())
    }
}

/// A list, or one string of comma-separated items (for `PORTHOLE_VNC_*`).
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
        }
    }
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

impl Config {
    /// Defaults, then `file`, then `PORTHOLE_*` variables from `env`, then
    /// `overrides` (`section.key = value` pairs from flags).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, &str, toml::Value)],
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|source| ConfigError::Parse {
                        path: path.to_owned(),
                        source: Box::new(source),
                    })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("PORTHOLE_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = ["service", "console", "native", "vnc", "etcd"]
                .iter()
                .find_map(|s| Some((*s, rest.strip_prefix(s)?.strip_prefix('_')?)))
            else {
                continue;
            };
            set(&mut table, section, key, env_value(&value));
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

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

/// An environment value as TOML: numbers and booleans as such, the rest as
/// strings (so `10000:10100` and `5s` need no quoting).
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

    #[test]
    fn file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("porthole-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[console]\nport_range = \"11000:11010\"\nbackend = \"socat\"\nkill_timeout = \"3s\"\n",
        )
        .unwrap();
        let env = vec![
            (
                "PORTHOLE_CONSOLE_PORT_RANGE".to_owned(),
                "12000:12010".to_owned(),
            ),
            (
                "PORTHOLE_NATIVE_SCROLLBACK_BYTES".to_owned(),
                "100".to_owned(),
            ),
            (
                "PORTHOLE_ETCD_ENDPOINTS".to_owned(),
                "http://127.0.0.1:1, http://127.0.0.1:2".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let flags = [("console", "backend", toml::Value::String("native".into()))];
        let err = Config::load(Some(&file), env.clone(), &flags).unwrap_err();
        assert!(err.to_string().contains("secret_key_file"), "{err}");
        let mut env = env;
        env.push((
            "PORTHOLE_ETCD_SECRET_KEY_FILE".to_owned(),
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
            env("PORTHOLE_VNC_UPSTREAM_SECURITY", "vncauth, none"),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.vnc.upstream_security,
            vec![VncUpstreamSecurity::Vncauth, VncUpstreamSecurity::None]
        );
        let err = Config::load(None, env("PORTHOLE_VNC_AUTH_SCHEMES", "none,vencrypt"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("vencrypt_cert"), "{err}");
        let err = Config::load(None, env("PORTHOLE_VNC_AUTH_SCHEMES", "vnc"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("vnc"), "{err}");
    }

    #[test]
    fn errors_name_the_problem() {
        let env = vec![("PORTHOLE_CONSOLE_PORT_RANGE".to_owned(), "9:1".to_owned())];
        let err = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(err.contains("port_range"), "{err}");
        let env = vec![("PORTHOLE_CONSOLE_BOGUS".to_owned(), "1".to_owned())];
        let err = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
