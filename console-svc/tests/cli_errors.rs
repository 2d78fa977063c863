//! The `console-svc` binary's failures are one line on stderr and exit 1,
//! even with `RUST_BACKTRACE` set: a service that does not answer, a bad
//! config file. (Errors a running service returns: tests/tests/service.rs.)
//! Needs no rig.

use std::process::Command;

use anyhow::{ensure, Result};

/// Run the built binary with `args` and a backtrace asked for.
fn console_svc(args: &[&str]) -> Result<(Option<i32>, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_console-svc"))
        .args(args)
        .env("RUST_BACKTRACE", "full")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("PORTHOLE_CONFIG")
        .env_remove("PORTHOLE_SERVER")
        .output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn ensure_one_line(code: Option<i32>, stderr: &str, wants: &str) -> Result<()> {
    ensure!(code == Some(1), "exit {code:?}: {stderr}");
    ensure!(stderr.lines().count() == 1, "not one line: {stderr:?}");
    ensure!(
        stderr.starts_with("console-svc: ") && stderr.contains(wants),
        "{stderr:?} does not say {wants:?}"
    );
    ensure!(
        !stderr.contains("backtrace") && !stderr.contains("Caused by"),
        "{stderr:?}"
    );
    Ok(())
}

#[test]
fn a_service_that_does_not_answer_is_one_line() -> Result<()> {
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = format!("http://127.0.0.1:{port}");
    for cmd in ["show", "disable", "log"] {
        let (code, stderr) = console_svc(&[cmd, "n1", "--server", &server])?;
        ensure_one_line(
            code,
            &stderr,
            &format!("connecting to console-svc at {server}"),
        )?;
    }
    Ok(())
}

#[test]
fn a_bad_config_file_is_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[service]\nlisten 127.0.0.1:50051\n")?;
    let (code, stderr) = console_svc(&["serve", "--config", &bad.display().to_string()])?;
    ensure_one_line(code, &stderr, &bad.display().to_string())
}
