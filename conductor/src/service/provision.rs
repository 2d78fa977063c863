//! Provision actions: `PUT /v1/nodes/{node}/states/provision` checked
//! against the state machine (`crate::provision`), the first transition
//! written at once, the work (verify, clean, deploy, inspect, tear down,
//! adopt) run in a background task that holds the node's lock (Ironic's
//! reservation) until the node is stable, failed, or waiting — a wait
//! state never holds it.
//!
//! Callers: `api::states::provision`, and `lib::run` at start
//! ([`Conductor::fail_stuck_provisioning`]).

use std::sync::Arc;

use serde_json::Value;
use tracing::Instrument;

use super::{BusyGuard, Conductor, ServiceError};
use crate::drivers::Kind;
use crate::model::{now, Dict, Node};
use crate::power::{Bmc, Power};
use crate::provision::interfaces::{InterfaceError, NodeInterfaces, Outcome};
use crate::provision::{parse_verb, transition, Event, State, Verb};

/// What a provision request asked for, checked.
struct Action {
    uuid: String,
    /// The state the first transition led to.
    state: State,
    configdrive: Option<Value>,
    ifaces: Option<NodeInterfaces>,
}

fn refused(target: &str, uuid: &str, state: &str) -> ServiceError {
    ServiceError::Invalid(format!(
        "The requested action \"{target}\" can not be performed on node \"{uuid}\" while it is in state \"{state}\"."
    ))
}

fn stored_state(n: &Node) -> Result<State, ServiceError> {
    State::parse(&n.provision_state).map_err(|e| ServiceError::Conflict(e.to_string()))
}

/// Move `n` along `event`, as Ironic's task.process_event: state, target,
/// provision_updated_at. Refused when the table has no such edge.
fn apply(n: &mut Node, event: Event) -> Result<State, ServiceError> {
    let (next, target) = transition(stored_state(n)?, event)
        .map_err(|r| ServiceError::Conflict(format!("node {}: {r}", n.uuid)))?;
    n.provision_state = next.as_str().into();
    n.target_provision_state = target.map(|t| t.as_str().into());
    n.provision_updated_at = Some(now());
    Ok(next)
}

/// The checks Ironic makes before it starts an action on a locked node:
/// maintenance, the state machine, configdrive. The state it starts from.
fn check(
    node: &Node,
    target: &str,
    event: Event,
    configdrive: Option<&Value>,
) -> Result<State, ServiceError> {
    let uuid = &node.uuid;
    if matches!(event, Event::Deploy | Event::Rebuild) && node.maintenance {
        return Err(ServiceError::Invalid(format!(
            "The provisioning operation can't be performed on node {uuid} because it's in maintenance mode."
        )));
    }
    if matches!(event, Event::Delete | Event::Rebuild) {
        super::node_attrs::check_not_protected(node)?;
    }
    let from = stored_state(node)?;
    if transition(from, event).is_err() {
        return Err(refused(target, uuid, &node.provision_state));
    }
    if configdrive.is_some_and(|c| !c.is_null()) && !matches!(event, Event::Deploy | Event::Rebuild)
    {
        return Err(ServiceError::Invalid(
            "Adding a config drive is only supported when setting provision state to active, rebuild".into(),
        ));
    }
    if event == Event::Provide && node.maintenance {
        return Err(ServiceError::Invalid(format!(
            "The providing operation can't be performed on node {uuid} because it's in maintenance mode."
        )));
    }
    Ok(from)
}

