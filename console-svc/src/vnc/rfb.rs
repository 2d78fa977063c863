//! RFB wire pieces shared by both handshake sides: protocol versions,
//! security type numbers, and bounded reads of length-prefixed fields.
//!
//! Everything here is pure or generic over `AsyncRead`/`AsyncWrite`, so the
//! parsers can be fed arbitrary bytes by the proptest targets.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::VncError;

/// The only version console-svc offers to viewers (nova requires it).
pub const RFB_38: &[u8; 12] = b"RFB 003.008\n";

/// Security types (RFB 3.7+ numbering).
pub const SEC_NONE: u8 = 1;
pub const SEC_VNC_AUTH: u8 = 2;
pub const SEC_VENCRYPT: u8 = 19;

/// VeNCrypt subtypes this proxy knows.
pub const VENCRYPT_PLAIN_NONE: u32 = 1;
pub const VENCRYPT_PLAIN_VNC: u32 = 2;
pub const VENCRYPT_TLS_NONE: u32 = 257;
pub const VENCRYPT_TLS_VNC: u32 = 258;
pub const VENCRYPT_TLS_PLAIN: u32 = 259;
pub const VENCRYPT_X509_NONE: u32 = 260;
pub const VENCRYPT_X509_VNC: u32 = 261;
pub const VENCRYPT_X509_PLAIN: u32 = 262;

/// SecurityResult values.
pub const RESULT_OK: u32 = 0;
pub const RESULT_FAILED: u32 = 1;

/// The longest reason string accepted from an upstream; a longer one is an
/// oversized field.
pub const MAX_REASON: usize = 4096;

/// Length of the VNC authentication challenge.
pub const CHALLENGE_LEN: usize = 16;

/// An RFB protocol version as the 12-byte `RFB xxx.yyy\n` string gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

/// The dialect the proxy speaks with an upstream, chosen from its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    V33,
    V37,
    V38,
}

impl Version {
    /// Parses `RFB xxx.yyy\n`; `None` for anything else.
    pub fn parse(raw: &[u8; 12]) -> Option<Self> {
        let digits = |b: &[u8]| -> Option<u16> {
            b.iter().try_fold(0u16, |acc, c| {
                c.is_ascii_digit().then(|| acc * 10 + u16::from(c - b'0'))
            })
        };
        if &raw[..4] != b"RFB " || raw[7] != b'.' || raw[11] != b'\n' {
            return None;
        }
        Some(Self {
            major: digits(&raw[4..7])?,
            minor: digits(&raw[8..11])?,
        })
    }

    /// What a client answers to this server version: 3.3 for 3.3-3.6 (and
    /// UltraVNC's 3.4/3.6, Apple's 3.889 counts as 3.8), 3.7, or 3.8.
    pub fn dialect(self) -> Option<Dialect> {
        match (self.major, self.minor) {
            (3, 3..=6) => Some(Dialect::V33),
            (3, 7) => Some(Dialect::V37),
            (3, 8..) | (4.., _) => Some(Dialect::V38),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Dialect {
    pub fn wire(self) -> &'static [u8; 12] {
        match self {
            Dialect::V33 => b"RFB 003.003\n",
            Dialect::V37 => b"RFB 003.007\n",
            Dialect::V38 => RFB_38,
        }
    }
}

/// The first bytes a peer sent, printable, for "does not speak RFB" errors.
pub fn show_bytes(raw: &[u8]) -> String {
    let shown: String = raw
        .iter()
        .take(16)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    format!("\"{shown}\"")
}

/// A human name for a security type, for messages.
pub fn security_name(t: u32) -> String {
    let name = match t {
        0 => "Invalid",
        1 => "None",
        2 => "VncAuth",
        16 => "Tight",
        18 => "TLS",
        19 => "VeNCrypt",
        30 => "AppleARD",
        VENCRYPT_TLS_NONE => "TLSNone",
        VENCRYPT_TLS_VNC => "TLSVnc",
        VENCRYPT_TLS_PLAIN => "TLSPlain",
        VENCRYPT_X509_NONE => "X509None",
        VENCRYPT_X509_VNC => "X509Vnc",
        VENCRYPT_X509_PLAIN => "X509Plain",
        _ => return format!("type {t}"),
    };
    format!("{name}({t})")
}

pub async fn read_u8<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<u8> {
    r.read_u8().await
}

pub async fn read_u32<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<u32> {
    r.read_u32().await
}

/// Reads a `u32` length and that many bytes, refusing more than `max`.
pub async fn read_string<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max: usize,
) -> Result<String, VncError> {
    let len = r.read_u32().await? as usize;
    if len > max {
        return Err(VncError::Oversized { what, len, max });
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A `u32` length and `reason`, appended to `msg`.
pub fn put_reason(msg: &mut Vec<u8>, reason: &str) {
    msg.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    msg.extend_from_slice(reason.as_bytes());
}

/// Writes one handshake message in a single write, then flushes (a TLS
/// stream turns it into one record). nova reads each field with one `recv`.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    w.write_all(msg).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_map_to_dialects() {
        let v = |s: &[u8; 12]| Version::parse(s);
        assert_eq!(v(b"RFB 003.008\n").unwrap().dialect(), Some(Dialect::V38));
        assert_eq!(v(b"RFB 003.007\n").unwrap().dialect(), Some(Dialect::V37));
        assert_eq!(v(b"RFB 003.003\n").unwrap().dialect(), Some(Dialect::V33));
        assert_eq!(v(b"RFB 003.889\n").unwrap().dialect(), Some(Dialect::V38));
        assert_eq!(v(b"RFB 004.001\n").unwrap().dialect(), Some(Dialect::V38));
        assert_eq!(v(b"RFB 002.000\n").unwrap().dialect(), None);
        assert_eq!(v(b"SSH-2.0-Open"), None);
        assert_eq!(v(b"RFB 0x3.008\n"), None);
        assert_eq!(v(b"RFB 003.008\r"), None);
    }

    #[test]
    fn shows_bytes_escaped_and_short() {
        assert_eq!(show_bytes(b"SSH-2.0\r\n"), "\"SSH-2.0\\r\\n\"");
        assert_eq!(security_name(261), "X509Vnc(261)");
        assert_eq!(security_name(77), "type 77");
    }
}
