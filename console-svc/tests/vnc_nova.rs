//! Real clients through the VNC proxy, upstream the rig's TigerVNC:
//!
//! - nova 34.0.0's own `RFBSecurityProxy` (nova-novncproxy's handshake
//!   code) with `auth_schemes = none`, and with `vencrypt` and client
//!   certificates (`nova.console.rfb.authvencrypt`); the framebuffer it
//!   then reads must equal the one read directly from TigerVNC;
//! - vncdotool captures a 1024x768 screenshot with security None.
//!
//! Needs `.venv` from `scripts/venv.sh` and `PORTHOLE_RIG_JSON`; skips
//! with a notice otherwise. The Python side is `tests/py/nova_rfb_check.py`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{make_certs, read_frame, rig_vnc, settings, start, RigVnc};
use console_svc::secret::Secret;
use console_svc::vnc::accept::Scheme;
use console_svc::vnc::upstream::{self, Method, UpstreamTarget};
use tokio::net::TcpStream;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> Option<PathBuf> {
    let python = workspace().join(".venv/bin/python");
    if python.exists() {
        Some(python)
    } else {
        eprintln!(
            "vnc_nova: {} is missing (run scripts/venv.sh); skipping",
            python.display()
        );
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above"
        );
        None
    }
}

/// Runs the driver; its JSON, whether it exited 0, and its stderr.
async fn driver(python: &Path, args: &[String]) -> (serde_json::Value, bool, String) {
    let script = workspace().join("tests/py/nova_rfb_check.py");
    let run = tokio::process::Command::new(python)
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("driver finishes")
        .expect("driver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "vnc_nova: driver {args:?}\n  stdout: {stdout}  stderr tail: {}",
        tail(&stderr)
    );
    let json = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (json, out.status.success(), stderr.into_owned())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

async fn direct_pixels(rig: &RigVnc) -> Vec<u8> {
    let io = TcpStream::connect((rig.host.as_str(), rig.port))
        .await
        .unwrap();
    let password = Secret::new(rig.password.clone());
    let target = UpstreamTarget {
        host: &rig.host,
        password: Some(&password),
    };
    let s = settings(vec![Method::VncAuth], None);
    let (mut stream, _) = upstream::handshake(io, &target, &s.upstream).await.unwrap();
    read_frame(&mut stream).await.pixels
}

fn vencrypt_settings(certs: &Path, schemes: Vec<Scheme>) -> console_svc::vnc::VncSettings {
    let mut s = settings(vec![Method::VncAuth], None);
    s.viewer.schemes = schemes;
    s.viewer.tls = Some(
        console_svc::vnc::tls::server_config(
            &certs.join("server.pem"),
            &certs.join("server-key.pem"),
            &certs.join("ca.pem"),
        )
        .unwrap(),
    );
    s
}

fn nova_args(port: u16, schemes: &str, certs: Option<&Path>, dump: &Path) -> Vec<String> {
    let mut args = vec![
        "nova".into(),
        "--port".into(),
        port.to_string(),
        "--auth-schemes".into(),
        schemes.into(),
        "--dump".into(),
        dump.display().to_string(),
    ];
    if let Some(c) = certs {
        for (flag, file) in [
            ("--client-cert", "client.pem"),
            ("--client-key", "client-key.pem"),
            ("--ca-certs", "ca.pem"),
        ] {
            args.push(flag.into());
            args.push(c.join(file).display().to_string());
        }
    }
    args
}

async fn nova_case(schemes: Vec<Scheme>, nova_schemes: &str, with_client_cert: bool) {
    let (Some(python), Some(rig)) = (python(), rig_vnc("vnc_nova")) else {
        return;
    };
    let certs = make_certs(&format!("nova-{nova_schemes}"));
    let console = start(
        vencrypt_settings(&certs, schemes),
        &rig.host,
        rig.port,
        &rig.password,
    )
    .await;
    let dump = certs.join("frame.raw");
    let nova_certs = with_client_cert.then_some(certs.as_path());
    let (json, ok, _) = driver(
        &python,
        &nova_args(console.addr.port(), nova_schemes, nova_certs, &dump),
    )
    .await;
    assert!(
        ok,
        "nova's RFBSecurityProxy completed the handshake: {json}"
    );
    assert_eq!(json["security_result"], 0);
    assert_eq!(json["tenant_saw"]["types"], serde_json::json!([1, 1]));
    assert_eq!(
        (json["width"].as_u64(), json["height"].as_u64()),
        (Some(1024), Some(768))
    );
    let got = std::fs::read(&dump).unwrap();
    assert!(
        got == direct_pixels(&rig).await,
        "nova received the upstream's framebuffer"
    );
    console.running.stop().await;
    let _ = std::fs::remove_dir_all(&certs);
}

#[tokio::test]
async fn nova_security_proxy_with_auth_schemes_none() {
    nova_case(vec![Scheme::None], "none", false).await;
}

#[tokio::test]
async fn nova_security_proxy_with_vencrypt_and_client_certificates() {
    nova_case(vec![Scheme::VeNCrypt], "vencrypt", true).await;
}

#[tokio::test]
async fn nova_picks_vencrypt_first_when_both_are_offered() {
    nova_case(vec![Scheme::VeNCrypt, Scheme::None], "vencrypt,none", true).await;
}

/// nova always presents a client certificate (its authvencrypt fails
/// without one); one from another CA must not get through.
#[tokio::test]
async fn nova_with_an_untrusted_client_certificate_is_refused() {
    let (Some(python), Some(rig)) = (python(), rig_vnc("vnc_nova")) else {
        return;
    };
    let certs = make_certs("nova-ours");
    let other = make_certs("nova-other");
    let settings = vencrypt_settings(&certs, vec![Scheme::VeNCrypt]);
    let console = start(settings, &rig.host, rig.port, &rig.password).await;
    let mut args = nova_args(
        console.addr.port(),
        "vencrypt",
        Some(&other),
        &certs.join("frame.raw"),
    );
    let ca = args.iter().position(|a| a == "--ca-certs").unwrap() + 1;
    args[ca] = certs.join("ca.pem").display().to_string();
    let (_, ok, stderr) = driver(&python, &args).await;
    assert!(!ok, "an untrusted client certificate must not get through");
    assert!(
        stderr.contains("SSL") || stderr.contains("closed"),
        "{stderr}"
    );
    console.running.stop().await;
    let _ = std::fs::remove_dir_all(&certs);
    let _ = std::fs::remove_dir_all(&other);
}

#[tokio::test]
async fn vncdotool_captures_a_screenshot_through_the_proxy() {
    let (Some(python), Some(rig)) = (python(), rig_vnc("vnc_nova")) else {
        return;
    };
    let console = start(
        settings(vec![Method::VncAuth], None),
        &rig.host,
        rig.port,
        &rig.password,
    )
    .await;
    let png = std::env::temp_dir().join(format!("porthole-vncdotool-{}.png", std::process::id()));
    let args = vec![
        "vncdotool".into(),
        "--port".into(),
        console.addr.port().to_string(),
        "--png".into(),
        png.display().to_string(),
    ];
    let (json, ok, _) = driver(&python, &args).await;
    assert!(ok, "vncdotool captured a screenshot: {json}");
    assert_eq!(
        (json["width"].as_u64(), json["height"].as_u64()),
        (Some(1024), Some(768))
    );
    let _ = std::fs::remove_file(&png);
    console.running.stop().await;
}