impl Conductor {
    /// Start a provision action; returns the node's UUID. The node's lock
    /// is taken here (409 while another action runs) and handed to the
    /// background work.
    pub async fn set_provision_state(
        self: &Arc<Self>,
        ident: &str,
        target: &str,
        configdrive: Option<Value>,
    ) -> Result<String, ServiceError> {
        let node = self.store.get_node(ident).await?;
        let uuid = node.uuid.clone();
        let event = match parse_verb(target) {
            Verb::Event(e) => e,
            Verb::Unsupported => {
                return Err(ServiceError::Invalid(format!(
                "The requested action \"{target}\" is not supported by the Porthole conductor yet."
            )))
            }
            Verb::Unknown => return Err(refused(target, &uuid, &node.provision_state)),
        };
        let guard = self.reserve(&uuid)?;
        // Read again under the lock: the state may have moved meanwhile.
        let node = self.store.get_node(&uuid).await?;
        let from = check(&node, target, event, configdrive.as_ref())?;
        let cd = configdrive.clone(); // kept in instance_info (instance_info.rs)
        let ifaces = self.interfaces.for_node(&node);
        ifaces
            .ready_for(&node, event)
            .map_err(ServiceError::Invalid)?;
        // Before anything moves: a refusal leaves the node where it was.
        match event {
            Event::Deploy | Event::Rebuild => {
                ifaces.deploy.check_service(&node).await.map_err(|e| {
                    ServiceError::Invalid(format!(
                        "Failed to validate deploy or power info for node {uuid}. Error: {e}"
                    ))
                })?
            }
            Event::Inspect => ifaces.inspect.check_service(&node).await.map_err(|e| {
                ServiceError::Invalid(format!(
                    "Failed to validate inspect interface {} of node {uuid}: {e}",
                    ifaces.inspect.name()
                ))
            })?,
            Event::Abort if from == State::InspectWait => {
                ifaces.inspect.abort(&node).await.map_err(|e| {
                    ServiceError::Conflict(format!(
                        "Failed to abort the inspection of node {uuid}: {e}"
                    ))
                })?
            }
            _ => {}
        }
        let ifaces = Some(ifaces);
        let state = self
            .store
            .modify_node(&uuid, move |n: &mut Node| {
                apply(n, event)?;
                n.last_error = None;
                match event {
                    Event::Inspect => {
                        n.inspection_started_at = Some(now());
                        n.inspection_finished_at = None;
                    }
                    Event::Abort => n.last_error = Some(abort_message(from)),
                    Event::Deploy | Event::Rebuild => {
                        crate::instance_info::store_configdrive(&mut n.instance_info, cd.as_ref())
                    }
                    _ => {}
                }
                Ok::<_, ServiceError>(())
            })
            .await
            .and_then(|n| stored_state(&n))?;
        tracing::info!(node = %uuid, from = %from, to = %state, verb = target, "provision action accepted");
        self.forget_ramdisk_token_unless_waiting(&uuid, state).await;
        if event == Event::Abort {
            // Abort only leaves a wait state for its failed state: no work
            // but the clean up: the deploy's (still under the lock), or an
            // `agent` inspection's power off (as Ironic's; in the
            // background, the lock going with it).
            if state == State::DeployFailed {
                if let Ok(n) = self.store.get_node(&uuid).await {
                    self.clean_up_deploy(&n).await;
                }
            }
            if from == State::InspectWait {
                let this = self.clone();
                self.tasks.spawn(async move {
                    this.clean_up_agent_inspection(&node, false).await;
                    drop(guard);
                });
            }
            return Ok(uuid);
        }
        let action = Action {
            uuid: uuid.clone(),
            state,
            configdrive,
            ifaces,
        };
        let this = self.clone();
        let span = tracing::info_span!("provision", node = %uuid, verb = target);
        self.tasks
            .spawn(async move { this.run(action, guard).await }.instrument(span));
        Ok(uuid)
    }

    /// The background part: drive the node until it rests (stable, failed)
    /// or waits; the lock goes with `guard` when this returns.
    async fn run(self: Arc<Self>, a: Action, guard: BusyGuard) {
        let mut state = a.state;
        loop {
            let step = self.step(&a, state).await;
            let (event, error) = match step {
                Ok(Some(ev)) => (ev, None),
                Ok(None) => break,
                Err(e) => (Event::Fail, Some(e)),
            };
            match self.advance(&a.uuid, event, error).await {
                Ok(next) => state = next,
                Err(e) => {
                    tracing::warn!(error = %e, "provision: cannot record the transition");
                    break;
                }
            }
            if !is_working(state) {
                break;
            }
        }
        tracing::info!(state = %state, "provision work finished");
        drop(guard);
    }

