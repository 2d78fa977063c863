//! An established RMCP+ session over any [`Datagram`]: set-up (`setup`,
//! then Set Session Privilege Level), requests with per-attempt timeouts and retransmission,
//! outbound session sequence numbers and the inbound replay window, and
//! Close Session. `sol` drives SOL over it; callers use [`Session::open`].

use std::collections::VecDeque;
use std::time::Duration;

use tracing::debug;
use zeroize::Zeroizing;

use crate::crypto::{CipherSuite, SessionKeys};
use crate::error::{Result, RmcpError};
use crate::handshake::Privilege;
use crate::setup;
use crate::transport::Datagram;
use crate::wire::{self, payload, Packet, Protection, Response};

/// IPMI network functions and commands this crate sends.
pub mod cmd {
    pub const NETFN_CHASSIS: u8 = 0x00;
    pub const NETFN_APP: u8 = 0x06;
    pub const GET_DEVICE_ID: u8 = 0x01;
    pub const GET_CHASSIS_STATUS: u8 = 0x01;
    pub const GET_CHANNEL_AUTH_CAPS: u8 = 0x38;
    pub const SET_SESSION_PRIVILEGE: u8 = 0x3b;
    pub const CLOSE_SESSION: u8 = 0x3c;
    pub const ACTIVATE_PAYLOAD: u8 = 0x48;
    pub const DEACTIVATE_PAYLOAD: u8 = 0x49;
}

/// How to reach and authenticate to one BMC (ipmitool's -C, -U, -P/-f, -k, -L).
#[derive(Clone)]
pub struct SessionConfig {
    pub cipher_suite: u8,
    pub username: String,
    pub password: Zeroizing<Vec<u8>>,
    pub kg: Option<Zeroizing<Vec<u8>>>,
    pub privilege: Privilege,
    /// Wait for one answer; then the request is sent again.
    pub timeout: Duration,
    /// Sends after the first before giving up.
    pub retries: u32,
}

impl SessionConfig {
    /// ipmitool's defaults: suite 3, privilege ADMINISTRATOR, no Kg.
    pub fn new(username: &str, password: &[u8]) -> Self {
        Self {
            cipher_suite: 3,
            username: username.to_string(),
            password: Zeroizing::new(password.to_vec()),
            kg: None,
            privilege: Privilege::Administrator,
            timeout: Duration::from_secs(1),
            retries: 3,
        }
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("cipher_suite", &self.cipher_suite)
            .field("username", &self.username)
            .field("privilege", &self.privilege)
            .finish_non_exhaustive()
    }
}

/// A session packet that was not the answer someone waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Sol(Vec<u8>),
    Response(Response),
}

/// Inbound session sequence numbers: a 32-wide window against replays.
#[derive(Default)]
struct SeqWindow {
    top: u32,
    seen: u32,
}

impl SeqWindow {
    fn accept(&mut self, seq: u32) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 32 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= 32 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

/// An authenticated, active RMCP+ session.
pub struct Session<T: Datagram> {
    transport: T,
    suite: CipherSuite,
    keys: SessionKeys,
    bmc_sid: u32,
    console_sid: u32,
    out_seq: u32,
    window: SeqWindow,
    rq_seq: u8,
    timeout: Duration,
    retries: u32,
    backlog: VecDeque<Incoming>,
    closed: bool,
}

impl<T: Datagram> Session<T> {
    /// Authenticate and activate a session at `cfg.privilege`.
    pub async fn open(transport: T, cfg: &SessionConfig) -> Result<Self> {
        let est = setup::authenticate(&transport, cfg).await?;
        let mut session = Self {
            transport,
            suite: est.suite,
            keys: est.keys,
            bmc_sid: est.bmc_sid,
            console_sid: est.console_sid,
            out_seq: 0,
            window: SeqWindow::default(),
            rq_seq: 0,
            timeout: cfg.timeout,
            retries: cfg.retries,
            backlog: VecDeque::new(),
            closed: false,
        };
        if cfg.privilege > Privilege::User {
            session
                .request(
                    cmd::NETFN_APP,
                    cmd::SET_SESSION_PRIVILEGE,
                    &[cfg.privilege as u8],
                )
                .await?;
        }
        debug!(
            suite = est.suite.id,
            bmc_sid = est.bmc_sid,
            "RMCP+ session open"
        );
        Ok(session)
    }

    pub fn cipher_suite(&self) -> CipherSuite {
        self.suite
    }

    fn protection(&self) -> Protection<'_> {
        Protection {
            suite: self.suite,
            k1: &self.keys.k1,
            k2: &self.keys.k2,
        }
    }

