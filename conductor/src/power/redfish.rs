//! Power through Redfish (`ComputerSystem.Reset`, `Boot` overrides), over
//! reqwest with rustls (ring). Tested against sushy-tools.
//!
//! Callers: `power::Bmc` for `redfish` nodes.

use std::time::Duration;

use serde_json::{json, Value};

use super::{info_str, require, Power, PowerError, PowerSettings};
use crate::model::Dict;

pub struct Redfish {
    http: reqwest::Client,
    base: String,
    system_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Redfish {
    pub fn from_info(info: &Dict, s: &PowerSettings) -> Result<Self, PowerError> {
        require(info, &["redfish_address"], "redfish")?;
        let mut base = info_str(info, "redfish_address").unwrap_or_default();
        if !base.contains("://") {
            base = format!("https://{base}");
        }
        let verify = match info.get("redfish_verify_ca") {
            Some(Value::Bool(false)) => false,
            Some(Value::String(v)) => !v.eq_ignore_ascii_case("false"),
            _ => true,
        };
        let http = reqwest::Client::builder()
            .timeout(s.command_timeout)
            .connect_timeout(Duration::from_secs(5))
            .danger_accept_invalid_certs(!verify)
            .build()
            .map_err(|e| PowerError::Invalid(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            system_id: info_str(info, "redfish_system_id"),
            username: info_str(info, "redfish_username"),
            password: info_str(info, "redfish_password"),
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.base, path);
        let r = self.http.request(method, url);
        match &self.username {
            Some(u) => r.basic_auth(u, self.password.as_deref()),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder, what: &str) -> Result<Value, PowerError> {
        let resp = r
            .send()
            .await
            .map_err(|e| PowerError::Bmc(format!("Redfish {what} at {}: {e}", self.base)))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(PowerError::Bmc(format!(
                "Redfish {what} at {} answered {status}: {}",
                self.base,
                body.chars().take(300).collect::<String>()
            )));
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// The system's path: redfish_system_id, or the only system there is.
    async fn system(&self) -> Result<String, PowerError> {
        if let Some(id) = &self.system_id {
            return Ok(id.clone());
        }
        let v = self
            .send(
                self.req(reqwest::Method::GET, "/redfish/v1/Systems"),
                "list systems",
            )
            .await?;
        let members = v["Members"].as_array().cloned().unwrap_or_default();
        match members.as_slice() {
            [one] => one["@odata.id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| PowerError::Bmc("Redfish system without @odata.id".into())),
            _ => Err(PowerError::Invalid(format!(
                "The BMC has {} systems; set driver_info redfish_system_id.",
                members.len()
            ))),
        }
    }

    async fn get_system(&self) -> Result<(String, Value), PowerError> {
        let path = self.system().await?;
        let v = self
            .send(self.req(reqwest::Method::GET, &path), "get system")
            .await?;
        Ok((path, v))
    }

    pub async fn power_state(&self) -> Result<Power, PowerError> {
        let (_, v) = self.get_system().await?;
        match v["PowerState"].as_str() {
            Some("On") | Some("PoweringOff") => Ok(Power::On),
            Some("Off") | Some("PoweringOn") => Ok(Power::Off),
            other => Err(PowerError::Bmc(format!("Redfish PowerState {other:?}"))),
        }
    }

    async fn reset(&self, kind: &str) -> Result<(), PowerError> {
        let (path, v) = self.get_system().await?;
        let target = v["Actions"]["#ComputerSystem.Reset"]["target"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or(format!("{path}/Actions/ComputerSystem.Reset"));
        let r = self
            .req(reqwest::Method::POST, &target)
            .json(&json!({"ResetType": kind}));
        self.send(r, &format!("reset {kind}")).await.map(drop)
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
        let path = self.system().await?;
        let body = json!({"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}});
        let r = self.req(reqwest::Method::PATCH, &path).json(&body);
        self.send(r, "set boot device").await.map(drop)
    }

    pub async fn boot_device(&self) -> Result<(Option<String>, bool), PowerError> {
        let (_, v) = self.get_system().await?;
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
