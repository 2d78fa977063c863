//! The `agent` interface's BMC side, the node locked by the caller: the
//! start (lookup addresses cached, power off, boot from PXE once, power
//! on), the clean up after an abort or a timeout (Ironic's abort: power
//! off); the power actions are `service::power`'s `power_locked`.
//!
//! Callers: `service::provision` (start, abort), `periodic` (timeout),
//! [`super`] (power off at the end).

use serde_json::Value;

use super::lookup::bmc_addresses;
use super::{AGENT, LOOKUP_CACHE_KEY};
use crate::drivers::Kind;
use crate::model::Node;
use crate::power::{Bmc, Power};
use crate::service::{Conductor, ServiceError};

impl Conductor {
    /// The start of an `agent` inspection, in the provision task (the node
    /// locked): the lookup addresses cached; the node powered off, set to
    /// boot from PXE once (its management interface), powered on.
    pub(crate) async fn start_agent_inspection(&self, node: &Node) -> Result<(), String> {
        let addrs: Vec<Value> = bmc_addresses(node).into_iter().map(Value::String).collect();
        self.store
            .modify_node(&node.uuid, move |n: &mut Node| {
                match addrs.is_empty() {
                    true => n.driver_internal_info.remove(LOOKUP_CACHE_KEY),
                    false => n
                        .driver_internal_info
                        .insert(LOOKUP_CACHE_KEY.into(), Value::Array(addrs)),
                };
                Ok::<_, ServiceError>(())
            })
            .await
            .map_err(|e| e.to_string())?;
        let start = async {
            self.power_locked(node, Power::Off).await?;
            if node.interface(Kind::Management) != "fake" {
                Bmc::for_management(node, &self.power)
                    .map_err(|e| e.to_string())?
                    .set_boot_device("pxe", false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.power_locked(node, Power::On).await
        };
        start
            .await
            .map_err(|e| format!("unable to start inspection: {e}"))
    }

    /// An `agent` inspection that ended without its data (an abort, the
    /// inspect_wait_timeout), the node locked by the caller: as Ironic's
    /// abort, the lookup addresses go and the node is powered off; with
    /// `tell_service` the inspect service's record is aborted too (a
    /// timeout; the abort verb asked it already). Failures are logged: the
    /// node has failed already.
    pub(crate) async fn clean_up_agent_inspection(&self, node: &Node, tell_service: bool) {
        if node.interface(Kind::Inspect) != AGENT {
            return;
        }
        if tell_service {
            let iface = self.interfaces.for_node(node).inspect;
            if let Err(e) = iface.abort(node).await {
                tracing::warn!(node = %node.uuid, error = %e, "cannot abort the inspect service's record");
            }
        }
        let cleared = self
            .store
            .modify_node(&node.uuid, |n: &mut Node| {
                n.driver_internal_info.remove(LOOKUP_CACHE_KEY);
                Ok::<_, ServiceError>(())
            })
            .await;
        if let Err(e) = cleared {
            tracing::warn!(node = %node.uuid, error = %e, "cannot clear the lookup addresses");
        }
        if let Err(e) = self.power_locked(node, Power::Off).await {
            tracing::warn!(node = %node.uuid, error = %e, "cannot power off the node after its inspection ended");
        }
    }
}
