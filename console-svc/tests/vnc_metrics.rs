//! VNC consoles in the metrics, against the rig's TigerVNC: a viewer reading
//! a whole framebuffer through the proxy shows as a connected VNC viewer,
//! its bytes are counted both ways (at least the framebuffer towards the
//! viewer), and it stops counting as connected once it leaves.
//!
//! Its own test binary, as the metrics are process-wide: nothing else here
//! counts VNC viewers, so the values are exact.

mod common;

use std::time::Duration;

use common::{none_handshake, read_frame, rig_vnc, settings, start};
use console_svc::vnc::upstream::Method;
use tokio::net::TcpStream;

fn sample(series: &str) -> f64 {
    let text = porthole_common::metrics::encode(&console_svc::metrics::get().registry());
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
        .parse()
        .unwrap()
}

const VIEWERS: &str = r#"porthole_console_viewers{kind="vnc"}"#;
const CONNECTIONS: &str = r#"porthole_console_viewer_connections_total{kind="vnc"}"#;
const TO_VIEWER: &str = r#"porthole_console_viewer_bytes_total{kind="vnc",direction="to_viewer"}"#;
const TO_NODE: &str = r#"porthole_console_viewer_bytes_total{kind="vnc",direction="to_node"}"#;

#[tokio::test]
async fn a_vnc_viewer_and_its_bytes_are_counted() {
    let Some(rig) = rig_vnc("vnc_metrics") else {
        return;
    };
    let console = start(
        settings(vec![Method::VncAuth], None),
        &rig.host,
        rig.port,
        &rig.password,
    )
    .await;
    assert_eq!(sample(VIEWERS), 0.0);
    let mut io = TcpStream::connect(console.addr).await.unwrap();
    none_handshake(&mut io).await.expect("SecurityResult OK");
    let frame = read_frame(&mut io).await;
    assert_eq!(sample(VIEWERS), 1.0, "one VNC viewer connected");
    assert_eq!(sample(CONNECTIONS), 1.0);
    let shown = sample(TO_VIEWER);
    assert!(
        shown >= frame.pixels.len() as f64,
        "to_viewer {shown} < the framebuffer's {} bytes",
        frame.pixels.len()
    );
    // ClientInit and the update request went through the relay.
    assert!(sample(TO_NODE) >= 1.0, "to_node {}", sample(TO_NODE));

    drop(io);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sample(VIEWERS) != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the viewer never left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    console.running.stop().await;
}
