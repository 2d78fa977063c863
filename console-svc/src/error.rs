//! The console service's domain errors and their one mapping to gRPC.
//!
//! Lower layers have their own enums (`backend::BackendError`, `coordinator::CoordError`,
//! `ports::PortError`, `spec::SpecError`, `cluster::forward::ForwardError`); they convert into `ConsoleError` here, and
//! `From<ConsoleError> for tonic::Status` is the only place a status code is
//! chosen.

use tonic::{Code, Status};

use crate::backend::BackendError;
use crate::cluster::forward::ForwardError;
use crate::coordinator::CoordError;
use crate::ports::PortError;
use crate::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("no console for node {0}")]
    NotFound(String),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("console for node {node} did not start: {source}")]
    Start { node: String, source: BackendError },
    #[error(transparent)]
    Coordination(#[from] CoordError),
    #[error("console-svc is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Deadline(String),
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// The longest message a gRPC error carries (bytes): whatever a lower layer
/// put in it, `grpc-message` stays far below the 8-16 KiB header limits of
/// common clients.
pub const MAX_MESSAGE_LEN: usize = 1024;

impl From<SpecError> for ConsoleError {
    fn from(err: SpecError) -> Self {
        Self::InvalidArgument(err.to_string())
    }
}

impl From<SpecError> for Status {
    fn from(err: SpecError) -> Self {
        ConsoleError::from(err).into()
    }
}

impl ConsoleError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}

impl From<ConsoleError> for Status {
    fn from(err: ConsoleError) -> Self {
        let code = match &err {
            ConsoleError::InvalidArgument(_) => Code::InvalidArgument,
            ConsoleError::Unsupported(_) => Code::Unimplemented,
            ConsoleError::NotFound(_) => Code::NotFound,
            ConsoleError::Port(PortError::Exhausted { .. }) => Code::ResourceExhausted,
            ConsoleError::Port(PortError::AllBusy { .. }) => Code::ResourceExhausted,
            ConsoleError::Port(PortError::OutOfRange { .. }) => Code::InvalidArgument,
            ConsoleError::Port(PortError::Taken { .. }) => Code::AlreadyExists,
            ConsoleError::Start { .. } => Code::Unavailable,
            ConsoleError::Coordination(CoordError::NotServing(_)) => Code::Unavailable,
            ConsoleError::Coordination(CoordError::Fenced { .. }) => Code::Aborted,
            ConsoleError::Coordination(CoordError::Etcd(_)) => Code::Unavailable,
            ConsoleError::Coordination(CoordError::PastDeadline(_)) => Code::Unavailable,
            ConsoleError::ShuttingDown => Code::Unavailable,
            ConsoleError::Deadline(_) => Code::DeadlineExceeded,
            ConsoleError::Forward(ForwardError::Owner { code, .. }) => *code,
            ConsoleError::Forward(ForwardError::NoOwner { .. }) => Code::Unavailable,
            ConsoleError::Forward(ForwardError::OwnerUnknown { .. }) => Code::Unavailable,
            ConsoleError::Forward(ForwardError::OwnerUnreachable { .. }) => Code::Unavailable,
            ConsoleError::Forward(ForwardError::NotHere { .. }) => Code::Unavailable,
        };
        Status::new(code, crate::text::bounded(err.to_string(), MAX_MESSAGE_LEN))
    }
}
