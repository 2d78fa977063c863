//! An in-memory [`Backend`] for unit tests: statuses the test sets, starts
//! it refuses, aborts answered "locked" or held at a gate, every call
//! recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::inspector::{Backend, InspectorError, Status};

#[derive(Default)]
pub struct FakeInspector {
    pub status: Mutex<HashMap<String, Status>>,
    /// Start refused for these, with this message.
    pub refuse: Mutex<HashMap<String, String>>,
    /// Abort answered 409 "locked" this many more times.
    pub abort_locked: Mutex<usize>,
    /// When set, start waits for a permit.
    pub start_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// When set, abort waits for a permit.
    pub abort_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeInspector {
    pub fn set(&self, uuid: &str, s: Status) {
        self.status.lock().unwrap().insert(uuid.into(), s);
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    pub fn count(&self, what: &str) -> usize {
        self.calls().iter().filter(|c| c.starts_with(what)).count()
    }
}

fn refused(message: &str) -> InspectorError {
    InspectorError::Refused {
        what: "start introspection".into(),
        status: reqwest::StatusCode::BAD_REQUEST,
        message: message.into(),
    }
}

#[async_trait]
impl Backend for FakeInspector {
    async fn start(&self, uuid: &str) -> Result<(), InspectorError> {
        self.calls.lock().unwrap().push(format!("start {uuid}"));
        let gate = self.start_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.acquire().await.unwrap().forget();
        }
        if let Some(m) = self.refuse.lock().unwrap().get(uuid) {
            return Err(refused(m));
        }
        self.set(uuid, Status::Waiting);
        Ok(())
    }
    async fn status(&self, uuid: &str) -> Result<Status, InspectorError> {
        self.calls.lock().unwrap().push(format!("status {uuid}"));
        self.status
            .lock()
            .unwrap()
            .get(uuid)
            .cloned()
            .ok_or_else(|| InspectorError::Refused {
                what: "status".into(),
                status: reqwest::StatusCode::NOT_FOUND,
                message: format!("Could not find node {uuid} in cache"),
            })
    }
    async fn abort(&self, uuid: &str) -> Result<(), InspectorError> {
        self.calls.lock().unwrap().push(format!("abort {uuid}"));
        let gate = self.abort_gate.lock().unwrap().clone();
        if let Some(g) = gate {
            g.acquire().await.unwrap().forget();
        }
        let mut locked = self.abort_locked.lock().unwrap();
        if *locked > 0 {
            *locked -= 1;
            return Err(InspectorError::Refused {
                what: "abort".into(),
                status: reqwest::StatusCode::CONFLICT,
                message: "Node is locked, please, retry later".into(),
            });
        }
        Ok(())
    }
}
