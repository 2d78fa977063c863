//! The kubelet's probe loop for one pod: the startup probe until it passes
//! (or fails `failureThreshold` times), then readiness and liveness, each
//! every `periodSeconds` after `initialDelaySeconds` with its thresholds;
//! and the container's exit. Everything lands in the pod's [`Status`].
//! Spawned by [`super::pod::Pod::start`], ended by its cancellation token.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::manifest::{Container, Probe};
use super::pod::Status;
use super::probe;

type Exec = Arc<dyn Fn(&[String]) -> Result<tokio::process::Command, String> + Send + Sync>;

pub struct Input {
    pub pod: String,
    pub ip: String,
    pub container: Container,
    pub status: Arc<Mutex<Status>>,
    pub cancel: CancellationToken,
    pub exec: Exec,
}

impl Input {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().expect("status"));
    }

    async fn run(&self, p: &Probe) -> Result<(), String> {
        probe::run(
            &p.handler,
            &self.ip,
            &self.container,
            &*self.exec,
            p.timeout,
        )
        .await
    }
}

pub async fn track(i: Input, mut child: tokio::process::Child) {
    let probes = probes(&i);
    tokio::pin!(probes);
    let mut probes_done = false;
    loop {
        tokio::select! {
            r = child.wait() => {
                let why = match r {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                i.set(|s| {
                    if s.ready {
                        s.changes.push((Instant::now(), false, format!("exited: {why}")));
                    }
                    s.ready = false;
                    s.exited = Some(why);
                });
                return;
            }
            _ = &mut probes, if !probes_done => probes_done = true,
            _ = i.cancel.cancelled() => return,
        }
    }
}

async fn probes(i: &Input) {
    if let Some(p) = &i.container.startup {
        tokio::time::sleep(p.initial_delay).await;
        let mut fails = 0;
        loop {
            match i.run(p).await {
                Ok(()) => break,
                Err(e) => {
                    fails += 1;
                    let done = fails >= p.failure_threshold;
                    i.set(|s| {
                        s.last_failure = Some(if done {
                            format!("startup probe failed {fails} times (the kubelet would restart it): {e}")
                        } else {
                            format!("startup probe: {e}")
                        })
                    });
                    if done {
                        return;
                    }
                }
            }
            tokio::time::sleep(p.period).await;
        }
    }
    i.set(|s| s.started = true);
    tokio::join!(readiness(i), liveness(i));
}

async fn readiness(i: &Input) {
    let Some(p) = &i.container.readiness else {
        i.set(|s| s.ready = true);
        return;
    };
    tokio::time::sleep(p.initial_delay).await;
    let (mut ok, mut bad) = (0, 0);
    loop {
        if i.status.lock().expect("status").terminating {
            i.set(|s| s.ready = false);
            return;
        }
        let r = i.run(p).await;
        i.set(|s| match r {
            Ok(()) => {
                ok += 1;
                bad = 0;
                if !s.ready && ok >= p.success_threshold && !s.terminating {
                    s.ready = true;
                    s.changes
                        .push((Instant::now(), true, "readiness probe passed".into()));
                }
            }
            Err(e) => {
                bad += 1;
                ok = 0;
                if s.ready && bad >= p.failure_threshold {
                    s.ready = false;
                    s.changes
                        .push((Instant::now(), false, format!("readiness probe: {e}")));
                }
                s.last_failure = Some(format!("readiness probe of {}: {e}", i.pod));
            }
        });
        tokio::time::sleep(p.period).await;
    }
}

async fn liveness(i: &Input) {
    let Some(p) = &i.container.liveness else {
        return;
    };
    tokio::time::sleep(p.initial_delay).await;
    let mut bad = 0;
    loop {
        if i.status.lock().expect("status").terminating {
            return;
        }
        match i.run(p).await {
            Ok(()) => bad = 0,
            Err(e) => {
                bad += 1;
                if bad >= p.failure_threshold {
                    i.set(|s| {
                        s.last_failure = Some(format!(
                            "liveness probe failed {bad} times (the kubelet would restart it): {e}"
                        ));
                        s.liveness_failed = true;
                    });
                }
            }
        }
        tokio::time::sleep(p.period).await;
    }
}
