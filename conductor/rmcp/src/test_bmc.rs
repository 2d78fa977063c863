//! An in-memory BMC for unit tests: the BMC side of session set-up, a few
//! commands, payload activation and an echoing SOL port. It can drop
//! datagrams so tests see retransmission (under tokio's paused clock).
//! Correctness against a real BMC is the rig tests' job (ipmi_sim). Other
//! crates' unit tests get it with the `test-bmc` feature (console-svc's rmcp).
//!
//! [`serve`] runs the same BMC over any [`Datagram`] and can print node
//! output at a steady rate: the tests crate's BMC farm (`benches/rmcp`)
//! serves many of them on UDP for load tests only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::crypto::{CipherSuite, SessionKeys};
use crate::handshake::Handshake;
use crate::transport::{mem_pair, Datagram, MemDatagram, MAX_DATAGRAM};
use crate::wire::{self, payload, Protection};

/// What a test can see and steer.
#[derive(Default)]
pub struct Control {
    /// Drop this many datagrams from the console before handling any.
    pub drop_in: AtomicUsize,
    /// Drop this many outgoing SOL data packets (the BMC's own output).
    pub drop_sol_out: AtomicUsize,
    /// Requests seen: (netfn, cmd).
    pub requests: Mutex<Vec<(u8, u8)>>,
    /// SOL operation bytes seen (break, nack...).
    pub sol_ops: Mutex<Vec<u8>>,
    /// Bytes the "node" received over SOL.
    pub node_rx: Mutex<Vec<u8>>,
    pub sol_active: Mutex<bool>,
    /// NACK this many console data packets (transfer unavailable).
    pub nack_next: AtomicUsize,
    /// Accept at most this many characters of a packet (0: all).
    pub accept_max: AtomicUsize,
    /// Send this many of the BMC's own output packets twice (a retransmit
    /// after a lost ack).
    pub duplicate_out: AtomicUsize,
    /// Answer the next console data packet with "SOL deactivating".
    pub deactivating: std::sync::atomic::AtomicBool,
    /// Stop answering Get Device ID (keep-alive) and everything else.
    pub silent: std::sync::atomic::AtomicBool,
    /// Bytes of steady node output sent (see [`Output`]).
    pub output_bytes: AtomicU64,
    /// Steady output is printed only while this is true (set it with
    /// `send_replace`); a BMC with it off has no timer running.
    pub output_on: tokio::sync::watch::Sender<bool>,
}

/// Node output the BMC prints on its own while SOL is active and
/// [`Control::output_on`]: `bytes` bytes every `every` (a load, not a
/// protocol test: unacked packets are not sent again).
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub every: Duration,
    pub bytes: usize,
}

/// One BMC for [`serve`].
#[derive(Clone, Debug)]
pub struct BmcConfig {
    pub suite: u8,
    pub password: Vec<u8>,
    /// The UDP port Activate Payload names for SOL (the session's own).
    pub sol_port: u16,
    pub output: Option<Output>,
}

pub struct TestBmc {
    pub ctl: Arc<Control>,
    pub _task: tokio::task::JoinHandle<()>,
}

/// One session (set up or being set up), answered at `peer`.
struct Sess<P> {
    peer: P,
    console_sid: u32,
    rm: [u8; 16],
    role: u8,
    user: Vec<u8>,
    keys: Option<SessionKeys>,
    out_seq: u32,
}

/// The BMC: its sessions by BMC session id (a real BMC holds several, e.g.
/// an always-on SOL session and an ipmitool probe beside it).
struct State<P> {
    suite: CipherSuite,
    password: Vec<u8>,
    sol_port: u16,
    sessions: HashMap<u32, Sess<P>>,
    next_sid: u32,
    /// The session SOL is active on.
    sol_owner: Option<u32>,
    sol_seq: u8,
}

pub const GUID: [u8; 16] = [0x5a; 16];
pub const RC: [u8; 16] = [0x3c; 16];
/// Sessions kept at most (the oldest goes first).
const MAX_SESSIONS: usize = 8;

/// A BMC's datagram socket, told who sent each datagram.
pub trait BmcSocket: Send + Sync + 'static {
    type Peer: Copy + Send + Sync + 'static;
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl std::future::Future<Output = std::io::Result<(usize, Self::Peer)>> + Send;
    fn send_to(
        &self,
        datagram: &[u8],
        peer: Self::Peer,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

/// The in-memory end: one peer.
impl BmcSocket for MemDatagram {
    type Peer = ();
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, ())> {
        let d = self.recv().await?;
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok((n, ()))
    }
    async fn send_to(&self, datagram: &[u8], _: ()) -> std::io::Result<()> {
        self.send(datagram).await
    }
}

