//! A rig of the scenario's own with a 3-member etcd cluster (`rig-up.sh`
//! with `RIG_ETCD_MEMBERS=3`), whose members the scenario can kill, stop
//! and continue; and the keystroke probes that scenario types with.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::replicas::Rig;

/// A rig of its own with a 3-member etcd cluster (rig-up.sh with
/// `RIG_ETCD_MEMBERS=3`), stopped by rig-down.sh when dropped.
pub struct Rig3 {
    script_dir: PathBuf,
    run_dir: PathBuf,
    /// `etcdK` → (pid, start time from /proc/<pid>/stat).
    etcd_pids: Vec<(String, i32, u64)>,
}

const RIG3_BASE_PORT: &str = "33000";

impl Rig3 {
    pub fn up() -> (Self, Rig) {
        let script_dir = std::env::var_os("PORTHOLE_RIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/rig"));
        let run_dir = std::env::temp_dir().join(format!("ha-rig3-{}", std::process::id()));
        let mut guard = Self {
            script_dir,
            run_dir,
            etcd_pids: Vec::new(),
        };
        guard.start();
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(guard.run_dir.join("rig.json")).expect("rig.json"),
        )
        .expect("JSON");
        let endpoints: Vec<&str> = json["etcd"]["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(endpoints.len(), 3, "{endpoints:?}");
        let pids = std::fs::read_to_string(guard.run_dir.join("pids")).expect("pids");
        for line in pids.lines() {
            let mut w = line.split_whitespace();
            let (Some(name), Some(pid)) = (w.next(), w.next()) else {
                continue;
            };
            if name.starts_with("etcd") {
                let pid: i32 = pid.parse().expect("pid");
                let start = start_time(pid).expect("etcd member running");
                guard.etcd_pids.push((name.to_owned(), pid, start));
            }
        }
        assert_eq!(guard.etcd_pids.len(), 3, "{pids}");
        let rig = Rig {
            etcd: endpoints.join(","),
            bmcs: json["bmcs"].as_array().expect("bmcs").clone(),
            run_dir: guard.run_dir.clone(),
        };
        (guard, rig)
    }

    /// rig-up.sh, tried twice: under a loaded CI machine one of its peers
    /// (once, the VNC server, which this rig does not even use) can miss
    /// rig-up's 15 s start-up wait. rig-up stops what it started when it
    /// fails; each failure's output and peer logs go into the message.
    fn start(&self) {
        let mut failures = Vec::new();
        for attempt in 1..=2 {
            let out = self
                .script("rig-up.sh")
                .env("RIG_ETCD_MEMBERS", "3")
                .env("RIG_BMCS", "1")
                .env("RIG_BASE_PORT", RIG3_BASE_PORT)
                .output()
                .expect("rig-up.sh");
            if out.status.success() {
                return;
            }
            let xvnc = std::fs::read_to_string(self.run_dir.join("vnc/xvnc.log"));
            failures.push(format!(
                "attempt {attempt}: {}{}\nxvnc.log: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                xvnc.unwrap_or_default()
            ));
            eprintln!(
                "rig-up.sh failed, {}",
                failures.last().expect("just pushed")
            );
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
        panic!("rig-up.sh: {}", failures.join("\n"));
    }

    fn script(&self, name: &str) -> Command {
        let mut c = Command::new(self.script_dir.join(name));
        c.env("RIG_RUN_DIR", &self.run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Signal member `name`'s process group, if its pid is still the
    /// process rig-up.sh started (same start time).
    pub fn signal(&self, name: &str, sig: Signal) -> bool {
        let (_, pid, start) = self
            .etcd_pids
            .iter()
            .find(|(n, ..)| n == name)
            .expect("member");
        if start_time(*pid) != Some(*start) {
            return false;
        }
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*pid), sig).is_ok()
    }
}

impl Drop for Rig3 {
    fn drop(&mut self) {
        // A stopped member would ignore rig-down's SIGTERM until its SIGKILL.
        for (name, ..) in self.etcd_pids.clone() {
            self.signal(&name, Signal::SIGCONT);
        }
        match self.script("rig-down.sh").output() {
            Ok(o) if o.status.success() => {
                let _ = std::fs::remove_dir_all(&self.run_dir);
            }
            Ok(o) => eprintln!(
                "rig-down.sh failed (logs in {}): {}",
                self.run_dir.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("rig-down.sh: {e}"),
        }
    }
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Each member's (endpoint index, member id, leader's member id), from
/// `etcdctl endpoint status`.
fn etcd_status(endpoints: &str) -> Vec<(usize, u64, u64)> {
    let Ok(out) = Command::new("etcdctl")
        .args(["--endpoints", endpoints, "endpoint", "status", "-w", "json"])
        .env("ETCDCTL_API", "3")
        .output()
    else {
        return Vec::new();
    };
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let eps: Vec<&str> = endpoints.split(',').collect();
    let members = status.as_array().cloned().unwrap_or_default();
    members
        .iter()
        .filter_map(|s| {
            let endpoint = s["Endpoint"].as_str()?;
            Some((
                eps.iter().position(|e| *e == endpoint)?,
                s["Status"]["header"]["member_id"].as_u64()?,
                s["Status"]["leader"].as_u64()?,
            ))
        })
        .collect()
}

/// The etcd member that leads the cluster now.
pub fn etcd_leader(endpoints: &str) -> Option<usize> {
    etcd_status(endpoints)
        .into_iter()
        .find_map(|(i, me, leader)| (me == leader).then_some(i))
}

/// Make sure member `k` does not lead: hand leadership to another member
/// (`etcdctl move-leader`) if it does.
pub fn not_leading(endpoints: &str, k: usize) {
    let status = etcd_status(endpoints);
    if etcd_leader(endpoints) != Some(k) {
        return;
    }
    let (_, target, _) = status
        .iter()
        .find(|(i, ..)| *i != k)
        .expect("another member");
    let leader_ep = endpoints.split(',').nth(k).expect("endpoint");
    let out = Command::new("etcdctl")
        .args([
            "--endpoints",
            leader_ep,
            "move-leader",
            &format!("{target:x}"),
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl move-leader");
    assert!(
        out.status.success(),
        "move-leader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(etcd_leader(endpoints), Some(k), "etcd{k} still leads");
}

/// One node-side connection and one viewer: type a token and wait (bounded)
/// until the node reads it.
pub async fn type_and_see(
    viewer: &mut TcpStream,
    node: &mut TcpStream,
    seen: &mut Vec<u8>,
    token: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    viewer
        .write_all(format!("{token}\r").as_bytes())
        .await
        .expect("viewer write");
    loop {
        if String::from_utf8_lossy(seen).contains(token) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{token} never reached the node: {:?}",
            String::from_utf8_lossy(seen)
        );
        let mut buf = [0u8; 4096];
        if let Ok(r) = tokio::time::timeout(left, node.read(&mut buf)).await {
            let n = r.expect("node read");
            assert!(n > 0, "node side closed");
            seen.extend_from_slice(&buf[..n]);
        }
    }
}

/// The viewer's connection is still open (no EOF, no error; the console may
/// echo nothing, so a read that times out is fine).
pub async fn still_open(viewer: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(1), viewer.read(&mut buf)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}
