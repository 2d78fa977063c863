//! The deploy ramdisk's callback and the deploy's clean up.
//!
//! `pass_deploy_info` (vendor passthru of a node deployed by `iscsi`;
//! `service::vendor` has already checked the deployment key in constant
//! time against the node's sealed ramdisk secret, that the node is in
//! `wait call-back`, and holds its lock) as Ironic's iscsi deploy took it:
//!
//! ```text
//!  body: address (IP), iqn (= the floppy's iscsi_target_iqn), port (3260), lun (1), error
//!  missing / invalid field ──▶ 400, nothing recorded, the node keeps waiting
//!  error non-empty ──▶ deploy failed "Error returned from deploy ramdisk: <error>", clean up
//!  else ──▶ driver_internal_info.iscsi_target = {address, port, iqn, lun}
//!        ──▶ deploying ──DeployInterface::continue_deploy──▶ active | deploy failed + clean up
//! ```
//!
//! Both outcomes answer 202 (Ironic's passthru methods are asynchronous);
//! the work after the checks runs in a task that keeps the node's lock.
//!
//! [`Conductor::clean_up_deploy`] is the deploy's clean-up hook: the
//! provision service calls it whenever a node lands in `deploy failed`
//! (a failed step or callback, the callback timeout, an abort).
//!
//! Callers: `service::vendor` (the passthru), `service::provision`.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{json, Value};
use tracing::Instrument;

use super::vendor::VendorAnswer;
use super::{BusyGuard, Conductor, ServiceError};
use crate::model::{Dict, Node};
use crate::provision::interfaces::{DeployCallback, Outcome};
use crate::provision::Event;

/// Where the accepted callback is kept for the continue step.
pub const ISCSI_TARGET_KEY: &str = "iscsi_target";

/// Ironic's `[iscsi] portal_port` and get_deploy_info's `lun` default.
const DEFAULT_PORT: u16 = 3260;
const DEFAULT_LUN: u32 = 1;

/// What a well-formed callback says.
#[derive(Debug, PartialEq, Eq)]
pub enum Callback {
    /// The ramdisk is ready: its iSCSI target.
    Ready(DeployCallback),
    /// The ramdisk met an error (its words).
    Failed(String),
}

fn invalid(msg: String) -> ServiceError {
    ServiceError::Invalid(msg)
}

/// A non-negative integer given as a JSON number or a decimal string.
fn integer(args: &Dict, name: &str) -> Result<Option<u64>, ServiceError> {
    let bad = |v: &Value| {
        invalid(format!(
            "Invalid {name} {}: a non-negative integer is expected.",
            super::shown(v)
        ))
    };
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| bad(v)),
        Some(v @ Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

/// Check `pass_deploy_info`'s arguments (the key already taken out) for
/// `node`: every problem is a 400 that names the field.
pub fn parse(node: &Node, args: &Dict) -> Result<Callback, ServiceError> {
    let text = |name: &str| match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(format!(
            "Invalid {name} {}: a string is expected.",
            super::shown(v)
        ))),
    };
    let address = text("address")?.filter(|s| !s.is_empty());
    let iqn = text("iqn")?.filter(|s| !s.is_empty());
    let missing: Vec<&str> = [("address", address.is_none()), ("iqn", iqn.is_none())]
        .into_iter()
        .filter_map(|(n, gone)| gone.then_some(n))
        .collect();
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|m| format!("'{m}'"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(invalid(format!(
            "Parameters [{list}] were not passed to ironic for deploy."
        )));
    }
    let (address, iqn) = (address.unwrap_or_default(), iqn.unwrap_or_default());
    let address: IpAddr = address.parse().map_err(|_| {
        invalid(format!(
            "Invalid address {:?}: the ramdisk's IP address is expected.",
            address.chars().take(64).collect::<String>()
        ))
    })?;
    let want = format!("iqn-{}", node.uuid);
    if iqn != want {
        return Err(invalid(format!(
            "Invalid iqn {:?}: this node's deploy ramdisk serves {want:?}.",
            iqn.chars().take(80).collect::<String>()
        )));
    }
    let port = match integer(args, "port")? {
        None => DEFAULT_PORT,
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(format!("Invalid port {p}: 1 to 65535 is expected.")))?,
    };
    let lun = match integer(args, "lun")? {
        None => DEFAULT_LUN,
        Some(l) => u32::try_from(l)
            .ok()
            .filter(|l| *l <= 16383)
            .ok_or_else(|| invalid(format!("Invalid lun {l}: 0 to 16383 is expected.")))?,
    };
    if let Some(e) = text("error")?.filter(|e| !e.trim().is_empty()) {
        return Ok(Callback::Failed(e));
    }
    Ok(Callback::Ready(DeployCallback {
        address,
        port,
        iqn,
        lun,
    }))
}

