//! The single-replica coordinator: this process owns every console and is
//! always serving. Tokens still increase per claim so fencing code paths are
//! exercised the same way as with etcd. Its BMC gate is always open (no
//! lease, no other replica to yield to).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{CoordError, Coordinator, Ownership};
use crate::spec::NodeId;

pub struct LocalCoordinator {
    replica: String,
    serving: watch::Sender<bool>,
    state: Mutex<LocalState>,
}

#[derive(Default)]
struct LocalState {
    next_token: i64,
    owned: HashMap<NodeId, i64>,
}

impl LocalCoordinator {
    pub fn new(replica: impl Into<String>) -> Self {
        Self {
            replica: replica.into(),
            serving: watch::Sender::new(true),
            state: Mutex::default(),
        }
    }
}

#[async_trait]
impl Coordinator for LocalCoordinator {
    fn replica_id(&self) -> &str {
        &self.replica
    }

    fn serving(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }

    async fn acquire(&self, node: &NodeId) -> Result<Ownership, CoordError> {
        let mut st = self.state.lock().expect("coordinator lock");
        st.next_token += 1;
        let token = st.next_token;
        st.owned.insert(node.clone(), token);
        Ok(Ownership {
            node: node.clone(),
            token,
            lease: 0,
        })
    }

    async fn check(&self, ownership: &Ownership) -> Result<(), CoordError> {
        let st = self.state.lock().expect("coordinator lock");
        match st.owned.get(&ownership.node) {
            Some(t) if *t == ownership.token => Ok(()),
            _ => Err(CoordError::Fenced {
                node: ownership.node.to_string(),
                owner: "nobody (claim was released)".into(),
            }),
        }
    }

    async fn release(&self, ownership: &Ownership) -> Result<(), CoordError> {
        let mut st = self.state.lock().expect("coordinator lock");
        if st.owned.get(&ownership.node) == Some(&ownership.token) {
            st.owned.remove(&ownership.node);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_released_claim_is_fenced() {
        let c = LocalCoordinator::new("r1");
        let n = NodeId::parse("n1").unwrap();
        let first = c.acquire(&n).await.unwrap();
        c.check(&first).await.unwrap();
        let second = c.acquire(&n).await.unwrap();
        assert!(second.token > first.token);
        assert!(c.check(&first).await.is_err(), "older token is fenced");
        c.release(&second).await.unwrap();
        assert!(c.check(&second).await.is_err());
        assert!(*c.serving().borrow());
    }
}
