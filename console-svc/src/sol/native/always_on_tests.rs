//! Hub tests of `always_on` (the rmcp backend's default), on the fake
//! launcher and tokio's paused clock: the session comes up with no viewer,
//! logs what the node prints, never lingers out, and failures are retried
//! with backoff while nobody watches.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::fake::Call;
use super::hub::HubConfig;
use super::tests::{config, read_until, rig};

fn always_on() -> HubConfig {
    HubConfig {
        always_on: true,
        ..config()
    }
}

#[tokio::test(start_paused = true)]
async fn the_session_is_up_and_logged_without_a_viewer() {
    let mut r = rig(always_on()).await;
    let mut node = r.node().await;
    node.write_all(b"panic: last words\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.hub.log(0).data, b"panic: last words\r\n");
    // Far past the linger (5 s): still the one session, never ended.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(r.fake.calls(), [Call::Deactivate, Call::Activate]);
    // A viewer comes and goes: the session stays.
    let mut v = r.viewer().await;
    read_until(&mut v, b"last words").await;
    drop(v);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(r.fake.calls().len(), 2, "no End after the last viewer left");
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_backoff_with_nobody_watching() {
    let mut r = rig(always_on()).await;
    *r.fake.fail_by_default.lock().unwrap() = Some("Error: no BMC");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let times = r.fake.times_of(&Call::Activate);
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps[..3], [1, 2, 4], "{gaps:?}");
    // The BMC is back: the next retry brings the session up.
    *r.fake.fail_by_default.lock().unwrap() = None;
    let _node = r.node().await;
}

#[tokio::test(start_paused = true)]
async fn without_always_on_nothing_starts_before_a_viewer() {
    let r = rig(config()).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(r.fake.calls().is_empty(), "{:?}", r.fake.calls());
}
