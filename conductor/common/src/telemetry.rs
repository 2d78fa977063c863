//! Tracing set-up for every service binary: one line per event on stderr,
//! as text (coloured on a terminal, control characters escaped by
//! [`crate::logfmt`] so a request cannot forge a line) or JSON, filtered by
//! `PORTHOLE_LOG` (`EnvFilter` syntax, default `info`).
//!
//! Callers: the services' `main.rs`, once, before anything logs.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable that holds the filter, shared by every service.
pub const FILTER_VAR: &str = "PORTHOLE_LOG";

/// Install the global subscriber. A second call (a test that already set
/// one) leaves the first in place.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.fmt_fields(crate::logfmt::text_fields()).try_init()
    };
}
