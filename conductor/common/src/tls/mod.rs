//! TLS for Porthole's gRPC, both ends: the server's certificate, key and
//! optional client CA ([`ServerTls`], turned into a rustls acceptor with
//! ALPN `h2`), the client's CA, certificate and key ([`ClientTls`], turned
//! into tonic's client TLS config), and the accept loop that does each
//! handshake on its own task within a bound ([`incoming`]).
//!
//! rustls with the ring provider only. Files are read when the config is
//! built, once; a key's content is never put in an error or a log line.
//!
//! Callers: console-svc (its `[service]` TLS keys, its CLI, the replica to
//! replica forward) and the conductor (its `[console]` client TLS keys).

mod incoming;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

pub use incoming::{incoming, TlsIncoming, DEFAULT_HANDSHAKE_TIMEOUT, MAX_HANDSHAKES};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("{0}")]
    Incomplete(String),
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server's TLS files: certificate chain and key (PEM), and the CA whose
/// client certificates it accepts (mutual TLS: without one signed by it, a
/// client is refused in the handshake).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTls {
    /// From a service's three optional keys (`prefix` names them in
    /// errors, e.g. `service.tls_`): none set is plaintext (`None`); a
    /// certificate needs its key and the other way round; a client CA
    /// needs both.
    pub fn from_options(
        prefix: &str,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
        client_ca_file: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert_file, key_file) {
            (Some(c), Some(k)) => Ok(Some(Self {
                cert_file: c.to_owned(),
                key_file: k.to_owned(),
                client_ca_file: client_ca_file.map(Path::to_owned),
            })),
            (None, None) if client_ca_file.is_none() => Ok(None),
            (None, None) => Err(TlsError::Incomplete(format!(
                "{prefix}client_ca_file needs {prefix}cert_file and {prefix}key_file"
            ))),
            (Some(_), None) => Err(TlsError::Incomplete(format!(
                "{prefix}cert_file needs {prefix}key_file"
            ))),
            (None, Some(_)) => Err(TlsError::Incomplete(format!(
                "{prefix}key_file needs {prefix}cert_file"
            ))),
        }
    }

    /// Read the files (once) and build the acceptor: ALPN `h2`, client
    /// certificates required and checked against the client CA when one is
    /// set.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let provider = provider();
        let chain = read_certs("certificate", &self.cert_file)?;
        let key = read_key(&self.key_file)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca_file {
            Some(ca) => {
                let roots = roots(ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: ca.clone(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A client's TLS settings: the CA that signed the server's certificate
/// (none: the system's roots), the client's own certificate and key for
/// mutual TLS, and the name to check in the server's certificate (none:
/// the URL's host).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Whether a channel to `url` uses TLS: an `https://` URL, or any TLS
    /// file given.
    pub fn wanted(&self, url: &str) -> bool {
        url.starts_with("https://")
            || self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
    }

    /// Read the files (once) and build tonic's client config; `names`
    /// are the option names for the certificate and key, for errors.
    pub fn tonic(
        &self,
        names: (&str, &str),
    ) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_file {
            Some(ca) => {
                // Parsed here so that a bad file is named now, not as a
                // handshake failure on the first call.
                let pem = read("CA", ca)?;
                certs_in("CA", ca, &pem)?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                let cert = read("certificate", c)?;
                certs_in("certificate", c, &cert)?;
                let key = read("key", k)?;
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| pem_error("key", k, e))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(TlsError::Incomplete(format!(
                    "{} needs {}",
                    names.0, names.1
                )))
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete(format!(
                    "{} needs {}",
                    names.1, names.0
                )))
            }
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}

/// Why a client channel could not be set up: a bad endpoint URL or TLS
/// settings that do not load.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}")]
    Endpoint(#[from] tonic::transport::Error),
    #[error("{0}")]
    Tls(#[from] TlsError),
}

impl ClientTls {
    /// A lazily connecting gRPC channel to another Porthole service (the
    /// caller starts while the service is down): 5 s to connect, Nagle off
    /// (tonic's default, said out loud), `timeout` per call, TLS when
    /// [`ClientTls::wanted`]; `names` as for [`ClientTls::tonic`].
    pub fn lazy_channel(
        &self,
        endpoint: &str,
        timeout: std::time::Duration,
        names: (&str, &str),
    ) -> Result<tonic::transport::Channel, ChannelError> {
        let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true)
            .timeout(timeout);
        if self.wanted(endpoint) {
            ep = ep.tls_config(self.tonic(names)?)?;
        }
        Ok(ep.connect_lazy())
    }
}

/// ring, whatever else is linked.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_in(what, path, &read(what, path)?)
}

/// The certificates in `pem`, read from `path`; at least one.
fn certs_in(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_owned(),
            reason: "no PEM CERTIFICATE in it",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error("key", path, e))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("client CA", path)? {
        roots.add(cert).map_err(|e| TlsError::ClientCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A PEM error without what the parser saw (it may quote a key's line).
fn pem_error(what: &'static str, path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    use rustls_pki_types::pem::Error as E;
    let reason = match e {
        E::MissingSectionEnd { .. } => "a PEM section has no END line",
        E::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        E::Base64Decode(_) => "a PEM section is not valid base64",
        E::NoItemsFound if what == "key" => "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
        E::NoItemsFound => "no PEM CERTIFICATE in it",
        E::SectionTooLarge => "a PEM section is too large",
        _ => "not readable as PEM",
    };
    TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    }
}
