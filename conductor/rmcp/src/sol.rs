//! Serial-over-LAN over an RMCP+ session (IPMI v2.0 §15, §24): Activate
//! Payload (deactivating a stale activation first, as the ipmitool backends
//! do), the SOL packet with its sequence / ack / accepted-character count,
//! retransmission, NACK and partial-accept handling, break, the session
//! keep-alive, and Deactivate Payload. Bytes are passed through untouched.
//! console-svc's `rmcp` backend runs one [`Sol::run`] per console, over a
//! byte stream: keystrokes read from it go to the node, the node's output is
//! written to it. Keystrokes are read through a buffer on the stack of one
//! poll, so a waiting session holds no read buffer.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::crypto::{ConfAlg, IntegrityAlg};
use crate::error::{Result, RmcpError};
use crate::session::{cmd, Incoming, Session};
use crate::transport::Datagram;
use crate::wire::payload;

/// Console-to-BMC operation bits (byte 4 of a SOL packet).
pub mod op {
    pub const NACK: u8 = 0x40;
    pub const RING: u8 = 0x20;
    pub const BREAK: u8 = 0x10;
    pub const CTS_PAUSE: u8 = 0x08;
    pub const DROP_DCD_DSR: u8 = 0x04;
    pub const FLUSH_INBOUND: u8 = 0x02;
    pub const FLUSH_OUTBOUND: u8 = 0x01;
}

/// BMC-to-console status bits.
pub mod status {
    pub const NACK: u8 = 0x40;
    pub const TRANSFER_UNAVAILABLE: u8 = 0x20;
    pub const DEACTIVATING: u8 = 0x10;
    pub const TX_OVERRUN: u8 = 0x08;
    pub const BREAK: u8 = 0x04;
}

/// One SOL payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SolPacket {
    /// 1..=15; 0 for an ack-only packet.
    pub seq: u8,
    /// The sequence number acked or nacked; 0 for none.
    pub ack: u8,
    pub accepted: u8,
    /// Operation (to the BMC) or status (from it).
    pub ctl: u8,
    pub data: Vec<u8>,
}

impl SolPacket {
    pub fn encode(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(4 + self.data.len());
        m.extend_from_slice(&[self.seq & 0x0f, self.ack & 0x0f, self.accepted, self.ctl]);
        m.extend_from_slice(&self.data);
        m
    }

    pub fn decode(m: &[u8]) -> Result<Self> {
        if m.len() < 4 {
            return Err(RmcpError::Malformed(format!(
                "SOL packet of {} bytes",
                m.len()
            )));
        }
        Ok(Self {
            seq: m[0] & 0x0f,
            ack: m[1] & 0x0f,
            accepted: m[2],
            ctl: m[3],
            data: m[4..].to_vec(),
        })
    }
}

/// Keystrokes read from the stream at once (a paste takes a few reads).
const KEYS_CHUNK: usize = 256;

/// Asks a running [`Sol::run`] to send a break on the serial line (what
/// ipmitool's `~B` does); a break asked for before `run` polls is kept.
#[derive(Clone, Debug)]
pub struct BreakSender(Arc<Notify>);

impl BreakSender {
    pub fn send_break(&self) {
        self.0.notify_one();
    }
}

/// SOL timing (defaults close to ipmitool's).
#[derive(Clone, Debug)]
pub struct SolConfig {
    /// Wait for the BMC's ack before sending a packet again.
    pub retry_timeout: Duration,
    /// Sends of one packet after the first before the session is given up.
    pub retries: u32,
    /// Get Device ID this often; three unanswered in a row end the session.
    pub keepalive: Duration,
    /// The UDP port the session runs on: a BMC asking for SOL on another
    /// port is refused (this client keeps SOL in the session's socket).
    pub session_port: Option<u16>,
}

impl Default for SolConfig {
    fn default() -> Self {
        Self {
            retry_timeout: Duration::from_millis(500),
            retries: 7,
            keepalive: Duration::from_secs(15),
            session_port: None,
        }
    }
}

const KEEPALIVE_MISSES: u32 = 3;

/// Payload instance 1 of the SOL payload type.
fn payload_selector(aux: [u8; 4]) -> [u8; 6] {
    [payload::SOL, 1, aux[0], aux[1], aux[2], aux[3]]
}

/// An activated SOL payload on its session.
pub struct Sol<T: Datagram> {
    session: Session<T>,
    cfg: SolConfig,
    /// Largest data field the BMC takes from us.
    max_chunk: usize,
    /// Bytes waiting to go out, and a break to send with them.
    pending: VecDeque<u8>,
    pending_break: bool,
    breaks: Arc<Notify>,
    in_flight: Option<InFlight>,
    next_seq: u8,
    last_rx_seq: u8,
    keepalive_misses: u32,
}

struct InFlight {
    packet: SolPacket,
    sends: u32,
    due: Instant,
}

