//! The BMC-action checker of the multi-replica suites (`ha_rig`,
//! `cluster_api`), independent of what the product says about itself:
//!
//! - every replica's `console.ipmitool_path` is a small wrapper of its own
//!   that appends `<wall time> <pid> <replica> <argv>` to one log and execs
//!   the real ipmitool (argv never holds the password: it is read from fd 3;
//!   the checker asserts the password is not in the log), so every BMC
//!   action is recorded with the replica that took it, whichever process of
//!   that replica (native hub, supervisor, socat's helper, an orphan) ran it;
//! - a thread watches `members/` under the cluster's prefix in etcd (with
//!   `etcdctl watch`, timestamping each event as it arrives): a member key
//!   is put when a replica is granted a lease and deleted when etcd expires
//!   or revokes it;
//! - the test notes what it does to a replica ([`Mark`]: paused, cut off
//!   from etcd, killed).
//!
//! From those, each replica's *unsafe windows*: paused or cut off at `t`, it
//! is past its deadline from `t + TTL` at the latest (no renewal can have
//! been sent after `t`; etcd keeps a lease at least a TTL after its last
//! renewal) or from when etcd deleted its member key after `t` if sooner,
//! until etcd shows it registered again under a new lease; killed at `t`,
//! for ever. The replica's own log adds windows the test did not cause
//! (etcd members stopped, say) and tightens the others: from each "lease
//! lost" line until it serves again (the earlier of its next "serving under
//! etcd lease" line and its next member key) it must be silent too. [`Recorder::judge`] lists every recorded action with the
//! lease state it was taken in and fails on any inside an unsafe window.

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the test did to a replica, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Paused,
    Continued,
    /// Its own way to etcd cut (a proxy).
    Cut,
    Restored,
    Killed,
    /// The replica's own log says it lost its lease.
    Fenced,
}

/// One ipmitool run, as the wrapper recorded it.
#[derive(Clone, Debug)]
pub struct BmcAction {
    pub at: SystemTime,
    pub pid: u32,
    pub replica: String,
    pub argv: String,
}

/// A `members/<replica>` change seen in etcd.
#[derive(Clone, Debug)]
struct MemberEvent {
    at: SystemTime,
    put: bool,
    replica: String,
}

/// How long after an exec the wrapper may stamp its line (it runs `date`).
const WRAPPER_SLACK: Duration = Duration::from_millis(100);

pub struct Recorder {
    log: PathBuf,
    ttl: Duration,
    marks: Mutex<Vec<(SystemTime, String, Mark)>>,
    members: Arc<Mutex<Vec<MemberEvent>>>,
    /// Each replica's log file.
    replica_logs: Mutex<Vec<(String, PathBuf)>>,
    watch: Mutex<Option<Child>>,
}

impl Recorder {
    /// Record into `dir/bmc-actions.log`; watch `members/` under `prefix`.
    pub fn start(dir: &Path, etcd: &str, prefix: &str, ttl: Duration) -> Self {
        let log = dir.join("bmc-actions.log");
        std::fs::write(&log, "").expect("bmc log");
        let members = Arc::new(Mutex::new(Vec::new()));
        let watch = watch_members(etcd, prefix, members.clone());
        Self {
            log,
            ttl,
            marks: Mutex::default(),
            members,
            replica_logs: Mutex::default(),
            watch: Mutex::new(watch),
        }
    }

