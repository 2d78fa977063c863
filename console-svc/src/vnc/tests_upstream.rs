//! The upstream side against scripted VNC servers over `tokio::io::duplex`.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::TlsAcceptor;

use super::rfb::Version;
use super::stream::Stream;
use super::testutil::{fake_server, upstream_settings, Certs, FakeAuth};
use super::upstream::{handshake, Method, UpstreamSettings, UpstreamTarget};
use super::{des_auth, tls, VncError};
use crate::secret::Secret;

type Up = Result<(Stream<DuplexStream>, Version), VncError>;

async fn connect(password: Option<&str>, settings: &UpstreamSettings, io: DuplexStream) -> Up {
    let secret = password.map(Secret::new);
    let target = UpstreamTarget {
        host: "127.0.0.1",
        password: secret.as_ref(),
    };
    handshake(io, &target, settings).await
}

/// Handshake against `fake_server`, then ClientInit and one echo.
async fn against_fake(
    version: &'static [u8; 12],
    auth: FakeAuth,
    password: Option<&str>,
) -> Result<[u8; 12], VncError> {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move { fake_server(theirs, version, auth).await });
    let (mut up, _) = connect(password, &upstream_settings(), ours).await?;
    up.write_all(&[1]).await?;
    let mut init = [0u8; 8];
    up.read_exact(&mut init).await?;
    assert_eq!(
        &init, b"INIT\x01\0\0\0",
        "ClientInit and ServerInit pass untouched"
    );
    up.write_all(b"ping").await?;
    let mut echo = [0u8; 4];
    up.read_exact(&mut echo).await?;
    assert_eq!(&echo, b"ping");
    drop(up);
    Ok(server.await.unwrap().unwrap())
}

