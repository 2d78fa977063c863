//! `GET /v1/nodes/{node}/validate`: each interface's own answer, as
//! Ironic's `validate_driver_interfaces` gives it (`{"result": true}` or
//! `{"result": false, "reason": ...}` per interface). No BMC is contacted:
//! power and management check the driver_info their driver needs; boot,
//! deploy and inspect ask the node's deploy/inspect implementation (a boot
//! interface other than `fake` is driven by the deploy service, so it is
//! valid exactly when the deploy interface is); console checks what
//! console-svc would be asked for; the no-op kinds are always valid.
//!
//! Callers: `api::states::validate`.

use serde_json::{json, Map, Value};

use super::{Conductor, ServiceError};
use crate::drivers::Kind;
use crate::model::Node;
use crate::power::Bmc;

impl Conductor {
    pub async fn validate(&self, ident: &str) -> Result<Value, ServiceError> {
        let node = self.store.get_node(ident).await?;
        let mut out = Map::new();
        for kind in Kind::ALL {
            let v = match self.validate_one(&node, kind) {
                Ok(()) => json!({"result": true}),
                Err(reason) => json!({"result": false, "reason": reason}),
            };
            out.insert(kind.name().to_owned(), v);
        }
        Ok(Value::Object(out))
    }

    /// One interface's answer: `Err(reason)` when it cannot work.
    fn validate_one(&self, node: &Node, kind: Kind) -> Result<(), String> {
        let name = node.interface(kind);
        let unavailable = || {
            Err(format!(
                "The {} interface \"{name}\" is not available in this conductor yet.",
                kind.name()
            ))
        };
        match kind {
            Kind::Power | Kind::Management | Kind::Vendor => match name {
                "fake" | "no-vendor" => Ok(()),
                "ipmitool" | "redfish" => Bmc::for_interface(node, kind, &self.power)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                _ => unavailable(),
            },
            Kind::Deploy => self
                .interfaces
                .for_node(node)
                .deploy
                .validate(node)
                .map_err(|e| e.0),
            Kind::Boot => match name {
                "fake" => Ok(()),
                _ => self
                    .interfaces
                    .for_node(node)
                    .deploy
                    .validate(node)
                    .map_err(|e| {
                        format!("The boot interface \"{name}\" needs the deploy interface: {e}")
                    }),
            },
            Kind::Inspect => self
                .interfaces
                .for_node(node)
                .inspect
                .validate(node)
                .map_err(|e| e.0),
            Kind::Console => match name {
                "no-console" => Ok(()),
                _ => crate::console::enable_request(node)
                    .map(drop)
                    .map_err(|e| e.to_string()),
            },
            Kind::Bios
            | Kind::Firmware
            | Kind::Network
            | Kind::Raid
            | Kind::Rescue
            | Kind::Storage => match name {
                "fake" | "noop" | "no-bios" | "no-firmware" | "no-raid" | "no-rescue" => Ok(()),
                _ => unavailable(),
            },
        }
    }
}
