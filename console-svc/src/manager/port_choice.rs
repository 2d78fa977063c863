//! Which port a console is started on, for `ConsoleManager::enable`.
//!
//! With [`Placement::Cluster`] it is the spec's own (reserved cluster-wide);
//! placement asks [`ConsoleManager::port_bindable`] before it claims one the
//! service chose, and moves a busy one on (`cluster::placement`).
//! With [`Placement::Local`] the [`PortAllocator`] decides, and a fresh
//! choice (a node with no port that asks for none) skips the ports another
//! program holds right now, as Ironic's `acquire_port` does: each candidate
//! is bound once, with the options the backends use (`SO_REUSEADDR`), and
//! one that cannot be bound is passed over. A port taken between that look
//! and the backend's bind is retried on the next free port, at most
//! [`MAX_FRESH_TRIES`] times. A node's sticky or explicit port that is busy
//! is not moved: the start fails and says the port is in use.

use std::net::{IpAddr, SocketAddr, TcpListener};

use super::{ConsoleManager, Placement};
use crate::error::ConsoleError;
use crate::spec::{ConsoleSpec, NodeId};

/// Fresh ports tried after the first one turned out busy at bind time.
pub(super) const MAX_FRESH_TRIES: usize = 4;

/// The port to start on, and whether it was a fresh choice (which may move).
#[derive(Clone, Copy, Debug)]
pub(super) struct PortChoice {
    pub(super) port: u16,
    pub(super) fresh: bool,
}

impl ConsoleManager {
    /// The port `spec` is served on. In a cluster that is the spec's own:
    /// the local allocator only knows what this replica served, and would
    /// refuse a port another replica's node has since given up.
    pub(super) fn port_for(&self, spec: &ConsoleSpec) -> Result<PortChoice, ConsoleError> {
        match self.inner.placement {
            Placement::Cluster => {
                let port = spec.requested_port.ok_or_else(|| {
                    ConsoleError::invalid(format!(
                        "the cluster spec of {} names no port",
                        spec.node
                    ))
                })?;
                Ok(PortChoice { port, fresh: false })
            }
            Placement::Local => {
                let address = self.inner.config.console.socat_address;
                let mut ports = self.inner.ports.lock().expect("ports");
                if ports.is_fresh(&spec.node, spec.requested_port) {
                    let port = ports.assign_fresh(&spec.node, |p| bindable(address, p))?;
                    return Ok(PortChoice { port, fresh: true });
                }
                let port = ports.assign(&spec.node, spec.requested_port)?;
                Ok(PortChoice { port, fresh: false })
            }
        }
    }

    /// Whether a console listener can bind `port` on this replica's console
    /// address now (see [`bindable`]).
    pub fn port_bindable(&self, port: u16) -> bool {
        bindable(self.inner.config.console.socat_address, port)
    }

    /// Move a node's fresh port off the ones in `tried` (found busy when the
    /// backend bound them) to the next free one; when there is none the
    /// node keeps no port.
    pub(super) fn next_fresh_port(
        &self,
        node: &NodeId,
        tried: &[u16],
    ) -> Result<u16, ConsoleError> {
        let address = self.inner.config.console.socat_address;
        let mut ports = self.inner.ports.lock().expect("ports");
        let next = ports.assign_fresh(node, |p| !tried.contains(&p) && bindable(address, p));
        if next.is_err() {
            ports.release(node);
        }
        Ok(next?)
    }
}

/// Can a console listener bind `address:port` now? Bound and closed at once,
/// with `SO_REUSEADDR` as every backend binds (std sets it on Unix), so a
/// port only in TIME_WAIT from our own listener counts as free, and one a
/// client connection or another listener holds does not.
pub(super) fn bindable(address: IpAddr, port: u16) -> bool {
    TcpListener::bind(SocketAddr::new(address, port)).is_ok()
}