    /// Write replica `id`'s ipmitool wrapper into `dir`; its path.
    pub fn wrapper(&self, dir: &Path, id: &str) -> PathBuf {
        let real = real_ipmitool();
        let path = dir.join(format!("ipmitool-{id}"));
        let script = format!(
            "#!/bin/sh\n\
             # BMC-action recorder of {id}: one line per run (argv has no password).\n\
             printf '%s %s %s %s\\n' \"$(date +%s.%N)\" \"$$\" '{id}' \"$*\" >> '{log}'\n\
             exec '{real}' \"$@\"\n",
            log = self.log.display(),
            real = real.display(),
        );
        std::fs::write(&path, script).expect("wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        path
    }

    /// Where replica `id` logs (read for its fences when judging).
    pub fn replica_log(&self, id: &str, path: PathBuf) {
        self.replica_logs
            .lock()
            .unwrap()
            .push((id.to_owned(), path));
    }

    /// (time, lost?) of every "lease lost" / "serving under etcd lease" line.
    fn lease_lines(&self, replica: &str) -> Vec<(SystemTime, bool)> {
        let logs = self.replica_logs.lock().unwrap().clone();
        let Some((_, path)) = logs.iter().find(|(id, _)| id == replica) else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let lost = if l.contains("lease lost: stopped serving") {
                    true
                } else if l.contains("serving under etcd lease") {
                    false
                } else {
                    return None;
                };
                Some((parse_rfc3339(l.split_whitespace().next()?)?, lost))
            })
            .collect()
    }

    pub fn mark(&self, replica: &str, mark: Mark) {
        let mut marks = self.marks.lock().unwrap();
        marks.push((SystemTime::now(), replica.to_owned(), mark));
    }

    /// Every action recorded so far.
    pub fn actions(&self) -> Vec<BmcAction> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(parse_action).collect()
    }

    /// The windows in which `replica` must take no BMC action.
    fn unsafe_windows(&self, replica: &str) -> Vec<(SystemTime, Option<SystemTime>, Mark)> {
        let marks = self.marks.lock().unwrap().clone();
        let members = self.members.lock().unwrap().clone();
        let mine = |put: bool, after: SystemTime| {
            members
                .iter()
                .find(|e| e.replica == replica && e.put == put && e.at >= after)
                .map(|e| e.at)
        };
        let lines = self.lease_lines(replica);
        // The replica's own "serving under etcd lease" line: written after
        // etcd granted the new lease and its member key, before the BMC gate
        // opens. The test's watch may see that key later under load.
        let granted = |after: SystemTime| {
            lines
                .iter()
                .find(|(t, lost)| !lost && *t >= after)
                .map(|(t, _)| *t)
        };
        let mut windows = Vec::new();
        for (at, who, mark) in marks {
            if who != replica {
                continue;
            }
            match mark {
                Mark::Paused | Mark::Cut => {
                    let by_ttl = at + self.ttl;
                    let start = match mine(false, at) {
                        Some(deleted) if deleted < by_ttl => deleted,
                        _ => by_ttl,
                    };
                    let end = match (mine(true, start), granted(start)) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    windows.push((start, end, mark));
                }
                Mark::Killed => windows.push((at, None, mark)),
                Mark::Continued | Mark::Restored | Mark::Fenced => {}
            }
        }
        for (i, (at, lost)) in lines.iter().enumerate() {
            if !lost {
                continue;
            }
            let served = lines[i + 1..].iter().find(|(_, l)| !l).map(|(t, _)| *t);
            let end = match (served, mine(true, *at)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // The wrapper stamps a few ms after the exec the gate allowed.
            windows.push((*at + WRAPPER_SLACK, end, Mark::Fenced));
        }
        windows
    }

    /// Check every recorded action; print them with their lease state; an
    /// error naming any taken by a replica past its deadline (or a password
    /// in the log). The actions otherwise. `list`: print every action with
    /// its lease state (else only a one-line summary, and the bad ones).
    pub fn judge(&self, password: &str, list: bool) -> Result<Vec<BmcAction>, String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if !password.is_empty() && text.contains(password) {
            return Err("the BMC password is in an ipmitool argv".into());
        }
        let actions = self.actions();
        let mut bad = Vec::new();
        if list {
            eprintln!("BMC actions ({}):", actions.len());
        }
        for a in &actions {
            let windows = self.unsafe_windows(&a.replica);
            let inside = windows
                .iter()
                .find(|(from, to, _)| a.at >= *from && to.is_none_or(|t| a.at < t));
            let state = match inside {
                Some((from, _, mark)) => format!(
                    "PAST ITS DEADLINE ({mark:?}; unsafe since {:.3})",
                    secs(*from)
                ),
                None => "lease valid".to_owned(),
            };
            if list {
                eprintln!(
                    "  {:.3} {} pid {}: {} [{state}]",
                    secs(a.at),
                    a.replica,
                    a.pid,
                    a.argv
                );
            }
            if inside.is_some() {
                bad.push(format!(
                    "{} pid {} at {:.3}: {} ({state})",
                    a.replica,
                    a.pid,
                    secs(a.at),
                    a.argv
                ));
            }
        }
        if !list {
            eprintln!(
                "BMC-action checker: {} actions, {} past a lease deadline",
                actions.len(),
                bad.len()
            );
        }
        if !bad.is_empty() {
            return Err(format!(
                "BMC actions by a replica past its lease deadline:\n{}",
                bad.join("\n")
            ));
        }
        Ok(actions)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut w) = self.watch.lock().unwrap().take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn parse_action(line: &str) -> Option<BmcAction> {
    let mut w = line.splitn(4, ' ');
    let at: f64 = w.next()?.parse().ok()?;
    let pid = w.next()?.parse().ok()?;
    let replica = w.next()?.to_owned();
    let argv = w.next().unwrap_or_default().to_owned();
    Some(BmcAction {
        at: UNIX_EPOCH + Duration::from_secs_f64(at),
        pid,
        replica,
        argv,
    })
}

