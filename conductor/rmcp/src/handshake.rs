//! RMCP+ session set-up messages (IPMI v2.0 §13.17-13.31): Open Session
//! Request/Response and RAKP 1-4, with the key-exchange authentication codes
//! and the session key derivation. Sans-IO: `session::Session::open` sends
//! what these build; the test BMC uses the same layouts from the other side.

use std::str::FromStr;

use zeroize::Zeroizing;

use crate::crypto::{AuthAlg, CipherSuite, SessionKeys};
use crate::error::{RakpStatus, Result, RmcpError};

/// A session privilege level, named as `ipmitool -L` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Privilege {
    Callback = 1,
    User = 2,
    Operator = 3,
    Administrator = 4,
    Oem = 5,
}

impl FromStr for Privilege {
    type Err = RmcpError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "CALLBACK" => Ok(Self::Callback),
            "USER" => Ok(Self::User),
            "OPERATOR" => Ok(Self::Operator),
            "ADMINISTRATOR" => Ok(Self::Administrator),
            "OEM" => Ok(Self::Oem),
            _ => Err(RmcpError::Invalid(format!(
                "privilege level {s:?}: expected CALLBACK, USER, OPERATOR, ADMINISTRATOR or OEM"
            ))),
        }
    }
}

/// RAKP 1's "name-only lookup" bit, which ipmitool sets by default.
pub const NAME_ONLY_LOOKUP: u8 = 0x10;

fn algorithm_payloads(suite: &CipherSuite) -> [u8; 24] {
    let mut p = [0u8; 24];
    for (i, alg) in [suite.auth as u8, suite.integrity as u8, suite.conf as u8]
        .into_iter()
        .enumerate()
    {
        p[i * 8..i * 8 + 8].copy_from_slice(&[i as u8, 0, 0, 8, alg, 0, 0, 0]);
    }
    p
}

/// Open Session Request; privilege 0 asks for the highest the user may have.
pub fn open_session_request(
    tag: u8,
    max_privilege: u8,
    console_sid: u32,
    suite: &CipherSuite,
) -> Vec<u8> {
    let mut m = vec![tag, max_privilege, 0, 0];
    m.extend_from_slice(&console_sid.to_le_bytes());
    m.extend_from_slice(&algorithm_payloads(suite));
    m
}

/// The BMC's answer to Open Session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionResponse {
    pub tag: u8,
    pub max_privilege: u8,
    pub console_sid: u32,
    pub bmc_sid: u32,
}

