//! The viewer side against scripted viewers over `tokio::io::duplex`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::TlsConnector;

use super::accept::{accept, Scheme, ViewerSettings};
use super::testutil::{viewer_settings, Certs, Recorder};
use super::VncError;

async fn read_n(io: &mut (impl AsyncReadExt + Unpin), n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    io.read_exact(&mut buf).await.unwrap();
    buf
}

/// Runs `accept` on one end; the viewer script gets the other.
async fn with_viewer<F, Fut>(settings: ViewerSettings, viewer: F) -> Result<Vec<u8>, VncError>
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let script = tokio::spawn(viewer(theirs));
    let result = match accept(ours, &settings).await {
        Ok(pending) => {
            let mut stream = pending.succeed().await?;
            let mut init = [0u8; 1];
            stream.read_exact(&mut init).await?;
            Ok(init.to_vec())
        }
        Err(e) => Err(e),
    };
    let _ = script.await;
    result
}

#[tokio::test]
async fn none_is_byte_exact_and_one_write_per_message() {
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let (ours, writes) = Recorder::new(ours);
    let viewer = tokio::spawn(async move {
        assert_eq!(read_n(&mut theirs, 12).await, b"RFB 003.008\n");
        theirs.write_all(b"RFB 003.008\n").await.unwrap();
        assert_eq!(read_n(&mut theirs, 3).await, [2, 19, 1]);
        theirs.write_all(&[1]).await.unwrap();
        assert_eq!(read_n(&mut theirs, 4).await, [0, 0, 0, 0]);
        theirs.write_all(&[1]).await.unwrap(); // ClientInit, shared
        theirs
    });
    let settings = viewer_settings(vec![Scheme::VeNCrypt, Scheme::None]);
    let pending = accept(ours, &settings).await.unwrap();
    assert_eq!(pending.scheme, Scheme::None);
    let mut stream = pending.succeed().await.unwrap();
    assert_eq!(
        read_n(&mut stream, 1).await,
        [1],
        "ClientInit is left for the relay"
    );
    viewer.await.unwrap();
    let writes = writes.lock().unwrap().clone();
    let want: Vec<Vec<u8>> = vec![b"RFB 003.008\n".to_vec(), vec![2, 19, 1], vec![0, 0, 0, 0]];
    assert_eq!(writes, want);
}

#[tokio::test]
async fn garbage_from_the_viewer_is_not_rfb() {
    let err = with_viewer(viewer_settings(vec![Scheme::None]), |mut v| async move {
        let _ = v.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    })
    .await
    .unwrap_err();
    assert!(matches!(err, VncError::ViewerNotRfb(_)), "{err}");
    assert!(err.to_string().contains("GET / HTTP"), "{err}");
}

#[tokio::test]
async fn other_viewer_versions_are_refused() {
    let err = with_viewer(viewer_settings(vec![Scheme::None]), |mut v| async move {
        let _ = v.write_all(b"RFB 003.003\n").await;
    })
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the viewer asked for RFB 3.3; only 3.8 is served"
    );
}

#[tokio::test]
async fn an_unknown_choice_gets_a_failed_security_result_with_a_reason() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let err = with_viewer(viewer_settings(vec![Scheme::None]), |mut v| async move {
        read_n(&mut v, 12).await;
        v.write_all(b"RFB 003.008\n").await.unwrap();
        read_n(&mut v, 2).await;
        v.write_all(&[2]).await.unwrap(); // VncAuth: not offered
        let mut rest = Vec::new();
        v.read_to_end(&mut rest).await.unwrap();
        let _ = tx.send(rest);
    })
    .await
    .unwrap_err();
    assert!(matches!(err, VncError::ViewerChoice(2)), "{err}");
    let rest = rx.await.unwrap();
    assert_eq!(&rest[..4], [0, 0, 0, 1]);
    let len = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
    assert_eq!(&rest[8..], b"security type 2 was not offered");
    assert_eq!(len, rest.len() - 8);
}

