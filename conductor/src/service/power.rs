//! Power actions (asynchronous, with target_power_state) and boot devices
//! (validation is in `validate.rs`). Callers: the state handlers in
//! `api::states`; `power_locked` (a power action under a lock its caller
//! holds): `service::provision` (tear down, a failed deploy) and
//! `service::continue_inspection` (an `agent` inspection).
//!
//! Locking as Ironic's reservation: a power action holds the node's lock
//! while it commands the BMC, and lets it go before it waits for the power
//! state to settle, so another call (ironic-inspector's power off during an
//! inspection, a second `power on`) is accepted meanwhile. Each action has
//! a sequence number ([`PowerSequence`]); an action that a newer one
//! overtook stops waiting and records nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use serde_json::{json, Value};
use tracing::Instrument;

use super::{BusyGuard, Conductor, ServiceError};
use crate::drivers::Kind;
use crate::model::{Dict, Node, POWER_ON};
use crate::power::{Bmc, Power, PowerError, BOOT_DEVICES};
use crate::provision::interfaces::DeployInterface;

/// What Ironic's fake management interface supports (`management_interface`
/// `fake`; ironic-inspector sets PXE before it powers a node on).
pub const FAKE_BOOT_DEVICES: &[&str] = &["pxe"];

/// What a `PUT /states/power` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    Reboot,
}

impl PowerAction {
    pub fn parse(target: &str) -> Result<Self, ServiceError> {
        match target {
            "power on" => Ok(Self::On),
            "power off" | "soft power off" => Ok(Self::Off),
            "rebooting" | "soft rebooting" => Ok(Self::Reboot),
            other => Err(ServiceError::Invalid(format!(
                "The requested action \"{other}\" can not be performed on the node; use \"power on\", \"power off\" or \"rebooting\"."
            ))),
        }
    }

    /// The `action` label of `porthole_conductor_power_actions_total`.
    fn label(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Reboot => "reboot",
        }
    }

    fn end_state(self) -> Power {
        match self {
            Self::Off => Power::Off,
            Self::On | Self::Reboot => Power::On,
        }
    }
}

/// The sequence number of each node's latest power action.
#[derive(Default)]
pub struct PowerSequence(Mutex<HashMap<String, u64>>);

