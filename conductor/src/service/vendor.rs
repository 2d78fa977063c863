//! Vendor passthru as Ironic's conductor runs it (`vendor_passthru`):
//! the node's vendor interface (`provision::vendor`), the method and its
//! HTTP verbs checked, the node's lock for methods that want it, 200 with
//! the answer or 202 with the method in the background. The ramdisk rules
//! on top: an anonymous caller reaches ramdisk methods only, and a
//! ramdisk method always needs the operation's secret
//! (`service::ramdisk`). A refused call records nothing.
//!
//! Callers: the handlers in `api::vendor`.

use std::sync::Arc;

use serde_json::Value;
use tracing::Instrument;

use super::ramdisk::{presented, Caller};
use super::{Conductor, ServiceError};
use crate::model::{Dict, Node};
use crate::provision::vendor::{VendorInterface, VendorMethod};

/// Vendor passthru's answer: the body, and whether it runs in the
/// background (202) or is done (200).
pub struct VendorAnswer {
    pub body: Value,
    pub is_async: bool,
}

impl Conductor {
    /// `GET .../vendor_passthru/methods`.
    pub async fn vendor_methods(&self, ident: &str) -> Result<Value, ServiceError> {
        let node = self.store.get_node(ident).await?;
        let Some(v) = self.vendors.for_node(&node) else {
            return Err(no_vendor(&node));
        };
        let m: Dict = v
            .methods()
            .iter()
            .map(|m| (m.name.to_owned(), m.to_json()))
            .collect();
        Ok(Value::Object(m))
    }

    /// `.../vendor_passthru/{method}` as Ironic's conductor runs it, with
    /// the ramdisk rules: an anonymous caller reaches ramdisk methods only,
    /// and a ramdisk method always needs the operation's secret.
    pub async fn vendor_passthru(
        self: &Arc<Self>,
        ident: &str,
        method: &str,
        http_method: &str,
        mut args: Dict,
        caller: Caller,
    ) -> Result<VendorAnswer, ServiceError> {
        let node = self.store.get_node(ident).await?;
        let (vendor, m, http_method) = self.resolve(&node, method, http_method, caller)?;
        if let Some(states) = m.ramdisk {
            self.check_ramdisk_token(&node, states, presented(&args))
                .await?;
        }
        let guard = if m.require_exclusive_lock {
            Some(self.reserve(&node.uuid)?)
        } else {
            None
        };
        // Under the lock: the wait may have ended meanwhile (a timeout).
        let node = self.store.get_node(&node.uuid).await?;
        if let Some(states) = m.ramdisk {
            self.check_ramdisk_token(&node, states, presented(&args))
                .await?;
        }
        args.remove("agent_token");
        args.remove("key");
        if m.name == crate::provision::vendor::PASS_DEPLOY_INFO && vendor.name() == "iscsi" {
            // It moves the node: the conductor runs it (deploy_callback).
            return self.pass_deploy_info(node, &args, guard).await;
        }
        if !m.is_async {
            let body = vendor
                .call(&node, m.name, &http_method, &args)
                .await
                .map_err(|e| ServiceError::Invalid(e.0))?;
            drop(guard);
            return Ok(VendorAnswer {
                body,
                is_async: false,
            });
        }
        let span = tracing::info_span!("vendor", node = %node.uuid, method = m.name);
        self.tasks.spawn(
            async move {
                let _guard = guard;
                if let Err(e) = vendor.call(&node, m.name, &http_method, &args).await {
                    tracing::warn!(error = %e, "vendor method failed");
                }
            }
            .instrument(span),
        );
        Ok(VendorAnswer {
            body: Value::Null,
            is_async: true,
        })
    }

    /// Ironic's checks before a vendor call runs: the node's vendor
    /// interface, the method, its HTTP verbs; an anonymous caller learns
    /// nothing about a method that is not the ramdisk's.
    fn resolve(
        &self,
        node: &Node,
        method: &str,
        http_method: &str,
        caller: Caller,
    ) -> Result<(Arc<dyn VendorInterface>, VendorMethod, String), ServiceError> {
        let vendor = self.vendors.for_node(node);
        let found = vendor
            .as_ref()
            .and_then(|v| v.methods().iter().find(|m| m.name == method).cloned());
        // An anonymous caller learns nothing about other methods.
        if caller == Caller::Anonymous && found.as_ref().is_none_or(|m| m.ramdisk.is_none()) {
            return Err(ServiceError::Unauthenticated);
        }
        if method.is_empty() {
            return Err(ServiceError::Invalid("Method not specified".into()));
        }
        let Some(vendor) = vendor else {
            return Err(no_vendor(node));
        };
        let Some(m) = found else {
            return Err(ServiceError::Invalid(format!(
                "No handler for method {method}"
            )));
        };
        let http_method = http_method.to_ascii_uppercase();
        if !m.http_methods.contains(&http_method.as_str()) {
            return Err(ServiceError::Invalid(format!(
                "The method {method} does not support HTTP {http_method}"
            )));
        }
        Ok((vendor, m, http_method))
    }
}

/// Ironic's UnsupportedDriverExtension for a node without a vendor interface.
fn no_vendor(node: &Node) -> ServiceError {
    ServiceError::Invalid(format!(
        "Driver {} does not support vendor interface (disabled or not implemented).",
        node.driver
    ))
}