#[tokio::test(start_paused = true)]
async fn a_viewer_that_never_chooses_times_out() {
    let mut settings = viewer_settings(vec![Scheme::None]);
    settings.handshake_timeout = Duration::from_secs(60);
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let viewer = tokio::spawn(async move {
        read_n(&mut theirs, 12).await;
        theirs.write_all(b"RFB 003.008\n").await.unwrap();
        read_n(&mut theirs, 2).await;
        // ... and never a choice; keep the connection open.
        std::future::pending::<()>().await;
    });
    let started = tokio::time::Instant::now();
    let err = accept(ours, &settings).await.err().unwrap();
    assert!(matches!(err, VncError::ViewerTimeout(_)), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    viewer.abort();
}

#[tokio::test]
async fn a_viewer_that_hangs_up_is_an_io_error() {
    let err = with_viewer(viewer_settings(vec![Scheme::None]), |v| async move {
        drop(v);
    })
    .await
    .unwrap_err();
    assert!(matches!(err, VncError::Io(_)), "{err}");
}

fn vencrypt_settings(certs: &Certs, limit: usize) -> ViewerSettings {
    ViewerSettings {
        tls: Some(certs.viewer_tls()),
        max_handshake_bytes: limit,
        ..viewer_settings(vec![Scheme::VeNCrypt])
    }
}

/// nova's VeNCrypt bytes, up to the start of TLS.
async fn nova_vencrypt_prelude(v: &mut DuplexStream) {
    assert_eq!(read_n(v, 12).await, b"RFB 003.008\n");
    v.write_all(b"RFB 003.008\n").await.unwrap();
    assert_eq!(read_n(v, 2).await, [1, 19]);
    v.write_all(&[19]).await.unwrap();
    assert_eq!(read_n(v, 2).await, [0, 2]);
    v.write_all(&[0, 2]).await.unwrap();
    assert_eq!(read_n(v, 1).await, [0]);
    assert_eq!(read_n(v, 5).await, [1, 0, 0, 1, 4]);
    v.write_all(&[0, 0, 1, 4]).await.unwrap();
    assert_eq!(read_n(v, 1).await, [1]);
}

#[tokio::test]
async fn vencrypt_x509none_with_a_client_certificate() {
    let certs = Certs::new("accept-ok");
    let client = certs.nova_client(true);
    let init = with_viewer(vencrypt_settings(&certs, 64 * 1024), |mut v| async move {
        nova_vencrypt_prelude(&mut v).await;
        // No SNI, as nova: the IP-address name sends none.
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, v).await.unwrap();
        assert_eq!(
            read_n(&mut tls, 4).await,
            [0, 0, 0, 0],
            "SecurityResult inside TLS"
        );
        tls.write_all(&[0]).await.unwrap();
        tls.flush().await.unwrap();
    })
    .await
    .unwrap();
    assert_eq!(init, [0]);
}

#[tokio::test]
async fn vencrypt_without_a_client_certificate_fails_tls() {
    let certs = Certs::new("accept-nocert");
    let client = certs.nova_client(false);
    let err = with_viewer(vencrypt_settings(&certs, 64 * 1024), |mut v| async move {
        nova_vencrypt_prelude(&mut v).await;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        if let Ok(mut tls) = TlsConnector::from(client).connect(name, v).await {
            let _ = tls.read_u8().await; // TLS 1.3: the alert comes after
        }
    })
    .await
    .unwrap_err();
    assert!(matches!(err, VncError::ViewerTls(_)), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn vencrypt_wrong_subtype_and_version_are_refused() {
    let certs = Certs::new("accept-sub");
    let err = with_viewer(vencrypt_settings(&certs, 64 * 1024), |mut v| async move {
        read_n(&mut v, 12).await;
        v.write_all(b"RFB 003.008\n").await.unwrap();
        read_n(&mut v, 2).await;
        v.write_all(&[19]).await.unwrap();
        read_n(&mut v, 2).await;
        v.write_all(&[0, 2]).await.unwrap();
        read_n(&mut v, 6).await;
        v.write_all(&261u32.to_be_bytes()).await.unwrap();
        assert_eq!(read_n(&mut v, 1).await, [0], "subtype refused");
    })
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "viewer VeNCrypt: VeNCrypt subtype 261 was not offered"
    );
    let err = with_viewer(vencrypt_settings(&certs, 64 * 1024), |mut v| async move {
        read_n(&mut v, 12).await;
        v.write_all(b"RFB 003.008\n").await.unwrap();
        read_n(&mut v, 2).await;
        v.write_all(&[19]).await.unwrap();
        assert_eq!(read_n(&mut v, 2).await, [0, 2]);
        v.write_all(&[0, 1]).await.unwrap();
        assert_eq!(read_n(&mut v, 1).await, [0xff], "version refused");
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("VeNCrypt version 0.1"), "{err}");
}

#[tokio::test]
async fn oversized_handshake_input_is_cut_off() {
    let certs = Certs::new("accept-big");
    let err = with_viewer(vencrypt_settings(&certs, 1024), |mut v| async move {
        nova_vencrypt_prelude(&mut v).await;
        // A TLS record header announcing 16 KiB, then that much junk.
        let mut junk = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        junk.resize(5 + 0x4000, 0x41);
        let _ = v.write_all(&junk).await;
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("more than 1024 bytes"), "{err}");
}