impl<T: Datagram> Sol<T> {
    /// Activate SOL; if it is active on another (stale) session, deactivate
    /// it and activate again once.
    pub async fn activate(mut session: Session<T>, cfg: SolConfig) -> Result<Self> {
        let suite = session.cipher_suite();
        let mut flags = 0x04 | 0x02; // serial alerts deferred; BMC does not assert CTS
        if suite.conf == ConfAlg::AesCbc128 {
            flags |= 0x80;
        }
        if suite.integrity != IntegrityAlg::None {
            flags |= 0x40;
        }
        let request = payload_selector([flags, 0, 0, 0]);
        let mut rsp = session
            .request_raw(cmd::NETFN_APP, cmd::ACTIVATE_PAYLOAD, &request)
            .await?;
        if rsp.completion == 0x80 {
            debug!("SOL already active: deactivating it first");
            session
                .request(
                    cmd::NETFN_APP,
                    cmd::DEACTIVATE_PAYLOAD,
                    &payload_selector([0; 4]),
                )
                .await?;
            rsp = session
                .request_raw(cmd::NETFN_APP, cmd::ACTIVATE_PAYLOAD, &request)
                .await?;
        }
        match rsp.completion {
            0 => {}
            0x80 => return Err(RmcpError::SolAlreadyActive),
            code => return Err(RmcpError::SolActivation { code }),
        }
        if rsp.data.len() < 12 {
            return Err(RmcpError::Malformed(format!(
                "Activate Payload answer of {} bytes",
                rsp.data.len()
            )));
        }
        let inbound = usize::from(u16::from_le_bytes([rsp.data[4], rsp.data[5]]));
        let max_chunk = inbound.saturating_sub(4).clamp(1, 255);
        let port = u16::from_le_bytes([rsp.data[8], rsp.data[9]]);
        if cfg.session_port.is_some_and(|p| p != port) {
            // ipmitool: "BMC requests SOL session on different port".
            let _ = session
                .request(
                    cmd::NETFN_APP,
                    cmd::DEACTIVATE_PAYLOAD,
                    &payload_selector([0; 4]),
                )
                .await;
            return Err(RmcpError::SolOtherPort { port });
        }
        debug!(inbound, port, "SOL activated");
        Ok(Self {
            session,
            cfg,
            max_chunk,
            pending: VecDeque::new(),
            pending_break: false,
            breaks: Arc::new(Notify::new()),
            in_flight: None,
            next_seq: 1,
            last_rx_seq: 0,
            keepalive_misses: 0,
        })
    }

    /// How to ask [`Self::run`] for a break.
    pub fn break_sender(&self) -> BreakSender {
        BreakSender(self.breaks.clone())
    }

