//! QEMU's VNC server as an upstream: `qemu-system-x86_64 -display none
//! -vnc 127.0.0.1:N,password=on` (no disk, no kernel: SeaBIOS draws its
//! screen), password set on the monitor with `set_password vnc ...`.
//!
//! Skips with a notice when `qemu-system-x86_64` is not installed
//! (`apt-get install qemu-system-x86`). The QEMU process is this test's own
//! and is killed by pid.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{none_handshake, read_frame, settings, start};
use console_svc::backend::Health;
use console_svc::vnc::upstream::Method;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const PASSWORD: &str = "qemupw";

struct Qemu {
    child: Child,
    port: u16,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A free port above 5900 (QEMU takes a display number).
fn vnc_port() -> u16 {
    loop {
        let port = common::free_port().port();
        if port > 5900 {
            return port;
        }
    }
}

async fn qemu() -> Option<Qemu> {
    let port = vnc_port();
    let spawned = Command::new("qemu-system-x86_64")
        .args([
            "-display", "none", "-m", "32", "-nic", "none", "-monitor", "stdio",
        ])
        .arg("-vnc")
        .arg(format!("127.0.0.1:{},password=on", port - 5900))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = spawned else {
        eprintln!("vnc_qemu: qemu-system-x86_64 is not installed; skipping");
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above"
        );
        return None;
    };
    let stdin = child.stdin.as_mut().expect("stdin");
    stdin
        .write_all(format!("set_password vnc {PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            // The monitor command may land just after the port opens.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Some(Qemu { child, port });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("QEMU's VNC port {port} never opened");
}

#[tokio::test]
async fn qemu_vnc_with_a_password_through_the_proxy() {
    let Some(qemu) = qemu().await else {
        return;
    };
    let console = start(
        settings(vec![Method::VncAuth], None),
        "127.0.0.1",
        qemu.port,
        PASSWORD,
    )
    .await;
    let mut io = TcpStream::connect(console.addr).await.unwrap();
    none_handshake(&mut io).await.expect("SecurityResult OK");
    let frame = read_frame(&mut io).await;
    eprintln!(
        "vnc_qemu: {}x{} framebuffer named {:?}, {} distinct pixels",
        frame.width,
        frame.height,
        frame.name,
        frame.distinct_pixels()
    );
    assert!(frame.width >= 640 && frame.height >= 400);
    assert!(frame.name.contains("QEMU"), "{}", frame.name);
    assert_eq!(*console.health.borrow(), Health::Ok);
    console.running.stop().await;
}

#[tokio::test]
async fn qemu_vnc_wrong_password_is_reported() {
    let Some(qemu) = qemu().await else {
        return;
    };
    let console = start(
        settings(vec![Method::VncAuth], None),
        "127.0.0.1",
        qemu.port,
        "wrong",
    )
    .await;
    let mut io = TcpStream::connect(console.addr).await.unwrap();
    let reason = none_handshake(&mut io).await.unwrap_err();
    eprintln!("vnc_qemu: wrong password → viewer: {reason}");
    assert!(reason.contains("authentication failed"), "{reason}");
    let Health::Failed(why) = console.health.borrow().clone() else {
        panic!("health should have failed");
    };
    assert!(why.contains("authentication failed"), "{why}");
    console.running.stop().await;
}
