//! The `agent` interface in the registry: a backend with nothing outside
//! to ask (the data comes to the conductor, which forwards it), and the
//! processing of that data for a waiting `agent` inspection
//! ([`crate::agent::process`]), which ends it FINISHED or FAILED.
//!
//! Callers: [`super::Inspections`] (the backend), [`crate::grpc`]
//! (ContinueInspection).

use porthole_proto::inspect::v1 as pb;

use super::{canonical, state_name, InspectError, Inspections, AGENT};
use crate::agent::{NodeNow, Outcome};
use crate::inspector::{Backend, InspectorError, Status};

/// The `agent` interface as a backend: nothing outside to start, ask or
/// abort; the data arrives through [`Inspections::continue_agent`].
pub(super) struct LocalAgent;

#[async_trait::async_trait]
impl Backend for LocalAgent {
    async fn start(&self, _: &str) -> Result<(), InspectorError> {
        Ok(())
    }
    async fn status(&self, _: &str) -> Result<Status, InspectorError> {
        Ok(Status::Waiting)
    }
    async fn abort(&self, _: &str) -> Result<(), InspectorError> {
        Ok(())
    }
}

/// The ramdisk's data for a waiting `agent` inspection.
pub struct AgentData {
    pub inventory: serde_json::Map<String, serde_json::Value>,
    pub plugin_data: serde_json::Map<String, serde_json::Value>,
    pub node: NodeNow,
}

impl Inspections {
    /// Process the ramdisk's data for `uuid`'s waiting `agent` inspection:
    /// it ends FINISHED with the [`Outcome`], or FAILED with the reason
    /// (both answered `Ok`). A node with no such waiting inspection is
    /// refused and nothing changes.
    pub fn continue_agent(
        &self,
        uuid: &str,
        data: AgentData,
    ) -> Result<(pb::Inspection, Option<Outcome>), InspectError> {
        let uuid = canonical(uuid)?;
        {
            let records = self.records();
            let r = records
                .get(&uuid)
                .ok_or_else(|| InspectError::NotFound(uuid.clone()))?;
            if r.interface != AGENT {
                return Err(InspectError::NotAgent {
                    uuid,
                    interface: r.interface.clone(),
                });
            }
            if r.state != pb::InspectionState::Waiting {
                return Err(InspectError::NotWaiting {
                    uuid,
                    state: state_name(r.state),
                });
            }
        }
        let Some(cfg) = self.inner.agent.clone() else {
            return Err(InspectError::AgentUnavailable);
        };
        let mut node = data.node;
        node.uuid = uuid.clone();
        let result = crate::agent::process(&node, &data.inventory, data.plugin_data, &cfg);
        let (state, error, outcome) = match result {
            Ok(o) => (pb::InspectionState::Finished, String::new(), Some(o)),
            Err(e) => (pb::InspectionState::Failed, e, None),
        };
        match self.finish(&uuid, state, error) {
            Some(shown) => Ok((shown, outcome)),
            // Ended meanwhile (its deadline, an abort): as it ended.
            None => {
                let now = self.get(&uuid)?;
                Err(InspectError::NotWaiting {
                    uuid,
                    state: state_name(now.state()),
                })
            }
        }
    }
}
