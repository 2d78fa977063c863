//! What this conductor knows, fixed at build time: the interface kinds
//! (Ironic's `ALL_INTERFACES`), every implementation name per kind (Ironic's
//! `ironic.hardware.interfaces.<kind>` entrypoints), the hardware types with
//! the implementations each supports (first = preferred default, as Ironic's
//! `supported_<kind>_interfaces` order), and the classic driver names of the
//! design documents as aliases of a hardware type and some interfaces.
//!
//! Callers: the rest of `drivers` (the registry built from the config).

/// An interface kind, in Ironic's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Bios,
    Boot,
    Console,
    Deploy,
    Firmware,
    Inspect,
    Management,
    Network,
    Power,
    Raid,
    Rescue,
    Storage,
    Vendor,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Bios,
        Kind::Boot,
        Kind::Console,
        Kind::Deploy,
        Kind::Firmware,
        Kind::Inspect,
        Kind::Management,
        Kind::Network,
        Kind::Power,
        Kind::Raid,
        Kind::Rescue,
        Kind::Storage,
        Kind::Vendor,
    ];

    /// `boot`, `deploy`, ...
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bios => "bios",
            Kind::Boot => "boot",
            Kind::Console => "console",
            Kind::Deploy => "deploy",
            Kind::Firmware => "firmware",
            Kind::Inspect => "inspect",
            Kind::Management => "management",
            Kind::Network => "network",
            Kind::Power => "power",
            Kind::Raid => "raid",
            Kind::Rescue => "rescue",
            Kind::Storage => "storage",
            Kind::Vendor => "vendor",
        }
    }

    /// The node field: `boot_interface`, ...
    pub fn field(self) -> String {
        format!("{}_interface", self.name())
    }

    /// Ironic's entrypoint name, as its error messages give it.
    pub fn entrypoint(self) -> String {
        format!("ironic.hardware.interfaces.{}", self.name())
    }

    /// Every implementation name of this kind the conductor knows.
    pub fn known(self) -> &'static [&'static str] {
        match self {
            Kind::Bios => &["no-bios", "fake"],
            Kind::Boot => &[
                "pxe",
                "ipxe",
                "redfish-virtual-media",
                "ilo-virtual-media",
                "ilo-pxe",
                "fake",
            ],
            Kind::Console => &[
                "ipmitool-socat",
                "ipmitool-shellinabox",
                "redfish-graphical",
                "fake-graphical",
                "no-console",
            ],
            Kind::Deploy => &["direct", "iscsi", "fake"],
            Kind::Firmware => &["no-firmware", "fake"],
            Kind::Inspect => &["no-inspect", "inspector", "agent", "redfish", "ilo", "fake"],
            Kind::Management => &["ipmitool", "redfish", "ilo", "fake"],
            Kind::Network => &["noop"],
            Kind::Power => &["ipmitool", "redfish", "ilo", "fake"],
            Kind::Raid => &["no-raid", "fake"],
            Kind::Rescue => &["no-rescue", "fake"],
            Kind::Storage => &["noop", "fake"],
            Kind::Vendor => &["ipmitool", "redfish", "ilo", "no-vendor", "fake"],
        }
    }
}

/// A hardware type (Ironic's `driver` of a node).
#[derive(Debug)]
pub struct HardwareType {
    pub name: &'static str,
    /// Ironic's class name, as IncompatibleInterface names it.
    pub class: &'static str,
    /// Accepts any enabled implementation (Ironic special-cases
    /// `fake-hardware` so tests can combine anything).
    pub any: bool,
    supported: fn(Kind) -> &'static [&'static str],
}

impl HardwareType {
    /// The implementations it supports, preferred first.
    pub fn supported(&self, kind: Kind) -> &'static [&'static str] {
        (self.supported)(kind)
    }

    pub fn supports(&self, kind: Kind, name: &str) -> bool {
        if self.any {
            return kind.known().contains(&name);
        }
        self.supported(kind).contains(&name)
    }
}

/// What every hardware type here has for the kinds no driver implements.
fn common(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Bios => &["no-bios"],
        Kind::Firmware => &["no-firmware"],
        Kind::Network => &["noop"],
        Kind::Raid => &["no-raid"],
        Kind::Rescue => &["no-rescue"],
        Kind::Storage => &["noop"],
        _ => &[],
    }
}

fn ipmi(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Boot => &["pxe", "ipxe"],
        Kind::Console => &["ipmitool-socat", "ipmitool-shellinabox", "no-console"],
        Kind::Deploy => &["direct", "iscsi"],
        Kind::Inspect => &["agent", "no-inspect", "inspector"],
        Kind::Management | Kind::Power => &["ipmitool"],
        Kind::Vendor => &["ipmitool", "no-vendor"],
        other => common(other),
    }
}

fn redfish(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Boot => &["pxe", "ipxe", "redfish-virtual-media"],
        Kind::Console => &["no-console", "redfish-graphical"],
        Kind::Deploy => &["direct", "iscsi"],
        Kind::Inspect => &["agent", "no-inspect", "redfish", "inspector"],
        Kind::Management | Kind::Power => &["redfish"],
        Kind::Vendor => &["redfish", "no-vendor"],
        other => common(other),
    }
}

