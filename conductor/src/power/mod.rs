//! Power and boot-device control of a node's BMC: ipmitool for `ipmi`
//! nodes, Redfish for `redfish` nodes.
//!
//! [`Bmc::for_node`] checks the node's driver_info and picks the driver;
//! the domain layer (`service`) calls the async operations from its
//! background power tasks and the boot-device handlers.

pub mod ipmi;
pub mod redfish;
#[cfg(test)]
pub mod slow;

use std::time::Duration;

use serde_json::Value;

use crate::model::{Dict, Node};

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// driver_info lacks something or holds a bad value (the caller's fault).
    #[error("{0}")]
    Invalid(String),
    /// The BMC answered with an error, or could not be reached.
    #[error("{0}")]
    Bmc(String),
    #[error("{what} did not finish within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    On,
    Off,
}

impl Power {
    pub fn as_ironic(self) -> &'static str {
        match self {
            Power::On => crate::model::POWER_ON,
            Power::Off => crate::model::POWER_OFF,
        }
    }
}

/// Ironic's boot device names.
pub const BOOT_DEVICES: &[&str] = &["pxe", "disk", "cdrom", "bios", "safe"];

/// How the BMC drivers run (from the `[power]` config section), with the
/// one Redfish client every redfish node's requests go through.
#[derive(Clone, Debug)]
pub struct PowerSettings {
    pub ipmitool_path: String,
    pub command_timeout: Duration,
    pub redfish: porthole_bmc::redfish::Client,
    /// The BMC of `slow-test` nodes (unit tests only).
    #[cfg(test)]
    pub slow: Option<std::sync::Arc<slow::SlowBmc>>,
}

impl PowerSettings {
    pub fn new(ipmitool_path: String, command_timeout: Duration) -> Result<Self, PowerError> {
        Ok(Self {
            redfish: porthole_bmc::redfish::Client::new(command_timeout)?,
            ipmitool_path,
            command_timeout,
            #[cfg(test)]
            slow: None,
        })
    }
}

/// One node's BMC, ready to be driven.
pub enum Bmc {
    Ipmi(ipmi::Ipmi),
    Redfish(redfish::Redfish),
    #[cfg(test)]
    Slow(std::sync::Arc<slow::SlowBmc>),
}

impl Bmc {
    /// The BMC of `node` from its driver and driver_info.
    pub fn for_node(node: &Node, settings: &PowerSettings) -> Result<Self, PowerError> {
        match node.driver.as_str() {
            "ipmi" => Ok(Bmc::Ipmi(ipmi::Ipmi::from_info(
                &node.driver_info,
                settings,
            )?)),
            "redfish" => Ok(Bmc::Redfish(redfish::Redfish::from_info(
                &node.driver_info,
                settings,
            )?)),
            #[cfg(test)]
            "slow-test" if settings.slow.is_some() => {
                Ok(Bmc::Slow(settings.slow.clone().expect("checked")))
            }
            other => Err(PowerError::Invalid(format!(
                "Driver {other} is not supported; use ipmi or redfish."
            ))),
        }
    }

    pub async fn power_state(&self) -> Result<Power, PowerError> {
        match self {
            Bmc::Ipmi(b) => b.power_state().await,
            Bmc::Redfish(b) => b.power_state().await,
            #[cfg(test)]
            Bmc::Slow(b) => Ok(b.power_state()),
        }
    }

    pub async fn set_power(&self, want: Power) -> Result<(), PowerError> {
        match self {
            Bmc::Ipmi(b) => b.set_power(want).await,
            Bmc::Redfish(b) => b.set_power(want).await,
            #[cfg(test)]
            Bmc::Slow(b) => {
                b.set_power(want);
                Ok(())
            }
        }
    }

    /// Off (when on), then on.
    pub async fn reboot(&self) -> Result<(), PowerError> {
        match self {
            Bmc::Ipmi(b) => {
                if b.power_state().await? == Power::On {
                    b.set_power(Power::Off).await?;
                }
                b.set_power(Power::On).await
            }
            Bmc::Redfish(b) => b.reboot().await,
            #[cfg(test)]
            Bmc::Slow(b) => {
                b.set_power(Power::On);
                Ok(())
            }
        }
    }

    pub async fn set_boot_device(&self, device: &str, persistent: bool) -> Result<(), PowerError> {
        match self {
            Bmc::Ipmi(b) => b.set_boot_device(device, persistent).await,
            Bmc::Redfish(b) => b.set_boot_device(device, persistent).await,
            #[cfg(test)]
            Bmc::Slow(_) => Ok(()),
        }
    }

    /// `(device, persistent)`; device `None` when the BMC names none.
    pub async fn boot_device(&self) -> Result<(Option<String>, bool), PowerError> {
        match self {
            Bmc::Ipmi(b) => b.boot_device().await,
            Bmc::Redfish(b) => b.boot_device().await,
            #[cfg(test)]
            Bmc::Slow(_) => Ok((None, false)),
        }
    }
}

/// A string field of driver_info; required ones give a clear message.
pub fn info_str(info: &Dict, key: &str) -> Option<String> {
    match info.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

pub fn require(info: &Dict, keys: &[&str], driver: &str) -> Result<(), PowerError> {
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| info_str(info, k).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PowerError::Invalid(format!(
        "The {driver} driver needs driver_info {} (missing: {}).",
        keys.join(", "),
        missing.join(", ")
    )))
}

/// An integer field of driver_info (number or numeric string).
pub fn info_u16(info: &Dict, key: &str) -> Result<Option<u16>, PowerError> {
    match info_str(info, key) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            PowerError::Invalid(format!(
                "driver_info {key} must be a port number, not {s:?}."
            ))
        }),
    }
}