    /// Do the work of `state`; the event it ends with (`None`: nothing to
    /// do here), or the error for `fail`.
    async fn step(&self, a: &Action, state: State) -> Result<Option<Event>, String> {
        let mut node = self
            .store
            .get_node(&a.uuid)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(wait) = super::ramdisk::wait_of(state) {
            // Work that may wait for the ramdisk: its secret, handed to the
            // interface in this in-memory copy only (`service::ramdisk`).
            let token = self
                .issue_ramdisk_token(&node.uuid, wait)
                .await
                .map_err(|e| e.to_string())?;
            node.driver_internal_info
                .insert(super::ramdisk::TOKEN_KEY.into(), Value::String(token));
        }
        let ifaces = a.ifaces.as_ref();
        let wait_or_done = |o: Outcome| match o {
            Outcome::Done => Some(Event::Done),
            Outcome::Wait => Some(Event::Wait),
        };
        let iface_err = |e: InterfaceError| e.0;
        match state {
            State::Verifying => self.verify(&node).await.map(|()| Some(Event::Done)),
            State::Cleaning => self.clean(&node, ifaces).await.map(wait_or_done),
            State::Deploying => {
                let d = ifaces.ok_or("no deploy interface")?;
                d.deploy
                    .deploy(&node, a.configdrive.as_ref())
                    .await
                    .map(wait_or_done)
                    .map_err(|e| format!("Deploy failed: {e}"))
            }
            State::Inspecting => {
                let i = ifaces.ok_or("no inspect interface")?;
                if i.inspect.name() == super::continue_inspection::AGENT {
                    self.start_agent_inspection(&node)
                        .await
                        .map_err(|e| format!("Failed to inspect hardware. Reason: {e}"))?;
                }
                i.inspect
                    .inspect(&node)
                    .await
                    .map(wait_or_done)
                    .map_err(|e| format!("Failed to inspect hardware. Reason: {e}"))
            }
            State::Deleting => {
                if let Some(i) = ifaces {
                    if i.deploy.powers_off_at_tear_down() {
                        self.power_locked(&node, Power::Off).await?;
                    }
                    i.deploy.tear_down(&node).await.map_err(iface_err)?;
                }
                // As Ironic's tear down: the instance is forgotten.
                self.store
                    .modify_node(&node.uuid, |n: &mut Node| {
                        n.instance_info = Dict::new();
                        n.instance_uuid = None;
                        Ok::<_, ServiceError>(())
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                // and its VIFs detached (Ironic's remove_vifs_from_node)
                self.remove_vifs(&node.uuid)
                    .await
                    .map_err(|e| format!("Failed to tear down: {e}"))?;
                Ok(Some(Event::Clean))
            }
            State::Adopting => {
                let d = ifaces.ok_or("no deploy interface")?;
                d.deploy
                    .take_over(&node)
                    .await
                    .map(|()| Some(Event::Done))
                    .map_err(|e| {
                        format!("Error while attempting to adopt node {}: {e}.", node.uuid)
                    })
            }
            _ => Ok(None),
        }
    }

    /// Record `event` on the node (and `error` as last_error); the state
    /// it led to.
    pub(crate) async fn advance(
        &self,
        uuid: &str,
        event: Event,
        error: Option<String>,
    ) -> Result<State, ServiceError> {
        // A failure carries the node's console output (`provision::evidence`).
        let error = match error {
            Some(e) => Some(self.with_console_evidence(uuid, event, e).await),
            None => None,
        };
        let n = self
            .store
            .modify_node(uuid, move |n: &mut Node| {
                let from = stored_state(n)?;
                let next = apply(n, event)?;
                if let Some(e) = &error {
                    n.last_error = Some(e.clone());
                }
                if matches!(from, State::Inspecting | State::InspectWait) && event == Event::Done {
                    n.inspection_finished_at = Some(now());
                }
                if next.is_stable() || event == Event::Fail {
                    n.deploy_step = Dict::new();
                    n.clean_step = Dict::new();
                }
                Ok::<_, ServiceError>(())
            })
            .await?;
        let next = stored_state(&n)?;
        self.forget_ramdisk_token_unless_waiting(uuid, next).await;
        if next == State::DeployFailed {
            // A failed step or callback, a timeout: the deploy's clean up,
            // then the power off (Ironic's set_failed_state).
            self.clean_up_deploy(&n).await;
            self.power_off_after_deploy_failure(&n).await;
        }
        if let Some(e) = &n.last_error.as_ref().filter(|_| event == Event::Fail) {
            tracing::warn!(state = %next, error = %e, "provision step failed");
        } else {
            tracing::info!(state = %next, "provision state changed");
        }
        Ok(next)
    }

    /// `[deploy] power_off_after_deploy_failure`: `node`, just failed into
    /// `deploy failed` under its lock, powered off. A failure is logged
    /// only (as Ironic's): last_error keeps the deploy's failure.
    async fn power_off_after_deploy_failure(&self, node: &Node) {
        if !self.power_off_after_deploy_failure {
            return;
        }
        match self.power_locked(node, Power::Off).await {
            Ok(()) => tracing::info!(node = %node.uuid, "powered off after the deploy failure"),
            Err(e) => tracing::error!(
                node = %node.uuid,
                error = %e,
                "the node failed to power off while handling its deploy failure; it may still be running: put it in maintenance until this is resolved"
            ),
        }
    }

    /// Verify: the node's power interface answers with its credentials.
    async fn verify(&self, node: &Node) -> Result<(), String> {
        let uuid = &node.uuid;
        if node.interface(Kind::Power) == "fake" {
            return Ok(());
        }
        let bmc = Bmc::for_node(node, &self.power).map_err(|e| {
            format!("Failed to validate power driver interface for node {uuid}. Error: {e}")
        })?;
        let power = bmc
            .power_state()
            .await
            .map_err(|e| format!("Failed to get power state for node {uuid}. Error: {e}"))?;
        let p = power.as_ironic();
        self.store
            .modify_node(uuid, move |n: &mut Node| {
                n.power_state = Some(p.into());
                Ok::<_, ServiceError>(())
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Automated cleaning: the interface's clean steps (priority > 0,
    /// highest first), unless the node's automated_clean is false; none
    /// is immediate.
    async fn clean(&self, node: &Node, ifaces: Option<&NodeInterfaces>) -> Result<Outcome, String> {
        let Some(d) = ifaces.map(|i| &i.deploy) else {
            return Ok(Outcome::Done);
        };
        if node.automated_clean == Some(false) {
            tracing::info!("automated cleaning disabled for this node; skipped");
            return Ok(Outcome::Done);
        }
        let mut steps: Vec<_> = d
            .clean_steps(node)
            .into_iter()
            .filter(|s| s.priority > 0)
            .collect();
        steps.sort_by_key(|s| std::cmp::Reverse(s.priority));
        for step in steps {
            let shown = step.to_json();
            self.store
                .modify_node(&node.uuid, move |n: &mut Node| {
                    n.clean_step = shown;
                    Ok::<_, ServiceError>(())
                })
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(step = %step.step, "running clean step");
            match d.execute_clean_step(node, &step).await {
                Ok(Outcome::Done) => {}
                Ok(Outcome::Wait) => return Ok(Outcome::Wait),
                Err(e) => {
                    return Err(format!(
                        "Node {} failed step {}.{}: {e}",
                        node.uuid, step.interface, step.step
                    ))
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// At start: a node left in a working state by a stopped conductor
    /// cannot be resumed; it fails as Ironic's
    /// STUCK_STATES_TREATED_AS_FAIL do (verifying → enroll, deploying →
    /// deploy failed, ...).
    pub async fn fail_stuck_provisioning(&self) -> Result<(), ServiceError> {
        for node in self.store.list_nodes().await? {
            let Ok(state) = State::parse(&node.provision_state) else {
                continue;
            };
            if !is_working(state) {
                continue;
            }
            let msg =
                format!("The conductor stopped while the node was in provision state \"{state}\".");
            self.advance(&node.uuid, Event::Fail, Some(msg)).await?;
        }
        Ok(())
    }
}

/// A state with work under way in a task (not a wait, not a resting state).
fn is_working(s: State) -> bool {
    matches!(
        s,
        State::Verifying
            | State::Cleaning
            | State::Deploying
            | State::Inspecting
            | State::Deleting
            | State::Adopting
    )
}

/// last_error after an abort from `from`, as Ironic words it.
fn abort_message(from: State) -> String {
    match from {
        State::InspectWait => "Inspection was aborted by request.".into(),
        State::CleanWait => "By request, the clean operation was aborted".into(),
        _ => "By request, the deploy operation was aborted".into(),
    }
}

#[cfg(test)]
mod tests;
