//! The `conductor` binary's failures are one line on stderr and exit 1, even
//! with `RUST_BACKTRACE` set (an operator's mistake is not a crash). Needs no
//! rig.

use std::process::Command;

use anyhow::{ensure, Result};

/// Run the built binary with `args` and a backtrace asked for.
fn conductor(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_conductor"))
        .args(args)
        .env("RUST_BACKTRACE", "full")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("PORTHOLE_CONFIG")
        .output()?)
}

#[test]
fn a_bad_config_file_is_one_line_without_backtrace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.toml");
    // A TOML parse error spans several lines of its own.
    std::fs::write(&bad, "[api]\nlisten 127.0.0.1:6385\n")?;
    let missing = dir.path().join("missing.toml");
    for path in [&bad, &missing] {
        let out = conductor(&["--config", &path.display().to_string()])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1),
            "exit {:?}: {stderr}",
            out.status
        );
        ensure!(stderr.lines().count() == 1, "not one line: {stderr:?}");
        ensure!(
            stderr.starts_with("conductor: ") && stderr.contains(&path.display().to_string()),
            "does not name the file: {stderr:?}"
        );
        ensure!(
            !stderr.contains("backtrace") && !stderr.contains("Caused by"),
            "{stderr:?}"
        );
    }
    Ok(())
}
