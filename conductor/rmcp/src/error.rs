//! The one error type of the RMCP+ layer ([`RmcpError`]) and the named
//! RMCP+/RAKP status codes a BMC answers a bad session request with.
//! Everything in this crate returns it; console-svc and the conductor wrap it.

use std::fmt;
use std::time::Duration;

/// An RMCP+ / RAKP message status code (IPMI v2.0 table 13-15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RakpStatus(pub u8);

impl RakpStatus {
    pub const OK: Self = Self(0x00);
    pub const INVALID_SESSION_ID: Self = Self(0x02);
    pub const UNAUTHORIZED_ROLE: Self = Self(0x0a);
    pub const UNAUTHORIZED_NAME: Self = Self(0x0d);
    pub const INVALID_INTEGRITY_CHECK: Self = Self(0x0f);
    pub const NO_CIPHER_SUITE_MATCH: Self = Self(0x11);

    /// The spec's words for the code.
    pub fn describe(self) -> &'static str {
        match self.0 {
            0x00 => "no errors",
            0x01 => "insufficient resources to create a session",
            0x02 => "invalid session ID",
            0x03 => "invalid payload type",
            0x04 => "invalid authentication algorithm",
            0x05 => "invalid integrity algorithm",
            0x06 => "no matching authentication payload",
            0x07 => "no matching integrity payload",
            0x08 => "inactive session ID",
            0x09 => "invalid role",
            0x0a => "unauthorized role or privilege level requested",
            0x0b => "insufficient resources to create a session at the requested role",
            0x0c => "invalid name length",
            0x0d => "unauthorized name",
            0x0e => "unauthorized GUID",
            0x0f => "invalid integrity check value",
            0x10 => "invalid confidentiality algorithm",
            0x11 => "no cipher suite match with proposed security algorithms",
            0x12 => "illegal or unrecognized parameter",
            _ => "unknown status code",
        }
    }
}

impl fmt::Display for RakpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02x} ({})", self.0, self.describe())
    }
}

/// Why an RMCP+ operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RmcpError {
    #[error("BMC I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer from the BMC to {what} after {attempts} attempts ({timeout:?} each)")]
    Timeout {
        what: &'static str,
        attempts: u32,
        timeout: Duration,
    },
    #[error("malformed packet from the BMC: {0}")]
    Malformed(String),
    #[error("the BMC does not support IPMI v2.0 / RMCP+ on this channel")]
    NoRmcpPlus,
    #[error("cipher suite {0} is not supported (this client does 0, 1, 2, 3 and 17)")]
    UnsupportedCipherSuite(u8),
    /// The BMC refused a step of session set-up.
    #[error("{step} refused by the BMC: {status}{hint}", hint = status_hint(*status))]
    Refused {
        step: &'static str,
        status: RakpStatus,
    },
    /// RAKP 2's key exchange code did not match: the password (or Kg) is wrong.
    #[error("wrong password for user {user:?} (RAKP 2 key exchange authentication code mismatch)")]
    WrongPassword { user: String },
    #[error(
        "the BMC's RAKP 4 integrity check value does not match (wrong BMC key, or a forged answer)"
    )]
    BadRakp4,
    #[error("IPMI command netfn 0x{netfn:02x} cmd 0x{cmd:02x} failed: completion code 0x{code:02x} ({})", completion_text(*code))]
    Completion { netfn: u8, cmd: u8, code: u8 },
    #[error("SOL payload is already active on another session")]
    SolAlreadyActive,
    #[error("SOL activation refused: completion code 0x{code:02x} ({})", sol_activation_text(*code))]
    SolActivation { code: u8 },
    #[error("the BMC asks for SOL on UDP port {port}, not the session's port (not supported)")]
    SolOtherPort { port: u16 },
    #[error("the SOL session was deactivated by the BMC")]
    SolDeactivated,
    #[error("the session is closed")]
    Closed,
    #[error("invalid argument: {0}")]
    Invalid(String),
}

fn status_hint(status: RakpStatus) -> &'static str {
    match status {
        RakpStatus::UNAUTHORIZED_NAME => ": unknown user name",
        RakpStatus::UNAUTHORIZED_ROLE => ": the user may not have the requested privilege level",
        _ => "",
    }
}

/// The generic completion codes (IPMI v2.0 table 5-2).
pub fn completion_text(code: u8) -> &'static str {
    match code {
        0x00 => "ok",
        0xc0 => "node busy",
        0xc1 => "invalid command",
        0xc2 => "invalid command for this LUN",
        0xc3 => "timeout while processing",
        0xc4 => "out of space",
        0xc5 => "reservation cancelled or invalid",
        0xc6 => "request data truncated",
        0xc7 => "request data length invalid",
        0xc8 => "request data field length limit exceeded",
        0xc9 => "parameter out of range",
        0xcc => "invalid data field in request",
        0xcd => "command illegal for this sensor or record type",
        0xce => "response could not be provided",
        0xcf => "duplicated request",
        0xd4 => "insufficient privilege level",
        0xd5 => "command not supported in present state",
        0xff => "unspecified error",
        _ => "command-specific error",
    }
}

fn sol_activation_text(code: u8) -> &'static str {
    match code {
        0x81 => "payload type is disabled",
        0x82 => "payload activation limit reached",
        0x83 => "cannot activate payload with encryption",
        0x84 => "cannot activate payload without encryption",
        other => completion_text(other),
    }
}

pub type Result<T, E = RmcpError> = std::result::Result<T, E>;
