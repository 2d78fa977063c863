//! The VNC backend against the rig's real TigerVNC (`Xtigervnc`, RFB 3.8,
//! VncAuth and VeNCrypt X509Vnc/TLSVnc, 1024x768): a Rust RFB client
//! connects through the proxy with security None and reads a whole
//! framebuffer, which must equal the one read directly from the server.
//!
//! Runs only when `PORTHOLE_RIG_JSON` names the rig's `rig.json`:
//!
//! ```sh
//! PORTHOLE_RIG_JSON=/tmp/rigrun/rig.json cargo test -p console-svc --test vnc_rig
//! ```
//!
//! TigerVNC blacklists an address after 5 failed logins in a row; the
//! wrong-password test fails at most twice and then logs in correctly,
//! which clears the count.

mod common;

use std::time::Duration;

use common::{none_handshake, read_frame, rig_vnc, settings, start, Frame, RigVnc};
use console_svc::backend::Health;
use console_svc::secret::Secret;
use console_svc::vnc::upstream::{self, Method, UpstreamTarget};
use tokio::net::TcpStream;

/// The framebuffer read straight from the server (VncAuth), for comparison.
async fn direct_frame(rig: &RigVnc) -> Frame {
    let io = TcpStream::connect((rig.host.as_str(), rig.port))
        .await
        .unwrap();
    let password = Secret::new(rig.password.clone());
    let target = UpstreamTarget {
        host: &rig.host,
        password: Some(&password),
    };
    let s = settings(vec![Method::VncAuth], None);
    let (mut stream, _) = upstream::handshake(io, &target, &s.upstream)
        .await
        .expect("direct VncAuth login");
    read_frame(&mut stream).await
}

async fn frame_through(console: &common::Console) -> Frame {
    let mut io = TcpStream::connect(console.addr).await.unwrap();
    none_handshake(&mut io).await.expect("SecurityResult OK");
    read_frame(&mut io).await
}

fn check_frame(frame: &Frame, direct: &Frame) {
    assert_eq!((frame.width, frame.height), (1024, 768));
    assert!(
        frame.distinct_pixels() >= 2,
        "the rig shows a stipple pattern"
    );
    assert_eq!(frame.name, direct.name);
    assert!(
        frame.pixels == direct.pixels,
        "the proxied framebuffer is the server's"
    );
}

async fn through_the_proxy(prefer: Method, ca: bool) {
    let Some(rig) = rig_vnc("vnc_rig") else {
        return;
    };
    let ca = ca.then_some(rig.tls_cert.as_path());
    let console = start(
        settings(vec![prefer], ca),
        &rig.host,
        rig.port,
        &rig.password,
    )
    .await;
    let direct = direct_frame(&rig).await;
    let frame = frame_through(&console).await;
    check_frame(&frame, &direct);
    eprintln!(
        "vnc_rig: {prefer:?} upstream: {}x{} framebuffer, {} bytes/pixel, {} distinct pixels, equal to the direct one",
        frame.width,
        frame.height,
        frame.bytes_per_pixel,
        frame.distinct_pixels()
    );
    assert_eq!(*console.health.borrow(), Health::Ok);
    console.running.stop().await;
}

#[tokio::test]
async fn none_to_the_viewer_vnc_auth_upstream() {
    through_the_proxy(Method::VncAuth, false).await;
}

#[tokio::test]
async fn none_to_the_viewer_vencrypt_x509vnc_upstream() {
    through_the_proxy(Method::VeNCrypt, true).await;
}

#[tokio::test]
async fn several_viewers_at_once_each_with_its_own_upstream() {
    let Some(rig) = rig_vnc("vnc_rig") else {
        return;
    };
    let s = settings(vec![Method::VeNCrypt, Method::VncAuth], Some(&rig.tls_cert));
    let console = start(s, &rig.host, rig.port, &rig.password).await;
    let direct = direct_frame(&rig).await;
    let viewers = (0..3).map(|_| frame_through(&console));
    for frame in futures::future::join_all(viewers).await {
        check_frame(&frame, &direct);
    }
    console.running.stop().await;
}

#[tokio::test]
async fn wrong_password_fails_health_with_a_clear_message() {
    let Some(rig) = rig_vnc("vnc_rig") else {
        return;
    };
    let mut console = start(
        settings(vec![Method::VncAuth], None),
        &rig.host,
        rig.port,
        "not-the-password",
    )
    .await;
    // The start probe already finds out.
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Health::Failed(why) = console.health.borrow_and_update().clone() {
                return why;
            }
            console.health.changed().await.unwrap();
        }
    })
    .await
    .expect("health turns Failed");
    eprintln!("vnc_rig: wrong password → health: {failed}");
    assert!(failed.contains("authentication failed"), "{failed}");
    assert!(!failed.contains("not-the-password"));
    // A viewer is told why.
    let mut io = TcpStream::connect(console.addr).await.unwrap();
    let reason = none_handshake(&mut io).await.unwrap_err();
    eprintln!("vnc_rig: wrong password → viewer: {reason}");
    assert!(reason.contains("authentication failed"), "{reason}");
    console.running.stop().await;
    // Clear TigerVNC's failure count for this address.
    direct_frame(&rig).await;
}

/// Bad viewers (garbage instead of a version, silence, an unknown security
/// type) are each refused on their own: a viewer already relaying on the same
/// console, a new viewer, and another console all keep working.
#[tokio::test]
async fn bad_viewers_do_not_disturb_other_viewers_or_consoles() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rig) = rig_vnc("vnc_rig") else {
        return;
    };
    let s = || settings(vec![Method::VncAuth], None);
    let console = start(s(), &rig.host, rig.port, &rig.password).await;
    let other = start(s(), &rig.host, rig.port, &rig.password).await;
    let direct = direct_frame(&rig).await;

    // A good viewer, past its handshake, relaying.
    let mut good = TcpStream::connect(console.addr).await.unwrap();
    none_handshake(&mut good).await.expect("SecurityResult OK");

    // Garbage instead of "RFB 003.008\n": the proxy closes that connection.
    let mut garbage = TcpStream::connect(console.addr).await.unwrap();
    let mut version = [0u8; 12];
    garbage.read_exact(&mut version).await.unwrap();
    garbage.write_all(&[0xff; 64]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a garbage viewer is closed promptly");

    // An unknown security type: refused with a reason (RFB 3.8 SecurityResult 1).
    let mut unknown = TcpStream::connect(console.addr).await.unwrap();
    unknown.read_exact(&mut version).await.unwrap();
    unknown.write_all(b"RFB 003.008\n").await.unwrap();
    let n = unknown.read_u8().await.unwrap() as usize;
    let mut types = vec![0u8; n];
    unknown.read_exact(&mut types).await.unwrap();
    unknown.write_all(&[42]).await.unwrap();
    let result = unknown.read_u32().await.unwrap();
    assert_eq!(
        result, 1,
        "an unknown security type gets SecurityResult failed"
    );

    // A viewer that never answers holds only its own connection.
    let _silent = TcpStream::connect(console.addr).await.unwrap();

    check_frame(&read_frame(&mut good).await, &direct);
    check_frame(&frame_through(&console).await, &direct);
    check_frame(&frame_through(&other).await, &direct);
    assert_eq!(
        *console.health.borrow(),
        Health::Ok,
        "bad viewers are not the BMC's fault"
    );
    console.running.stop().await;
    other.running.stop().await;
}
