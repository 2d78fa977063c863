//! `GET /v1/nodes/{node}/validate`: each interface's own answer, as
//! Ironic's `validate_driver_interfaces` gives it (`{"result": true}` or
//! `{"result": false, "reason": ...}` per interface). A deploy interface
//! backed by a service asks it (`check_service`: the deploy service's
//! Validate, which reads no BMC either). No BMC is contacted:
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
        // A deploy interface valid here asks its service (the deploy
        // service's Validate for `iscsi`); the boot interface it drives
        // shares the answer.
        if out["deploy"]["result"] == true {
            let deploy = self.interfaces.for_node(&node).deploy;
            if let Err(e) = deploy.check_service(&node).await {
                out.insert("deploy".into(), json!({"result": false, "reason": e.0}));
                let boot = node.interface(Kind::Boot);
                if boot != "fake" {
                    let reason = format!(
                        "The boot interface \"{boot}\" needs the deploy interface: {}",
                        e.0
                    );
                    out.insert("boot".into(), json!({"result": false, "reason": reason}));
                }
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::config::Config;
    use crate::service::{Conductor, NodeCreate, PowerTiming};

    fn conductor(dir: &tempfile::TempDir) -> Arc<Conductor> {
        let sealer = crate::seal::Sealer::load_or_create(&dir.path().join("k")).unwrap();
        let store = crate::db::Store::open(&dir.path().join("db"), sealer).unwrap();
        let consoles = crate::console::ConsoleClient::new(&Config::default().console).unwrap();
        let power =
            crate::power::PowerSettings::new("ipmitool".into(), Duration::from_secs(2)).unwrap();
        let timing = PowerTiming {
            state_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(50),
        };
        Arc::new(Conductor::new(
            store,
            consoles,
            power,
            timing,
            Default::default(),
        ))
    }

    async fn validated(c: &Arc<Conductor>, body: Value) -> Value {
        let Value::Object(m) = body else { panic!() };
        let uuid = c.create_node(NodeCreate(m)).await.unwrap().uuid;
        c.validate(&uuid).await.unwrap()
    }

    #[tokio::test]
    async fn each_interface_answers_for_itself() {
        let dir = tempfile::tempdir().unwrap();
        let c = conductor(&dir);
        let v = validated(&c, json!({"driver": "fake-hardware"})).await;
        for (kind, r) in v.as_object().unwrap() {
            assert_eq!(r["result"], true, "fake {kind}: {r}");
        }
        assert_eq!(v.as_object().unwrap().len(), 13);

        let v = validated(&c, json!({"driver": "ipmi"})).await;
        assert_eq!(v["power"]["result"], false);
        assert!(
            v["power"]["reason"]
                .as_str()
                .unwrap()
                .contains("ipmi_address"),
            "{v}"
        );
        assert_eq!(v["deploy"]["result"], false);
        assert_eq!(
            v["deploy"]["reason"],
            "The deploy interface \"direct\" is not available in this conductor yet."
        );
        assert_eq!(v["boot"]["result"], false);
        assert_eq!(v["inspect"]["result"], true, "no-inspect validates: {v}");
        assert_eq!(v["network"]["result"], true);

        let v = validated(
            &c,
            json!({"driver": "redfish", "driver_info": {"redfish_address": "http://127.0.0.1:9"}}),
        )
        .await;
        assert_eq!(v["power"]["result"], true, "{v}");
        assert_eq!(v["management"]["result"], true, "{v}");
        assert_eq!(v["console"]["result"], true, "no-console: {v}");

        let v = validated(&c, json!({"driver": "iscsi_ilo"})).await;
        assert_eq!(v["power"]["result"], false);
        assert!(
            v["power"]["reason"].as_str().unwrap().contains("\"ilo\""),
            "{v}"
        );
        assert!(
            v["deploy"]["reason"]
                .as_str()
                .unwrap()
                .contains("\"iscsi\""),
            "{v}"
        );
    }
}
