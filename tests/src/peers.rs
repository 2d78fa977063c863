//! Peers from `../shared/rig` that a test starts itself: sushy-tools
//! ([`Sushy`], `redfish-up.sh`) and Swift ([`Swift`], `swift-up.sh`), each
//! with its own state dir, stopped on drop when the test started it.
//!
//! - sushy-tools: `PORTHOLE_REDFISH_URL` with `PORTHOLE_REDFISH_MEDIA_DIR`
//!   (where it downloads inserted media) names a running emulator; else,
//!   where the rig is (`PORTHOLE_RIG_JSON`), one is started on a free port,
//!   its state dir's media directory emptied first (what a killed run left
//!   inserted; an external emulator's is left alone).
//! - Swift (fixed ports 8080, 6210-6212): `swift-up.sh up` with
//!   `PORTHOLE_SWIFT_RIG_STATE_DIR` (default under the caller's dir); one
//!   already running there is used and left running; a start that failed
//!   is stopped again (what it left running would share the fixed ports
//!   with the next Swift).
//!
//! - tgtd (fixed port 3260, [`Iscsi`], `iscsi-up.sh`): started with
//!   `PORTHOLE_ISCSI_RIG_STATE_DIR` (default under the caller's dir) unless
//!   running there; each test adds blank LUNs of its own ([`Lun`]) and
//!   they are deleted on drop.
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
        Some(Self::start(&rig_dir(), state, nodes))
    }

    /// `redfish-up.sh` from `rig` in `state`: what an interrupted run
    /// left there stopped, and its media removed (sushy-tools deletes a
    /// download only on eject, so a killed run's stay, and the next run's
    /// "holds no media" checks would see them), then started on a free
    /// port.
    fn start(rig: &Path, state: &Path, nodes: usize) -> Sushy {
        let script = rig.join("redfish-up.sh");
        let _ = Command::new(&script)
            .arg("down")
            .env("RIG_STATE_DIR", state)
            .output();
        let media = state.join("redfish/media");
        match std::fs::remove_dir_all(&media) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                panic!("clearing {}: {e}", media.display())
            }
            _ => {}
        }
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
        Sushy {
            url: format!("http://127.0.0.1:{port}"),
            media,
            pid: Some(pid),
        }
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

/// tgtd from `iscsi-up.sh` on 127.0.0.1:3260 (user space, no CHAP), held
/// under `PeerLock::take("iscsi")` while the test runs.
pub struct Iscsi {
    pub state: PathBuf,
    started: bool,
    // Dropped after `Drop::drop` stopped tgtd.
    _turn: PeerLock,
}

/// A file-backed LUN 1 of its own target, deleted (target and file) on drop.
pub struct Lun {
    pub iqn: String,
    /// `iscsi://127.0.0.1:3260/<iqn>/1`.
    pub url: String,
    /// The backing file: the LUN's bytes.
    pub backing: PathBuf,
    chap_user: Option<String>,
}

impl Iscsi {
    pub const ADDRESS: &'static str = "127.0.0.1";
    pub const PORT: u16 = 3260;

    /// tgtd for a test: `default_state` unless PORTHOLE_ISCSI_RIG_STATE_DIR.
    pub fn up(default_state: &Path) -> Option<Iscsi> {
        let state = std::env::var_os("PORTHOLE_ISCSI_RIG_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| default_state.to_owned());
        let turn = PeerLock::take("iscsi");
        let was_running = state.join("iscsi/tgtd.pid").exists()
            && Command::new("tgtadm")
                .args(["--lld", "iscsi", "--mode", "system", "--op", "show"])
                .output()
                .is_ok_and(|o| o.status.success());
        let out = Command::new(rig_dir().join("iscsi-up.sh"))
            .arg("up")
            .env("RIG_STATE_DIR", &state)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Iscsi {
                state,
                started: !was_running,
                _turn: turn,
            }),
            other => {
                missing(&format!("iscsi-up.sh did not start tgtd: {other:?}"));
                None
            }
        }
    }

    /// A blank LUN of `size` (`64M`, …) under a new target `iqn`, made
    /// here as `iscsi-up.sh add` makes it but with the next tid computed
    /// as a number (the script compares tids as strings, so its 11th
    /// target collides with tid 10).
    pub fn add(&self, iqn: &str, size: &str) -> Lun {
        let tids = targets();
        let tid = (tids.iter().map(|(t, _)| *t).max().unwrap_or(0) + 1).to_string();
        let backing = self.state.join(format!("iscsi/lun-{tid}.img"));
        let _ = std::fs::remove_file(&backing);
        let out = Command::new("truncate")
            .args(["-s", size])
            .arg(&backing)
            .output()
            .expect("truncate");
        assert!(out.status.success(), "truncate: {out:?}");
        let store = backing.display().to_string();
        for args in [
            vec![
                "--mode",
                "target",
                "--op",
                "new",
                "--tid",
                &tid,
                "--targetname",
                iqn,
            ],
            vec![
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                &tid,
                "--lun",
                "1",
                "--backing-store",
                &store,
            ],
            vec![
                "--mode",
                "target",
                "--op",
                "bind",
                "--tid",
                &tid,
                "--initiator-address",
                "ALL",
            ],
        ] {
            let out = Command::new("tgtadm")
                .args(["--lld", "iscsi"])
                .args(&args)
                .output()
                .expect("running tgtadm");
            assert!(out.status.success(), "tgtadm {args:?}: {out:?}");
        }
        Lun {
            iqn: iqn.to_owned(),
            url: format!("iscsi://{}:{}/{iqn}/1", Self::ADDRESS, Self::PORT),
            backing,
            chap_user: None,
        }
    }
}

