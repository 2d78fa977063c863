//! Test helpers: certificates made with rcgen, settings, a recording stream
//! that shows how many writes each message took, and a scripted fake VNC
//! server.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::accept::{Scheme, ViewerSettings};
use super::upstream::{Method, UpstreamSettings};
use super::{des_auth, tls};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// PEM files in a fresh directory; plus a TigerVNC-style self-signed one.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("porthole-vnc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for name in ["server", "client"] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        }
        let key = KeyPair::generate().unwrap();
        let mut own = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        own.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        std::fs::write(
            dir.join("selfsigned.pem"),
            own.self_signed(&key).unwrap().pem(),
        )
        .unwrap();
        std::fs::write(dir.join("selfsigned-key.pem"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn viewer_tls(&self) -> Arc<rustls::ServerConfig> {
        let p = |n| self.path(n);
        tls::server_config(&p("server.pem"), &p("server-key.pem"), &p("ca.pem")).unwrap()
    }

    /// A rustls client config as nova's proxy would be: trusts the CA,
    /// presents the client certificate (when `with_cert`).
    pub fn nova_client(&self, with_cert: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in tls::load_certs(&self.path("ca.pem")).unwrap() {
            roots.add(c).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match with_cert {
            true => builder
                .with_client_auth_cert(
                    tls::load_certs(&self.path("client.pem")).unwrap(),
                    key(&self.path("client-key.pem")),
                )
                .unwrap(),
            false => builder.with_no_client_auth(),
        })
    }

    /// A server config for a fake upstream with `cert`/`key` and no client auth.
    pub fn upstream_server(&self, cert: &str, key_file: &str) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                tls::load_certs(&self.path(cert)).unwrap(),
                key(&self.path(key_file)),
            )
            .unwrap();
        Arc::new(config)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn key(path: &Path) -> rustls_pki_types::PrivateKeyDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_file(path).unwrap()
}

pub fn viewer_settings(schemes: Vec<Scheme>) -> ViewerSettings {
    ViewerSettings {
        schemes,
        tls: None,
        handshake_timeout: Duration::from_secs(60),
        max_handshake_bytes: 64 * 1024,
    }
}

pub fn upstream_settings() -> UpstreamSettings {
    UpstreamSettings {
        prefer: vec![Method::VeNCrypt, Method::VncAuth, Method::None],
        tls: None,
        timeout: Duration::from_secs(5),
    }
}

/// A stream that records every `poll_write` it is given.
pub struct Recorder<S> {
    pub inner: S,
    pub writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl<S> Recorder<S> {
    pub fn new(inner: S) -> (Self, Arc<Mutex<Vec<Vec<u8>>>>) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                inner,
                writes: writes.clone(),
            },
            writes,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, b)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = &poll {
            this.writes.lock().unwrap().push(b[..*n].to_vec());
        }
        poll
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How a fake upstream authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeAuth {
    None,
    /// VNC authentication with this password.
    Vnc(&'static str),
}

/// A minimal VNC server: `version` (e.g. b"RFB 003.008\n"), the given
/// authentication, then a fake 8-byte ServerInit-ish greeting after the
/// ClientInit, then echo. Returns what the client sent as its version.
pub async fn fake_server<S>(
    mut io: S,
    version: &[u8; 12],
    auth: FakeAuth,
) -> std::io::Result<[u8; 12]>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(version).await?;
    let mut client_version = [0u8; 12];
    io.read_exact(&mut client_version).await?;
    let v33 = &client_version == b"RFB 003.003\n";
    let v38 = &client_version == b"RFB 003.008\n";
    let wire = match auth {
        FakeAuth::None => 1u8,
        FakeAuth::Vnc(_) => 2u8,
    };
    if v33 {
        io.write_all(&u32::from(wire).to_be_bytes()).await?;
    } else {
        io.write_all(&[1, wire]).await?;
        assert_eq!(
            io.read_u8().await?,
            wire,
            "the client picked the offered type"
        );
    }
    let ok = match auth {
        FakeAuth::None => true,
        FakeAuth::Vnc(password) => {
            let challenge: [u8; 16] = std::array::from_fn(|i| (i * 7) as u8);
            io.write_all(&challenge).await?;
            let mut answer = [0u8; 16];
            io.read_exact(&mut answer).await?;
            answer == des_auth::response(password.as_bytes(), &challenge)
        }
    };
    if v38 || auth != FakeAuth::None {
        io.write_all(&u32::from(!ok).to_be_bytes()).await?;
    }
    if !ok {
        if v38 {
            io.write_all(&[0, 0, 0, 14]).await?;
            io.write_all(b"Authentication").await?;
        }
        return Ok(client_version);
    }
    let shared = io.read_u8().await?;
    io.write_all(&[b'I', b'N', b'I', b'T', shared, 0, 0, 0])
        .await?;
    let mut buf = [0u8; 1024];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Ok(client_version);
        }
        io.write_all(&buf[..n]).await?;
    }
}