impl PowerSequence {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new action on `uuid`: its number.
    fn begin(&self, uuid: &str) -> u64 {
        let mut m = self.map();
        let n = m.entry(uuid.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// Is `seq` still `uuid`'s latest action?
    fn is_latest(&self, uuid: &str, seq: u64) -> bool {
        self.map().get(uuid) == Some(&seq)
    }
}

impl Conductor {
    /// Start a power action: target_power_state set now, the BMC driven in
    /// the background, power_state settled (or last_error) when it is done.
    pub async fn set_power(
        self: &Arc<Self>,
        ident: &str,
        action: PowerAction,
    ) -> Result<(), ServiceError> {
        let node = self.store.get_node(ident).await?;
        if node.interface(Kind::Power) == "fake" {
            return self.set_fake_power(&node.uuid, action).await;
        }
        let bmc = Bmc::for_node(&node, &self.power)?;
        let guard = self.reserve(&node.uuid)?;
        let seq = self.power_seq.begin(&node.uuid);
        let target = match action {
            PowerAction::Reboot => POWER_ON,
            a => a.end_state().as_ironic(),
        };
        self.store
            .modify_node(&node.uuid, move |n: &mut Node| {
                n.target_power_state = Some(target.into());
                n.last_error = None;
                Ok::<_, ServiceError>(())
            })
            .await?;
        // The deployed instance made bootable again first (the design's
        // IloPower: its boot ISO re-inserted), still under the lock.
        let prepare = (action != PowerAction::Off).then(|| {
            let deploy = self.interfaces.for_node(&node).deploy;
            (deploy, node)
        });
        let this = self.clone();
        let span = tracing::info_span!("power", node = %guard.uuid, ?action);
        self.tasks.spawn(
            async move { this.run_power(bmc, action, guard, seq, prepare).await }.instrument(span),
        );
        Ok(())
    }

    /// Drive `node` to `want` under the lock its caller holds (tear down,
    /// a failed deploy, an `agent` inspection's start and end), and wait
    /// for the BMC to report it; power_state recorded. It takes the node's
    /// next power sequence number, so an API action still settling stops
    /// waiting and records nothing. A `fake` power interface only records.
    pub(super) async fn power_locked(&self, node: &Node, want: Power) -> Result<(), String> {
        let p = want.as_ironic();
        if node.interface(Kind::Power) != "fake" {
            let bmc = Bmc::for_node(node, &self.power).map_err(|e| e.to_string())?;
            let seq = self.power_seq.begin(&node.uuid);
            let settled = match bmc.set_power(want).await {
                Ok(()) => self.wait_for(&bmc, want, &node.uuid, seq).await,
                Err(e) => Some(Err(e)),
            };
            if let Some(Err(e)) = settled {
                return Err(format!("Failed to change power state to {p}: {e}"));
            }
        }
        self.store
            .modify_node(&node.uuid, move |n: &mut Node| {
                n.power_state = Some(p.into());
                n.target_power_state = None;
                Ok::<_, ServiceError>(())
            })
            .await
            .map(drop)
            .map_err(|e| e.to_string())?;
        tracing::info!(node = %node.uuid, state = p, "power state settled under the node's lock");
        Ok(())
    }

    /// The `fake` power interface: the power state is what the database
    /// says, changed at once.
    async fn set_fake_power(
        self: &Arc<Self>,
        uuid: &str,
        action: PowerAction,
    ) -> Result<(), ServiceError> {
        let _guard = self.reserve(uuid)?;
        let p = action.end_state().as_ironic();
        self.store
            .modify_node(uuid, move |n: &mut Node| {
                n.power_state = Some(p.into());
                n.target_power_state = None;
                n.last_error = None;
                Ok::<_, ServiceError>(())
            })
            .await?;
        Ok(())
    }

    /// The BMC command under the lock (`guard`), then the wait for the
    /// state without it; the outcome recorded unless a newer action
    /// (`seq` no longer the latest) took over meanwhile.
    async fn run_power(
        self: Arc<Self>,
        bmc: Bmc,
        action: PowerAction,
        guard: BusyGuard,
        seq: u64,
        prepare: Option<(Arc<dyn DeployInterface>, Node)>,
    ) {
        let uuid = guard.uuid.clone();
        let began = Instant::now();
        let prepared = match &prepare {
            Some((deploy, node)) => deploy
                .prepare_power_on(node)
                .await
                .map_err(|e| PowerError::Bmc(e.0)),
            None => Ok(()),
        };
        let result = match (prepared, action) {
            (Err(e), _) => Err(e),
            (Ok(()), PowerAction::Reboot) => bmc.reboot().await,
            (Ok(()), a) => bmc.set_power(a.end_state()).await,
        };
        drop(guard);
        let settled = match result {
            Ok(()) => match self.wait_for(&bmc, action.end_state(), &uuid, seq).await {
                Some(r) => r,
                None => {
                    tracing::info!("a newer power action took over; this one records nothing");
                    return;
                }
            },
            Err(e) => Err(e),
        };
        crate::metrics::get().power_action(action.label(), settled.is_ok(), began.elapsed());
        let record = settled.as_ref().map(|p| *p).map_err(|e| e.to_string());
        let this = self.clone();
        let id = uuid.clone();
        let outcome = self
            .store
            .modify_node(&uuid, move |n: &mut Node| {
                // Checked under the store's lock: a newer action writes its
                // target_power_state under it too, after taking its number.
                if !this.power_seq.is_latest(&id, seq) {
                    return Ok(());
                }
                n.target_power_state = None;
                match record {
                    Ok(p) => n.power_state = Some(p.as_ironic().into()),
                    Err(e) => {
                        n.last_error = Some(format!(
                            "Failed to change power state to {}: {e}",
                            action.end_state().as_ironic()
                        ))
                    }
                }
                Ok::<_, ServiceError>(())
            })
            .await;
        match (settled, outcome) {
            (Ok(p), Ok(_)) => tracing::info!(state = p.as_ironic(), "power state settled"),
            (Err(e), _) => tracing::warn!(error = %e, "power action failed"),
            (_, Err(e)) => tracing::warn!(error = %e, "node vanished during a power action"),
        }
    }

    /// Poll until the BMC reports `want` (or the state timeout); `None`
    /// once a newer action than `seq` began on `uuid`.
    async fn wait_for(
        &self,
        bmc: &Bmc,
        want: Power,
        uuid: &str,
        seq: u64,
    ) -> Option<Result<Power, PowerError>> {
        let deadline = Instant::now() + self.timing.state_timeout;
        loop {
            if !self.power_seq.is_latest(uuid, seq) {
                return None;
            }
            let now = match bmc.power_state().await {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            if now == want {
                return Some(Ok(now));
            }
            if Instant::now() > deadline {
                return Some(Err(PowerError::Timeout {
                    what: format!("the BMC reporting {}", want.as_ironic()),
                    timeout: self.timing.state_timeout,
                }));
            }
            tokio::time::sleep(self.timing.poll_interval).await;
        }
    }

    /// Read the power state once in the background (after create), like
    /// Ironic's power sync; failures are logged only.
    pub async fn spawn_power_sync(self: &Arc<Self>, uuid: &str) {
        let Ok(node) = self.store.get_node(uuid).await else {
            return;
        };
        let Ok(bmc) = Bmc::for_node(&node, &self.power) else {
            return;
        };
        // A read: it takes no lock (a slow BMC would otherwise hold off
        // every action on a new node for up to the command timeout), and
        // its answer is dropped if an action began meanwhile.
        let this = self.clone();
        let uuid = uuid.to_owned();
        let span = tracing::info_span!("power_sync", node = %uuid);
        self.tasks.spawn(
            async move {
                match bmc.power_state().await {
                    Ok(_) if this.is_busy(&uuid) => {
                        tracing::debug!("power sync: an action is under way; answer dropped")
                    }
                    Ok(p) => {
                        let r = this
                            .store
                            .modify_node(&uuid, move |n: &mut Node| {
                                if n.target_power_state.is_none() {
                                    n.power_state = Some(p.as_ironic().into());
                                }
                                Ok::<_, ServiceError>(())
                            })
                            .await;
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "power sync: node gone");
                        }
                    }
                    Err(e) => tracing::info!(error = %e, "power sync: cannot read the power state"),
                }
            }
            .instrument(span),
        );
    }

    pub async fn boot_device(&self, ident: &str) -> Result<Value, ServiceError> {
        let node = self.store.get_node(ident).await?;
        if node.interface(Kind::Management) == "fake" {
            return Ok(json!({"boot_device": "pxe", "persistent": false}));
        }
        let (dev, persistent) = Bmc::for_management(&node, &self.power)?
            .boot_device()
            .await?;
        Ok(json!({"boot_device": dev, "persistent": persistent}))
    }

    pub async fn set_boot_device(&self, ident: &str, body: &Dict) -> Result<(), ServiceError> {
        let node = self.store.get_node(ident).await?;
        let dev = body
            .get("boot_device")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !BOOT_DEVICES.contains(&dev) {
            return Err(ServiceError::Invalid(format!(
                "Invalid boot device {dev:?}; supported: {}.",
                BOOT_DEVICES.join(", ")
            )));
        }
        let persistent = match body.get("persistent") {
            None | Some(Value::Null) => false,
            Some(v) => super::parse_bool("persistent", v)?,
        };
        if node.interface(Kind::Management) == "fake" {
            // Ironic's fake management: PXE only, nothing to do.
            return match FAKE_BOOT_DEVICES.contains(&dev) {
                true => Ok(()),
                false => Err(ServiceError::Invalid(format!(
                    "Invalid boot device {dev} specified."
                ))),
            };
        }
        Bmc::for_management(&node, &self.power)?
            .set_boot_device(dev, persistent)
            .await?;
        Ok(())
    }

    /// The boot devices `node`'s management interface offers.
    pub fn supported_boot_devices(node: &Node) -> &'static [&'static str] {
        match node.interface(Kind::Management) == "fake" {
            true => FAKE_BOOT_DEVICES,
            false => BOOT_DEVICES,
        }
    }

    /// `GET /states`.
    pub async fn states(&self, ident: &str) -> Result<Value, ServiceError> {
        let n = self.store.get_node(ident).await?;
        Ok(json!({
            "power_state": n.power_state,
            "target_power_state": n.target_power_state,
            "provision_state": n.provision_state,
            "target_provision_state": n.target_provision_state,
            "provision_updated_at": n.provision_updated_at,
            "console_enabled": n.console_enabled,
            "last_error": n.last_error,
            "raid_config": {}, "target_raid_config": {},
            "boot_mode": null, "secure_boot": null,
            "fault": null,
        }))
    }
}

#[cfg(test)]
mod tests;
