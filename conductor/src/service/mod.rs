//! The conductor's domain operations: what the REST handlers ask for,
//! checked, persisted, and carried out on BMCs and console-svc.
//!
//! [`Conductor`] owns the store, the console-svc client and the power
//! settings. Node CRUD and ports live here; power in `power.rs`, consoles
//! in `console.rs`, provisioning in `provision.rs`, the ramdisk's secret,
//! lookup and heartbeat in `ramdisk.rs`, vendor passthru in `vendor.rs`, the
//! deploy ramdisk's `pass_deploy_info` and the deploy's clean up in
//! `deploy_callback.rs`.
//! Callers: `api` handlers, `watch`, `periodic`, `lib::run`.

mod console;
pub mod continue_inspection;
pub mod deploy_callback;
pub mod extras;
mod groups;
mod inspection;
mod node_attrs;
mod nodes;
mod ports;
pub mod power;
mod provision;
pub mod ramdisk;
mod validate;
pub mod vendor;
mod vifs;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::console::{ConsoleClient, ConsoleError};
use crate::db::{DbError, Store};
use crate::patch::PatchError;
use crate::power::{PowerError, PowerSettings};

pub use groups::Editable;
pub use inspection::InspectionEnd;
pub use nodes::NodeCreate;
pub use vifs::VifAttach;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The request is wrong (bad value, missing field, unsupported thing).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the node's state.
    #[error("{0}")]
    Conflict(String),
    /// A sub-resource the request names is missing (Ironic's 404s that are
    /// not a database record: a node's trait).
    #[error("{0}")]
    Missing(String),
    /// Another operation holds the node.
    #[error(
        "Node {0} is locked by host {HOST}, please retry after the current operation is completed."
    )]
    Locked(String),
    /// A ramdisk-facing call without the right per-operation secret; a
    /// protected node's undeploy, rebuild or delete (Ironic's NodeProtected).
    #[error("{0}")]
    Forbidden(String),
    /// The call needs operator credentials (http_basic) it did not carry.
    #[error("The request you have made requires authentication.")]
    Unauthenticated,
    /// Not found, saying no more (Ironic's bare NotFound, as its lookup).
    #[error("Resource could not be found.")]
    NotFound,
    /// A service behind the conductor (the inspect service) cannot be
    /// reached now; nothing was changed, the caller may try again.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(transparent)]
    Power(#[from] PowerError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A driver or interface that is unknown, disabled or unsupported.
    #[error(transparent)]
    Driver(#[from] crate::drivers::DriverError),
}

/// The host name this conductor gives in `reservation` and NodeLocked.
pub const HOST: &str = "porthole-conductor";

/// Timing of power actions.
#[derive(Clone, Debug)]
pub struct PowerTiming {
    pub state_timeout: Duration,
    pub poll_interval: Duration,
}

pub struct Conductor {
    pub store: Store,
    pub consoles: ConsoleClient,
    pub power: PowerSettings,
    pub timing: PowerTiming,
    /// Nodes whose lock (Ironic's reservation) an action holds.
    busy: Mutex<HashSet<String>>,
    /// The latest power action of each node (`power.rs`).
    power_seq: power::PowerSequence,
    /// One console operation per node at a time (API and watcher alike).
    console_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Deploy and inspect interfaces by hardware type.
    pub interfaces: crate::provision::interfaces::Interfaces,
    /// Vendor interfaces (vendor_passthru) by hardware type.
    pub vendors: crate::provision::vendor::VendorInterfaces,
    /// The enabled hardware types and interfaces (`[drivers]`).
    pub drivers: Arc<crate::drivers::Registry>,
    /// Console evidence with failures (`[conductor] failure_console_log_*`).
    pub evidence: crate::provision::evidence::Settings,
    /// `[deploy] power_off_after_deploy_failure` (`provision.rs`).
    pub power_off_after_deploy_failure: bool,
}

/// Marks a node busy until dropped.
pub struct BusyGuard {
    conductor: Arc<Conductor>,
    uuid: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.conductor.busy_set().remove(&self.uuid);
    }
}