impl BmcSocket for tokio::net::UdpSocket {
    type Peer = std::net::SocketAddr;
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, Self::Peer)> {
        tokio::net::UdpSocket::recv_from(self, buf).await
    }
    async fn send_to(&self, datagram: &[u8], peer: Self::Peer) -> std::io::Result<()> {
        tokio::net::UdpSocket::send_to(self, datagram, peer)
            .await
            .map(|_| ())
    }
}

/// A BMC with one user `admin` / `password`, at the other end of the returned transport.
pub fn spawn(suite: u8, password: &[u8]) -> (MemDatagram, TestBmc) {
    let (client, bmc) = mem_pair();
    let ctl = Arc::new(Control::default());
    let cfg = BmcConfig {
        suite,
        password: password.to_vec(),
        sol_port: 623,
        output: None,
    };
    let task = tokio::spawn(serve(bmc, cfg, ctl.clone()));
    (client, TestBmc { ctl, _task: task })
}

/// A test BMC on its own loopback UDP socket (SOL on that same port).
pub async fn spawn_udp(
    suite: u8,
    password: &[u8],
    output: Option<Output>,
) -> std::io::Result<(std::net::SocketAddr, TestBmc)> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let addr = sock.local_addr()?;
    let ctl = Arc::new(Control::default());
    let cfg = BmcConfig {
        suite,
        password: password.to_vec(),
        sol_port: addr.port(),
        output,
    };
    let task = tokio::spawn(serve(sock, cfg, ctl.clone()));
    Ok((addr, TestBmc { ctl, _task: task }))
}

