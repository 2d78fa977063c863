//! `Secret`: a string that never shows itself, zeroed on drop. It lives in
//! `porthole-bmc` (shared with the conductor); re-exported here so
//! console-svc's modules and tests keep naming `console_svc::secret::Secret`.
//!
//! BMC passwords travel inside this type from the gRPC request to the memfd
//! that ipmitool reads (see `sol::ipmitool`).

pub use porthole_bmc::Secret;
