//! VNC consoles: a native RFB proxy between viewers (nova-novncproxy, noVNC
//! through it, vncdotool, any RFB client) and the BMC's own VNC server.
//!
//! console-svc listens on the console's port. Every viewer connection runs
//! both handshakes, then the proxy gets out of the way:
//!
//! ```text
//!  viewer connects
//!     │  RFB 003.008, security types from vnc.auth_schemes ([1], [19] or [19,1])
//!     ▼
//!  viewer chose ──VeNCrypt──▶ 0.2, X509None, TLS (client cert required)
//!     │ None                        │
//!     ▼                             ▼
//!  connect upstream: version 3.3/3.7/3.8, None | VncAuth | VeNCrypt(X509Vnc, TLS)
//!     │ ok                          │ failed (wrong password, not RFB, refused, ...)
//!     ▼                             ▼
//!  SecurityResult 0 to viewer     SecurityResult 1 + reason to viewer, close;
//!     │                           health Failed(reason) → last_error
//!     ▼
//!  relay: ClientInit ▶ upstream, ServerInit ◀ ..., bytes untouched, until either side closes
//! ```
//!
//! The viewer side is bounded: `handshake_timeout` for its whole part and
//! `max_handshake_bytes` before the SecurityResult. Each viewer has its own
//! upstream connection; `exclusive` allows one viewer per console at a time.
//!
//! Configuration (`[vnc]`, or `PORTHOLE_CONSOLE_SVC_VNC_<KEY>`; lists may be
//! comma-separated strings), with the defaults:
//!
//! ```toml
//! [vnc]
//! enabled = true
//! auth_schemes = ["none"]          # offered to viewers, in order: "none", "vencrypt"
//! # vencrypt (VeNCrypt X509None) needs all three (PEM files):
//! # vencrypt_cert = "/etc/porthole/vnc/server.pem"
//! # vencrypt_key = "/etc/porthole/vnc/server-key.pem"
//! # vencrypt_ca_certs = "/etc/porthole/vnc/client-ca.pem"   # viewers' client certs chain here
//! handshake_timeout = "60s"        # a viewer's whole part of the handshake
//! max_handshake_bytes = 65536      # what a viewer may send before its SecurityResult
//! exclusive = false                # true: one viewer per console at a time
//! upstream_security = ["vencrypt", "vncauth", "none"]  # preference among what the server offers
//! # upstream_ca_certs = "/etc/porthole/vnc/bmc-ca.pem"  # trust for VeNCrypt X509 upstreams;
//! #   a self-signed server certificate listed here is trusted as is (TigerVNC, many BMCs)
//! upstream_timeout = "10s"         # connect + upstream handshake
//! ```
//!
//! nova-novncproxy's side (`nova.conf`): `[vnc] auth_schemes = vencrypt` with
//! `vencrypt_client_cert`/`vencrypt_client_key` issued by our
//! `vencrypt_ca_certs` and `vencrypt_ca_certs` = the CA of our
//! `vencrypt_cert`; or `auth_schemes = none`.
//!
//! Seams: [`rfb`] wire types and parsers, [`accept`] the viewer side
//! (server role), [`upstream`] the upstream side (client role), [`tls`]
//! rustls configs, [`des_auth`] VNC authentication, [`stream`] byte-stream
//! wrappers, [`backend`] the [`crate::backend::ConsoleBackend`] and relay.

pub mod accept;
pub mod backend;
pub mod des_auth;
pub mod rfb;
pub mod stream;
pub mod tls;
pub mod upstream;
mod viewer;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests_accept;
#[cfg(test)]
mod tests_relay;
#[cfg(test)]
mod tests_upstream;
#[cfg(test)]
mod testutil;

use std::time::Duration;

pub use backend::{VncBackend, VncSettings};
use rfb::Version;

/// Everything that can go wrong in a VNC connection, on either side.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),

    // The viewer side.
    #[error("the viewer does not speak RFB (it sent {0})")]
    ViewerNotRfb(String),
    #[error("the viewer asked for RFB {0}; only 3.8 is served")]
    ViewerVersion(Version),
    #[error("the viewer chose security type {0}, which was not offered")]
    ViewerChoice(u8),
    #[error("viewer VeNCrypt: {0}")]
    ViewerVencrypt(String),
    #[error("viewer TLS handshake: {0}")]
    ViewerTls(std::io::Error),
    #[error("the viewer did not finish its handshake within {0:?}")]
    ViewerTimeout(Duration),
    #[error("another viewer is connected and this console is exclusive")]
    Busy,
    #[error(transparent)]
    Fenced(crate::coordinator::CoordError),

    // The upstream side.
    #[error("cannot connect: {0}")]
    UpstreamConnect(std::io::Error),
    #[error("no handshake within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("not a VNC server: it sent {0} instead of an RFB version")]
    UpstreamNotRfb(String),
    #[error("unsupported RFB version {0}")]
    UpstreamVersion(Version),
    #[error("the server refused the connection: {0}")]
    UpstreamRefused(String),
    #[error("no usable security type among {0}")]
    NoCommonSecurity(String),
    #[error(
        "the server offers only anonymous-TLS VeNCrypt subtypes ({0}), which rustls cannot do; \
         enable X509Vnc or VncAuth on the VNC server"
    )]
    AnonymousTlsOnly(String),
    #[error("the server asks for a VNC password and the console has none")]
    PasswordRequired,
    #[error("VeNCrypt: {0}")]
    UpstreamVencrypt(String),
    #[error("TLS: {0}")]
    UpstreamTls(std::io::Error),
    #[error("authentication failed (wrong VNC password?): {0}")]
    AuthFailed(String),
    #[error("{what} of {len} bytes is longer than {max}")]
    Oversized {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl VncError {
    /// Worth trying again later: the upstream could not be reached at all.
    /// Authentication and protocol failures are not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            VncError::UpstreamConnect(_) | VncError::UpstreamTimeout(_) | VncError::Io(_)
        )
    }
}

impl From<VncError> for crate::backend::BackendError {
    fn from(err: VncError) -> Self {
        match err {
            VncError::Fenced(e) => Self::Fenced(e),
            other => Self::Failed(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod contract_tests {
    use super::VncError;
    use crate::backend::BackendError;
    use crate::coordinator::CoordError;

    #[test]
    fn a_vnc_error_converts_into_the_backend_error() {
        let err = BackendError::from(VncError::Fenced(CoordError::PastDeadline("d".into())));
        assert!(matches!(err, BackendError::Fenced(_)), "{err}");
        let err = BackendError::from(VncError::PasswordRequired);
        assert_eq!(
            err.to_string(),
            "the server asks for a VNC password and the console has none"
        );
        assert!(matches!(
            err.downcast_ref::<VncError>(),
            Some(VncError::PasswordRequired)
        ));
    }
}