/// tgtd's targets: (tid, iqn).
fn targets() -> Vec<(u32, String)> {
    let out = Command::new("tgtadm")
        .args(["--lld", "iscsi", "--mode", "target", "--op", "show"])
        .output()
        .expect("running tgtadm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (tid, name) = l.strip_prefix("Target ")?.split_once(": ")?;
            Some((tid.parse().ok()?, name.trim().to_owned()))
        })
        .collect()
}

impl Lun {
    /// The target's tid in tgtd, if it still exists.
    fn tid(&self) -> Option<String> {
        targets()
            .into_iter()
            .find(|(_, name)| *name == self.iqn)
            .map(|(t, _)| t.to_string())
    }

    /// Require CHAP `user` / `password` (a tgtd account bound to this
    /// target; deleted with the LUN). The password is a test peer's.
    pub fn require_chap(&mut self, user: &str, password: &str) {
        let tid = self.tid().expect("the target exists");
        for args in [
            vec!["--op", "new", "--user", user, "--password", password],
            vec!["--op", "bind", "--tid", &tid, "--user", user],
        ] {
            let out = Command::new("tgtadm")
                .args(["--lld", "iscsi", "--mode", "account"])
                .args(&args)
                .output()
                .expect("running tgtadm");
            assert!(out.status.success(), "tgtadm account {}: {out:?}", args[1]);
        }
        self.chap_user = Some(user.to_owned());
    }

    /// Delete the target now, sessions and all (the "target gone" case).
    pub fn remove_target(&self) {
        let out = self.delete();
        assert!(
            out.as_ref().is_none_or(|o| o.status.success()),
            "tgtadm delete: {out:?}"
        );
    }

    fn delete(&self) -> Option<std::process::Output> {
        let tid = self.tid()?;
        Command::new("tgtadm")
            .args(["--lld", "iscsi", "--mode", "target", "--op", "delete"])
            .args(["--force", "--tid", &tid])
            .output()
            .ok()
    }
}

impl Drop for Lun {
    fn drop(&mut self) {
        let _ = self.delete();
        if let Some(user) = &self.chap_user {
            let _ = Command::new("tgtadm")
                .args(["--lld", "iscsi", "--mode", "account", "--op", "delete"])
                .args(["--user", user])
                .output();
        }
        let _ = std::fs::remove_file(&self.backing);
    }
}

impl Drop for Iscsi {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(rig_dir().join("iscsi-up.sh"))
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
    use super::{PeerLock, Sushy, Swift};
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

    /// A killed run leaves sushy-tools' downloads in its state dir (it
    /// deletes one only on eject): a Sushy started there begins without
    /// them, after the old emulator is stopped.
    #[test]
    fn a_sushy_started_here_begins_without_a_killed_runs_media() {
        let rig = tempfile::tempdir().unwrap();
        let state = rig.path().join("state");
        let stale = state.join("redfish/media/tmpk1lled");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("deploy.iso"), b"left by a killed run").unwrap();
        let log = rig.path().join("calls");
        let script = rig.path().join("redfish-up.sh");
        // `up` records whether the media were gone by then, and leaves a
        // real process for the Sushy to stop.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh
if [ \"$1\" = up ]; then ls -A \"$RIG_STATE_DIR/redfish/media\" 2>/dev/null | wc -l >> {log}; mkdir -p \"$RIG_STATE_DIR/redfish/media\"; sleep 30 >/dev/null 2>&1 & echo $! > \"$RIG_STATE_DIR/redfish/sushy.pid\"; fi\necho \"$1\" >> {log}\n",
                log = log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sushy = Sushy::start(rig.path(), &state, 1);
        assert_eq!(sushy.media, state.join("redfish/media"));
        assert!(sushy.held().is_empty(), "the killed run's media are held");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap().replace(' ', ""),
            "down\n0\nup\n",
            "stopped first, cleared before the start"
        );
    }
}