    /// Move bytes both ways until `cancel` (then deactivate and close: Ok),
    /// the BMC deactivates SOL, stops answering, or `io` reaches its end
    /// (Ok, after deactivating). Keystrokes are read from `io`; the node's
    /// output is written to it in arrival order (a stream that fails to take
    /// it ends the session: [`RmcpError::Closed`]).
    pub async fn run<IO>(mut self, io: &mut IO, cancel: CancellationToken) -> Result<()>
    where
        IO: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let result = self.pump(io, &cancel).await;
        // The ends are boxed: a waiting session's task then holds only the
        // pump's state (one per always-on console).
        match &result {
            // The BMC is gone: nothing to tell it.
            Err(RmcpError::Timeout { .. }) => {}
            // The payload is already off; the session still closes.
            Err(RmcpError::SolDeactivated) => {
                if let Err(e) = Box::pin(self.session.close()).await {
                    debug!(error = %e, "Close Session failed");
                }
            }
            _ => Box::pin(self.shutdown()).await,
        }
        result
    }

    /// The event loop of [`Self::run`]; Ok when asked to stop.
    async fn pump<IO>(&mut self, io: &mut IO, cancel: &CancellationToken) -> Result<()>
    where
        IO: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let mut keepalive = Instant::now() + self.cfg.keepalive;
        loop {
            let retransmit = self.in_flight.as_ref().map(|f| f.due);
            let take_input =
                self.in_flight.is_none() && self.pending.is_empty() && !self.pending_break;
            // Biased, in this order: a break asked for before keystrokes
            // goes out before them, and a flood from the BMC never starves
            // the retransmit and keep-alive timers.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = self.breaks.notified() => self.pending_break = true,
                _ = sleep_until(retransmit.unwrap_or_else(Instant::now)), if retransmit.is_some() => {
                    self.resend().await?;
                }
                _ = sleep_until(keepalive) => {
                    self.keepalive().await?;
                    keepalive = Instant::now() + self.cfg.keepalive;
                }
                got = self.session.recv() => match got? {
                    Incoming::Sol(m) => self.on_packet(&m, io).await?,
                    Incoming::Response(_) => self.keepalive_misses = 0,
                },
                n = read_keys(io, &mut self.pending), if take_input => {
                    if n.map_err(|_| RmcpError::Closed)? == 0 {
                        return Ok(());
                    }
                }
            }
            if self.in_flight.is_none() {
                self.send_next().await?;
            }
        }
    }

    /// Get Device ID, unless too many went unanswered (the BMC is gone).
    async fn keepalive(&mut self) -> Result<()> {
        if self.keepalive_misses >= KEEPALIVE_MISSES {
            return Err(RmcpError::Timeout {
                what: "the SOL keep-alive (Get Device ID)",
                attempts: KEEPALIVE_MISSES,
                timeout: self.cfg.keepalive,
            });
        }
        self.keepalive_misses += 1;
        self.session
            .send_request(cmd::NETFN_APP, cmd::GET_DEVICE_ID, &[])
            .await
            .map(|_| ())
    }

    fn advance_seq(&mut self) -> u8 {
        let seq = self.next_seq;
        self.next_seq = seq % 15 + 1;
        seq
    }

    /// Start the next outbound packet, if anything waits.
    async fn send_next(&mut self) -> Result<()> {
        if self.pending.is_empty() && !self.pending_break {
            return Ok(());
        }
        let n = self.pending.len().min(self.max_chunk);
        let data: Vec<u8> = self.pending.drain(..n).collect();
        let ctl = if std::mem::take(&mut self.pending_break) {
            op::BREAK
        } else {
            0
        };
        let packet = SolPacket {
            seq: self.advance_seq(),
            ack: 0,
            accepted: 0,
            ctl,
            data,
        };
        self.session
            .send_payload(payload::SOL, &packet.encode())
            .await?;
        self.in_flight = Some(InFlight {
            packet,
            sends: 1,
            due: Instant::now() + self.cfg.retry_timeout,
        });
        Ok(())
    }

    async fn resend(&mut self) -> Result<()> {
        let Some(f) = self.in_flight.as_mut() else {
            return Ok(());
        };
        if f.sends > self.cfg.retries {
            return Err(RmcpError::Timeout {
                what: "a SOL data packet's ack",
                attempts: f.sends,
                timeout: self.cfg.retry_timeout,
            });
        }
        f.sends += 1;
        f.due = Instant::now() + self.cfg.retry_timeout;
        let bytes = f.packet.encode();
        self.session.send_payload(payload::SOL, &bytes).await
    }

    async fn on_packet<IO>(&mut self, m: &[u8], io: &mut IO) -> Result<()>
    where
        IO: AsyncWrite + Unpin + ?Sized,
    {
        let pkt = SolPacket::decode(m)?;
        self.keepalive_misses = 0;
        if pkt.ack != 0 {
            self.on_ack(&pkt);
        }
        if pkt.seq != 0 {
            if pkt.seq != self.last_rx_seq {
                self.last_rx_seq = pkt.seq;
                if !pkt.data.is_empty() {
                    io.write_all(&pkt.data)
                        .await
                        .map_err(|_| RmcpError::Closed)?;
                    io.flush().await.map_err(|_| RmcpError::Closed)?;
                }
            }
            // Ack every data packet, retransmits too (our ack may have been lost).
            let ack = SolPacket {
                seq: 0,
                ack: pkt.seq,
                accepted: pkt.data.len() as u8,
                ctl: 0,
                data: vec![],
            };
            self.session
                .send_payload(payload::SOL, &ack.encode())
                .await?;
        }
        if pkt.ctl & status::DEACTIVATING != 0 {
            return Err(RmcpError::SolDeactivated);
        }
        Ok(())
    }

    fn on_ack(&mut self, pkt: &SolPacket) {
        let Some(f) = self.in_flight.as_mut() else {
            return;
        };
        if pkt.ack != f.packet.seq {
            return;
        }
        if pkt.ctl & status::NACK != 0 {
            // Not accepted (e.g. transfer unavailable): send it again after the retry timeout.
            debug!(seq = pkt.ack, status = pkt.ctl, "SOL packet nacked");
            return;
        }
        let accepted = usize::from(pkt.accepted).min(f.packet.data.len());
        let rest = f.packet.data.split_off(accepted);
        self.in_flight = None;
        // A partial accept: the rest goes first, in a new packet.
        for b in rest.into_iter().rev() {
            self.pending.push_front(b);
        }
    }

    /// Deactivate the payload and close the session; failures are logged.
    async fn shutdown(&mut self) {
        if let Err(e) = self
            .session
            .request(
                cmd::NETFN_APP,
                cmd::DEACTIVATE_PAYLOAD,
                &payload_selector([0; 4]),
            )
            .await
        {
            warn!(error = %e, "SOL deactivate failed");
        }
        if let Err(e) = self.session.close().await {
            debug!(error = %e, "Close Session failed");
        }
    }
}

/// Read what keystrokes `io` has (at most [`KEYS_CHUNK`]) into `into`; 0 at
/// its end. The buffer lives on the stack of one poll only, and what a
/// poll read is queued in that poll (cancel-safe).
async fn read_keys<IO>(io: &mut IO, into: &mut VecDeque<u8>) -> std::io::Result<usize>
where
    IO: AsyncRead + Unpin + ?Sized,
{
    poll_fn(|cx| {
        // Uninitialised: no memset of the buffer on every poll.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); KEYS_CHUNK];
        let mut rb = ReadBuf::uninit(&mut buf);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut rb))?;
        into.extend(rb.filled());
        Poll::Ready(Ok(rb.filled().len()))
    })
    .await
}

#[cfg(test)]
#[path = "sol_tests.rs"]
mod tests;
