//! Peers from `../shared/rig` that a test starts itself: sushy-tools
//! ([`Sushy`], `redfish-up.sh`) and Swift ([`Swift`], `swift-up.sh`), each
//! with its own state dir, stopped on drop when the test started it.
//!
//! - sushy-tools: `PORTHOLE_REDFISH_URL` with `PORTHOLE_REDFISH_MEDIA_DIR`
//!   (where it downloads inserted media) names a running emulator; else,
//!   where the rig is (`PORTHOLE_RIG_JSON`), one is started on a free port.
//! - Swift (fixed ports 8080, 6210-6212): `swift-up.sh up` with
//!   `PORTHOLE_SWIFT_RIG_STATE_DIR` (default under the caller's dir); one
//!   already running there is used and left running; a start that failed
//!   is stopped again (what it left running would share the fixed ports
//!   with the next Swift).
//!
//! Peers on fixed ports (Swift; tgtd's 3260) are held under a machine-wide
//! [`PeerLock`] while a test uses them, so two test binaries, or two
//! worktrees' suites, take turns instead of colliding on the ports.
//!
//! Without the peer a test is skipped with a notice (`None`), unless
//! `PORTHOLE_REQUIRE_PEERS` is set (scripts/test.sh), where it fails.
//!
//! Callers: porthole-bmc's and deploy's rig tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `../shared/rig`, or `PORTHOLE_RIG_DIR`.
pub fn rig_dir() -> PathBuf {
    std::env::var_os("PORTHOLE_RIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/rig"))
}

fn missing(what: &str) {
    eprintln!("notice: {what}; skipping this test");
    assert!(
        std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
        "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set: {what}"
    );
}

/// A sushy-tools emulator (fake driver).
pub struct Sushy {
    pub url: String,
    /// The TMPDIR it downloads inserted media into (one subdir per image).
    pub media: PathBuf,
    pid: Option<i32>,
}

impl Sushy {
    /// The emulator for a test; `state` is where one started here keeps
    /// its files (the caller's own dir). `nodes`: systems to emulate.
    pub fn get(state: &Path, nodes: usize) -> Option<Sushy> {
        if let Some(url) = std::env::var_os("PORTHOLE_REDFISH_URL") {
            let media = std::env::var_os("PORTHOLE_REDFISH_MEDIA_DIR")
                .expect("PORTHOLE_REDFISH_MEDIA_DIR goes with PORTHOLE_REDFISH_URL");
            return Some(Sushy {
                url: url.to_string_lossy().into_owned(),
                media: media.into(),
                pid: None,
            });
        }
        if std::env::var_os("PORTHOLE_RIG_JSON").is_none() {
            missing("neither PORTHOLE_REDFISH_URL nor PORTHOLE_RIG_JSON is set");
            return None;
        }
        let script = rig_dir().join("redfish-up.sh");
        // What an interrupted run left in this state dir.
        let _ = Command::new(&script)
            .arg("down")
            .env("RIG_STATE_DIR", state)
            .output();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let out = Command::new(&script)
            .arg("up")
            .env("RIG_STATE_DIR", state)
            .env("REDFISH_PORT", port.to_string())
            .env("REDFISH_NODES", nodes.to_string())
            .output()
            .expect("running redfish-up.sh");
        assert!(out.status.success(), "redfish-up.sh: {out:?}");
        let pid = std::fs::read_to_string(state.join("redfish/sushy.pid"))
            .expect("sushy.pid")
            .trim()
            .parse()
            .expect("a pid");
        Some(Sushy {
            url: format!("http://127.0.0.1:{port}"),
            media: state.join("redfish/media"),
            pid: Some(pid),
        })
    }

    /// The path of emulated system `i` (`node-i`).
    pub fn system(i: usize) -> String {
        format!(
            "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-{:012x}",
            0xf352_7a1e_f094_u64 + i as u64
        )
    }