/// Answer `bmc`'s datagrams, each at its sender (and print
/// [`BmcConfig::output`] to the SOL session), until its socket fails.
pub async fn serve<T: BmcSocket>(bmc: T, cfg: BmcConfig, c: Arc<Control>) {
    let mut st = State {
        suite: CipherSuite::from_id(cfg.suite).unwrap(),
        password: cfg.password,
        sol_port: cfg.sol_port,
        sessions: HashMap::new(),
        next_sid: 0x0102_0304,
        sol_owner: None,
        sol_seq: 0,
    };
    let bytes = cfg.output.map_or(0, |o| o.bytes);
    let mut tick = cfg.output.map(|o| {
        let mut t = tokio::time::interval(o.every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut on = c.output_on.subscribe();
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        let out = tokio::select! {
            got = bmc.recv_from(&mut buf) => {
                let Ok((n, peer)) = got else { return };
                if c.silent.load(Ordering::SeqCst) {
                    continue;
                }
                if c.drop_in.load(Ordering::SeqCst) > 0 {
                    c.drop_in.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                st.handle(&c, peer, &buf[..n])
            }
            _ = async {
                let _ = on.wait_for(|on| *on).await;
                tick.as_mut().unwrap().tick().await
            }, if tick.is_some() => {
                st.steady_output(&c, bytes)
            }
        };
        for (peer, d) in out {
            if bmc.send_to(&d, peer).await.is_err() {
                return;
            }
        }
    }
}

impl<P: Copy> Sess<P> {
    fn new(peer: P, console_sid: u32) -> Self {
        Self {
            peer,
            console_sid,
            rm: [0; 16],
            role: 0,
            user: vec![],
            keys: None,
            out_seq: 0,
        }
    }
}

type Out<P> = Vec<(P, Vec<u8>)>;

impl<P: Copy> State<P> {
    fn hs(&self, bmc_sid: u32, s: &Sess<P>) -> Handshake {
        Handshake {
            suite: self.suite,
            console_sid: s.console_sid,
            bmc_sid,
            rm: s.rm,
            rc: RC,
            guid: GUID,
            role: s.role,
            user: s.user.clone(),
            kuid: Zeroizing::new(self.password.clone()),
            kg: None,
        }
    }

    fn plain(peer: P, ptype: u8, m: Vec<u8>) -> Out<P> {
        vec![(peer, wire::encode_v2(ptype, 0, 0, &m, None))]
    }

    fn session_out(&mut self, bmc_sid: u32, ptype: u8, m: &[u8]) -> Option<(P, Vec<u8>)> {
        let suite = self.suite;
        let s = self.sessions.get_mut(&bmc_sid)?;
        s.out_seq += 1;
        let keys = s.keys.as_ref()?;
        let p = Protection {
            suite,
            k1: &keys.k1,
            k2: &keys.k2,
        };
        Some((
            s.peer,
            wire::encode_v2(ptype, s.console_sid, s.out_seq, m, Some(&p)),
        ))
    }

    /// The BMC session id a datagram names (RMCP+ header), 0 outside one.
    fn session_of(d: &[u8]) -> u32 {
        match d.get(4..10) {
            Some(h) if h[0] == 0x06 => u32::from_le_bytes([h[2], h[3], h[4], h[5]]),
            _ => 0,
        }
    }

    fn handle(&mut self, c: &Control, peer: P, d: &[u8]) -> Out<P> {
        let sid = Self::session_of(d);
        let keys = self.sessions.get(&sid).and_then(|s| s.keys.as_ref());
        let prot = keys.map(|k| Protection {
            suite: self.suite,
            k1: &k.k1,
            k2: &k.k2,
        });
        let Ok(pkt) = wire::decode(d, prot.as_ref()) else {
            return vec![];
        };
        let m = pkt.payload;
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.peer = peer;
        }
        match pkt.payload_type {
            None => {
                let (_, _, seq, _) = wire::decode_request(&m).unwrap();
                let r =
                    wire::encode_response(0x06, 0x38, seq, 0, &[1, 0x97, 0x04, 0x03, 0, 0, 0, 0]);
                vec![(peer, wire::encode_v15(&r))]
            }
            Some(payload::OPEN_SESSION_REQ) => {
                let console_sid = u32::from_le_bytes(m[4..8].try_into().unwrap());
                let bmc_sid = self.next_sid;
                self.next_sid = self.next_sid.wrapping_add(1).max(1);
                if self.sessions.len() >= MAX_SESSIONS {
                    let oldest = *self.sessions.keys().min().unwrap();
                    self.sessions.remove(&oldest);
                }
                self.sessions.insert(bmc_sid, Sess::new(peer, console_sid));
                let mut r = vec![m[0], 0, 4, 0];
                r.extend_from_slice(&m[4..8]);
                r.extend_from_slice(&bmc_sid.to_le_bytes());
                r.extend_from_slice(&m[8..32]);
                Self::plain(peer, payload::OPEN_SESSION_RSP, r)
            }
            Some(payload::RAKP1) => {
                let bmc_sid = u32::from_le_bytes(m[4..8].try_into().unwrap());
                let Some(s) = self.sessions.get_mut(&bmc_sid) else {
                    return vec![];
                };
                s.peer = peer;
                s.rm = m[8..24].try_into().unwrap();
                s.role = m[24];
                s.user = m[28..28 + usize::from(m[27])].to_vec();
                let status = if s.user == b"admin" { 0 } else { 0x0d };
                let mut r = vec![m[0], status, 0, 0];
                r.extend_from_slice(&s.console_sid.to_le_bytes());
                r.extend_from_slice(&RC);
                r.extend_from_slice(&GUID);
                let s = &self.sessions[&bmc_sid];
                r.extend_from_slice(&self.hs(bmc_sid, s).rakp2_code());
                Self::plain(peer, payload::RAKP2, r)
            }
            Some(payload::RAKP3) => {
                let bmc_sid = u32::from_le_bytes(m[4..8].try_into().unwrap());
                let Some(s) = self.sessions.get(&bmc_sid) else {
                    return vec![];
                };
                let hs = self.hs(bmc_sid, s);
                let ok = m[1] == 0 && m[8..] == hs.rakp3_code()[..];
                let keys = hs.keys();
                let mut r = vec![m[0], if ok { 0 } else { 0x0f }, 0, 0];
                r.extend_from_slice(&s.console_sid.to_le_bytes());
                r.extend_from_slice(&hs.rakp4_icv(&keys));
                if ok {
                    self.sessions.get_mut(&bmc_sid).unwrap().keys = Some(keys);
                } else {
                    self.sessions.remove(&bmc_sid);
                }
                Self::plain(peer, payload::RAKP4, r)
            }
            Some(payload::IPMI) if keys_of(&self.sessions, sid) => self.command(c, sid, &m),
            Some(payload::SOL) if keys_of(&self.sessions, sid) => self.sol(c, sid, &m),
            _ => vec![],
        }
    }

    fn command(&mut self, c: &Control, sid: u32, m: &[u8]) -> Out<P> {
        let (netfn, cmd, seq, data) = wire::decode_request(m).unwrap();
        c.requests.lock().unwrap().push((netfn, cmd));
        let (code, rsp): (u8, Vec<u8>) = match (netfn, cmd) {
            (0x06, 0x3b) => (0, vec![data[0]]),
            (0x06, 0x01) => (
                0,
                vec![
                    0x20, 0x81, 0x02, 0x00, 0x02, 0xbf, 0x00, 0x00, 0x00, 0x00, 0x00,
                ],
            ),
            (0x00, 0x01) => (0, vec![0x01, 0x00, 0x00, 0x00]),
            (0x06, 0x3c) => {
                let r = wire::encode_response(netfn, cmd, seq, 0, &[]);
                let out = self.session_out(sid, payload::IPMI, &r);
                self.sessions.remove(&sid);
                if self.sol_owner == Some(sid) {
                    // The session's payload goes with it.
                    self.sol_owner = None;
                    *c.sol_active.lock().unwrap() = false;
                }
                return out.into_iter().collect();
            }
            (0x06, 0x48) => {
                let mut active = c.sol_active.lock().unwrap();
                if *active {
                    (0x80, vec![])
                } else {
                    *active = true;
                    self.sol_owner = Some(sid);
                    let [lo, hi] = self.sol_port.to_le_bytes();
                    (0, vec![0, 0, 0, 0, 0xc8, 0, 0xc8, 0, lo, hi, 0xff, 0xff])
                }
            }
            (0x06, 0x49) => {
                *c.sol_active.lock().unwrap() = false;
                self.sol_owner = None;
                (0, vec![])
            }
            _ => (0xc1, vec![]),
        };
        let r = wire::encode_response(netfn, cmd, seq, code, &rsp);
        self.session_out(sid, payload::IPMI, &r)
            .into_iter()
            .collect()
    }

    /// One packet of steady node output, while SOL is active.
    fn steady_output(&mut self, c: &Control, bytes: usize) -> Out<P> {
        let Some(owner) = self.sol_owner else {
            return vec![];
        };
        self.sol_seq = self.sol_seq % 15 + 1;
        let mut m = vec![self.sol_seq, 0, 0, 0];
        m.extend((0..bytes).map(|i| b"farm output 0123456789\r\n"[i % 24]));
        let out: Out<P> = self
            .session_out(owner, payload::SOL, &m)
            .into_iter()
            .collect();
        if !out.is_empty() {
            c.output_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        out
    }

    /// SOL: ack console data and echo it back as node output.
    fn sol(&mut self, c: &Control, sid: u32, m: &[u8]) -> Out<P> {
        let (seq, _ack, _accepted, op, data) = (m[0], m[1], m[2], m[3], &m[4..]);
        c.sol_ops.lock().unwrap().push(op);
        if seq == 0 {
            return vec![];
        }
        if c.deactivating.swap(false, Ordering::SeqCst) {
            *c.sol_active.lock().unwrap() = false;
            return self
                .session_out(sid, payload::SOL, &[0, seq, 0, 0x10])
                .into_iter()
                .collect();
        }
        if c.nack_next.load(Ordering::SeqCst) > 0 {
            c.nack_next.fetch_sub(1, Ordering::SeqCst);
            return self
                .session_out(sid, payload::SOL, &[0, seq, 0, 0x60])
                .into_iter()
                .collect();
        }
        let max = c.accept_max.load(Ordering::SeqCst);
        let data = if max > 0 && data.len() > max {
            &data[..max]
        } else {
            data
        };
        c.node_rx.lock().unwrap().extend_from_slice(data);
        let ack = [0, seq, data.len() as u8, 0];
        let mut out: Out<P> = self
            .session_out(sid, payload::SOL, &ack)
            .into_iter()
            .collect();
        if !data.is_empty() {
            self.sol_seq = self.sol_seq % 15 + 1;
            let mut echo = vec![self.sol_seq, 0, 0, 0];
            echo.extend_from_slice(data);
            let pkt = self.session_out(sid, payload::SOL, &echo);
            if c.drop_sol_out.load(Ordering::SeqCst) > 0 {
                c.drop_sol_out.fetch_sub(1, Ordering::SeqCst);
            } else {
                if c.duplicate_out.load(Ordering::SeqCst) > 0 {
                    c.duplicate_out.fetch_sub(1, Ordering::SeqCst);
                    let again = self.session_out(sid, payload::SOL, &echo);
                    out.extend(pkt);
                    out.extend(again);
                    return out;
                }
                out.extend(pkt);
            }
        }
        out
    }
}

fn keys_of<P>(sessions: &HashMap<u32, Sess<P>>, sid: u32) -> bool {
    sessions.get(&sid).is_some_and(|s| s.keys.is_some())
}

#[cfg(test)]
#[path = "test_bmc_tests.rs"]
mod tests;
