//! Serial-over-LAN consoles: the two serial backends of the
//! [`crate::backend`] contract and what they share.
//!
//! The manager owns console lifecycles; a backend only knows how to serve one
//! console's TCP port and bridge it to `ipmitool sol activate`:
//!
//! - [`native`] (default): console-svc listens itself and runs ipmitool under a
//!   pty only while viewers are attached; scrollback, log ring, log file.
//! - [`socat`]: one supervised `socat TCP-LISTEN:... EXEC:ipmitool...` per
//!   console, the process layout of Ironic's socat console.
//!
//! Both build ipmitool's argv in [`ipmitool`], hand it the password through a
//! sealed memfd (never argv, never the environment), run `sol deactivate`
//! before every activation, and record the processes they start in the
//! [`crate::process::ProcessTable`] so a restart can clean up after a crash.
//! Both take every BMC action only through the claim's lease gate
//! ([`crate::coordinator::Fence::permit`]); socat's per-connection helper
//! ([`sol_exec`]) asks for it over [`activation_gate`].

pub mod activation_gate;
pub mod ipmitool;
pub mod native;
pub mod pty;
pub mod socat;
pub mod socat_slot;
pub mod sol_exec;
#[cfg(test)]
pub(crate) mod test_context;

use std::io;
use std::time::Duration;

use crate::backend::BackendError;
use crate::coordinator::CoordError;

/// What the serial backends report; converted into [`BackendError`] at the
/// contract (a busy port, a timeout and a fence keep their meaning there).
#[derive(Debug, thiserror::Error)]
pub enum SolError {
    #[error("port {addr} is already in use by another program")]
    PortInUse { addr: std::net::SocketAddr },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: &'static str,
        source: io::Error,
    },
    #[error("{program} exited before the console port accepted connections: {detail}")]
    EarlyExit {
        program: &'static str,
        detail: String,
    },
    #[error("{what} did not finish within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// ipmitool talked to (or failed to reach) the BMC; `message` is its own
    /// last words, trimmed.
    #[error("BMC {bmc}: {message}")]
    Bmc { bmc: String, message: String },
    #[error(transparent)]
    Fenced(#[from] CoordError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<SolError> for BackendError {
    fn from(err: SolError) -> Self {
        match err {
            SolError::PortInUse { addr } => BackendError::PortInUse { addr },
            SolError::Timeout { what, timeout } => BackendError::Timeout { what, timeout },
            SolError::Fenced(e) => BackendError::Fenced(e),
            other => BackendError::Failed(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_keeps_a_busy_port_a_timeout_and_a_fence() {
        let addr = "127.0.0.1:4000".parse().unwrap();
        let err = BackendError::from(SolError::PortInUse { addr });
        assert!(matches!(err, BackendError::PortInUse { addr: a } if a == addr));
        let timeout = Duration::from_secs(3);
        let err = BackendError::from(SolError::Timeout {
            what: "x".into(),
            timeout,
        });
        assert!(matches!(err, BackendError::Timeout { timeout: t, .. } if t == timeout));
        let err = BackendError::from(SolError::Fenced(CoordError::PastDeadline("d".into())));
        assert!(matches!(err, BackendError::Fenced(_)), "{err}");
    }

    #[test]
    fn other_serial_errors_keep_their_words_and_their_type() {
        let err = BackendError::from(SolError::Bmc {
            bmc: "10.0.0.9".into(),
            message: "Unable to establish IPMI v2 / RMCP+ session".into(),
        });
        assert_eq!(
            err.to_string(),
            "BMC 10.0.0.9: Unable to establish IPMI v2 / RMCP+ session"
        );
        assert!(matches!(
            err.downcast_ref::<SolError>(),
            Some(SolError::Bmc { .. })
        ));
    }
}
