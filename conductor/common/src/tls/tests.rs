//! The TLS module against a real gRPC server (tonic's health service) on a
//! 127.0.0.1 listener, with certificates made here by rcgen.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::*;

/// A CA and what it signed, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let (ca, ca_key) = pki.ca("ca");
        pki.leaf("server", &["localhost", "127.0.0.1"], &ca, &ca_key);
        pki.leaf("client", &["conductor"], &ca, &ca_key);
        let (other, other_key) = pki.ca("other-ca");
        pki.leaf("stranger", &["stranger"], &other, &other_key);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self, name: &str) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("porthole test {name}"));
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        (cert, key)
    }

    fn leaf(&self, name: &str, sans: &[&str], ca: &rcgen::Certificate, ca_key: &KeyPair) {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, ca, ca_key)
            .unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn server(&self, mtls: bool) -> ServerTls {
        ServerTls {
            cert_file: self.path("server.pem"),
            key_file: self.path("server.key"),
            client_ca_file: mtls.then(|| self.path("ca.pem")),
        }
    }

    fn client(&self, who: Option<&str>) -> ClientTls {
        ClientTls {
            ca_file: Some(self.path("ca.pem")),
            cert_file: who.map(|w| self.path(&format!("{w}.pem"))),
            key_file: who.map(|w| self.path(&format!("{w}.key"))),
            server_name: None,
        }
    }
}

/// tonic's health service over [`incoming`] until the token is cancelled.
async fn serve(tls: &ServerTls, timeout: Duration) -> (u16, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cancel = CancellationToken::new();
    let stream = incoming(listener, tls.acceptor().unwrap(), timeout, cancel.clone());
    let (_reporter, health) = tonic_health::server::health_reporter();
    let stop = cancel.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(stream, stop.cancelled_owned()),
    );
    (port, cancel)
}

/// One health check over `url`; the error text if it fails.
async fn check(url: String, tls: Option<&ClientTls>) -> Result<(), String> {
    let mut ep = Endpoint::from_shared(url)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls.tonic(("cert_file", "key_file")).unwrap())
            .unwrap();
    }
    let channel = ep.connect().await.map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn mutual_tls_serves_certified_clients_and_refuses_the_rest() {
    let pki = Pki::new();
    let (port, cancel) = serve(&pki.server(true), DEFAULT_HANDSHAKE_TIMEOUT).await;
    let url = format!("https://localhost:{port}");

    check(url.clone(), Some(&pki.client(Some("client"))))
        .await
        .expect("a client certified by the client CA is served");
    let no_cert = check(url.clone(), Some(&pki.client(None))).await;
    assert!(
        no_cert.is_err(),
        "a client without a certificate was served"
    );
    let stranger = check(url.clone(), Some(&pki.client(Some("stranger")))).await;
    assert!(
        stranger.is_err(),
        "a certificate of another CA was accepted"
    );
    let plain = check(format!("http://127.0.0.1:{port}"), None).await;
    assert!(plain.is_err(), "a plaintext client was served");
    // The refusals cost the server nothing: the next good client is served.
    check(url, Some(&pki.client(Some("client"))))
        .await
        .expect("served after the refusals");
    cancel.cancel();
}

#[tokio::test]
async fn without_a_client_ca_any_tls_client_is_served_and_plaintext_is_not() {
    let pki = Pki::new();
    let (port, cancel) = serve(&pki.server(false), DEFAULT_HANDSHAKE_TIMEOUT).await;
    check(format!("https://127.0.0.1:{port}"), Some(&pki.client(None)))
        .await
        .expect("TLS without a client certificate");
    // The server's name is checked: a name not in its certificate fails.
    let mut wrong = pki.client(None);
    wrong.server_name = Some("elsewhere.example".into());
    assert!(check(format!("https://127.0.0.1:{port}"), Some(&wrong))
        .await
        .is_err());
    assert!(check(format!("http://127.0.0.1:{port}"), None)
        .await
        .is_err());
    cancel.cancel();
}

