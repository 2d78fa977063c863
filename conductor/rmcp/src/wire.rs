//! Byte layouts on the wire: the RMCP header, the IPMI v1.5 session-less
//! header (for Get Channel Authentication Capabilities), the IPMI v2.0 /
//! RMCP+ session header with its integrity trailer and AES payload wrapping,
//! and the IPMI LAN message inside (addresses, netfn, sequence, checksums).
//! Pure functions over byte slices; `session` and the test BMC call them.

use crate::crypto::{aes_decrypt, aes_encrypt, random, CipherSuite, ConfAlg, IntegrityAlg};
use crate::error::{Result, RmcpError};

/// RMCP version 1.0, reserved, sequence 0xff (no RMCP ACK), class IPMI.
pub const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
const AUTH_RMCP_PLUS: u8 = 0x06;
const NEXT_HEADER: u8 = 0x07;

/// RMCP+ payload types (IPMI v2.0 table 13-16).
pub mod payload {
    pub const IPMI: u8 = 0x00;
    pub const SOL: u8 = 0x01;
    pub const OPEN_SESSION_REQ: u8 = 0x10;
    pub const OPEN_SESSION_RSP: u8 = 0x11;
    pub const RAKP1: u8 = 0x12;
    pub const RAKP2: u8 = 0x13;
    pub const RAKP3: u8 = 0x14;
    pub const RAKP4: u8 = 0x15;
}

/// The keys an established session protects its packets with.
#[derive(Clone)]
pub struct Protection<'a> {
    pub suite: CipherSuite,
    pub k1: &'a [u8],
    pub k2: &'a [u8],
}

/// One decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// `None` for an IPMI v1.5 packet.
    pub payload_type: Option<u8>,
    pub encrypted: bool,
    pub authenticated: bool,
    pub session_id: u32,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// An IPMI v1.5 session-less packet (auth type none, session 0).
pub fn encode_v15(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + message.len());
    out.extend_from_slice(&RMCP_HEADER);
    out.push(0x00); // auth type none
    out.extend_from_slice(&[0; 8]); // sequence, session id
    out.push(message.len() as u8);
    out.extend_from_slice(message);
    out
}