fn status(step: &'static str, code: u8) -> Result<()> {
    match RakpStatus(code) {
        RakpStatus::OK => Ok(()),
        status => Err(RmcpError::Refused { step, status }),
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn short(what: &str, len: usize) -> RmcpError {
    RmcpError::Malformed(format!("{what} of {len} bytes is too short"))
}

pub fn parse_open_session_response(m: &[u8], suite: &CipherSuite) -> Result<OpenSessionResponse> {
    if m.len() < 2 {
        return Err(short("Open Session Response", m.len()));
    }
    status("Open Session", m[1])?;
    if m.len() < 36 {
        return Err(short("Open Session Response", m.len()));
    }
    if m[12..36] != algorithm_payloads(suite) {
        return Err(RmcpError::Malformed(format!(
            "Open Session Response chose other algorithms than cipher suite {} asked for",
            suite.id
        )));
    }
    Ok(OpenSessionResponse {
        tag: m[0],
        max_privilege: m[2] & 0x0f,
        console_sid: le32(&m[4..8]),
        bmc_sid: le32(&m[8..12]),
    })
}

/// What both sides know once RAKP 2 is in: the inputs of every later code.
pub struct Handshake {
    pub suite: CipherSuite,
    pub console_sid: u32,
    pub bmc_sid: u32,
    /// Rm, the remote console's random number.
    pub rm: [u8; 16],
    /// Rc, the managed system's random number (from RAKP 2).
    pub rc: [u8; 16],
    pub guid: [u8; 16],
    /// RAKP 1's requested role byte (privilege | lookup bit), as sent.
    pub role: u8,
    pub user: Vec<u8>,
    /// Kuid: the user's password.
    pub kuid: Zeroizing<Vec<u8>>,
    /// Kg: the BMC key; `None` uses Kuid (ipmitool without -k).
    pub kg: Option<Zeroizing<Vec<u8>>>,
}

pub fn rakp1(tag: u8, bmc_sid: u32, rm: &[u8; 16], role: u8, user: &[u8]) -> Vec<u8> {
    let mut m = vec![tag, 0, 0, 0];
    m.extend_from_slice(&bmc_sid.to_le_bytes());
    m.extend_from_slice(rm);
    m.extend_from_slice(&[role, 0, 0, user.len() as u8]);
    m.extend_from_slice(user);
    m
}

/// RAKP 2's fields.
#[derive(Debug, Clone)]
pub struct Rakp2 {
    pub tag: u8,
    pub console_sid: u32,
    pub rc: [u8; 16],
    pub guid: [u8; 16],
    pub auth_code: Vec<u8>,
}

pub fn parse_rakp2(m: &[u8]) -> Result<Rakp2> {
    if m.len() < 2 {
        return Err(short("RAKP 2", m.len()));
    }
    status("RAKP 1", m[1])?;
    if m.len() < 40 {
        return Err(short("RAKP 2", m.len()));
    }
    Ok(Rakp2 {
        tag: m[0],
        console_sid: le32(&m[4..8]),
        rc: m[8..24].try_into().unwrap_or_default(),
        guid: m[24..40].try_into().unwrap_or_default(),
        auth_code: m[40..].to_vec(),
    })
}

impl Handshake {
    fn ulen(&self) -> [u8; 2] {
        [self.role, self.user.len() as u8]
    }

    /// RAKP 2's key exchange code: HMAC(Kuid, SIDm SIDc Rm Rc GUIDc ROLEm ULENm UNAMEm).
    pub fn rakp2_code(&self) -> Vec<u8> {
        let (sidm, sidc) = (self.console_sid.to_le_bytes(), self.bmc_sid.to_le_bytes());
        self.suite.auth.mac(
            &self.kuid,
            &[
                &sidm,
                &sidc,
                &self.rm,
                &self.rc,
                &self.guid,
                &self.ulen(),
                &self.user,
            ],
        )
    }

    /// RAKP 3's key exchange code: HMAC(Kuid, Rc SIDm ROLEm ULENm UNAMEm).
    pub fn rakp3_code(&self) -> Vec<u8> {
        let sidm = self.console_sid.to_le_bytes();
        self.suite
            .auth
            .mac(&self.kuid, &[&self.rc, &sidm, &self.ulen(), &self.user])
    }

    /// SIK = HMAC(Kg, Rm Rc ROLEm ULENm UNAMEm), then K1 and K2.
    pub fn keys(&self) -> SessionKeys {
        let kg: &[u8] = self.kg.as_deref().map_or(&self.kuid, |k| k);
        let sik = self
            .suite
            .auth
            .mac(kg, &[&self.rm, &self.rc, &self.ulen(), &self.user]);
        SessionKeys::derive(self.suite.auth, sik)
    }

    /// RAKP 4's integrity check value: HMAC(SIK, Rm SIDc GUIDc), truncated.
    pub fn rakp4_icv(&self, keys: &SessionKeys) -> Vec<u8> {
        let sidc = self.bmc_sid.to_le_bytes();
        let mut icv = self
            .suite
            .auth
            .mac(&keys.sik, &[&self.rm, &sidc, &self.guid]);
        icv.truncate(self.suite.auth.icv_len());
        icv
    }

    /// Check RAKP 2's code; a mismatch means the password is wrong.
    pub fn verify_rakp2(&self, code: &[u8]) -> Result<()> {
        if self.suite.auth == AuthAlg::None || code == self.rakp2_code().as_slice() {
            Ok(())
        } else {
            Err(RmcpError::WrongPassword {
                user: String::from_utf8_lossy(&self.user).into_owned(),
            })
        }
    }
}

/// RAKP 3; a non-zero status tells the BMC we give up (no code then).
pub fn rakp3(tag: u8, status: u8, bmc_sid: u32, code: &[u8]) -> Vec<u8> {
    let mut m = vec![tag, status, 0, 0];
    m.extend_from_slice(&bmc_sid.to_le_bytes());
    m.extend_from_slice(code);
    m
}

/// RAKP 4's fields.
pub struct Rakp4 {
    pub tag: u8,
    pub console_sid: u32,
    pub icv: Vec<u8>,
}

pub fn parse_rakp4(m: &[u8]) -> Result<Rakp4> {
    if m.len() < 2 {
        return Err(short("RAKP 4", m.len()));
    }
    status("RAKP 3", m[1])?;
    if m.len() < 8 {
        return Err(short("RAKP 4", m.len()));
    }
    Ok(Rakp4 {
        tag: m[0],
        console_sid: le32(&m[4..8]),
        icv: m[8..].to_vec(),
    })
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
