//! The `[drivers]` config section: Ironic's `[DEFAULT]` options that enable
//! hardware types and interfaces, with Ironic's names
//! (`enabled_hardware_types`, `enabled_<kind>_interfaces`,
//! `default_<kind>_interface`). A list is a TOML array or a comma-separated
//! string (as Ironic's ListOpt, and what an environment variable holds).
//! Unset lists enable everything this conductor knows.
//!
//! Read by `config` (checked at load through `Registry::from_config`).

use serde::{Deserialize, Deserializer};

use super::catalog::Kind;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DriversConfig {
    #[serde(deserialize_with = "list")]
    pub enabled_hardware_types: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_bios_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_boot_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_console_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_deploy_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_firmware_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_inspect_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_management_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_network_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_power_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_raid_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_rescue_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_storage_interfaces: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub enabled_vendor_interfaces: Option<Vec<String>>,
    pub default_bios_interface: Option<String>,
    pub default_boot_interface: Option<String>,
    pub default_console_interface: Option<String>,
    pub default_deploy_interface: Option<String>,
    pub default_firmware_interface: Option<String>,
    pub default_inspect_interface: Option<String>,
    pub default_management_interface: Option<String>,
    pub default_network_interface: Option<String>,
    pub default_power_interface: Option<String>,
    pub default_raid_interface: Option<String>,
    pub default_rescue_interface: Option<String>,
    pub default_storage_interface: Option<String>,
    pub default_vendor_interface: Option<String>,
}

impl DriversConfig {
    /// `enabled_<kind>_interfaces`.
    pub fn enabled(&self, kind: Kind) -> Option<&Vec<String>> {
        match kind {
            Kind::Bios => self.enabled_bios_interfaces.as_ref(),
            Kind::Boot => self.enabled_boot_interfaces.as_ref(),
            Kind::Console => self.enabled_console_interfaces.as_ref(),
            Kind::Deploy => self.enabled_deploy_interfaces.as_ref(),
            Kind::Firmware => self.enabled_firmware_interfaces.as_ref(),
            Kind::Inspect => self.enabled_inspect_interfaces.as_ref(),
            Kind::Management => self.enabled_management_interfaces.as_ref(),
            Kind::Network => self.enabled_network_interfaces.as_ref(),
            Kind::Power => self.enabled_power_interfaces.as_ref(),
            Kind::Raid => self.enabled_raid_interfaces.as_ref(),
            Kind::Rescue => self.enabled_rescue_interfaces.as_ref(),
            Kind::Storage => self.enabled_storage_interfaces.as_ref(),
            Kind::Vendor => self.enabled_vendor_interfaces.as_ref(),
        }
    }

    /// `default_<kind>_interface`.
    pub fn default_for(&self, kind: Kind) -> Option<&String> {
        match kind {
            Kind::Bios => self.default_bios_interface.as_ref(),
            Kind::Boot => self.default_boot_interface.as_ref(),
            Kind::Console => self.default_console_interface.as_ref(),
            Kind::Deploy => self.default_deploy_interface.as_ref(),
            Kind::Firmware => self.default_firmware_interface.as_ref(),
            Kind::Inspect => self.default_inspect_interface.as_ref(),
            Kind::Management => self.default_management_interface.as_ref(),
            Kind::Network => self.default_network_interface.as_ref(),
            Kind::Power => self.default_power_interface.as_ref(),
            Kind::Raid => self.default_raid_interface.as_ref(),
            Kind::Rescue => self.default_rescue_interface.as_ref(),
            Kind::Storage => self.default_storage_interface.as_ref(),
            Kind::Vendor => self.default_vendor_interface.as_ref(),
        }
        .filter(|d| !d.trim().is_empty())
    }
}

/// A list as a TOML array or a comma-separated string; blanks dropped.
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let raw: Option<Raw> = Option::deserialize(d)?;
    Ok(raw.map(|r| {
        let items = match r {
            Raw::One(s) => s.split(',').map(str::to_owned).collect(),
            Raw::Many(v) => v,
        };
        items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }))
}
