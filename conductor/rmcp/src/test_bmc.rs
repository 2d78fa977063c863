//! An in-memory BMC for unit tests: the BMC side of session set-up, a few
//! commands, payload activation and an echoing SOL port. It can drop
//! datagrams so tests see retransmission (under tokio's paused clock).
//! Correctness against a real BMC is the rig tests' job (ipmi_sim). Other
//! crates' unit tests get it with the `test-bmc` feature (console-svc's rmcp).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
}

pub struct TestBmc {
    pub ctl: Arc<Control>,
    pub _task: tokio::task::JoinHandle<()>,
}

struct State {
    suite: CipherSuite,
    password: Vec<u8>,
    console_sid: u32,
    bmc_sid: u32,
    rm: [u8; 16],
    role: u8,
    user: Vec<u8>,
    keys: Option<SessionKeys>,
    out_seq: u32,
    sol_seq: u8,
}

pub const GUID: [u8; 16] = [0x5a; 16];
pub const RC: [u8; 16] = [0x3c; 16];

/// A BMC with one user `admin` / `password`, at the other end of the returned transport.
pub fn spawn(suite: u8, password: &[u8]) -> (MemDatagram, TestBmc) {
    let (client, bmc) = mem_pair();
    let ctl = Arc::new(Control::default());
    let mut st = State {
        suite: CipherSuite::from_id(suite).unwrap(),
        password: password.to_vec(),
        console_sid: 0,
        bmc_sid: 0x0102_0304,
        rm: [0; 16],
        role: 0,
        user: vec![],
        keys: None,
        out_seq: 0,
        sol_seq: 0,
    };
    let c = ctl.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            let n = bmc.recv(&mut buf).await.unwrap();
            if c.silent.load(Ordering::SeqCst) {
                continue;
            }
            if c.drop_in.load(Ordering::SeqCst) > 0 {
                c.drop_in.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            for out in st.handle(&c, &buf[..n]) {
                bmc.send(&out).await.unwrap();
            }
        }
    });
    (client, TestBmc { ctl, _task: task })
}

impl State {
    fn hs(&self) -> Handshake {
        Handshake {
            suite: self.suite,
            console_sid: self.console_sid,
            bmc_sid: self.bmc_sid,
            rm: self.rm,
            rc: RC,
            guid: GUID,
            role: self.role,
            user: self.user.clone(),
            kuid: Zeroizing::new(self.password.clone()),
            kg: None,
        }
    }

    fn plain(&self, ptype: u8, m: Vec<u8>) -> Vec<Vec<u8>> {
        vec![wire::encode_v2(ptype, 0, 0, &m, None)]
    }

    fn session_out(&mut self, ptype: u8, m: &[u8]) -> Vec<u8> {
        self.out_seq += 1;
        let keys = self.keys.as_ref().unwrap();
        let p = Protection {
            suite: self.suite,
            k1: &keys.k1,
            k2: &keys.k2,
        };
        wire::encode_v2(ptype, self.console_sid, self.out_seq, m, Some(&p))
    }