/// An RMCP+ packet; with `protection`, IPMI and SOL payloads are encrypted
/// and/or carry the integrity trailer as the suite says.
pub fn encode_v2(
    payload_type: u8,
    session_id: u32,
    seq: u32,
    payload: &[u8],
    protection: Option<&Protection<'_>>,
) -> Vec<u8> {
    let (encrypt, integrity) = match protection {
        Some(p) => (p.suite.conf == ConfAlg::AesCbc128, p.suite.integrity),
        None => (false, IntegrityAlg::None),
    };
    let body = match (encrypt, protection) {
        (true, Some(p)) => aes_encrypt(p.k2, random::<16>(), payload),
        _ => payload.to_vec(),
    };
    let authenticated = integrity != IntegrityAlg::None;
    let mut out = Vec::with_capacity(16 + body.len() + 4 + 16 + 4);
    out.extend_from_slice(&RMCP_HEADER);
    out.push(AUTH_RMCP_PLUS);
    out.push(payload_type | if encrypt { 0x80 } else { 0 } | if authenticated { 0x40 } else { 0 });
    out.extend_from_slice(&session_id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
    if let (true, Some(p)) = (authenticated, protection) {
        // Pad so that auth type .. next header is a multiple of 4 bytes.
        let covered = out.len() - RMCP_HEADER.len() + 2;
        let pad = (4 - covered % 4) % 4;
        out.extend(std::iter::repeat_n(0xff, pad));
        out.push(pad as u8);
        out.push(NEXT_HEADER);
        let mac = integrity.mac(p.k1, &out[RMCP_HEADER.len()..]);
        out.extend_from_slice(&mac);
    }
    out
}

/// Decode a datagram; with `protection`, check the trailer and decrypt.
/// A packet claiming authentication is refused without keys to check it.
pub fn decode(datagram: &[u8], protection: Option<&Protection<'_>>) -> Result<Packet> {
    let bad = |why: &str| RmcpError::Malformed(why.to_string());
    if datagram.len() < 5 || datagram[..4] != RMCP_HEADER[..] {
        return Err(bad("not an RMCP/IPMI packet"));
    }
    let rest = &datagram[4..];
    if rest[0] != AUTH_RMCP_PLUS {
        // IPMI v1.5: auth type, seq(4), session id(4), [auth code(16)], len, msg.
        let code = if rest[0] == 0 { 0 } else { 16 };
        let hdr = 10 + code;
        if rest.len() < hdr {
            return Err(bad("short IPMI v1.5 header"));
        }
        let len = usize::from(rest[hdr - 1]);
        let msg = rest
            .get(hdr..hdr + len)
            .ok_or_else(|| bad("IPMI v1.5 message shorter than its length"))?;
        return Ok(Packet {
            payload_type: None,
            encrypted: false,
            authenticated: rest[0] != 0,
            session_id: u32::from_le_bytes(rest[5..9].try_into().unwrap_or_default()),
            seq: u32::from_le_bytes(rest[1..5].try_into().unwrap_or_default()),
            payload: msg.to_vec(),
        });
    }
    if rest.len() < 12 {
        return Err(bad("short RMCP+ session header"));
    }
    let ptype = rest[1];
    let (encrypted, authenticated) = (ptype & 0x80 != 0, ptype & 0x40 != 0);
    let payload_type = ptype & 0x3f;
    if payload_type == 0x02 {
        return Err(bad("OEM explicit payloads are not supported"));
    }
    let session_id = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]);
    let seq = u32::from_le_bytes([rest[6], rest[7], rest[8], rest[9]]);
    let len = usize::from(u16::from_le_bytes([rest[10], rest[11]]));
    let body = rest
        .get(12..12 + len)
        .ok_or_else(|| bad("payload shorter than its length"))?;
    if authenticated {
        let p = protection.ok_or_else(|| bad("authenticated packet outside a session"))?;
        let mac_len = p.suite.integrity.mac_len();
        if mac_len == 0 || rest.len() < 12 + len + 2 + mac_len {
            return Err(bad("integrity trailer missing"));
        }
        let (covered, mac) = rest.split_at(rest.len() - mac_len);
        if covered[covered.len() - 1] != NEXT_HEADER {
            return Err(bad("integrity trailer: next header is not 0x07"));
        }
        if !constant_time_eq(&p.suite.integrity.mac(p.k1, covered), mac) {
            return Err(bad("integrity check failed (AuthCode mismatch)"));
        }
    } else if protection.is_some_and(|p| p.suite.integrity != IntegrityAlg::None)
        && matches!(payload_type, payload::IPMI | payload::SOL)
        && session_id != 0
    {
        return Err(bad(
            "unauthenticated packet inside an integrity-protected session",
        ));
    }
    let payload = if encrypted {
        let p = protection.ok_or_else(|| bad("encrypted packet outside a session"))?;
        aes_decrypt(p.k2, body)?
    } else {
        body.to_vec()
    };
    Ok(Packet {
        payload_type: Some(payload_type),
        encrypted,
        authenticated,
        session_id,
        seq,
        payload,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// BMC slave address and the remote console's software ID (as ipmitool uses).
pub const BMC_ADDR: u8 = 0x20;
pub const CONSOLE_SWID: u8 = 0x81;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// An IPMI request message addressed to the BMC.
pub fn encode_request(netfn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    let mut m = vec![BMC_ADDR, netfn << 2, 0];
    m[2] = checksum(&m[..2]);
    m.extend_from_slice(&[CONSOLE_SWID, rq_seq << 2, cmd]);
    m.extend_from_slice(data);
    m.push(checksum(&m[3..]));
    m
}

/// A decoded IPMI response message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub netfn: u8,
    pub cmd: u8,
    pub rq_seq: u8,
    pub completion: u8,
    pub data: Vec<u8>,
}

pub fn decode_response(m: &[u8]) -> Result<Response> {
    if m.len() < 8 {
        return Err(RmcpError::Malformed(format!(
            "IPMI response of {} bytes",
            m.len()
        )));
    }
    if checksum(&m[..2]) != m[2] || checksum(&m[3..m.len() - 1]) != m[m.len() - 1] {
        return Err(RmcpError::Malformed(
            "IPMI message checksum mismatch".into(),
        ));
    }
    Ok(Response {
        netfn: m[1] >> 2,
        cmd: m[5],
        rq_seq: m[4] >> 2,
        completion: m[6],
        data: m[7..m.len() - 1].to_vec(),
    })
}

/// A decoded IPMI request message (the test BMC's side).
#[cfg(any(test, feature = "test-bmc"))]
pub fn decode_request(m: &[u8]) -> Result<(u8, u8, u8, Vec<u8>)> {
    if m.len() < 7 || checksum(&m[..2]) != m[2] || checksum(&m[3..m.len() - 1]) != m[m.len() - 1] {
        return Err(RmcpError::Malformed("bad IPMI request".into()));
    }
    Ok((m[1] >> 2, m[5], m[4] >> 2, m[6..m.len() - 1].to_vec()))
}

/// The response to a request (the test BMC's side).
#[cfg(any(test, feature = "test-bmc"))]
pub fn encode_response(netfn: u8, cmd: u8, rq_seq: u8, completion: u8, data: &[u8]) -> Vec<u8> {
    let mut m = vec![CONSOLE_SWID, (netfn | 1) << 2, 0];
    m[2] = checksum(&m[..2]);
    m.extend_from_slice(&[BMC_ADDR, rq_seq << 2, cmd, completion]);
    m.extend_from_slice(data);
    m.push(checksum(&m[3..]));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::tests::hex;

    #[test]
    fn v15_get_channel_auth_caps_matches_ipmitool() {
        // ipmitool -I lanplus's first datagram, captured against ipmi_sim:
        // Get Channel Authentication Capabilities, channel 0x8e, privilege admin.
        let msg = encode_request(0x06, 0x38, 0, &[0x8e, 0x04]);
        assert_eq!(
            hex(&encode_v15(&msg)),
            "0600ff070000000000000000000920 18c8 81 00 38 8e 04 b5".replace(' ', "")
        );
    }

    #[test]
    fn response_checksums_are_checked() {
        let r = encode_response(0x06, 0x01, 5, 0, &[1, 2, 3]);
        let d = decode_response(&r).unwrap();
        assert_eq!(
            (d.netfn, d.cmd, d.rq_seq, d.completion, d.data.clone()),
            (0x07, 0x01, 5, 0, vec![1, 2, 3])
        );
        let mut bad = r.clone();
        bad[7] ^= 1;
        assert!(decode_response(&bad).is_err());
    }

    #[test]
    fn v2_trailer_round_trip_and_tamper() {
        let suite = CipherSuite::from_id(3).unwrap();
        let (k1, k2) = ([7u8; 20], [9u8; 20]);
        let p = Protection {
            suite,
            k1: &k1,
            k2: &k2,
        };
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| i as u8 ^ 0xa5).collect();
            let pkt = encode_v2(payload::SOL, 0x1234_5678, 42, &data, Some(&p));
            assert_eq!(
                (pkt.len() - 4 - 12) % 4,
                0,
                "covered part is a multiple of 4"
            );
            let d = decode(&pkt, Some(&p)).unwrap();
            assert_eq!(
                (
                    d.payload_type,
                    d.session_id,
                    d.seq,
                    d.encrypted,
                    d.authenticated
                ),
                (Some(1), 0x1234_5678, 42, true, true)
            );
            assert_eq!(d.payload, data);
            let mut t = pkt.clone();
            t[20] ^= 0x01;
            assert!(
                decode(&t, Some(&p)).is_err(),
                "a flipped bit fails the integrity check"
            );
        }
        let other = [8u8; 20];
        let q = Protection {
            suite,
            k1: &other,
            k2: &k2,
        };
        let pkt = encode_v2(payload::IPMI, 1, 1, b"x", Some(&p));
        assert!(decode(&pkt, Some(&q)).is_err(), "wrong K1 is refused");
        // An unauthenticated IPMI payload inside the session is refused.
        let plain = encode_v2(payload::IPMI, 1, 1, b"x", None);
        assert!(decode(&plain, Some(&p)).is_err());
    }
}
