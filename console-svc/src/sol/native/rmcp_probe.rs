//! The `rmcp` backend's BMC probe: Get Chassis Status in an RMCP+ session of
//! its own (open, ask, Close Session), as `ipmitool -N 1 -R 2 chassis power
//! status` does for the other serial backends, so the rmcp backend starts no
//! ipmitool at all. The manager's supervisor runs it
//! ([`crate::backend::BmcProbe`]); every datagram goes through [`FencedUdp`].

use std::time::Duration;

use async_trait::async_trait;
use porthole_rmcp::session::cmd;
use porthole_rmcp::Session;

use super::rmcp::{resolve, session_config, FencedUdp};
use crate::backend::{BackendError, BmcProbe};
use crate::coordinator::Fence;
use crate::sol::SolError;
use crate::spec::IpmiTarget;

/// One answer within a second, two retries (ipmitool's `-N 1 -R 2`).
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
const RETRIES: u32 = 2;

pub(crate) struct RmcpProbe {
    pub(crate) target: IpmiTarget,
    pub(crate) fence: Fence,
    /// The whole probe, handshake included.
    pub(crate) timeout: Duration,
}

impl RmcpProbe {
    async fn ask(&self) -> porthole_rmcp::Result<()> {
        let addr = resolve(&self.target).await?;
        let mut cfg = session_config(&self.target);
        cfg.timeout = ANSWER_WITHIN;
        cfg.retries = RETRIES;
        // A socket of its own for the probe's few seconds, in either
        // `[rmcp] udp` mode: on the shared socket it would hold the BMC's
        // address just when the console's SOL session comes up (both run
        // at start), pushing that long-lived session off the shared socket.
        let udp = FencedUdp::own(addr, self.fence.clone()).await?;
        let mut session = Session::open(udp, &cfg).await?;
        let status = session
            .request(cmd::NETFN_CHASSIS, cmd::GET_CHASSIS_STATUS, &[])
            .await;
        // The BMC forgets an unclosed session only at its own timeout.
        let closed = session.close().await;
        status?;
        closed
    }
}

#[async_trait]
impl BmcProbe for RmcpProbe {
    async fn probe(&self) -> Result<(), BackendError> {
        self.fence.permit()?;
        let bmc = self.target.display_addr();
        let asked = tokio::time::timeout(self.timeout, self.ask()).await;
        let err = match asked {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => SolError::Bmc {
                bmc,
                message: e.to_string(),
            },
            Err(_) => SolError::Timeout {
                what: format!("the RMCP+ probe of {bmc}"),
                timeout: self.timeout,
            },
        };
        Err(err.into())
    }
}

#[cfg(test)]
#[path = "rmcp_probe_tests.rs"]
mod tests;
