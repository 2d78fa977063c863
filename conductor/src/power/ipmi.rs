//! Power through ipmitool (lanplus), run by porthole-bmc's one runner: the
//! password reaches ipmitool through its sealed memfd at fd 3
//! (`-f /dev/fd/3`), never argv, never the environment.
//!
//! Callers: `power::Bmc` for `ipmi` nodes.

use porthole_bmc::ipmitool::{Direct, Ipmitool, IpmitoolError, Lanplus};
use porthole_bmc::Secret;

use super::{info_str, info_u16, require, Power, PowerError, PowerSettings};
use crate::model::Dict;

pub struct Ipmi {
    tool: Ipmitool,
}

impl Ipmi {
    pub fn from_info(info: &Dict, s: &PowerSettings) -> Result<Self, PowerError> {
        require(info, &["ipmi_address"], "ipmi")?;
        let privilege = info_str(info, "ipmi_priv_level").unwrap_or("ADMINISTRATOR".into());
        let valid = ["CALLBACK", "USER", "OPERATOR", "ADMINISTRATOR"];
        if !valid.contains(&privilege.as_str()) {
            return Err(PowerError::Invalid(format!(
                "driver_info ipmi_priv_level must be one of {}, not {privilege:?}.",
                valid.join(", ")
            )));
        }
        let lan = Lanplus {
            address: info_str(info, "ipmi_address").unwrap_or_default(),
            port: info_u16(info, "ipmi_port")?.unwrap_or(623),
            username: info_str(info, "ipmi_username").unwrap_or_default(),
            password: Secret::new(info_str(info, "ipmi_password").unwrap_or_default()),
            cipher_suite: info_str(info, "ipmi_cipher_suite").unwrap_or("3".into()),
            privilege,
        };
        Ok(Self {
            tool: Ipmitool::new(&s.ipmitool_path, lan, s.command_timeout),
        })
    }

    /// Run `ipmitool ... -N 1 -R 3 <command>`; its stdout, or its own words
    /// on failure.
    #[tracing::instrument(skip(self), fields(bmc = %self.tool.lan.display_addr()))]
    async fn run(&self, command: &[&str]) -> Result<String, PowerError> {
        let mut argv = vec!["-N", "1", "-R", "3"];
        argv.extend_from_slice(command);
        // Messages name the command, not the retry flags.
        let what = format!("ipmitool {}", command.join(" "));
        self.tool.run(&Direct, &argv).await.map_err(|e| match e {
            IpmitoolError::Spawn { program, source } => PowerError::Spawn { program, source },
            IpmitoolError::PastDeadline { what } => PowerError::Bmc(what),
            IpmitoolError::Timeout { timeout, .. } => PowerError::Timeout {
                what: format!("{what} on BMC {}", self.tool.lan.display_addr()),
                timeout,
            },
            IpmitoolError::Bmc { bmc, message, .. } => {
                PowerError::Bmc(format!("BMC {bmc}: {what} failed: {message}"))
            }
            IpmitoolError::Io(source) => PowerError::Spawn {
                program: s_program(&self.tool),
                source,
            },
        })
    }

    pub async fn power_state(&self) -> Result<Power, PowerError> {
        let out = self.run(&["power", "status"]).await?;
        parse_power(&out).ok_or_else(|| {
            PowerError::Bmc(format!("unexpected ipmitool power status output: {out:?}"))
        })
    }

    pub async fn set_power(&self, want: Power) -> Result<(), PowerError> {
        let verb = match want {
            Power::On => "on",
            Power::Off => "off",
        };
        self.run(&["power", verb]).await.map(drop)
    }

    pub async fn set_boot_device(&self, device: &str, persistent: bool) -> Result<(), PowerError> {
        let dev = match device {
            "disk" => "disk",
            "pxe" => "pxe",
            "cdrom" => "cdrom",
            "bios" => "bios",
            "safe" => "safe",
            other => {
                return Err(PowerError::Invalid(format!(
                    "Unknown boot device {other:?}."
                )))
            }
        };
        let mut cmd = vec!["chassis", "bootdev", dev];
        if persistent {
            cmd.push("options=persistent");
        }
        self.run(&cmd).await.map(drop)
    }

    pub async fn boot_device(&self) -> Result<(Option<String>, bool), PowerError> {
        let out = self.run(&["chassis", "bootparam", "get", "5"]).await?;
        Ok(parse_bootparam(&out))
    }
}

fn s_program(tool: &Ipmitool) -> String {
    tool.program.to_string_lossy().into_owned()
}

fn parse_power(out: &str) -> Option<Power> {
    let l = out.to_ascii_lowercase();
    if l.contains("power is on") {
        Some(Power::On)
    } else if l.contains("power is off") {
        Some(Power::Off)
    } else {
        None
    }
}

/// Ironic's reading of `chassis bootparam get 5`.
fn parse_bootparam(out: &str) -> (Option<String>, bool) {
    let persistent = out.contains("Options apply to all future boots");
    let selector = out
        .lines()
        .find(|l| l.contains("Boot Device Selector"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    let dev = selector.and_then(|s| {
        [
            ("pxe", "pxe"),
            ("hard-drive", "disk"),
            ("cd/dvd", "cdrom"),
            ("bios", "bios"),
            ("safe", "safe"),
        ]
        .iter()
        .find(|(k, _)| s.contains(k))
        .map(|(_, v)| v.to_string())
    });
    (dev, persistent)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ipmi(pw: &str) -> Ipmi {
        let mut info = Dict::new();
        info.insert("ipmi_address".into(), "127.0.0.1".into());
        info.insert("ipmi_port".into(), "21100".into());
        info.insert("ipmi_username".into(), "admin".into());
        info.insert("ipmi_password".into(), pw.into());
        let s = PowerSettings::new("sh".into(), Duration::from_secs(5)).unwrap();
        Ipmi::from_info(&info, &s).unwrap()
    }

    #[test]
    fn argv_never_holds_the_password() {
        let a: Vec<String> = ipmi("s3cret-pw")
            .tool
            .lan
            .args(&["power", "status"])
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let a = a.join(" ");
        assert!(a.contains("-C 3") && a.contains("-f /dev/fd/3"), "{a}");
        assert!(!a.contains("s3cret-pw") && !a.contains("-P"), "{a}");
    }

    #[tokio::test]
    async fn failures_name_the_bmc_and_the_command() {
        // `sh -I lanplus ...` fails at once, saying so on stderr.
        let err = ipmi("pw")
            .set_power(Power::On)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("BMC 127.0.0.1:21100: ipmitool power on failed: "),
            "{err}"
        );
    }

    #[test]
    fn outputs_parse_like_ironic() {
        assert_eq!(parse_power("Chassis Power is on\n"), Some(Power::On));
        assert_eq!(parse_power("Chassis Power is off\n"), Some(Power::Off));
        let out = "Boot parameter version: 1\n Boot Flags :\n   - Options apply to all future boots\n   - Boot Device Selector : Force PXE\n";
        assert_eq!(parse_bootparam(out), (Some("pxe".into()), true));
    }
}
