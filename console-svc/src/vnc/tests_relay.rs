//! Whole viewer sessions: viewer over duplex, upstream a fake VNC server on
//! a 127.0.0.1 TCP port.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::accept::Scheme;
use super::backend::VncSettings;
use super::testutil::{fake_server, upstream_settings, viewer_settings, FakeAuth};
use super::viewer::{probe, serve, Console};
use crate::backend::Health;
use crate::secret::Secret;
use crate::spec::VncTarget;

/// A fake upstream accepting any number of connections.
async fn fake_upstream(auth: FakeAuth) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(fake_server(s, b"RFB 003.008\n", auth));
        }
    });
    port
}

fn console(port: u16, password: &str, exclusive: bool) -> (Arc<Console>, watch::Receiver<Health>) {
    let (health, rx) = watch::channel(Health::Ok);
    let settings = VncSettings {
        viewer: viewer_settings(vec![Scheme::None]),
        upstream: upstream_settings(),
        exclusive,
        retry_max_backoff: Duration::from_secs(30),
    };
    let console = Console {
        target: VncTarget {
            host: "127.0.0.1".into(),
            port,
            password: Some(Secret::new(password)),
        },
        settings: Arc::new(settings),
        health,
        exclusive: Arc::new(Semaphore::new(1)),
        fence: None,
    };
    (Arc::new(console), rx)
}

/// A viewer choosing None; returns the SecurityResult and what follows.
async fn none_viewer(v: &mut DuplexStream) -> u32 {
    let mut version = [0u8; 12];
    v.read_exact(&mut version).await.unwrap();
    v.write_all(&version).await.unwrap();
    let mut types = [0u8; 2];
    v.read_exact(&mut types).await.unwrap();
    v.write_all(&[1]).await.unwrap();
    v.read_u32().await.unwrap()
}

#[tokio::test]
async fn viewers_relay_untouched_each_with_its_own_upstream() {
    let port = fake_upstream(FakeAuth::Vnc("password")).await;
    let (console, health) = console(port, "password", false);
    let stop = CancellationToken::new();
    let mut viewers = Vec::new();
    for _ in 0..2 {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve(ours, console.clone(), stop.clone()));
        assert_eq!(none_viewer(&mut theirs).await, 0);
        viewers.push(theirs);
    }
    for (i, v) in viewers.iter_mut().enumerate() {
        v.write_all(&[i as u8]).await.unwrap(); // ClientInit
        let mut init = [0u8; 8];
        v.read_exact(&mut init).await.unwrap();
        assert_eq!(&init, &[b'I', b'N', b'I', b'T', i as u8, 0, 0, 0]);
        let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        v.write_all(&blob).await.unwrap();
        let mut back = vec![0u8; blob.len()];
        v.read_exact(&mut back).await.unwrap();
        assert!(back == blob, "8-bit clean both ways");
    }
    assert_eq!(*health.borrow(), Health::Ok);
    stop.cancel();
}

#[tokio::test]
async fn wrong_password_fails_health_and_tells_the_viewer() {
    let port = fake_upstream(FakeAuth::Vnc("password")).await;
    let (console, health) = console(port, "nope", false);
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(serve(ours, console, CancellationToken::new()));
    assert_eq!(none_viewer(&mut theirs).await, 1, "SecurityResult failed");
    let mut reason = String::new();
    let len = theirs.read_u32().await.unwrap();
    theirs.read_to_string(&mut reason).await.unwrap();
    assert_eq!(len as usize, reason.len());
    assert!(
        reason.contains("authentication failed (wrong VNC password?)"),
        "{reason}"
    );
    task.await.unwrap();
    let Health::Failed(why) = health.borrow().clone() else {
        panic!("health should have failed")
    };
    assert!(
        why.starts_with(&format!(
            "VNC server 127.0.0.1:{port}: authentication failed"
        )),
        "{why}"
    );
    assert!(!why.contains("nope"), "never the password: {why}");
}

#[tokio::test]
async fn an_upstream_that_is_not_rfb_fails_health() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.write_all(b"220 smtp.example ESMTP\r\n").await;
    });
    let (console, health) = console(port, "password", false);
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve(ours, console, CancellationToken::new()));
    assert_eq!(none_viewer(&mut theirs).await, 1);
    let mut rest = Vec::new();
    theirs.read_to_end(&mut rest).await.unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("not a VNC server"));
    let Health::Failed(why) = health.borrow().clone() else {
        panic!("health should have failed")
    };
    assert!(
        why.contains("not a VNC server: it sent \"220 smtp.exa\""),
        "{why}"
    );
}

#[tokio::test]
async fn exclusive_consoles_refuse_a_second_viewer() {
    let port = fake_upstream(FakeAuth::None).await;
    let (console, _health) = console(port, "password", true);
    let stop = CancellationToken::new();
    let (ours, mut first) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve(ours, console.clone(), stop.clone()));
    assert_eq!(none_viewer(&mut first).await, 0);
    let (ours, mut second) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve(ours, console.clone(), stop.clone()));
    assert_eq!(none_viewer(&mut second).await, 1);
    let mut rest = Vec::new();
    second.read_to_end(&mut rest).await.unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("exclusive"));
    drop(first);
    // The permit comes back once the first viewer's relay ends.
    for _ in 0..100 {
        if console.exclusive.available_permits() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (ours, mut third) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve(ours, console, stop.clone()));
    assert_eq!(none_viewer(&mut third).await, 0);
    stop.cancel();
}

async fn wait_health(rx: &mut watch::Receiver<Health>, want: impl Fn(&Health) -> bool) -> Health {
    let wait = async {
        loop {
            let h = rx.borrow_and_update().clone();
            if want(&h) {
                return h;
            }
            rx.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("health reached the wanted state")
}

#[tokio::test]
async fn an_unreachable_upstream_is_probed_again_until_it_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens there now
    let (console, mut health) = console(port, "password", false);
    let stop = CancellationToken::new();
    tokio::spawn(probe(console, stop.clone()));
    let failed = wait_health(&mut health, |h| *h != Health::Ok).await;
    let Health::Failed(why) = failed else {
        unreachable!()
    };
    assert!(why.contains("cannot connect"), "{why}");
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(fake_server(s, b"RFB 003.008\n", FakeAuth::Vnc("password")));
        }
    });
    wait_health(&mut health, |h| *h == Health::Ok).await;
    stop.cancel();
}