    /// Every file the emulator holds in its media directory.
    pub fn held(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(&self.media).into_iter().flatten() {
            let Ok(d) = d else { continue };
            for f in std::fs::read_dir(d.path()).into_iter().flatten() {
                if let Ok(bytes) = f.and_then(|f| std::fs::read(f.path())) {
                    out.push(bytes);
                }
            }
        }
        out
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Swift from `swift-up.sh` (tempauth `test:tester` / `testing`, account
/// `AUTH_test`, temp-URL key `rig-tempurl-key`).
pub struct Swift {
    pub state: PathBuf,
    started: bool,
    // Dropped after `Drop::drop` stopped Swift (fields drop after it).
    _turn: PeerLock,
}

impl Swift {
    pub const AUTH_URL: &'static str = "http://127.0.0.1:8080/auth/v1.0";
    pub const USER: &'static str = "test:tester";
    pub const KEY: &'static str = "testing";

    /// Swift for a test: `default_state` unless PORTHOLE_SWIFT_RIG_STATE_DIR.
    pub fn up(default_state: &Path) -> Option<Swift> {
        let state = std::env::var_os("PORTHOLE_SWIFT_RIG_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| default_state.to_owned());
        let turn = PeerLock::take("swift");
        match Self::start(&rig_dir(), &state, turn) {
            Ok(s) => Some(s),
            Err(why) => {
                missing(&why);
                None
            }
        }
    }

    /// `swift-up.sh up` from `rig` in `state`, during `turn`.
    fn start(rig: &Path, state: &Path, turn: PeerLock) -> Result<Swift, String> {
        let script = rig.join("swift-up.sh");
        let out = Command::new(&script)
            .arg("up")
            .env("RIG_STATE_DIR", state)
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(Swift {
                state: state.to_owned(),
                started: !String::from_utf8_lossy(&o.stdout).contains("already running"),
                _turn: turn,
            }),
            other => {
                // It may have started servers before its last check failed:
                // stop them, or they hold the fixed ports beside the next
                // Swift's.
                let _ = Command::new(&script)
                    .arg("down")
                    .env("RIG_STATE_DIR", state)
                    .output();
                Err(format!("swift-up.sh did not start Swift: {other:?}"))
            }
        }
    }

    /// The rig's `expire`: the expirer and updaters once.
    pub fn expire(&self) {
        let out = Command::new(rig_dir().join("swift-up.sh"))
            .arg("expire")
            .env("RIG_STATE_DIR", &self.state)
            .output()
            .expect("running swift-up.sh expire");
        assert!(out.status.success(), "swift-up.sh expire: {out:?}");
    }
}

impl Drop for Swift {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(rig_dir().join("swift-up.sh"))
                .arg("down")
                .env("RIG_STATE_DIR", &self.state)
                .output();
        }
    }
}

/// A machine-wide turn at a fixed-port peer: an exclusive `flock` on
/// `$TMPDIR/porthole-peer-<name>.lock`, released on drop (or when the
/// process dies). Waits up to `PORTHOLE_PEER_LOCK_WAIT` seconds (600).
pub struct PeerLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl PeerLock {
    pub fn take(name: &str) -> PeerLock {
        use nix::fcntl::{Flock, FlockArg};
        let path = std::env::temp_dir().join(format!("porthole-peer-{name}.lock"));
        let wait: u64 = std::env::var("PORTHOLE_PEER_LOCK_WAIT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return PeerLock(lock),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{} still held by another test after {wait} s",
                        path.display()
                    );
                    file = f;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err((_, e)) => panic!("flock {}: {e}", path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PeerLock, Swift};
    use nix::fcntl::{Flock, FlockArg};

    fn try_other(name: &str) -> bool {
        let path = std::env::temp_dir().join(format!("porthole-peer-{name}.lock"));
        let f = std::fs::File::open(path).unwrap();
        Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok()
    }

    #[test]
    fn a_peer_lock_excludes_others_until_dropped() {
        let name = format!("unit-{}", std::process::id());
        let turn = PeerLock::take(&name);
        assert!(
            !try_other(&name),
            "a second taker got the lock while it was held"
        );
        drop(turn);
        assert!(try_other(&name), "the lock outlived its PeerLock");
    }

    /// A failed `swift-up.sh up` can leave servers running on Swift's
    /// fixed ports (it exits on its last check, after starting them); the
    /// next Swift, from another state dir, then shares the ports with them
    /// (SO_REUSEPORT) and objects come and go. So a failed start is
    /// stopped again.
    #[test]
    fn a_failed_swift_start_is_stopped_again() {
        let rig = tempfile::tempdir().unwrap();
        let log = rig.path().join("calls");
        let script = rig.path().join("swift-up.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$1 $RIG_STATE_DIR\" >> {}\n[ \"$1\" = down ] || exit 22\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = format!("unit-swift-{}", std::process::id());
        let err = Swift::start(
            rig.path(),
            std::path::Path::new("/st"),
            PeerLock::take(&name),
        )
        .err()
        .expect("the start failed");
        assert!(err.contains("did not start Swift"), "{err}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "up /st\ndown /st\n");
    }
}
