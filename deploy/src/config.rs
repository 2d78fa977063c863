//! The deploy service's configuration: defaults < TOML file
//! (`--config` / `PORTHOLE_DEPLOY_CONFIG`) < `PORTHOLE_DEPLOY_<SECTION>_<KEY>`
//! < flags, loaded by [`porthole_common::config`]. Secrets (Swift's key or
//! Keystone password, the temp-URL key) are read from files named here,
//! never from the environment or a flag.
//!
//! Callers: `main.rs`, [`crate::run`], tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use porthole_common::config::Layered;
use porthole_common::config::{ConfigError, Layout};
use porthole_common::tls::ServerTls;
use serde::{Deserialize, Serialize};

pub const LAYOUT: Layout<'static> = Layout {
    prefix: "PORTHOLE_DEPLOY_",
    sections: &[
        "service",
        "conductor",
        "store",
        "swift",
        "redfish",
        "instance",
    ],
};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub service: Service,
    pub conductor: Conductor,
    pub store: StoreConfig,
    pub swift: Swift,
    pub redfish: Redfish,
    pub instance: crate::instance::config::Instance,
}

/// The gRPC endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    pub listen: SocketAddr,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_client_ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    pub metrics_listen: Option<SocketAddr>,
    /// `text` or `json`.
    pub log_format: String,
}

impl Default for Service {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50061".parse().expect("literal"),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_handshake_timeout: porthole_common::tls::DEFAULT_HANDSHAKE_TIMEOUT,
            metrics_listen: None,
            log_format: "text".into(),
        }
    }
}

impl Service {
    pub fn server_tls(&self) -> Result<Option<ServerTls>, porthole_common::tls::TlsError> {
        ServerTls::from_options(
            "service.tls_",
            self.tls_cert_file.as_deref(),
            self.tls_key_file.as_deref(),
            self.tls_client_ca_file.as_deref(),
        )
    }
}

/// What the ramdisk is told about the conductor.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conductor {
    /// The conductor's API URL as the ramdisk reaches it (the floppy's
    /// `ironic_api_url`); validate() refuses every node while unset.
    pub api_url: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded HTTP store (no Swift needed).
    #[default]
    Http,
    Swift,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: Backend,
    /// How long an uploaded image and its URL live (Ironic's
    /// `deploy_helper_images_ttl`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// The embedded store's HTTP listener.
    pub http_listen: SocketAddr,
    /// How BMCs reach it (`http://host:port`); unset: the listen address.
    pub http_public_url: Option<String>,
    /// Where its objects are kept (cleared at start).
    pub http_dir: PathBuf,
    /// Size of the floppy image.
    pub floppy_size_kib: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Http,
            ttl: Duration::from_secs(600),
            http_listen: "127.0.0.1:50062".parse().expect("literal"),
            http_public_url: None,
            http_dir: PathBuf::from("/var/lib/porthole/deploy/objects"),
            floppy_size_kib: crate::image::vfat::DEFAULT_SIZE_KIB,
        }
    }
}

