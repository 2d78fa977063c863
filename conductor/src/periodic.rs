//! The provision-state periodic task: Ironic's `_check_deploy_timeouts`,
//! `_check_inspect_wait_timeouts` and `_check_cleanwait_timeouts`. Every
//! `[conductor] check_provision_state_interval` seconds it fails the nodes
//! left waiting for a ramdisk or a service past their timeout, with Ironic's
//! last_error:
//!
//! | waiting in       | for longer than           | since                  | moves to        |
//! |------------------|---------------------------|------------------------|-----------------|
//! | `wait call-back` | `deploy_callback_timeout` | provision_updated_at   | `deploy failed` |
//! | `inspect wait`   | `inspect_wait_timeout`    | inspection_started_at  | `inspect failed`|
//! | `clean wait`     | `clean_callback_timeout`  | provision_updated_at   | `clean failed`  |
//!
//! A clean wait that times out also puts the node into maintenance with
//! the message as maintenance_reason, as Ironic's cleaning error handler.
//! As Ironic: a timeout of 0 disables its check, an interval of 0 all of
//! them; nodes in maintenance are skipped, and so are locked nodes (an
//! action under way; the next round sees them again). The node's lock is
//! taken for the transition, so a callback racing the timeout either wins
//! or finds the node failed.
//!
//! [`ProvisionTimeouts`] is the task's handle (its own CancellationToken);
//! `lib::run` starts it and stops it at shutdown. Tests call [`check_once`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ConductorConfig;
use crate::model::Node;
use crate::provision::{Event, State};
use crate::service::{Conductor, ServiceError};

/// The timeouts in force (`None`: that check is off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub deploy_callback: Option<Duration>,
    pub inspect_wait: Option<Duration>,
    pub clean_callback: Option<Duration>,
    /// How often to check (`None`: never).
    pub interval: Option<Duration>,
}

fn secs(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

impl Timeouts {
    pub fn from_config(c: &ConductorConfig) -> Self {
        Self {
            deploy_callback: secs(c.deploy_callback_timeout),
            inspect_wait: secs(c.inspect_wait_timeout),
            clean_callback: secs(c.clean_callback_timeout),
            interval: secs(c.check_provision_state_interval),
        }
    }

    /// The timeout of `state`, if it is a wait state whose check is on.
    pub fn of(&self, state: State) -> Option<Duration> {
        match state {
            State::DeployWait => self.deploy_callback,
            State::InspectWait => self.inspect_wait,
            State::CleanWait => self.clean_callback,
            _ => None,
        }
    }

    fn any(&self) -> bool {
        self.deploy_callback.is_some()
            || self.inspect_wait.is_some()
            || self.clean_callback.is_some()
    }
}

/// Wall-clock time that advances with tokio's clock: the stored
/// timestamps are wall-clock, and a paused test clock must move them.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall: SystemTime,
    mono: tokio::time::Instant,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> SystemTime {
        self.wall + self.mono.elapsed()
    }
}

/// A stored time (`2025-01-02T03:04:05+00:00`, as `model::now` writes it).
fn parse_time(s: &str) -> Option<SystemTime> {
    let z = s
        .strip_suffix("+00:00")
        .map_or_else(|| s.to_owned(), |t| format!("{t}Z"));
    humantime::parse_rfc3339_weak(&z).ok()
}

/// When `node`'s wait in `state` began, for the timeout.
fn waiting_since(node: &Node, state: State) -> Option<SystemTime> {
    let at = match state {
        State::InspectWait => node.inspection_started_at.as_deref(),
        _ => node.provision_updated_at.as_deref(),
    };
    at.and_then(parse_time)
}

/// Is `node` past the timeout of the wait it is in, at `now`?
fn timed_out(node: &Node, t: &Timeouts, now: SystemTime) -> Option<State> {
    let state = State::parse(&node.provision_state).ok()?;
    let timeout = t.of(state)?;
    if node.maintenance {
        return None;
    }
    let since = waiting_since(node, state)?;
    (now.duration_since(since).ok()? >= timeout).then_some(state)
}

/// Ironic's last_error for a timeout in `state`.
fn last_error(node: &Node, state: State) -> String {
    match state {
        State::DeployWait => format!(
            "Timeout reached while waiting for callback for node {}",
            node.uuid
        ),
        State::InspectWait => "timeout reached while inspecting the node".into(),
        _ => format!(
            "Timeout reached while cleaning the node. Please check if the ramdisk responsible for the cleaning is running on the node. Failed on step {}.",
            serde_json::Value::Object(node.clean_step.clone())
        ),
    }
}

/// One round: fail every node past its wait's timeout at `now`. The UUIDs
/// of the nodes failed.
pub async fn check_once(
    c: &Arc<Conductor>,
    t: &Timeouts,
    now: SystemTime,
) -> Result<Vec<String>, ServiceError> {
    let mut failed = Vec::new();
    for node in c.store.list_nodes().await? {
        if timed_out(&node, t, now).is_none() {
            continue;
        }
        // Ironic's `reserved: False`: a node an action holds waits for the
        // next round.
        let Ok(guard) = c.reserve(&node.uuid) else {
            tracing::debug!(node = %node.uuid, "timed out but locked; next round");
            continue;
        };
        // Read again under the lock: a callback may have moved it on.
        let node = match c.store.get_node(&node.uuid).await {
            Ok(n) => n,
            Err(_) => continue,
        };
        let Some(state) = timed_out(&node, t, now) else {
            continue;
        };
        let msg = last_error(&node, state);
        c.advance(&node.uuid, Event::Fail, Some(msg.clone()))
            .await?;
        if state == State::InspectWait {
            // An `agent` inspection: its service record aborted, the node
            // powered off (Ironic's abort on timeout), still locked, off
            // this loop (a BMC may take its time).
            let (c, node) = (c.clone(), node.clone());
            c.clone().tasks.spawn(async move {
                c.clean_up_agent_inspection(&node, true).await;
                drop(guard);
            });
        }
        if state == State::CleanWait {
            // As Ironic's cleaning_error_handler: a node whose cleaning
            // failed goes into maintenance with the reason.
            c.store
                .modify_node(&node.uuid, move |n: &mut Node| {
                    n.maintenance = true;
                    n.maintenance_reason = Some(msg);
                    Ok::<_, ServiceError>(())
                })
                .await?;
        }
        tracing::warn!(node = %node.uuid, from = %state, "provision wait timed out");
        failed.push(node.uuid);
    }
    Ok(failed)
}

/// The running periodic task; stop it with [`ProvisionTimeouts::stop`]
/// (or by cancelling the token it was started with).
pub struct ProvisionTimeouts {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl ProvisionTimeouts {
    /// Start checking every `t.interval`; `None` when the interval or every
    /// timeout is 0 (nothing to do, as Ironic's disabled periodics).
    pub fn start(c: Arc<Conductor>, t: Timeouts, cancel: CancellationToken) -> Option<Self> {
        let interval = t.interval.filter(|_| t.any())?;
        let clock = Clock::start();
        let token = cancel.clone();
        let span = tracing::info_span!("provision_timeouts");
        let task = tokio::spawn(
            async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = token.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    if let Err(e) = check_once(&c, &t, clock.now()).await {
                        tracing::warn!(error = %e, "checking provision timeouts");
                    }
                }
            }
            .instrument(span),
        );
        tracing::info!(?interval, "provision timeouts checked periodically");
        Some(Self { cancel, task })
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the provision timeout task ended badly");
        }
    }
}

#[cfg(test)]
mod tests;
