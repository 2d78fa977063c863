//! BMC access that several services share, kept with the conductor's drivers
//! as in Ironic: the conductor's power and management, console-svc's SOL and
//! deploy's virtual media all reach BMCs through this crate.
//!
//! Owns: [`Secret`]-style passwords that never print and are zeroed on drop,
//! the sealed password memfd handed to ipmitool, the one ipmitool runner
//! (argv builder, timeout, error summary) and the Redfish client. It imports
//! no service crate.
