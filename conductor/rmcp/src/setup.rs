//! Session set-up over a [`Datagram`], before any key exists: Get Channel
//! Authentication Capabilities (IPMI v1.5 framing), Open Session, RAKP 1/2
//! (checking the BMC's code: a wrong password shows here) and RAKP 3/4
//! (checking the BMC's integrity check value). Each step is retransmitted on
//! timeout. [`crate::session::Session::open`] calls [`authenticate`].

use crate::crypto::{random, CipherSuite, SessionKeys};
use crate::error::{RakpStatus, Result, RmcpError};
use crate::handshake::{self, Handshake, OpenSessionResponse, NAME_ONLY_LOOKUP};
use crate::session::{cmd, SessionConfig};
use crate::transport::Datagram;
use crate::wire::{self, payload, Packet};

/// What an authenticated session starts from.
pub(crate) struct Established {
    pub(crate) suite: CipherSuite,
    pub(crate) console_sid: u32,
    pub(crate) bmc_sid: u32,
    pub(crate) keys: SessionKeys,
}

/// Run the whole set-up for `cfg`.
pub(crate) async fn authenticate<T: Datagram>(
    transport: &T,
    cfg: &SessionConfig,
) -> Result<Established> {
    let suite = CipherSuite::from_id(cfg.cipher_suite)?;
    if cfg.username.len() > 16 {
        return Err(RmcpError::Invalid("user names are at most 16 bytes".into()));
    }
    let setup = Setup {
        transport,
        cfg,
        suite,
    };
    setup.channel_auth_caps().await?;
    let console_sid = loop {
        let sid = u32::from_le_bytes(random::<4>());
        if sid != 0 {
            break sid;
        }
    };
    let open = setup.open_session(console_sid).await?;
    let hs = setup.rakp12(console_sid, open.bmc_sid).await?;
    let keys = setup.rakp34(&hs).await?;
    Ok(Established {
        suite,
        console_sid,
        bmc_sid: open.bmc_sid,
        keys,
    })
}

/// Session set-up exchanges: unprotected, retransmitted with a new tag.
struct Setup<'a, T: Datagram> {
    transport: &'a T,
    cfg: &'a SessionConfig,
    suite: CipherSuite,
}

impl<T: Datagram> Setup<'_, T> {
    /// The channel must offer IPMI v2.0 (RMCP+).
    async fn channel_auth_caps(&self) -> Result<()> {
        let privilege = self.cfg.privilege as u8;
        let caps = self
            .exchange(
                "Get Channel Authentication Capabilities",
                |_| {
                    let m = wire::encode_request(
                        cmd::NETFN_APP,
                        cmd::GET_CHANNEL_AUTH_CAPS,
                        0,
                        &[0x8e, privilege],
                    );
                    wire::encode_v15(&m)
                },
                |p| (p.payload_type.is_none()).then(|| wire::decode_response(&p.payload)),
            )
            .await??;
        if caps.completion != 0 {
            return Err(RmcpError::Completion {
                netfn: cmd::NETFN_APP,
                cmd: cmd::GET_CHANNEL_AUTH_CAPS,
                code: caps.completion,
            });
        }
        if caps.data.len() < 4 || caps.data[1] & 0x80 == 0 || caps.data[3] & 0x02 == 0 {
            return Err(RmcpError::NoRmcpPlus);
        }
        Ok(())
    }

    async fn open_session(&self, console_sid: u32) -> Result<OpenSessionResponse> {
        let suite = self.suite;
        let open = self
            .exchange(
                "Open Session",
                |tag| {
                    let m = handshake::open_session_request(tag, 0, console_sid, &suite);
                    wire::encode_v2(payload::OPEN_SESSION_REQ, 0, 0, &m, None)
                },
                |p| {
                    (p.payload_type == Some(payload::OPEN_SESSION_RSP))
                        .then(|| handshake::parse_open_session_response(&p.payload, &suite))
                },
            )
            .await??;
        if open.console_sid != console_sid {
            return Err(RmcpError::Malformed(
                "Open Session Response for another session".into(),
            ));
        }
        Ok(open)
    }

    /// RAKP 1 out, RAKP 2 in and checked against the password.
    async fn rakp12(&self, console_sid: u32, bmc_sid: u32) -> Result<Handshake> {
        let rm = random::<16>();
        let role = NAME_ONLY_LOOKUP | self.cfg.privilege as u8;
        let user = self.cfg.username.as_bytes();
        let rakp2 = self
            .exchange(
                "RAKP 1",
                |tag| {
                    let m = handshake::rakp1(tag, bmc_sid, &rm, role, user);
                    wire::encode_v2(payload::RAKP1, 0, 0, &m, None)
                },
                |p| {
                    (p.payload_type == Some(payload::RAKP2))
                        .then(|| handshake::parse_rakp2(&p.payload))
                },
            )
            .await??;
        let hs = Handshake {
            suite: self.suite,
            console_sid,
            bmc_sid,
            rm,
            rc: rakp2.rc,
            guid: rakp2.guid,
            role,
            user: user.to_vec(),
            kuid: self.cfg.password.clone(),
            kg: self.cfg.kg.clone(),
        };
        if let Err(e) = hs.verify_rakp2(&rakp2.auth_code) {
            // Tell the BMC to drop the half-open session; no answer expected.
            let m = handshake::rakp3(0, RakpStatus::INVALID_INTEGRITY_CHECK.0, bmc_sid, &[]);
            let _ = self
                .transport
                .send(&wire::encode_v2(payload::RAKP3, 0, 0, &m, None))
                .await;
            return Err(e);
        }
        Ok(hs)
    }

    /// RAKP 3 out, RAKP 4 in and its integrity check value verified.
    async fn rakp34(&self, hs: &Handshake) -> Result<SessionKeys> {
        let keys = hs.keys();
        let code = hs.rakp3_code();
        let rakp4 = self
            .exchange(
                "RAKP 3",
                |tag| {
                    let m = handshake::rakp3(tag, 0, hs.bmc_sid, &code);
                    wire::encode_v2(payload::RAKP3, 0, 0, &m, None)
                },
                |p| {
                    (p.payload_type == Some(payload::RAKP4))
                        .then(|| handshake::parse_rakp4(&p.payload))
                },
            )
            .await??;
        if rakp4.console_sid != hs.console_sid || rakp4.icv != hs.rakp4_icv(&keys) {
            return Err(RmcpError::BadRakp4);
        }
        Ok(keys)
    }

    /// Send `make(attempt)` until `pick` recognises an answer.
    async fn exchange<R>(
        &self,
        what: &'static str,
        make: impl Fn(u8) -> Vec<u8>,
        pick: impl Fn(&Packet) -> Option<R>,
    ) -> Result<R> {
        for attempt in 0..=self.cfg.retries {
            self.transport.send(&make(attempt as u8)).await?;
            let deadline = tokio::time::Instant::now() + self.cfg.timeout;
            while let Ok(got) = tokio::time::timeout_at(deadline, self.transport.recv()).await {
                let Ok(pkt) = wire::decode(&got?, None) else {
                    continue;
                };
                // Set-up answers echo the tag we sent; a late answer to an
                // earlier attempt is as good (same session parameters).
                if let Some(r) = pick(&pkt) {
                    return Ok(r);
                }
            }
        }
        Err(RmcpError::Timeout {
            what,
            attempts: self.cfg.retries + 1,
            timeout: self.cfg.timeout,
        })
    }
}
