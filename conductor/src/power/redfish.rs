//! Power through Redfish (`ComputerSystem.Reset`, `Boot` overrides): Ironic's
//! words mapped onto porthole-bmc's Redfish client, the one shared
//! `reqwest::Client` in [`PowerSettings`]. Tested against sushy-tools.
//!
//! Callers: `power::Bmc` for `redfish` nodes.

use porthole_bmc::redfish::{Client, Endpoint, RedfishError};
use porthole_bmc::Secret;
use serde_json::{json, Value};

use super::{info_str, require, Power, PowerError, PowerSettings};
use crate::model::Dict;

pub struct Redfish {
    client: Client,
    endpoint: Endpoint,
}

impl From<RedfishError> for PowerError {
    fn from(e: RedfishError) -> Self {
        match e {
            RedfishError::AmbiguousSystem(_) | RedfishError::Client(_) => {
                PowerError::Invalid(e.to_string())
            }
            other => PowerError::Bmc(other.to_string()),
        }
    }
}

impl Redfish {
    pub fn from_info(info: &Dict, s: &PowerSettings) -> Result<Self, PowerError> {
        require(info, &["redfish_address"], "redfish")?;
        let mut endpoint = Endpoint::new(&info_str(info, "redfish_address").unwrap_or_default());
        endpoint.verify_ca = match info.get("redfish_verify_ca") {
            Some(Value::Bool(false)) => false,
            Some(Value::String(v)) => !v.eq_ignore_ascii_case("false"),
            _ => true,
        };
        endpoint.system_id = info_str(info, "redfish_system_id");
        endpoint.username = info_str(info, "redfish_username");
        endpoint.password = info_str(info, "redfish_password").map(Secret::new);
        Ok(Self {
            client: s.redfish.clone(),
            endpoint,
        })
    }

    pub async fn power_state(&self) -> Result<Power, PowerError> {
        let (_, v) = self.client.system(&self.endpoint).await?;
        match v["PowerState"].as_str() {
            Some("On") | Some("PoweringOff") => Ok(Power::On),
            Some("Off") | Some("PoweringOn") => Ok(Power::Off),
            other => Err(PowerError::Bmc(format!("Redfish PowerState {other:?}"))),
        }
    }

    async fn reset(&self, kind: &str) -> Result<(), PowerError> {
        Ok(self.client.reset(&self.endpoint, kind).await?)
    }

    pub async fn set_power(&self, want: Power) -> Result<(), PowerError> {
        self.reset(match want {
            Power::On => "On",
            Power::Off => "ForceOff",
        })
        .await
    }

    pub async fn reboot(&self) -> Result<(), PowerError> {
        match self.power_state().await? {
            Power::On => self.reset("ForceRestart").await,
            Power::Off => self.reset("On").await,
        }
    }

    pub async fn set_boot_device(&self, device: &str, persistent: bool) -> Result<(), PowerError> {
        let target = match device {
            "pxe" => "Pxe",
            "disk" => "Hdd",
            "cdrom" => "Cd",
            "bios" => "BiosSetup",
            other => {
                return Err(PowerError::Invalid(format!(
                    "Boot device {other:?} is not supported by Redfish."
                )))
            }
        };
        let enabled = if persistent { "Continuous" } else { "Once" };
        let path = self.client.system_path(&self.endpoint).await?;
        let body = json!({"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}});
        self.client
            .patch(&self.endpoint, &path, &body, "set boot device")
            .await?;
        Ok(())
    }

    pub async fn boot_device(&self) -> Result<(Option<String>, bool), PowerError> {
        let (_, v) = self.client.system(&self.endpoint).await?;
        let dev = match v["Boot"]["BootSourceOverrideTarget"].as_str() {
            Some("Pxe") => Some("pxe"),
            Some("Hdd") => Some("disk"),
            Some("Cd") => Some("cdrom"),
            Some("BiosSetup") => Some("bios"),
            _ => None,
        };
        let persistent = v["Boot"]["BootSourceOverrideEnabled"].as_str() == Some("Continuous");
        Ok((dev.map(str::to_owned), persistent))
    }
}
