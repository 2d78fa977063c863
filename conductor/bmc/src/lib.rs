//! BMC access that several services share, kept with the conductor's drivers
//! as in Ironic: the conductor's power and management, console-svc's SOL and
//! deploy's virtual media all reach BMCs through this crate.
//!
//! Owns: [`Secret`] passwords that never print and are zeroed on drop
//! ([`secret`]), the sealed password memfd handed to ipmitool
//! ([`password`]), the one ipmitool runner: argv builder, timeout, error
//! summary ([`ipmitool`]) the Redfish client ([`redfish`]) and its virtual media
//! and boot-once calls ([`vmedia`]). It imports
//! no service crate.

pub mod ipmitool;
pub mod password;
pub mod redfish;
pub mod secret;
pub mod vmedia;

pub use password::{PasswordFd, PASSWORD_FD};
pub use secret::Secret;