/// `2026-12-01T09:04:32.517667Z` (tracing's UTC timestamps).
fn parse_rfc3339(t: &str) -> Option<SystemTime> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut c = time.split(':');
    let (h, min) = (
        c.next()?.parse::<i64>().ok()?,
        c.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = c.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60;
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_secs_f64(sec))
}

fn real_ipmitool() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("ipmitool"))
        .find(|p| p.is_file())
        .expect("ipmitool on PATH")
}

/// `etcdctl watch --prefix <prefix>members/`, each event stamped on arrival.
fn watch_members(etcd: &str, prefix: &str, out: Arc<Mutex<Vec<MemberEvent>>>) -> Option<Child> {
    let members = format!("{prefix}members/");
    let mut child = Command::new("etcdctl")
        .args(["--endpoints", etcd, "watch", "--prefix", &members])
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    std::thread::spawn(move || {
        let mut op = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            match line.as_str() {
                "PUT" => op = Some(true),
                "DELETE" => op = Some(false),
                key => {
                    if let (Some(put), Some(replica)) = (op, key.strip_prefix(&members)) {
                        out.lock().unwrap().push(MemberEvent {
                            at: SystemTime::now(),
                            put,
                            replica: replica.to_owned(),
                        });
                    }
                    op = None;
                }
            }
        }
    });
    Some(child)
}

/// A range of console ports this test process alone uses, free when leased:
/// `flock`ed slots of [`SLOT`] ports from `$PORTHOLE_HA_PORT_BASE` (default
/// 27000, below the ephemeral range and clear of the rig and `tests` crate
/// layouts), each port bindable on every replica address right now.
pub struct PortLease {
    pub start: u16,
    pub end: u16,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// Ports per slot.
pub const SLOT: u16 = 20;
const SLOTS: u16 = 50;

impl PortLease {
    /// `n` (≤ [`SLOT`]) free ports, bindable on each of `ips`.
    pub fn free(n: u16, ips: &[String]) -> Self {
        assert!(
            n > 0 && n <= SLOT,
            "a scenario gets 1..={SLOT} console ports"
        );
        let base: u16 = std::env::var("PORTHOLE_HA_PORT_BASE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(27000);
        let dir = std::env::temp_dir().join("porthole-ha-ports");
        std::fs::create_dir_all(&dir).expect("lock dir");
        for k in 0..SLOTS {
            let start = base + k * SLOT;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{start}.lock")))
                .expect("lock file");
            let Ok(lock) =
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            else {
                continue;
            };
            let bindable = (start..start + n).all(|p| {
                ips.iter()
                    .all(|ip| std::net::TcpListener::bind((ip.as_str(), p)).is_ok())
            });
            if bindable {
                return Self {
                    start,
                    end: start + n,
                    _lock: Some(lock),
                };
            }
        }
        panic!("no free slot of {SLOT} console ports from {base} ({SLOTS} tried)");
    }

    /// A fixed range (the benchmark's), checked only by the service.
    pub fn fixed(start: u16, end: u16) -> Self {
        Self {
            start,
            end,
            _lock: None,
        }
    }

    /// `START:END` as console-svc's port_range wants it.
    pub fn range(&self) -> String {
        format!("{}:{}", self.start, self.end)
    }
}

/// The checker's own parsing, against `date`: replica log times and wrapper
/// times must be on one clock for the windows to mean anything.
#[test]
fn log_times_parse_onto_the_wall_clock() {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ %s.%N"])
        .output()
        .expect("date");
    let out = String::from_utf8_lossy(&out.stdout);
    let (rfc, epoch) = out.trim().split_once(' ').expect("two fields");
    let parsed = parse_rfc3339(rfc).expect("parses");
    let epoch = UNIX_EPOCH + Duration::from_secs_f64(epoch.parse().unwrap());
    let gap = parsed
        .duration_since(epoch)
        .unwrap_or_else(|e| e.duration());
    assert!(
        gap < Duration::from_millis(1),
        "{rfc} vs {epoch:?}: {gap:?}"
    );
    let action = parse_action("1796117252.489 2652 replica-0 -I lanplus sol deactivate").unwrap();
    assert_eq!((action.pid, action.replica.as_str()), (2652, "replica-0"));
    assert_eq!(action.argv, "-I lanplus sol deactivate");
}