    /// Send one session payload (IPMI message or SOL packet), protected as the suite says.
    pub async fn send_payload(&mut self, payload_type: u8, data: &[u8]) -> Result<()> {
        if self.closed {
            return Err(RmcpError::Closed);
        }
        self.out_seq = self.out_seq.wrapping_add(1).max(1);
        let pkt = wire::encode_v2(
            payload_type,
            self.bmc_sid,
            self.out_seq,
            data,
            Some(&self.protection()),
        );
        self.transport.send(&pkt).await?;
        Ok(())
    }

    /// Send a request without waiting; the answer comes out of [`Self::recv`].
    pub async fn send_request(&mut self, netfn: u8, command: u8, data: &[u8]) -> Result<u8> {
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        let seq = self.rq_seq;
        self.send_payload(
            payload::IPMI,
            &wire::encode_request(netfn, command, seq, data),
        )
        .await?;
        Ok(seq)
    }

    /// The next verified session packet (backlog first). Packets that fail
    /// the integrity check, belong to another session or replay an old
    /// sequence number are dropped.
    pub async fn recv(&mut self) -> Result<Incoming> {
        if let Some(next) = self.backlog.pop_front() {
            return Ok(next);
        }
        loop {
            let datagram = self.transport.recv().await?;
            match self.accept(&datagram) {
                Ok(Some(incoming)) => return Ok(incoming),
                Ok(None) => {}
                Err(e) => debug!(error = %e, "dropped a datagram from the BMC"),
            }
        }
    }

    fn accept(&mut self, datagram: &[u8]) -> Result<Option<Incoming>> {
        let pkt: Packet = wire::decode(datagram, Some(&self.protection()))?;
        if pkt.session_id != self.console_sid || !self.window.accept(pkt.seq) {
            return Ok(None);
        }
        Ok(match pkt.payload_type {
            Some(payload::SOL) => Some(Incoming::Sol(pkt.payload)),
            Some(payload::IPMI) => Some(Incoming::Response(wire::decode_response(&pkt.payload)?)),
            _ => None,
        })
    }

    /// Send a request and wait for its answer, retransmitting on timeout;
    /// a non-zero completion code is an error. SOL packets that arrive
    /// meanwhile are kept for [`Self::recv`].
    pub async fn request(&mut self, netfn: u8, command: u8, data: &[u8]) -> Result<Vec<u8>> {
        let rsp = self.request_raw(netfn, command, data).await?;
        match rsp.completion {
            0 => Ok(rsp.data),
            code => Err(RmcpError::Completion {
                netfn,
                cmd: command,
                code,
            }),
        }
    }

    /// As [`Self::request`], returning the completion code instead of failing on it.
    pub async fn request_raw(&mut self, netfn: u8, command: u8, data: &[u8]) -> Result<Response> {
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        let seq = self.rq_seq;
        let msg = wire::encode_request(netfn, command, seq, data);
        for _ in 0..=self.retries {
            self.send_payload(payload::IPMI, &msg).await?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            while let Ok(got) = tokio::time::timeout_at(deadline, self.transport.recv()).await {
                match self.accept(&got?) {
                    Ok(Some(Incoming::Response(r)))
                        if r.rq_seq == seq && r.cmd == command && r.netfn == netfn | 1 =>
                    {
                        return Ok(r)
                    }
                    Ok(Some(other @ Incoming::Sol(_))) => self.backlog.push_back(other),
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "dropped a datagram from the BMC"),
                }
            }
        }
        Err(RmcpError::Timeout {
            what: command_name(netfn, command),
            attempts: self.retries + 1,
            timeout: self.timeout,
        })
    }

    /// Close Session, then the session is unusable. A BMC that does not
    /// answer still loses the session to its own timeout.
    pub async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let sid = self.bmc_sid.to_le_bytes();
        let result = self
            .request(cmd::NETFN_APP, cmd::CLOSE_SESSION, &sid)
            .await
            .map(|_| ());
        self.closed = true;
        result
    }
}

fn command_name(netfn: u8, command: u8) -> &'static str {
    match (netfn, command) {
        (cmd::NETFN_APP, cmd::GET_DEVICE_ID) => "Get Device ID",
        (cmd::NETFN_CHASSIS, cmd::GET_CHASSIS_STATUS) => "Get Chassis Status",
        (cmd::NETFN_APP, cmd::SET_SESSION_PRIVILEGE) => "Set Session Privilege Level",
        (cmd::NETFN_APP, cmd::CLOSE_SESSION) => "Close Session",
        (cmd::NETFN_APP, cmd::ACTIVATE_PAYLOAD) => "Activate Payload",
        (cmd::NETFN_APP, cmd::DEACTIVATE_PAYLOAD) => "Deactivate Payload",
        _ => "an IPMI request",
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
