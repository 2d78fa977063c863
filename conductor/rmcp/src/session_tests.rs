//! Session tests against the in-memory BMC (`test_bmc`), tokio's clock paused.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::test_bmc;

fn cfg(password: &[u8]) -> SessionConfig {
    SessionConfig::new("admin", password)
}

#[tokio::test(start_paused = true)]
async fn open_request_close_suite_3_and_17() {
    for suite in [3u8, 17] {
        let (t, bmc) = test_bmc::spawn(suite, b"secret");
        let mut c = cfg(b"secret");
        c.cipher_suite = suite;
        let mut s = Session::open(t, &c).await.unwrap();
        let id = s
            .request(cmd::NETFN_APP, cmd::GET_DEVICE_ID, &[])
            .await
            .unwrap();
        assert_eq!(id[0], 0x20);
        s.close().await.unwrap();
        assert!(matches!(
            s.send_payload(0, b"x").await,
            Err(RmcpError::Closed)
        ));
        let seen = bmc.ctl.requests.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![(6, 0x3b), (6, 0x01), (6, 0x3c)],
            "suite {suite}: set privilege, device id, close"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn wrong_password_and_unknown_user_are_named() {
    let (t, _bmc) = test_bmc::spawn(3, b"secret");
    let err = Session::open(t, &cfg(b"nope")).await.err().unwrap();
    assert!(matches!(err, RmcpError::WrongPassword { .. }), "{err}");
    let (t, _bmc) = test_bmc::spawn(3, b"secret");
    let mut c = cfg(b"secret");
    c.username = "nobody".into();
    let err = Session::open(t, &c).await.err().unwrap();
    assert!(err.to_string().contains("unknown user name"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn lost_datagrams_are_retransmitted_then_time_out() {
    let (t, bmc) = test_bmc::spawn(3, b"secret");
    // Lose the first Get Channel Auth Caps and the first Open Session.
    bmc.ctl.drop_in.store(2, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let mut s = Session::open(t, &cfg(b"secret")).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "two 1 s timeouts, then answers"
    );
    bmc.ctl.drop_in.store(1, Ordering::SeqCst);
    s.request(cmd::NETFN_CHASSIS, cmd::GET_CHASSIS_STATUS, &[])
        .await
        .unwrap();
    // A BMC that stops answering: 4 attempts of 1 s.
    bmc.ctl.drop_in.store(100, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let err = s
        .request(cmd::NETFN_APP, cmd::GET_DEVICE_ID, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RmcpError::Timeout {
                what: "Get Device ID",
                attempts: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn completion_codes_are_errors() {
    let (t, _bmc) = test_bmc::spawn(3, b"secret");
    let mut s = Session::open(t, &cfg(b"secret")).await.unwrap();
    let err = s.request(0x0a, 0x99, &[]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "IPMI command netfn 0x0a cmd 0x99 failed: completion code 0xc1 (invalid command)"
    );
}

#[test]
fn replay_window() {
    let mut w = SeqWindow::default();
    assert!(!w.accept(0));
    assert!(w.accept(1) && w.accept(3) && w.accept(2));
    assert!(!w.accept(2) && !w.accept(3), "replays are dropped");
    assert!(w.accept(40));
    assert!(!w.accept(8), "older than the window");
    assert!(w.accept(20));
}
