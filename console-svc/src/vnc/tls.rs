//! TLS for VeNCrypt, with rustls on the ring backend only.
//!
//! - Toward viewers ([`server_config`]): our certificate and key; client
//!   certificates are required and verified against the configured CA
//!   (nova always presents one). nova sends no SNI, so none is needed.
//! - Toward upstreams ([`client_config`]): the server certificate is trusted
//!   if it chains to the configured CA file, or if it is byte-for-byte one of
//!   the certificates in that file. The second rule is for BMCs (and
//!   TigerVNC) with a self-signed certificate that is marked as a CA, which
//!   WebPKI refuses as an end entity; a pinned certificate is trusted as is,
//!   without a name check. rustls has no anonymous TLS, so VeNCrypt TLSVnc
//!   (258) upstreams cannot be served.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::VncError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: String) -> impl FnOnce(rustls::Error) -> VncError {
    move |e| VncError::Config(format!("{what}: {e}"))
}

/// Every certificate in a PEM file; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, VncError> {
    let bad = |e: rustls_pki_types::pem::Error| {
        VncError::Config(format!(
            "cannot read certificates from {}: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(bad)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if certs.is_empty() {
        return Err(VncError::Config(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, VncError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        VncError::Config(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

fn roots(certs: &[CertificateDer<'static>], path: &Path) -> Result<RootCertStore, VncError> {
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert.clone())
            .map_err(tls_err(format!("CA certificate in {}", path.display())))?;
    }
    Ok(store)
}

/// TLS toward viewers: `cert`/`key` are ours; viewers must present a
/// certificate issued by a CA in `client_ca`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, VncError> {
    let ca = load_certs(client_ca)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&ca, client_ca)?), provider())
            .build()
            .map_err(|e| VncError::Config(format!("client CA {}: {e}", client_ca.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS versions".into()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(tls_err(format!(
            "certificate {} / key {}",
            cert.display(),
            key.display()
        )))?;
    Ok(Arc::new(config))
}

/// TLS toward upstream VNC servers, trusting `ca` (see the module docs).
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, VncError> {
    let certs = load_certs(ca)?;
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(&certs, ca)?), provider())
            .build()
            .map_err(|e| VncError::Config(format!("upstream CA {}: {e}", ca.display())))?;
    let verifier = PinnedOrWebPki {
        pinned: certs,
        webpki,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS versions".into()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name rustls checks an upstream's certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, VncError> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| VncError::Config(format!("{host:?} is no TLS server name: {e}")))
}

#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
