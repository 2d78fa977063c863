//! Console state: `PUT /states/console` through console-svc, the state
//! clients read, re-enabling a console console-svc lost, and disabling one
//! it serves for a node that does not want it.
//!
//! The node's `console_enabled` is the wanted state; it changes only when a
//! client asks and console-svc has done it (as Ironic sets it only after
//! the driver's start_console succeeded). An enable whose record is lost
//! (the conductor killed in between, or the write failing) is undone by
//! `retire_console`, from reconcile or right away. Callers: `api::states`,
//! `watch` (reconcile and WatchConsoles events).

use std::sync::Arc;

use porthole_proto::console::v1 as pb;
use serde_json::{json, Value};

use super::{Conductor, ServiceError};
use crate::console::{apply, enable_request};
use crate::model::Node;

/// last_error prefixes of console trouble found by the watcher; cleared
/// when console-svc reports the console running again.
const CONSOLE_FAILURE: &str = "Console failure: ";
const RESTORE_FAILURE: &str = "Failed to restore the console: ";

impl Conductor {
    /// Enable or disable a node's console; returns once console-svc has.
    #[tracing::instrument(skip(self))]
    pub async fn set_console(
        self: &Arc<Self>,
        ident: &str,
        enabled: bool,
    ) -> Result<(), ServiceError> {
        let uuid = self.store.get_node(ident).await?.uuid;
        let lock = self.console_lock(&uuid);
        let _held = lock.lock().await;
        let node = self.store.get_node(&uuid).await?;
        if enabled {
            let req = enable_request(&node)?;
            let console = match self.consoles.enable(req).await {
                Ok(c) => c,
                Err(e) => {
                    self.note_error(&uuid, format!("Failed to enable the console: {e}"))
                        .await;
                    return Err(e.into());
                }
            };
            let recorded = self
                .store
                .modify_node(&uuid, move |n: &mut Node| {
                    n.console_enabled = true;
                    apply(n, &console);
                    Ok::<_, ServiceError>(())
                })
                .await;
            if let Err(e) = recorded {
                // console-svc serves it but the node says disabled: undo.
                if let Err(d) = self.consoles.disable(&uuid).await {
                    tracing::warn!(node = %uuid, error = %d, "cannot undo an enable that was not recorded; reconcile will");
                }
                return Err(e);
            }
        } else {
            if let Err(e) = self.consoles.disable(&uuid).await {
                self.note_error(&uuid, format!("Failed to disable the console: {e}"))
                    .await;
                return Err(e.into());
            }
            self.store
                .modify_node(&uuid, |n: &mut Node| {
                    n.console_enabled = false;
                    n.console_info = None;
                    n.driver_internal_info.remove("vnc_host");
                    n.driver_internal_info.remove("vnc_port");
                    Ok::<_, ServiceError>(())
                })
                .await?;
        }
        Ok(())
    }

    /// `GET /states/console`.
    pub async fn console_state(&self, ident: &str) -> Result<Value, ServiceError> {
        let n = self.store.get_node(ident).await?;
        let info = if n.console_enabled {
            n.console_info.clone()
        } else {
            None
        };
        Ok(json!({"console_enabled": n.console_enabled, "console_info": info}))
    }

    /// Record `msg` as the node's last_error (best effort).
    pub async fn note_error(&self, uuid: &str, msg: String) {
        tracing::warn!(node = %uuid, "{msg}");
        let r = self
            .store
            .modify_node(uuid, |n: &mut Node| {
                n.last_error = Some(msg);
                Ok::<_, ServiceError>(())
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(node = %uuid, error = %e, "cannot record last_error");
        }
    }

    /// Make console-svc serve the console of `uuid` again if the node still
    /// wants one (reconcile). Failures land in last_error.
    pub async fn ensure_console(&self, uuid: &str) {
        let lock = self.console_lock(uuid);
        let _held = lock.lock().await;
        let Ok(node) = self.store.get_node(uuid).await else {
            return;
        };
        if !node.console_enabled {
            return;
        }
        let result = match enable_request(&node) {
            Ok(req) => self.consoles.enable(req).await.map_err(ServiceError::from),
            Err(e) => Err(e.into()),
        };
        use crate::metrics::Reconcile;
        let outcome = if result.is_ok() {
            Reconcile::Restored
        } else {
            Reconcile::Failed
        };
        crate::metrics::get().reconciled(outcome);
        match result {
            Ok(c) => self.record_console(uuid, &c, false).await,
            Err(e) => self.note_error(uuid, format!("{RESTORE_FAILURE}{e}")).await,
        }
    }

    /// Disable the console console-svc serves for `uuid` if the node does not
    /// want one (reconcile, WatchConsoles). Known nodes only.
    pub async fn retire_console(&self, uuid: &str) {
        let lock = self.console_lock(uuid);
        let _held = lock.lock().await;
        match self.store.get_node(uuid).await {
            Ok(node) if !node.console_enabled => {}
            _ => return,
        }
        let disabled = self.consoles.disable(uuid).await;
        use crate::metrics::Reconcile;
        let outcome = if disabled.is_ok() {
            Reconcile::Retired
        } else {
            Reconcile::Failed
        };
        crate::metrics::get().reconciled(outcome);
        match disabled {
            Ok(()) => tracing::info!(
                node = %uuid,
                "disabled a console the node does not want (an enable that was never recorded)"
            ),
            Err(e) => {
                tracing::warn!(node = %uuid, error = %e, "cannot disable an unwanted console")
            }
        }
    }

    /// Take in what console-svc reports about a console (WatchConsoles).
    /// `lock`: take the node's console lock first (false when held).
    pub async fn record_console(&self, uuid: &str, c: &pb::Console, lock: bool) {
        let l = self.console_lock(uuid);
        let _held = if lock { Some(l.lock().await) } else { None };
        let c = c.clone();
        let r = self.store.modify_node(uuid, move |n: &mut Node| {
            if !n.console_enabled {
                return Ok(());
            }
            apply(n, &c);
            if c.state == pb::ConsoleState::Failed as i32 && !c.last_error.is_empty() {
                n.last_error = Some(format!("{CONSOLE_FAILURE}{}", c.last_error));
            }
            let ours = n
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with(CONSOLE_FAILURE) || e.starts_with(RESTORE_FAILURE));
            if c.state == pb::ConsoleState::Running as i32 && ours {
                // The console is back: the failure it recorded is over.
                n.last_error = None;
            }
            Ok::<_, ServiceError>(())
        });
        if let Err(e) = r.await {
            tracing::debug!(node = %uuid, error = %e, "console event for an unknown node");
        }
    }
}
