//! `[vnc]`: the VNC proxy's viewer and upstream sides (see `vnc`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{list_or_csv, ConfigError};

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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