#[tokio::test]
async fn a_silent_client_stalls_no_one_and_is_closed_after_the_timeout() {
    let pki = Pki::new();
    let timeout = Duration::from_millis(300);
    let (port, cancel) = serve(&pki.server(true), timeout).await;
    // Connects and never sends its ClientHello.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = tokio::time::Instant::now();
    check(
        format!("https://localhost:{port}"),
        Some(&pki.client(Some("client"))),
    )
    .await
    .expect("served while another client hangs in its handshake");
    assert!(
        started.elapsed() < timeout,
        "the good client waited for the silent one: {:?}",
        started.elapsed()
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the server sent something to a silent client");
    assert!(started.elapsed() >= timeout);
    cancel.cancel();
}

#[tokio::test]
async fn the_server_offers_h2_by_alpn() {
    let pki = Pki::new();
    let (port, cancel) = serve(&pki.server(false), DEFAULT_HANDSHAKE_TIMEOUT).await;
    let mut roots = RootCertStore::empty();
    for c in read_certs("CA", &pki.path("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    cancel.cancel();
}

#[test]
fn options_must_come_in_pairs_and_bad_files_are_named_not_quoted() {
    let p = |s: &str| PathBuf::from(s);
    assert_eq!(
        ServerTls::from_options("service.tls_", None, None, None).unwrap(),
        None
    );
    let e = ServerTls::from_options("service.tls_", Some(&p("c")), None, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "service.tls_cert_file needs service.tls_key_file"
    );
    let e = ServerTls::from_options("service.tls_", None, None, Some(&p("ca"))).unwrap_err();
    assert!(e.to_string().contains("client_ca_file needs"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bad.key");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nTOPSECRET*not*base64\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let pki = Pki::new();
    let mut tls = pki.server(false);
    tls.key_file = key.clone();
    let e = tls.acceptor().err().expect("refused").to_string();
    assert!(e.contains(&key.display().to_string()), "{e}");
    assert!(
        !e.contains("TOPSECRET"),
        "the key's content is in the error: {e}"
    );
    tls.key_file = dir.path().join("missing.key");
    let e = tls.acceptor().err().expect("refused").to_string();
    assert!(e.contains("missing.key"), "{e}");

    let client = ClientTls {
        cert_file: Some(p("c.pem")),
        ..ClientTls::default()
    };
    let e = client.tonic(("--cert-file", "--key-file")).unwrap_err();
    assert_eq!(e.to_string(), "--cert-file needs --key-file");
    assert!(client.wanted("http://x"));
    assert!(!ClientTls::default().wanted("http://x"));
    assert!(ClientTls::default().wanted("https://x"));
}

/// Accepted connections get TCP_NODELAY before the handshake: a reply
/// written in pieces must not wait on the client's delayed ACK.
#[tokio::test]
#[expect(
    unsafe_code,
    reason = "TcpStream::from_raw_fd of a socket listed in /proc/self/fd, kept open by ManuallyDrop"
)]
async fn accepted_connections_have_tcp_nodelay() {
    use std::mem::ManuallyDrop;
    use std::os::fd::FromRawFd;
    let pki = Pki::new();
    let (port, cancel) = serve(&pki.server(false), DEFAULT_HANDSHAKE_TIMEOUT).await;
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(pki.client(None).tonic(("cert_file", "key_file")).unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    let mut accepted = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        // SAFETY: only borrowed for getsockname, getpeername and
        // getsockopt; ManuallyDrop keeps the descriptor open.
        let sock = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        if sock.local_addr().map(|a| a.port()).ok() == Some(port) && sock.peer_addr().is_ok() {
            accepted.push(sock.nodelay().unwrap_or(false));
        }
    }
    assert_eq!(accepted, [true], "accepted TLS connections' TCP_NODELAY");
    drop(channel);
    cancel.cancel();
}
