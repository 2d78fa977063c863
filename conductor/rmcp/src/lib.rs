//! porthole-rmcp: a native IPMI v2.0 RMCP+ ("lanplus") client and
//! Serial-over-LAN, used by console-svc's `rmcp` console backend (and open to
//! the conductor's power control).
//!
//! Layers, bottom up: [`crypto`] (cipher suites, HMACs, AES-CBC-128),
//! [`wire`] (packet layouts), [`handshake`] (Open Session, RAKP 1-4, keys),
//! [`transport`] (the datagram seam: UDP, or in memory for tests),
//! [`session`] (an established session: requests with retransmission,
//! sequence numbers, Close Session) and [`sol`] (the SOL payload).
//!
//! Why our own protocol code: the crates on crates.io that speak RMCP+ were
//! checked (2026-12) and none was kept. `ipmi-rs` (datdenkikniet) is
//! blocking, owns its std UDP socket and has no SOL payload; `rust-ipmi`
//! (htemuri) calls itself a hobby project not meant for production, is
//! blocking and has `todo!()` in its RAKP encoding; `ruipmi` is tokio-based
//! but owns its socket (no seam for a shared socket or an in-memory BMC) and
//! has no SOL; `ipmi` (0.1) does sessions with SHA1/AES but no SOL and no
//! transport seam. SOL with retransmission/ack is the bulk of what console-svc
//! needs, so the session code is written here, generic over [`transport::Datagram`].
//! The primitives are kept crates: `ring` (HMAC-SHA1, HMAC-SHA256, the
//! system random source; already the workspace's rustls backend), `aes` +
//! `cbc` (AES-CBC-128), `zeroize` for key material.

pub mod crypto;
pub mod error;
pub mod handshake;
pub mod session;
mod setup;
pub mod sol;
#[cfg(test)]
mod test_bmc;
pub mod transport;
pub mod wire;

pub use error::{RakpStatus, Result, RmcpError};
pub use handshake::Privilege;
pub use session::{Incoming, Session, SessionConfig};
pub use sol::{Sol, SolConfig, SolInput};
