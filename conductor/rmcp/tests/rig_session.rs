//! Rig tests: RMCP+ sessions against the rig's real `ipmi_sim` BMCs, each
//! answer compared with what `ipmitool -I lanplus` gets from the same BMC.
//! Skips (with a notice) unless `PORTHOLE_RIG_JSON` names a running rig; each
//! test leases its BMC (the tests crate's flock), so suites can run side by side.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{Context, Result};
use porthole_rmcp::session::cmd;
use porthole_rmcp::{Privilege, RakpStatus, RmcpError, Session, SessionConfig};
use porthole_tests::rig::{Bmc, Rig};

fn addr(bmc: &Bmc) -> SocketAddr {
    format!("{}:{}", bmc.host, bmc.port).parse().unwrap()
}

fn config(bmc: &Bmc) -> SessionConfig {
    SessionConfig::new(&bmc.username, bmc.password.as_bytes())
}

/// `ipmitool -I lanplus raw ...` on the same BMC: the response bytes.
fn ipmitool_raw(bmc: &Bmc, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("ipmitool")
        .args([
            "-I",
            "lanplus",
            "-C",
            "3",
            "-H",
            &bmc.host,
            "-p",
            &bmc.port.to_string(),
            "-U",
            &bmc.username,
        ])
        .arg("-f")
        .arg(&bmc.password_file)
        .arg("raw")
        .args(args)
        .output()
        .context("running ipmitool")?;
    anyhow::ensure!(
        out.status.success(),
        "ipmitool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).context("ipmitool raw output"))
        .collect()
}

#[tokio::test]
async fn session_get_device_id_and_chassis_status_match_ipmitool() -> Result<()> {
    let Some(rig) = Rig::from_env()? else {
        return Ok(());
    };
    let lease = rig.lease_bmcs(1).await?;
    let bmc = &lease[0];
    let mut s = Session::open(support::pool().open(addr(bmc)).await?, &config(bmc)).await?;
    assert_eq!(s.cipher_suite().id, 3);
    let ours = s.request(cmd::NETFN_APP, cmd::GET_DEVICE_ID, &[]).await?;
    // bmc.emu: mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02.
    assert_eq!(
        (ours[0], ours[1] & 0x0f, ours[2] & 0x7f, ours[3]),
        (0, 3, 9, 0x08)
    );
    assert_eq!(&ours[6..11], &[0x91, 0x12, 0x00, 0x02, 0x0f]);
    let chassis = s
        .request(cmd::NETFN_CHASSIS, cmd::GET_CHASSIS_STATUS, &[])
        .await?;
    s.close().await?;
    assert_eq!(
        ours,
        ipmitool_raw(bmc, &["0x06", "0x01"])?,
        "Get Device ID as ipmitool sees it"
    );
    assert_eq!(
        chassis,
        ipmitool_raw(bmc, &["0x00", "0x01"])?,
        "Get Chassis Status as ipmitool sees it"
    );
    Ok(())
}

#[tokio::test]
async fn privilege_levels_and_cipher_suites() -> Result<()> {
    let Some(rig) = Rig::from_env()? else {
        return Ok(());
    };
    let lease = rig.lease_bmcs(1).await?;
    let bmc = &lease[0];
    for (suite, privilege) in [
        (3, Privilege::User),
        (2, Privilege::Operator),
        (1, Privilege::Administrator),
        (0, Privilege::Administrator),
    ] {
        let mut c = config(bmc);
        c.cipher_suite = suite;
        c.privilege = privilege;
        let mut s = Session::open(support::pool().open(addr(bmc)).await?, &c)
            .await
            .with_context(|| format!("suite {suite} at {privilege:?}"))?;
        s.request(cmd::NETFN_APP, cmd::GET_DEVICE_ID, &[]).await?;
        s.close().await?;
    }
    // ipmi_sim offers no SHA256 suite: 17 is refused at Open Session, as ipmitool's -C 17 is.
    let mut c = config(bmc);
    c.cipher_suite = 17;
    let err = Session::open(support::pool().open(addr(bmc)).await?, &c)
        .await
        .err()
        .context("suite 17 opened")?;
    assert!(
        matches!(
            err,
            RmcpError::Refused {
                step: "Open Session",
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn wrong_password_and_unknown_user_have_clear_errors() -> Result<()> {
    let Some(rig) = Rig::from_env()? else {
        return Ok(());
    };
    let lease = rig.lease_bmcs(1).await?;
    let bmc = &lease[0];
    let c = SessionConfig::new(&bmc.username, b"not-the-password");
    let err = Session::open(support::pool().open(addr(bmc)).await?, &c)
        .await
        .err()
        .context("opened")?;
    assert_eq!(
        err.to_string(),
        format!(
            "wrong password for user {:?} (RAKP 2 key exchange authentication code mismatch)",
            bmc.username
        )
    );
    let c = SessionConfig::new("nobody", bmc.password.as_bytes());
    let err = Session::open(support::pool().open(addr(bmc)).await?, &c)
        .await
        .err()
        .context("opened")?;
    assert!(
        matches!(
            err,
            RmcpError::Refused {
                status: RakpStatus::UNAUTHORIZED_NAME,
                ..
            }
        ),
        "{err}"
    );
    // The BMC still serves a correct session afterwards.
    let mut s = Session::open(support::pool().open(addr(bmc)).await?, &config(bmc)).await?;
    s.close().await?;
    Ok(())
}
