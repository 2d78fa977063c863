//! Issue 9 points 1 and 2, on every serial backend: the owner paused (SIGSTOP)
//! past the TTL while a viewer on the new owner types through the whole
//! window loses that viewer no keystroke, before or after the SIGCONT, and
//! takes no BMC action past its deadline; the `ipmitool sol activate` the
//! paused owner was running is gone while the owner is still stopped (its
//! `sol-exec` helper kills it at the last deadline it was given); the socat owner killed (-9) leaves
//! no listener, no orphan and no BMC traffic behind, and the survivor
//! serves, typing through 8 s without losing a keystroke.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::replicas::{Cluster, Options, Rig};
use crate::support::{enable_running, options, rig, served_elsewhere, Checker, TTL};

/// How long the owner stays stopped (the 10 s: over three TTLs).
const PAUSE: Duration = Duration::from_secs(10);
/// How long the viewer keeps typing after the SIGCONT (the defect left the
/// new owner's console dead for 6-7 s).
const AFTER: Duration = Duration::from_secs(8);

/// The node side of BMC 0's serial line, read into a shared buffer.
async fn node_side(rig: &Rig) -> Arc<Mutex<Vec<u8>>> {
    let hc = &rig.bmc(0)["host_console"];
    let addr = format!(
        "{}:{}",
        hc["host"].as_str().unwrap(),
        hc["port"].as_u64().unwrap()
    );
    let mut node = TcpStream::connect(addr).await.expect("host console");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = node.read(&mut buf).await {
            if n == 0 {
                return;
            }
            out.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    seen
}

fn has(seen: &Mutex<Vec<u8>>, token: &str) -> bool {
    let seen = seen.lock().unwrap();
    seen.windows(token.len()).any(|w| w == token.as_bytes())
}

/// Type `label`N until one arrives at the node (a new SOL session may drop
/// its first packet): the session is up end to end. How long it took.
async fn until_typing_arrives(
    viewer: &mut TcpStream,
    seen: &Mutex<Vec<u8>>,
    label: &str,
) -> Duration {
    let since = Instant::now();
    for i in 0.. {
        let token = format!("{label}{i}.");
        viewer
            .write_all(token.as_bytes())
            .await
            .expect("viewer write");
        let sent = Instant::now();
        while sent.elapsed() < Duration::from_millis(700) {
            if has(seen, &token) {
                return since.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "typing on {label} never reached the node: {:?}",
            String::from_utf8_lossy(&seen.lock().unwrap())
        );
    }
    unreachable!()
}

/// Type a numbered token every 100 ms until `stop`; the tokens, with when
/// each was sent (relative to `t0`).
fn keep_typing(
    mut viewer: TcpStream,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> tokio::task::JoinHandle<Vec<(String, Duration)>> {
    tokio::spawn(async move {
        let mut typed = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let token = format!("k{i:04}.");
            if viewer.write_all(token.as_bytes()).await.is_err() {
                break;
            }
            typed.push((token, t0.elapsed()));
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        typed
    })
}

async fn paused_owner(backend: &'static str) {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(0).await;
    let opts = Options {
        backend,
        ..options()
    };
    let cluster = Cluster::start(&rig, &format!("pause-{backend}"), &opts, 2);
    let mut c0 = cluster.client(0).await;
    let con = enable_running(&mut c0, &rig).await;
    let port = con.port as u16;
    // No listener checker here: a stopped process keeps its listening
    // sockets (the kernel's), whatever it would do; what counts is that
    // nothing reaches the BMC through them.
    let owner = cluster.owner_of(&con);
    let seen = node_side(&rig).await;

    // A viewer on the owner, its SOL session up: what the paused owner, once
    // continued, must not end at the BMC.
    let mut on_owner = TcpStream::connect((con.host.as_str(), port)).await.unwrap();
    until_typing_arrives(&mut on_owner, &seen, "a").await;

    let activates = sol_activates_under(cluster.pid(owner));
    if backend == "rmcp" {
        // SOL is inside console-svc: what must not outlive the lease is its
        // traffic, which the no-keystroke-lost check below catches.
        assert!(activates.is_empty(), "rmcp ran ipmitool: {activates:?}");
    } else {
        assert!(
            !activates.is_empty(),
            "{backend}: the owner runs no ipmitool sol activate with its viewer attached"
        );
    }

    let t0 = Instant::now();
    cluster.signal(owner, Signal::SIGSTOP);
    // Its session's ipmitool must not outlive the lease: gone while the
    // owner is still stopped.
    let gone = tokio::spawn(async move {
        let since = Instant::now();
        while activates.iter().any(|p| alive(*p)) {
            if since.elapsed() > PAUSE - Duration::from_millis(500) {
                return Err(activates
                    .into_iter()
                    .filter(|p| alive(*p))
                    .collect::<Vec<_>>());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(since.elapsed())
    });
    let mut survivor = cluster.client(1 - owner).await;
    let moved = served_elsewhere(&mut survivor, &con.owner, TTL + Duration::from_secs(5)).await;
    let mut viewer = TcpStream::connect((moved.host.as_str(), port))
        .await
        .unwrap();
    let up = until_typing_arrives(&mut viewer, &seen, "b").await;
    let complete = t0.elapsed();
    eprintln!(
        "{backend}: served by {} {:?} after the SIGSTOP; typing through it after {up:?} more",
        moved.owner,
        complete - up
    );
    let stop = Arc::new(AtomicBool::new(false));
    let typing = keep_typing(viewer, stop.clone(), t0);

    // A viewer arriving at the paused owner's address meanwhile (socat's
    // listener is not paused with its replica).
    // What it is told is read as it comes: socat may close the connection
    // with a reset, which would discard anything still unread.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stray_said = Arc::new(Mutex::new(Vec::new()));
    if let Ok(mut stray) = TcpStream::connect((con.host.as_str(), port)).await {
        let said = stray_said.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stray.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                said.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
    }

    tokio::time::sleep(PAUSE.saturating_sub(t0.elapsed())).await;
    let gone = gone.await.unwrap();
    cluster.signal(owner, Signal::SIGCONT);
    match gone {
        Ok(after) => eprintln!(
            "{backend}: the paused owner's ipmitool sol activate was gone {after:?} after the SIGSTOP"
        ),
        Err(left) => panic!(
            "{backend}: the paused owner's ipmitool sol activate {left:?} still ran \
             {PAUSE:?} after the SIGSTOP, past its lease"
        ),
    }
    let continued = t0.elapsed();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::SeqCst);
    let typed = typing.await.unwrap();
    // Stragglers: a token typed just now needs a moment to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lost: Vec<&(String, Duration)> = typed.iter().filter(|(t, _)| !has(&seen, t)).collect();
    eprintln!(
        "{backend}: SIGCONT at {continued:?}; {} tokens typed from {complete:?} to {:?}, {} lost",
        typed.len(),
        t0.elapsed(),
        lost.len()
    );
    assert!(typed.len() > 100, "typed only {} tokens", typed.len());
    assert!(
        lost.is_empty(),
        "{backend}: keystrokes typed on the new owner after the takeover were lost \
         (token, sent at, from the SIGSTOP): {lost:?}"
    );
    // The stray viewer got no SOL session from the paused owner: on socat
    // its helper got no go and told it so (the checker below sees no BMC
    // action by the owner past its deadline); on native nothing answered.
    let said = String::from_utf8_lossy(&stray_said.lock().unwrap()).into_owned();
    eprintln!("{backend}: the stray viewer was told {:?}", said.trim());
    assert!(!said.contains("SOL Session operational"), "{said:?}");
    if backend == "socat" {
        assert!(
            said.contains("[porthole: "),
            "stray viewer was told: {said:?}"
        );
    }
    let actions = cluster.assert_bmc_actions_safe();
    let by_owner = actions.iter().filter(|a| a.replica == con.owner).count();
    eprintln!(
        "{backend}: {} BMC actions, {by_owner} by the paused owner, none past its deadline",
        actions.len()
    );
}

#[tokio::test]
async fn the_owner_paused_past_the_ttl_costs_the_new_owner_no_keystroke_native() {
    paused_owner("native").await;
}

#[tokio::test]
async fn the_owner_paused_past_the_ttl_costs_the_new_owner_no_keystroke_rmcp() {
    paused_owner("rmcp").await;
}

#[tokio::test]
async fn the_owner_paused_past_the_ttl_costs_the_new_owner_no_keystroke_socat() {
    paused_owner("socat").await;
}

/// A live (not zombie) process, by pid.
fn alive(pid: i32) -> bool {
    group_member(pid)
}

/// Live `ipmitool ... sol activate` processes descended from `root`.
fn sol_activates_under(root: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let ppid = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split_whitespace().nth(1)?.parse().ok()
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.windows(13).any(|w| w == b"sol\0activate\0") && alive(*pid)
        })
        .filter(|pid| {
            let mut p = *pid;
            for _ in 0..16 {
                match ppid(p) {
                    Some(q) if q == root => return true,
                    Some(q) if q > 1 => p = q,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// Live processes whose process group is `pgid`.
fn group(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
        })
        .collect()
}

/// kill -9 of a socat owner with a viewer attached: within a second nothing
/// listens on its address and none of its socat's processes (listener,
/// connection, helper, ipmitool) is left; the survivor serves and typing
/// reaches the node.
#[tokio::test]
async fn kill_9_of_a_socat_owner_leaves_no_listener_and_no_orphan() {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(0).await;
    let opts = Options {
        backend: "socat",
        ..options()
    };
    let mut cluster = Cluster::start(&rig, "kill9-socat", &opts, 2);
    let mut c0 = cluster.client(0).await;
    let con = enable_running(&mut c0, &rig).await;
    let port = con.port as u16;
    let checker = Checker::start(port);
    let owner = cluster.owner_of(&con);
    let old = format!("{}:{port}", cluster.replicas[owner].ip);
    let seen = node_side(&rig).await;
    let mut on_owner = TcpStream::connect((con.host.as_str(), port)).await.unwrap();
    until_typing_arrives(&mut on_owner, &seen, "a").await;
    let groups = cluster.recorded_children(owner);
    assert!(!groups.is_empty(), "the owner recorded no socat");
    let before: Vec<i32> = groups.iter().flat_map(|g| group(*g)).collect();
    assert!(
        before.len() >= 3,
        "socat, its connection and the helper's ipmitool: {before:?}"
    );

    let mut survivor = cluster.client(1 - owner).await;
    let killed = Instant::now();
    cluster.kill_9(owner);
    let mut left = before.clone();
    while !left.is_empty() || cluster.listeners(port).contains(&old) {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "after kill -9 of its replica: listening {:?}, processes left {left:?}",
            cluster.listeners(port)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = before
            .iter()
            .copied()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists() && group_member(*p))
            .collect();
    }
    eprintln!(
        "kill -9: listener and {} processes gone after {:?}",
        before.len(),
        killed.elapsed()
    );
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match on_owner.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the dead owner's viewer is still connected");
    assert!(
        TcpStream::connect(old.as_str()).await.is_err(),
        "the dead owner's address still accepts"
    );

    let moved = served_elsewhere(&mut survivor, &con.owner, TTL + Duration::from_secs(3)).await;
    let mut viewer = TcpStream::connect((moved.host.as_str(), port))
        .await
        .unwrap();
    let took = until_typing_arrives(&mut viewer, &seen, "b").await;
    eprintln!(
        "survivor {} serves; typing reached the node in {took:?}",
        moved.owner
    );
    // Nothing of the dead owner's (a surviving socat or helper activating
    // SOL) breaks the survivor's session: typing through 8 s loses nothing.
    let stop = Arc::new(AtomicBool::new(false));
    let typing = keep_typing(viewer, stop.clone(), Instant::now());
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::SeqCst);
    let typed = typing.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lost: Vec<&(String, Duration)> = typed.iter().filter(|(t, _)| !has(&seen, t)).collect();
    eprintln!(
        "kill -9: {} tokens typed on the survivor, {} lost",
        typed.len(),
        lost.len()
    );
    assert!(typed.len() > 50, "typed only {} tokens", typed.len());
    assert!(lost.is_empty(), "typed on the survivor and lost: {lost:?}");
    checker.finish().await;
    cluster.assert_bmc_actions_safe();
}

/// A live (not zombie) process.
fn group_member(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        == Some(false)
}