impl Conductor {
    /// Run an accepted-so-far `pass_deploy_info` for `node` (re-read under
    /// `guard`, the node's lock): 400 on a bad body, else 202 and the rest
    /// in the background.
    pub(super) async fn pass_deploy_info(
        self: &Arc<Self>,
        node: Node,
        args: &Dict,
        guard: Option<BusyGuard>,
    ) -> Result<VendorAnswer, ServiceError> {
        let callback = parse(&node, args)?;
        let uuid = node.uuid.clone();
        if let Callback::Ready(cb) = &callback {
            // Recorded and resumed before the answer: 202 means accepted.
            let target = json!({
                "address": cb.address.to_string(),
                "port": cb.port,
                "iqn": cb.iqn,
                "lun": cb.lun,
            });
            self.store
                .modify_node(&uuid, move |n: &mut Node| {
                    n.driver_internal_info
                        .insert(ISCSI_TARGET_KEY.into(), target);
                    Ok::<_, ServiceError>(())
                })
                .await?;
            self.advance(&uuid, Event::Resume, None).await?;
        }
        tracing::info!(node = %uuid, ready = matches!(callback, Callback::Ready(_)), "deploy ramdisk called back");
        let this = self.clone();
        let span = tracing::info_span!("deploy_callback", node = %uuid);
        self.tasks.spawn(
            async move {
                let _guard = guard;
                this.after_callback(&uuid, callback).await;
            }
            .instrument(span),
        );
        Ok(VendorAnswer {
            body: Value::Null,
            is_async: true,
        })
    }

    /// The callback's outcome: the ramdisk's error fails the deploy; a
    /// ready ramdisk hands over to the deploy interface's continue step.
    async fn after_callback(&self, uuid: &str, callback: Callback) {
        let (event, error) = match callback {
            Callback::Failed(e) => (
                Event::Fail,
                Some(format!("Error returned from deploy ramdisk: {e}")),
            ),
            Callback::Ready(cb) => match self.store.get_node(uuid).await {
                Err(e) => (Event::Fail, Some(format!("Deploy failed: {e}"))),
                Ok(node) => {
                    let deploy = self.interfaces.for_node(&node).deploy;
                    match deploy.continue_deploy(&node, &cb).await {
                        Ok(Outcome::Done) => (Event::Done, None),
                        Ok(Outcome::Wait) => (Event::Wait, None),
                        Err(e) => (Event::Fail, Some(format!("Deploy failed: {e}"))),
                    }
                }
            },
        };
        if let Err(e) = self.advance(uuid, event, error).await {
            tracing::warn!(node = %uuid, error = %e, "cannot record the deploy's outcome");
        }
    }

    /// The deploy's clean up after a failure (eject, delete the floppy,
    /// forget the key): the node's deploy interface's hook. A failure is
    /// logged; the node's last_error keeps the failure that led here.
    pub(crate) async fn clean_up_deploy(&self, node: &Node) {
        let deploy = self.interfaces.for_node(node).deploy;
        match deploy.clean_up(node).await {
            Ok(()) => tracing::info!(node = %node.uuid, "deploy cleaned up"),
            Err(e) => {
                tracing::warn!(node = %node.uuid, error = %e, "cleaning up the failed deploy failed")
            }
        }
    }
}

#[cfg(test)]
mod tests;