/// How the Swift store authenticates (Ironic's `[swift] auth_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SwiftAuthType {
    /// tempauth v1.0 (`auth_url` is `.../auth/v1.0`, `user` `account:user`).
    #[default]
    Tempauth,
    /// Keystone v3 password (`auth_url` is Keystone's, with or without
    /// `/v3`); the storage URL comes from the catalog.
    #[serde(alias = "v3password")]
    Password,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Swift {
    pub auth_type: SwiftAuthType,
    /// tempauth's URL, e.g. `http://127.0.0.1:8080/auth/v1.0`, or
    /// Keystone's, e.g. `http://127.0.0.1:5000/v3`.
    pub auth_url: Option<String>,
    /// tempauth: `account:user`; Keystone: the user's name.
    pub user: Option<String>,
    /// File holding the user's key (tempauth) or password (Keystone), first
    /// line.
    pub key_file: Option<PathBuf>,
    /// File holding the account's temp-URL key; unset: read from the account.
    pub temp_url_key_file: Option<PathBuf>,
    /// Keystone: the user's domain (name).
    pub user_domain_name: String,
    /// Keystone: the project the token is scoped to (required there).
    pub project_name: Option<String>,
    /// Keystone: the project's domain (name).
    pub project_domain_name: String,
    /// Keystone: the region of the `object-store` endpoint; unset: the
    /// first one with `interface`.
    pub region_name: Option<String>,
    /// Keystone: which `object-store` endpoint (`public`, `internal`,
    /// `admin`).
    pub interface: String,
    /// Ironic's `swift_ilo_container`.
    pub container: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Swift {
    fn default() -> Self {
        Self {
            auth_type: SwiftAuthType::Tempauth,
            auth_url: None,
            user: None,
            key_file: None,
            temp_url_key_file: None,
            user_domain_name: "Default".into(),
            project_name: None,
            project_domain_name: "Default".into(),
            region_name: None,
            interface: "public".into(),
            container: "ironic_ilo_container".into(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Swift {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (name, set) in [
            ("swift.auth_url", self.auth_url.is_some()),
            ("swift.user", self.user.is_some()),
            ("swift.key_file", self.key_file.is_some()),
        ] {
            if !set {
                return bad(format!("store.backend = \"swift\" needs {name}"));
            }
        }
        if let Some(u) = &self.auth_url {
            check_url("swift.auth_url", u)?;
        }
        if self.auth_type == SwiftAuthType::Password {
            if self.project_name.as_deref().is_none_or(str::is_empty) {
                return bad(
                    "swift.auth_type = \"password\" (Keystone) needs swift.project_name: \
                     the catalog comes with a project-scoped token"
                        .into(),
                );
            }
            if !["public", "internal", "admin"].contains(&self.interface.as_str()) {
                return bad(format!(
                    "swift.interface must be public, internal or admin, not {:?}",
                    self.interface
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redfish {
    /// Bound on each Redfish request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Redfish {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
        }
    }
}

impl porthole_common::config::Layered for Config {
    const LAYOUT: porthole_common::config::Layout<'static> = LAYOUT;

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let log_format = &self.service.log_format;
        porthole_common::config::check_log_format("service.log_format", log_format)?;
        if self.store.ttl.as_secs() == 0 {
            return bad("store.ttl must be at least 1 s".into());
        }
        if self.store.floppy_size_kib < 64 || self.store.floppy_size_kib > 2880 {
            return bad("store.floppy_size_kib must be between 64 and 2880".into());
        }
        if let Some(u) = &self.conductor.api_url {
            check_url("conductor.api_url", u)?;
        }
        if let Some(u) = &self.store.http_public_url {
            check_url("store.http_public_url", u)?;
        }
        self.instance.validate()?;
        if self.store.backend == Backend::Swift {
            self.swift.validate()?;
        }
        Ok(())
    }
}

fn check_url(name: &str, value: &str) -> Result<(), ConfigError> {
    match url::Url::parse(value) {
        Ok(u) if ["http", "https"].contains(&u.scheme()) && u.host().is_some() => Ok(()),
        _ => Err(ConfigError::Invalid(format!(
            "{name} must be an http(s) URL with a host, not {value:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_sections_and_keys_reach_the_struct() {
        let c = Config::load(
            None,
            env(&[
                ("PORTHOLE_DEPLOY_STORE_TTL", "90s"),
                ("PORTHOLE_DEPLOY_CONDUCTOR_API_URL", "http://192.0.2.1:6385"),
                ("PORTHOLE_DEPLOY_STORE_BACKEND", "swift"),
                (
                    "PORTHOLE_DEPLOY_SWIFT_AUTH_URL",
                    "http://127.0.0.1:8080/auth/v1.0",
                ),
                ("PORTHOLE_DEPLOY_SWIFT_USER", "test:tester"),
                ("PORTHOLE_DEPLOY_SWIFT_KEY_FILE", "/run/key"),
                ("PORTHOLE_DEPLOY_CONFIG", "ignored-here"),
                ("PORTHOLE_CONDUCTOR_API_LISTEN", "not ours"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.store.ttl, Duration::from_secs(90));
        assert_eq!(c.store.backend, Backend::Swift);
        assert_eq!(
            c.conductor.api_url.as_deref(),
            Some("http://192.0.2.1:6385")
        );
        assert_eq!(c.swift.container, "ironic_ilo_container");
    }

    #[test]
    fn defaults_are_the_embedded_store_with_a_ten_minute_ttl() {
        let c = Config::load(None, env(&[]), &[]).unwrap();
        assert_eq!(c.store.backend, Backend::Http);
        assert_eq!(c.store.ttl, Duration::from_secs(600));
        assert!(c.conductor.api_url.is_none());
    }

    /// A Keystone-backed Swift store's settings, with `extra` on top.
    fn keystone(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v = vec![
            ("PORTHOLE_DEPLOY_STORE_BACKEND", "swift"),
            ("PORTHOLE_DEPLOY_SWIFT_AUTH_TYPE", "password"),
            ("PORTHOLE_DEPLOY_SWIFT_AUTH_URL", "http://127.0.0.1:5000/v3"),
            ("PORTHOLE_DEPLOY_SWIFT_USER", "ironic"),
            ("PORTHOLE_DEPLOY_SWIFT_KEY_FILE", "/run/ironic-password"),
        ];
        for (k, val) in extra {
            v.retain(|(have, _)| have != k);
            v.push((k, val));
        }
        v
    }

    #[test]
    fn keystone_settings_reach_the_struct_with_ironics_defaults() {
        let c = Config::load(
            None,
            env(&keystone(&[
                ("PORTHOLE_DEPLOY_SWIFT_PROJECT_NAME", "service"),
                ("PORTHOLE_DEPLOY_SWIFT_REGION_NAME", "RegionTwo"),
            ])),
            &[],
        )
        .unwrap();
        assert_eq!(c.swift.auth_type, SwiftAuthType::Password);
        assert_eq!(c.swift.project_name.as_deref(), Some("service"));
        assert_eq!(c.swift.region_name.as_deref(), Some("RegionTwo"));
        assert_eq!(c.swift.user_domain_name, "Default");
        assert_eq!(c.swift.project_domain_name, "Default");
        assert_eq!(c.swift.interface, "public");
        let c = Config::load(None, env(&[]), &[]).unwrap();
        assert_eq!(c.swift.auth_type, SwiftAuthType::Tempauth);
    }

    #[test]
    fn bad_settings_are_named() {
        for (vars, want) in [
            (
                vec![("PORTHOLE_DEPLOY_STORE_BACKEND", "swift")],
                "needs swift.auth_url",
            ),
            (
                vec![("PORTHOLE_DEPLOY_CONDUCTOR_API_URL", "ftp://x")],
                "conductor.api_url must be an http(s) URL",
            ),
            (vec![("PORTHOLE_DEPLOY_STORE_TTL", "0s")], "store.ttl"),
            (
                keystone(&[]),
                "swift.auth_type = \"password\" (Keystone) needs swift.project_name",
            ),
            (
                keystone(&[
                    ("PORTHOLE_DEPLOY_SWIFT_PROJECT_NAME", "service"),
                    ("PORTHOLE_DEPLOY_SWIFT_INTERFACE", "private"),
                ]),
                "swift.interface must be public, internal or admin, not \"private\"",
            ),
            (
                keystone(&[
                    ("PORTHOLE_DEPLOY_SWIFT_PROJECT_NAME", "service"),
                    ("PORTHOLE_DEPLOY_SWIFT_AUTH_URL", "keystone:5000"),
                ]),
                "swift.auth_url must be an http(s) URL",
            ),
            (
                keystone(&[("PORTHOLE_DEPLOY_SWIFT_AUTH_TYPE", "token")]),
                "swift.auth_type",
            ),
            (
                vec![("PORTHOLE_DEPLOY_NOPE_X", "1")],
                "PORTHOLE_DEPLOY_NOPE_X",
            ),
        ] {
            let err = Config::load(None, env(&vars), &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{vars:?}: {err}");
        }
    }
}
