//! porthole-rmcp: a native IPMI v2.0 RMCP+ ("lanplus") client and
//! Serial-over-LAN, used by console-svc's `rmcp` console backend (and open to
//! the conductor's power control).
//!
//! Layers, bottom up: [`crypto`] (cipher suites, HMACs, AES-CBC-128),
//! [`wire`] (packet layouts), [`handshake`] (Open Session, RAKP 1-4, keys),
//! [`transport`] (the datagram seam: UDP, or in memory for tests) and
//! [`shared`] (many sessions on one UDP socket; [`udp`] picks per session
//! or shared at run time),
//! `setup` (Open Session and RAKP over the wire), [`session`] (an
//! established session: requests with retransmission,
//! sequence numbers, Close Session) and [`sol`] (the SOL payload).
//!
//! Why our own protocol code: the crates on crates.io that speak RMCP+ were
//! checked (2026-12, from their docs.rs pages) and none was kept:
//! - `ipmi-rs` (+ `ipmi-rs-core`, datdenkikniet): its RMCP+ connection is
//!   blocking on a std `UdpSocket`; `ipmi-rs-core` is sans-IO command
//!   definitions without sessions; we found no SOL payload in either.
//! - `rust-ipmi` (htemuri, 0.1.1, 2024): calls itself a hobby project not
//!   meant for production; blocking; `todo!()` in its RAKP encoding; no SOL.
//! - `ruipmi` (0.6): tokio, suites with SHA1/SHA256/MD5, but its `IpmiClient`
//!   owns its `UdpSocket` (no seam for an in-memory BMC in tests or a shared
//!   socket for many consoles), logs through `log`, and its docs show no SOL
//!   stream with ack/retransmit (0.6 has the Activate Payload constants).
//! - `ipmi` (0.1.2): tokio or blocking, HMAC-SHA1-96 + AES-CBC-128 only (no
//!   SHA256 suite), transport kept internal, no SOL.
//!
//! SOL with retransmission/ack is the bulk of what console-svc needs, so the
//! session code is written here, generic over [`transport::Datagram`].
//! The primitives are kept crates: `ring` (HMAC-SHA1, HMAC-SHA256, the
//! system random source; already the workspace's rustls backend), `aes` +
//! `cbc` (AES-CBC-128), `zeroize` for key material.

pub mod crypto;
pub mod error;
pub mod handshake;
pub mod session;
mod setup;
pub mod shared;
pub mod sol;
#[cfg(any(test, feature = "test-bmc"))]
pub mod test_bmc;
pub mod transport;
pub mod udp;
pub mod wire;

pub use error::{RakpStatus, Result, RmcpError};
pub use handshake::Privilege;
pub use session::{Incoming, Session, SessionConfig};
pub use sol::{BreakSender, Sol, SolConfig};
