//! Plumbing every Porthole service shares, kept beside the conductor as
//! Ironic keeps `ironic.common`: configuration loading (defaults < TOML file
//! < the service's own `PORTHOLE_<SERVICE>_…` environment < flags,
//! [`config`]), tracing set-up ([`telemetry`], [`logfmt`]), signals turned into a
//! `CancellationToken` ([`shutdown`]), the one sealing format ([`seal`]),
//! the Prometheus `/metrics` endpoint ([`metrics`]) the TLS settings
//! ([`tls`]), the one-line error report binaries print ([`report`]) and the
//! bind/signal/serve steps every binary and serve loop shares ([`service`]).
//!
//! Callers: the services' `main.rs` and `lib.rs`. It imports no service crate.

pub mod config;
pub mod logfmt;
pub mod metrics;
pub mod report;
pub mod seal;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
