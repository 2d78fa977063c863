//! Power through ipmitool (lanplus). The password reaches ipmitool through
//! console-svc's sealed memfd at fd 3 (`-f /dev/fd/3`): never argv, never
//! the environment.
//!
//! Callers: `power::Bmc` for `ipmi` nodes.

use std::process::Stdio;
use std::time::Duration;

use console_svc::secret::Secret;
use console_svc::sol::ipmitool::{explain, PasswordFd, PASSWORD_FD};
use tokio::process::Command;

use super::{info_str, info_u16, require, Power, PowerError, PowerSettings};
use crate::model::Dict;

pub struct Ipmi {
    program: String,
    address: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    cipher_suite: String,
    privilege: String,
    timeout: Duration,
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
        Ok(Self {
            program: s.ipmitool_path.clone(),
            address: info_str(info, "ipmi_address").unwrap_or_default(),
            port: info_u16(info, "ipmi_port")?.unwrap_or(623),
            username: info_str(info, "ipmi_username"),
            password: info_str(info, "ipmi_password"),
            cipher_suite: info_str(info, "ipmi_cipher_suite").unwrap_or("3".into()),
            privilege,
            timeout: s.command_timeout,
        })
    }

    fn args(&self, command: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "-I",
            "lanplus",
            "-H",
            &self.address,
            "-p",
            &self.port.to_string(),
            "-C",
            &self.cipher_suite,
            "-L",
            &self.privilege,
            "-N",
            "1",
            "-R",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(u) = &self.username {
            a.extend(["-U".into(), u.clone()]);
        }
        if self.password.is_some() {
            a.extend(["-f".into(), format!("/dev/fd/{PASSWORD_FD}")]);
        }
        a.extend(command.iter().map(|s| s.to_string()));
        a
    }

    /// Run `ipmitool ... <command>`; its stdout, or its own words on failure.
    #[tracing::instrument(skip(self), fields(bmc = %format!("{}:{}", self.address, self.port)))]
    async fn run(&self, command: &[&str]) -> Result<String, PowerError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args(command))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(pw) = &self.password {
            PasswordFd::new(&Secret::new(pw.as_str()))
                .map_err(|e| self.spawn_err(e))?
                .attach(&mut cmd);
        }
        let what = format!("ipmitool {}", command.join(" "));
        let child = cmd.spawn().map_err(|e| self.spawn_err(e))?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|e| self.spawn_err(e))?,
            Err(_) => {
                return Err(PowerError::Timeout {
                    what: format!("{what} on {}:{}", self.address, self.port),
                    timeout: self.timeout,
                })
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let words: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut msg = format!(
            "BMC {}:{}: {what} failed: {}",
            self.address,
            self.port,
            words.join("; ")
        );
        explain(&mut msg);
        Err(PowerError::Bmc(msg))
    }

    fn spawn_err(&self, source: std::io::Error) -> PowerError {
        PowerError::Spawn {
            program: self.program.clone(),
            source,
        }
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
    use super::*;

    fn ipmi(pw: &str) -> Ipmi {
        let mut info = Dict::new();
        info.insert("ipmi_address".into(), "127.0.0.1".into());
        info.insert("ipmi_port".into(), "21100".into());
        info.insert("ipmi_username".into(), "admin".into());
        info.insert("ipmi_password".into(), pw.into());
        let s = PowerSettings {
            ipmitool_path: "sh".into(),
            command_timeout: Duration::from_secs(5),
        };
        Ipmi::from_info(&info, &s).unwrap()
    }

    #[test]
    fn argv_never_holds_the_password() {
        let a = ipmi("s3cret-pw").args(&["power", "status"]).join(" ");
        assert!(a.contains("-C 3") && a.contains("-f /dev/fd/3"), "{a}");
        assert!(!a.contains("s3cret-pw") && !a.contains("-P"), "{a}");
    }

    #[tokio::test]
    async fn the_child_reads_the_password_at_fd_3() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat /dev/fd/3"]);
        PasswordFd::new(&Secret::new("pw-at-fd3"))
            .unwrap()
            .attach(&mut cmd);
        let out = cmd.output().await.unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "pw-at-fd3");
    }

    #[test]
    fn outputs_parse_like_ironic() {
        assert_eq!(parse_power("Chassis Power is on\n"), Some(Power::On));
        assert_eq!(parse_power("Chassis Power is off\n"), Some(Power::Off));
        let out = "Boot parameter version: 1\n Boot Flags :\n   - Options apply to all future boots\n   - Boot Device Selector : Force PXE\n";
        assert_eq!(parse_bootparam(out), (Some("pxe".into()), true));
    }
}