impl Conductor {
    pub fn new(
        store: Store,
        consoles: ConsoleClient,
        power: PowerSettings,
        timing: PowerTiming,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            consoles,
            power,
            timing,
            busy: Mutex::default(),
            power_seq: Default::default(),
            console_locks: Mutex::default(),
            tasks: TaskTracker::new(),
            shutdown,
            interfaces: Default::default(),
            vendors: Default::default(),
            drivers: Default::default(),
            evidence: Default::default(),
            power_off_after_deploy_failure: true,
        }
    }

    fn busy_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserve `uuid` for a power action, or `Locked`.
    pub fn reserve(self: &Arc<Self>, uuid: &str) -> Result<BusyGuard, ServiceError> {
        if !self.busy_set().insert(uuid.to_owned()) {
            return Err(ServiceError::Locked(uuid.to_owned()));
        }
        Ok(BusyGuard {
            conductor: self.clone(),
            uuid: uuid.to_owned(),
        })
    }

    pub fn is_busy(&self, uuid: &str) -> bool {
        self.busy_set().contains(uuid)
    }

    /// Who holds `uuid`'s lock now (Ironic's `reservation`).
    pub fn reservation(&self, uuid: &str) -> Option<String> {
        self.is_busy(uuid).then(|| HOST.to_owned())
    }

    /// The console lock of a node.
    pub fn console_lock(&self, uuid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.console_locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(uuid.to_owned()).or_default().clone()
    }
}

/// A MAC address in Ironic's form (lower case, colons), or 400.
pub fn normalize_mac(raw: &str) -> Result<String, ServiceError> {
    let lower = raw.to_ascii_lowercase().replace('-', ":");
    let parts: Vec<&str> = lower.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(ServiceError::Invalid(format!(
            "Expected a MAC address but received {raw}."
        )));
    }
    Ok(lower)
}

/// A boolean as Ironic reads one (`args.boolean`: oslo's strict
/// `bool_from_string`): JSON true/false, or one of the strings below in any
/// case; anything else is 400. `name` says which argument.
pub fn parse_bool(name: &str, value: &serde_json::Value) -> Result<bool, ServiceError> {
    const TRUE: &[&str] = &["1", "t", "true", "on", "y", "yes"];
    const FALSE: &[&str] = &["0", "f", "false", "off", "n", "no"];
    let s = match value {
        serde_json::Value::Bool(b) => return Ok(*b),
        serde_json::Value::String(s) => s.trim().to_ascii_lowercase(),
        other => other.to_string(),
    };
    if TRUE.contains(&s.as_str()) {
        return Ok(true);
    }
    if FALSE.contains(&s.as_str()) {
        return Ok(false);
    }
    let shown: String = match value {
        serde_json::Value::String(raw) => raw.chars().take(64).collect(),
        _ => s.chars().take(64).collect(),
    };
    Err(ServiceError::Invalid(format!(
        "Invalid {name}: Unrecognized value '{shown}', acceptable values are: '0', '1', 'f', 'false', 'n', 'no', 'off', 'on', 't', 'true', 'y', 'yes'"
    )))
}

/// A short rendering of a client's value for an error message.
pub fn shown(v: &serde_json::Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

pub fn parse_uuid(raw: &str) -> Result<String, ServiceError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| ServiceError::Invalid(format!("Expected a UUID but received {raw}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_uuids() {
        assert_eq!(
            normalize_mac("52:54:00:AA:bb:01").unwrap(),
            "52:54:00:aa:bb:01"
        );
        assert!(normalize_mac("52:54:00").is_err());
        assert!(parse_uuid("nope").is_err());
    }

    #[test]
    fn booleans_as_ironic_reads_them() {
        use serde_json::json;
        for (v, want) in [
            (json!(true), true),
            (json!(false), false),
            (json!("yes"), true),
            (json!(" True "), true),
            (json!("off"), false),
            (json!("0"), false),
        ] {
            assert_eq!(parse_bool("maintenance", &v).unwrap(), want, "{v}");
        }
        for v in [json!("x"), json!("maybe"), json!(5), json!({}), json!([])] {
            let e = parse_bool("persistent", &v).unwrap_err().to_string();
            assert!(
                e.starts_with("Invalid persistent: Unrecognized value"),
                "{e}"
            );
        }
    }
}
