//! Viewer slots cannot be held by idle connections (issue 9 point 5): a
//! viewer that sends nothing is closed after `terminal_silent_timeout`; a
//! new viewer on a full console, or from an address at its
//! `max_viewers_per_address`, takes the place of the viewer that has sent
//! nothing for the longest. And what viewers type is never dropped while
//! the session comes up or the node side is slow (issue 9 point 7a). Hub
//! tests on in-memory viewers and tokio's paused clock, then the whole
//! backend over real TCP sockets.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::hub::HubConfig;
use super::tests::rig;

fn config() -> HubConfig {
    HubConfig {
        scrollback_bytes: 1024,
        log_ring_bytes: 4096,
        log_file: None,
        linger: Duration::from_secs(5),
        always_on: false,
        backend: "native",
        max_viewers: 3,
        max_viewers_per_address: 0,
        terminal_timeout: Duration::from_secs(600),
        terminal_silent_timeout: Duration::ZERO,
        retry_max_backoff: Duration::from_secs(5),
        viewer_queue: 64,
    }
}

/// Everything until the viewer is closed.
async fn read_to_eof(s: &mut DuplexStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Type `what` and see it reach the node.
async fn types(v: &mut DuplexStream, node: &mut DuplexStream, what: &[u8]) {
    v.write_all(what).await.unwrap();
    let mut got = vec![0; what.len()];
    tokio::time::timeout(Duration::from_secs(5), node.read_exact(&mut got))
        .await
        .expect("keystrokes reach the node")
        .unwrap();
    assert_eq!(got, what);
}

/// Nothing more arrives for a while and the connection stays open.
async fn still_open(v: &mut DuplexStream) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_millis(100), v.read(&mut buf)).await {
            Err(_) => return,
            Ok(Ok(0)) => panic!("closed"),
            Ok(Ok(_)) => continue, // banner, scrollback
            Ok(Err(e)) => panic!("{e}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_console_makes_room_by_closing_the_longest_idle_viewer() {
    let mut r = rig(config()).await;
    let mut a = r.viewer_from("10.0.0.1:1000").await;
    let mut node = r.node().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut silent = r.viewer_from("10.0.0.2:1000").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut b = r.viewer_from("10.0.0.3:1000").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // a typed last, b typed before it; `silent` never did, and has been
    // idle since it connected (after a, before b).
    types(&mut b, &mut node, b"from b").await;
    types(&mut a, &mut node, b"from a").await;
    let mut c = r.viewer_from("10.0.0.4:1000").await;
    let gone = read_to_eof(&mut silent).await;
    assert!(
        gone.ends_with(
            "[porthole: disconnected: the console is full (3 viewers) and this connection had sent nothing for the longest]\r\n"
        ),
        "{gone:?}"
    );
    types(&mut c, &mut node, b"from c").await;
    still_open(&mut a).await;
    still_open(&mut b).await;
    // Full again: now b has sent nothing for the longest.
    tokio::time::sleep(Duration::from_secs(1)).await;
    types(&mut a, &mut node, b"a again").await;
    types(&mut c, &mut node, b"c again").await;
    let _d = r.viewer_from("10.0.0.5:1000").await;
    assert!(read_to_eof(&mut b).await.contains("console is full"));
    still_open(&mut a).await;
}

#[tokio::test(start_paused = true)]
async fn one_address_at_its_limit_only_displaces_its_own_viewers() {
    let mut r = rig(HubConfig {
        max_viewers: 4,
        max_viewers_per_address: 2,
        ..config()
    })
    .await;
    let mut other = r.viewer_from("192.0.2.9:5000").await;
    let mut node = r.node().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut first = r.viewer_from("10.0.0.1:1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut second = r.viewer_from("10.0.0.1:2").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    types(&mut first, &mut node, b"1").await;
    // The console has room (3 of 4), but 10.0.0.1 has 2: its own viewer
    // that sent nothing for the longest (second, silent) makes room,
    // not `other`, which has been idle longer still.
    let mut third = r.viewer_from("10.0.0.1:3").await;
    let gone = read_to_eof(&mut second).await;
    assert!(gone.contains("(2 viewers from 10.0.0.1)"), "{gone:?}");
    types(&mut third, &mut node, b"3").await;
    still_open(&mut first).await;
    still_open(&mut other).await;
}

#[tokio::test(start_paused = true)]
async fn a_viewer_that_sends_nothing_is_closed_after_the_silent_timeout() {
    let mut r = rig(HubConfig {
        terminal_silent_timeout: Duration::from_secs(30),
        ..config()
    })
    .await;
    let mut silent = r.viewer_from("10.0.0.1:1").await;
    let mut typist = r.viewer_from("10.0.0.2:1").await;
    let mut node = r.node().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    types(&mut typist, &mut node, b"x").await;
    let before = tokio::time::Instant::now();
    let gone = read_to_eof(&mut silent).await;
    let waited = tokio::time::Instant::now() - before;
    assert!(
        gone.ends_with("[porthole: disconnected: nothing was sent within 30s of connecting]\r\n"),
        "{gone:?}"
    );
    assert!(
        waited >= Duration::from_secs(19) && waited <= Duration::from_secs(21),
        "{waited:?}"
    );
    // A viewer that sent something is left to terminal_timeout.
    tokio::time::sleep(Duration::from_secs(120)).await;
    types(&mut typist, &mut node, b"still here").await;
}

/// The whole backend over TCP (the stand-in ipmitool of `backend_tests`
/// echoes keystrokes): 16 connections that never send a byte do not keep a
/// 17th viewer out, from the same address or another.
#[tokio::test]
async fn sixteen_silent_connections_do_not_lock_a_viewer_out() {
    let started = super::backend_tests::start("silent16", "ok").await;
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(tokio::net::TcpStream::connect(started.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut viewer = tokio::net::TcpStream::connect(started.addr).await.unwrap();
    viewer.set_nodelay(true).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        // The stand-in echoes what it is sent once the session is up; type
        // until the echo shows.
        loop {
            viewer.write_all(b"hello-17\r").await.unwrap();
            match tokio::time::timeout(Duration::from_millis(300), viewer.read(&mut buf)).await {
                Ok(Ok(0)) => return false,
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => return false,
                Err(_) => {}
            }
            if seen.windows(8).any(|w| w == b"hello-17") {
                return true;
            }
        }
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "the 17th viewer got {:?}",
        String::from_utf8_lossy(&seen)
    );
    started.console.stop().await;
}

/// Keystrokes typed while the session comes up slowly, or while the node
/// side takes them slowly, are held and all delivered in order: typing
/// waits in the viewer's socket instead of being dropped past 4 KiB.
#[tokio::test(start_paused = true)]
async fn keystrokes_during_a_slow_activation_or_a_slow_node_all_arrive() {
    use super::fake::Plan;
    let mut r = rig(config()).await;
    r.fake
        .plans
        .lock()
        .unwrap()
        .push_back(Plan::UpAfter(Duration::from_secs(3)));
    let mut v = r.viewer_from("10.0.0.1:1").await;
    // 40 KiB typed before the session is up, more than 64 KiB in all so the
    // node side (a 64 KiB pipe nobody reads yet) is slow to take them too.
    let typed: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
    let writer = tokio::spawn(async move {
        for chunk in typed.chunks(1000) {
            v.write_all(chunk).await.unwrap();
        }
        v
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut node = r.node().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut got = vec![0u8; 100 * 1024];
    tokio::time::timeout(Duration::from_secs(30), node.read_exact(&mut got))
        .await
        .expect("every keystroke arrives")
        .unwrap();
    let want: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert!(got == want, "keystrokes lost or reordered");
    let _v = writer.await.unwrap();
}