#[tokio::test]
async fn versions_and_methods_of_real_servers() {
    let cases: [(&'static [u8; 12], FakeAuth, &[u8; 12]); 6] = [
        (b"RFB 003.008\n", FakeAuth::None, b"RFB 003.008\n"),
        (
            b"RFB 003.008\n",
            FakeAuth::Vnc("password"),
            b"RFB 003.008\n",
        ),
        (b"RFB 003.007\n", FakeAuth::None, b"RFB 003.007\n"),
        (
            b"RFB 003.007\n",
            FakeAuth::Vnc("password"),
            b"RFB 003.007\n",
        ),
        (
            b"RFB 003.003\n",
            FakeAuth::Vnc("password"),
            b"RFB 003.003\n",
        ),
        (b"RFB 003.889\n", FakeAuth::None, b"RFB 003.008\n"),
    ];
    for (version, auth, answer) in cases {
        let sent = against_fake(version, auth, Some("password")).await;
        assert_eq!(&sent.unwrap(), answer, "{version:?} {auth:?}");
    }
}

#[tokio::test]
async fn wrong_password_is_a_clear_error() {
    for version in [b"RFB 003.008\n", b"RFB 003.003\n"] {
        let err = against_fake(version, FakeAuth::Vnc("password"), Some("wrong"))
            .await
            .unwrap_err();
        assert!(matches!(err, VncError::AuthFailed(_)), "{err}");
        assert!(err.to_string().contains("wrong VNC password"), "{err}");
    }
}

#[tokio::test]
async fn no_password_for_vnc_auth_names_the_problem() {
    let err = against_fake(b"RFB 003.008\n", FakeAuth::Vnc("password"), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no usable security type among VncAuth(2); the console has no VNC password"
    );
}

async fn scripted(reply: &'static [u8], password: Option<&str>) -> VncError {
    let (ours, mut theirs) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(async move {
        let _ = theirs.write_all(reply).await;
        let _ = theirs.shutdown().await;
        let mut sink = Vec::new();
        let _ = theirs.read_to_end(&mut sink).await;
    });
    let err = connect(password, &upstream_settings(), ours)
        .await
        .err()
        .unwrap();
    server.abort();
    err
}

#[tokio::test]
async fn not_rfb_refused_oversized_and_unsupported() {
    let err = scripted(b"SSH-2.0-OpenSSH_9.2p1\r\n", None).await;
    assert!(matches!(err, VncError::UpstreamNotRfb(_)), "{err}");
    assert!(err.to_string().contains("SSH-2.0-Open"), "{err}");
    let err = scripted(b"HTTP/1.1", None).await;
    assert!(
        err.to_string().contains("a closed connection") || matches!(err, VncError::Io(_)),
        "{err}"
    );
    let err = scripted(b"RFB 003.008\n\0\0\0\0\x1aToo many security failures", None).await;
    assert_eq!(
        err.to_string(),
        "the server refused the connection: Too many security failures"
    );
    let err = scripted(b"RFB 003.008\n\0\x7f\xff\xff\xff", None).await;
    assert!(matches!(err, VncError::Oversized { .. }), "{err}");
    let err = scripted(b"RFB 002.000\n", None).await;
    assert_eq!(err.to_string(), "unsupported RFB version 2.0");
    let err = scripted(b"RFB 003.008\n\x02\x10\x1e", None).await;
    assert_eq!(
        err.to_string(),
        "no usable security type among Tight(16), AppleARD(30)"
    );
}

#[tokio::test]
async fn vencrypt_anonymous_tls_only_is_refused_clearly() {
    let reply = b"RFB 003.008\n\x01\x13\x00\x02\x00\x01\x00\x00\x01\x02";
    let err = scripted(reply, Some("password")).await;
    assert!(matches!(err, VncError::AnonymousTlsOnly(_)), "{err}");
    assert!(err.to_string().contains("TLSVnc(258)"), "{err}");
}

/// A VeNCrypt server with X509Vnc (TigerVNC's layout), self-signed like the
/// rig's, checking the password inside TLS.
async fn vencrypt_server(
    io: DuplexStream,
    tls: Arc<rustls::ServerConfig>,
    password: &str,
) -> std::io::Result<Vec<u8>> {
    let mut io = io;
    io.write_all(b"RFB 003.008\n").await?;
    let mut v = [0u8; 12];
    io.read_exact(&mut v).await?;
    io.write_all(&[2, 19, 2]).await?;
    assert_eq!(io.read_u8().await?, 19);
    io.write_all(&[0, 2]).await?;
    assert_eq!(io.read_u16().await?, 2);
    io.write_all(&[0, 3, 0, 0, 0, 2, 0, 0, 1, 2, 0, 0, 1, 5])
        .await?;
    let subtype = io.read_u32().await?;
    assert_eq!(subtype, 261, "X509Vnc is preferred");
    io.write_all(&[1]).await?;
    let mut tls = TlsAcceptor::from(tls).accept(io).await?;
    let challenge = [9u8; 16];
    tls.write_all(&challenge).await?;
    tls.flush().await?;
    let mut answer = [0u8; 16];
    tls.read_exact(&mut answer).await?;
    let ok = answer == des_auth::response(password.as_bytes(), &challenge);
    tls.write_all(&u32::from(!ok).to_be_bytes()).await?;
    tls.flush().await?;
    let mut init = vec![0u8; 1];
    tls.read_exact(&mut init).await?;
    Ok(init)
}

#[tokio::test]
async fn vencrypt_x509vnc_with_a_pinned_self_signed_certificate() {
    let certs = Certs::new("up-x509");
    let server_tls = certs.upstream_server("selfsigned.pem", "selfsigned-key.pem");
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(vencrypt_server(theirs, server_tls, "password"));
    let settings = UpstreamSettings {
        tls: Some(tls::client_config(&certs.path("selfsigned.pem")).unwrap()),
        ..upstream_settings()
    };
    let (mut up, _) = connect(Some("password"), &settings, ours).await.unwrap();
    assert!(matches!(up, Stream::Tls(_)));
    up.write_all(&[1]).await.unwrap();
    up.flush().await.unwrap();
    assert_eq!(server.await.unwrap().unwrap(), [1]);
}

#[tokio::test]
async fn vencrypt_with_an_untrusted_certificate_fails_tls() {
    let certs = Certs::new("up-untrusted");
    let server_tls = certs.upstream_server("selfsigned.pem", "selfsigned-key.pem");
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(vencrypt_server(theirs, server_tls, "password"));
    let settings = UpstreamSettings {
        tls: Some(tls::client_config(&certs.path("ca.pem")).unwrap()),
        ..upstream_settings()
    };
    let err = connect(Some("password"), &settings, ours)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, VncError::UpstreamTls(_)), "{err}");
    let _ = server.await;
}

#[tokio::test]
async fn vencrypt_without_tls_trust_falls_back_to_vnc_auth() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let server =
        tokio::spawn(
            async move { fake_server(theirs, b"RFB 003.008\n", FakeAuth::Vnc("pw")).await },
        );
    let settings = UpstreamSettings {
        prefer: vec![Method::VeNCrypt, Method::VncAuth],
        ..upstream_settings()
    };
    let (up, version) = connect(Some("pw"), &settings, ours).await.unwrap();
    assert_eq!(version.to_string(), "3.8");
    drop(up);
    let _ = server.await;
}
