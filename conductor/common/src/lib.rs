//! Plumbing every Porthole service shares, kept beside the conductor as
//! Ironic keeps `ironic.common`: configuration loading (defaults < TOML file
//! < the service's own `PORTHOLE_<SERVICE>_…` environment < flags), tracing
//! set-up, signals turned into a `CancellationToken`, the one sealing format,
//! the Prometheus `/metrics` endpoint and the TLS settings.
//!
//! Callers: the services' `main.rs` and `lib.rs`. It imports no service crate.

pub mod metrics;
pub mod tls;