    fn handle(&mut self, c: &Control, d: &[u8]) -> Vec<Vec<u8>> {
        let keys = self.keys.as_ref();
        let prot = keys.map(|k| Protection {
            suite: self.suite,
            k1: &k.k1,
            k2: &k.k2,
        });
        let Ok(pkt) = wire::decode(d, prot.as_ref()) else {
            return vec![];
        };
        let m = pkt.payload;
        match pkt.payload_type {
            None => {
                let (_, _, seq, _) = wire::decode_request(&m).unwrap();
                let r =
                    wire::encode_response(0x06, 0x38, seq, 0, &[1, 0x97, 0x04, 0x03, 0, 0, 0, 0]);
                vec![wire::encode_v15(&r)]
            }
            Some(payload::OPEN_SESSION_REQ) => {
                self.console_sid = u32::from_le_bytes(m[4..8].try_into().unwrap());
                let mut r = vec![m[0], 0, 4, 0];
                r.extend_from_slice(&m[4..8]);
                r.extend_from_slice(&self.bmc_sid.to_le_bytes());
                r.extend_from_slice(&m[8..32]);
                self.plain(payload::OPEN_SESSION_RSP, r)
            }
            Some(payload::RAKP1) => {
                self.rm = m[8..24].try_into().unwrap();
                self.role = m[24];
                self.user = m[28..28 + usize::from(m[27])].to_vec();
                let status = if self.user == b"admin" { 0 } else { 0x0d };
                let mut r = vec![m[0], status, 0, 0];
                r.extend_from_slice(&self.console_sid.to_le_bytes());
                r.extend_from_slice(&RC);
                r.extend_from_slice(&GUID);
                r.extend_from_slice(&self.hs().rakp2_code());
                self.plain(payload::RAKP2, r)
            }
            Some(payload::RAKP3) => {
                let hs = self.hs();
                let ok = m[1] == 0 && m[8..] == hs.rakp3_code()[..];
                let keys = hs.keys();
                let mut r = vec![m[0], if ok { 0 } else { 0x0f }, 0, 0];
                r.extend_from_slice(&self.console_sid.to_le_bytes());
                r.extend_from_slice(&hs.rakp4_icv(&keys));
                if ok {
                    self.keys = Some(keys);
                }
                self.plain(payload::RAKP4, r)
            }
            Some(payload::IPMI) => self.command(c, &m),
            Some(payload::SOL) => self.sol(c, &m),
            _ => vec![],
        }
    }

    fn command(&mut self, c: &Control, m: &[u8]) -> Vec<Vec<u8>> {
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
            (0x06, 0x3c) => (0, vec![]),
            (0x06, 0x48) => {
                let mut active = c.sol_active.lock().unwrap();
                if *active {
                    (0x80, vec![])
                } else {
                    *active = true;
                    (
                        0,
                        vec![0, 0, 0, 0, 0xc8, 0, 0xc8, 0, 0x6f, 0x02, 0xff, 0xff],
                    )
                }
            }
            (0x06, 0x49) => {
                *c.sol_active.lock().unwrap() = false;
                (0, vec![])
            }
            _ => (0xc1, vec![]),
        };
        let r = wire::encode_response(netfn, cmd, seq, code, &rsp);
        vec![self.session_out(payload::IPMI, &r)]
    }

    /// SOL: ack console data and echo it back as node output.
    fn sol(&mut self, c: &Control, m: &[u8]) -> Vec<Vec<u8>> {
        let (seq, _ack, _accepted, op, data) = (m[0], m[1], m[2], m[3], &m[4..]);
        c.sol_ops.lock().unwrap().push(op);
        if seq == 0 {
            return vec![];
        }
        if c.deactivating.swap(false, Ordering::SeqCst) {
            *c.sol_active.lock().unwrap() = false;
            return vec![self.session_out(payload::SOL, &[0, seq, 0, 0x10])];
        }
        if c.nack_next.load(Ordering::SeqCst) > 0 {
            c.nack_next.fetch_sub(1, Ordering::SeqCst);
            return vec![self.session_out(payload::SOL, &[0, seq, 0, 0x60])];
        }
        let max = c.accept_max.load(Ordering::SeqCst);
        let data = if max > 0 && data.len() > max {
            &data[..max]
        } else {
            data
        };
        c.node_rx.lock().unwrap().extend_from_slice(data);
        let ack = [0, seq, data.len() as u8, 0];
        let mut out = vec![self.session_out(payload::SOL, &ack)];
        if !data.is_empty() {
            self.sol_seq = self.sol_seq % 15 + 1;
            let mut echo = vec![self.sol_seq, 0, 0, 0];
            echo.extend_from_slice(data);
            let pkt = self.session_out(payload::SOL, &echo);
            if c.drop_sol_out.load(Ordering::SeqCst) > 0 {
                c.drop_sol_out.fetch_sub(1, Ordering::SeqCst);
            } else {
                if c.duplicate_out.load(Ordering::SeqCst) > 0 {
                    c.duplicate_out.fetch_sub(1, Ordering::SeqCst);
                    let again = self.session_out(payload::SOL, &echo);
                    out.push(pkt);
                    out.push(again);
                    return out;
                }
                out.push(pkt);
            }
        }
        out
    }
}
