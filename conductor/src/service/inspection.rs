//! The end of an inspection the node waited for in `inspect wait`, as the
//! inspect service reports it: `manageable`, or `inspect failed` with the
//! reason in last_error. The node's lock is taken for the change; a node
//! not waiting (any more) is left alone.
//!
//! Callers: `provision::inspect_grpc::follow`.

use std::sync::Arc;

use super::{Conductor, ServiceError};
use crate::provision::{Event, State};

/// What [`Conductor::end_inspection`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InspectionEnd {
    /// The node left `inspect wait`.
    Applied,
    /// Locked (its provision task has not released it yet): try again.
    Busy,
    /// The node is not in `inspect wait` (aborted, or moved on): nothing done.
    NotWaiting,
}

impl Conductor {
    /// Record the outcome of `uuid`'s inspection: `Ok` → done, `Err(reason)`
    /// → fail with last_error `reason`.
    pub async fn end_inspection(
        self: &Arc<Self>,
        uuid: &str,
        outcome: Result<(), String>,
    ) -> Result<InspectionEnd, ServiceError> {
        let guard = match self.reserve(uuid) {
            Ok(g) => g,
            Err(ServiceError::Locked(_)) => return Ok(InspectionEnd::Busy),
            Err(e) => return Err(e),
        };
        let node = self.store.get_node(uuid).await?;
        match State::parse(&node.provision_state) {
            Ok(State::InspectWait) => {}
            Ok(State::Inspecting) => return Ok(InspectionEnd::Busy),
            _ => return Ok(InspectionEnd::NotWaiting),
        }
        let (event, error) = match outcome {
            Ok(()) => (Event::Done, None),
            Err(reason) => (Event::Fail, Some(reason)),
        };
        self.advance(uuid, event, error).await?;
        drop(guard);
        Ok(InspectionEnd::Applied)
    }
}