fn ilo(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Boot => &["ilo-virtual-media", "ilo-pxe", "pxe", "ipxe"],
        Kind::Console => &["no-console"],
        Kind::Deploy => &["direct", "iscsi"],
        Kind::Inspect => &["agent", "no-inspect", "ilo", "inspector"],
        Kind::Management | Kind::Power => &["ilo"],
        Kind::Vendor => &["ilo", "no-vendor"],
        other => common(other),
    }
}

fn fake(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Boot | Kind::Deploy | Kind::Management | Kind::Power => &["fake"],
        Kind::Console => &["no-console", "fake-graphical"],
        Kind::Inspect => &["fake", "no-inspect"],
        Kind::Vendor => &["fake", "no-vendor"],
        other => common(other),
    }
}

pub const FAKE_HARDWARE: &str = "fake-hardware";

pub static HARDWARE_TYPES: &[HardwareType] = &[
    HardwareType {
        name: "ipmi",
        class: "IPMIHardware",
        any: false,
        supported: ipmi,
    },
    HardwareType {
        name: "redfish",
        class: "RedfishHardware",
        any: false,
        supported: redfish,
    },
    HardwareType {
        name: "ilo",
        class: "IloHardware",
        any: false,
        supported: ilo,
    },
    HardwareType {
        name: FAKE_HARDWARE,
        class: "FakeHardware",
        any: true,
        supported: fake,
    },
];

pub fn hardware_type(name: &str) -> Option<&'static HardwareType> {
    HARDWARE_TYPES.iter().find(|h| h.name == name)
}

/// A classic driver name of the design documents: a hardware type and the
/// interfaces it sets (the others take the hardware type's defaults), as
/// Ironic's classic-to-hardware-type migration mapped them (`pxe_*`: iSCSI
/// deploy, `agent_*`: direct deploy).
#[derive(Debug)]
pub struct Alias {
    pub name: &'static str,
    pub hardware_type: &'static str,
    pub interfaces: &'static [(Kind, &'static str)],
}

pub static ALIASES: &[Alias] = &[
    Alias {
        name: "pxe_ipmitool_socat",
        hardware_type: "ipmi",
        interfaces: &[
            (Kind::Boot, "pxe"),
            (Kind::Deploy, "iscsi"),
            (Kind::Console, "ipmitool-socat"),
        ],
    },
    Alias {
        name: "agent_ipmitool_socat",
        hardware_type: "ipmi",
        interfaces: &[
            (Kind::Boot, "pxe"),
            (Kind::Deploy, "direct"),
            (Kind::Console, "ipmitool-socat"),
        ],
    },
    Alias {
        name: "pxe_ipmitool",
        hardware_type: "ipmi",
        interfaces: &[
            (Kind::Boot, "pxe"),
            (Kind::Deploy, "iscsi"),
            (Kind::Inspect, "inspector"),
        ],
    },
    Alias {
        name: "iscsi_ilo",
        hardware_type: "ilo",
        interfaces: &[(Kind::Boot, "ilo-virtual-media"), (Kind::Deploy, "iscsi")],
    },
];

pub fn alias(name: &str) -> Option<&'static Alias> {
    ALIASES.iter().find(|a| a.name == name)
}

/// The driver_info a hardware type reads (`GET /v1/drivers/{d}/properties`).
pub fn properties(hardware_type: &str) -> &'static [(&'static str, &'static str)] {
    match hardware_type {
        "ipmi" => &[
            ("ipmi_address", "IP address or hostname of the node. Required."),
            ("ipmi_port", "remote IPMI RMCP port. Optional."),
            ("ipmi_username", "username; default is NULL user. Optional."),
            ("ipmi_password", "password. Optional."),
            ("ipmi_cipher_suite", "IPMI cipher suite (default 3). Optional."),
            ("ipmi_priv_level", "privilege level; default is ADMINISTRATOR. One of ADMINISTRATOR, CALLBACK, OPERATOR, USER. Optional."),
        ],
        "redfish" => &[
            ("redfish_address", "The URL address to the Redfish controller. It must include the authority portion of the URL. If the scheme is missing, https is assumed. For example: https://mgmt.vendor.com. Required."),
            ("redfish_system_id", "The canonical path to the ComputerSystem resource that the driver will interact with. It should include the root service, version and the unique resource path to a ComputerSystem within the same authority as the redfish_address property. For example: /redfish/v1/Systems/1. Optional."),
            ("redfish_username", "User account with admin/server-profile access privilege. Optional."),
            ("redfish_password", "User account password. Optional."),
            ("redfish_verify_ca", "Either a Boolean value, a path to a CA_BUNDLE file or directory with certificates of trusted CAs. Optional."),
        ],
        "ilo" => &[
            ("ilo_address", "IP address or hostname of the iLO. Required."),
            ("ilo_username", "username for the iLO with administrator privileges. Required."),
            ("ilo_password", "password for ilo_username. Required."),
        ],
        _ => &[],
    }
}
