//! console-svc: consoles of bare-metal machines on TCP endpoints.
//!
//! `main.rs` parses the command line and calls into this library; tests drive
//! the same entry points in-process. Module map:
//!
//! - [`config`]: the typed configuration (file, `PORTHOLE_CONSOLE_SVC_*`, flags).
//! - [`spec`], [`secret`]: validated requests; passwords that never print.
//! - [`text`]: caller input quoted in messages, bounded.
//! - [`seal`]: passwords sealed (AEAD) for etcd.
//! - [`consoles`]: the console API one trait for both modes (local, cluster).
//! - [`manager`]: console lifecycles (the state machine), ports, events.
//! - [`backend`]: the backend contract (start a console, its health, its log).
//! - [`sol`]: the serial backends (native, socat) and ipmitool.
//! - [`vnc`]: VNC consoles, a native RFB proxy (nova-novncproxy compatible).
//! - [`coordinator`]: who owns which console (local, or etcd leases).
//! - [`cluster`]: with etcd, the API any replica serves, placement, endpoints.
//! - [`process`]: recorded child processes, cleaned up after a crash.
//! - [`grpc`]: `console.v1.ConsoleService`, health and reflection.
//! - [`cli`]: the operator's client commands.
//! - [`tasks`]: the handle every long-lived task is owned by (stop signal, join).
//! - [`metrics`]: the Prometheus metrics (`service.metrics_listen`).

// A service logs through tracing, never to stdout/stderr directly.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod backend;
pub mod backoff;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod consoles;
pub mod coordinator;
pub mod error;
pub mod grpc;
pub mod manager;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod seal;
pub mod secret;
pub mod server;
pub mod sol;
pub mod spec;
pub mod tasks;
pub mod text;
pub mod vnc;
pub use server::{run, RunError};
