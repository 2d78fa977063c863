//! A fake [`SolLauncher`] for the hub tests: it records every call with the
//! (paused) clock's time, follows a plan per activation, and hands the node
//! side of each session (a `tokio::io::duplex` stream) to the test.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{duplex, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::launcher::{SessionControl, SolLauncher, SolSession};
use crate::sol::SolError;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Call {
    Deactivate,
    Activate,
    End { deactivate: bool },
}

/// What the fake launcher does on the next activations.
pub(super) enum Plan {
    Up,
    /// Up after this long (a slow ipmitool).
    UpAfter(std::time::Duration),
    Fail(&'static str),
    Hang,
}

pub(super) struct FakeState {
    calls: Mutex<Vec<(Instant, Call)>>,
    pub(super) plans: Mutex<VecDeque<Plan>>,
    /// Used once `plans` is empty.
    pub(super) fail_by_default: Mutex<Option<&'static str>>,
    nodes: mpsc::UnboundedSender<DuplexStream>,
}

impl FakeState {
    /// A fake state and where the node sides of its sessions arrive.
    pub(super) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<DuplexStream>) {
        let (nodes, rx) = mpsc::unbounded_channel();
        let state = Self {
            calls: Mutex::default(),
            plans: Mutex::default(),
            fail_by_default: Mutex::default(),
            nodes,
        };
        (Arc::new(state), rx)
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push((Instant::now(), call));
    }

    pub(super) fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    pub(super) fn times_of(&self, call: &Call) -> Vec<Instant> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(_, c)| c == call)
            .map(|(t, _)| *t)
            .collect()
    }
}

pub(super) struct FakeLauncher(pub(super) Arc<FakeState>);
struct FakeControl(Arc<FakeState>);

#[async_trait]
impl SolLauncher for FakeLauncher {
    async fn deactivate(&self) -> Result<(), SolError> {
        self.0.record(Call::Deactivate);
        Ok(())
    }

    async fn activate(&self) -> Result<SolSession, SolError> {
        self.0.record(Call::Activate);
        let plan = self.0.plans.lock().unwrap().pop_front();
        let plan = plan.unwrap_or_else(|| match *self.0.fail_by_default.lock().unwrap() {
            Some(msg) => Plan::Fail(msg),
            None => Plan::Up,
        });
        if let Plan::UpAfter(delay) = plan {
            tokio::time::sleep(delay).await;
        }
        match plan {
            Plan::Up | Plan::UpAfter(_) => {
                let (ours, node) = duplex(64 * 1024);
                let _ = self.0.nodes.send(node);
                Ok(SolSession {
                    io: Box::new(ours),
                    greeting: Bytes::from_static(b"[SOL Session operational]\r\n"),
                    early_output: Bytes::new(),
                    control: Box::new(FakeControl(self.0.clone())),
                })
            }
            Plan::Fail(msg) => Err(SolError::Bmc {
                bmc: "127.0.0.1:623".into(),
                message: msg.into(),
            }),
            Plan::Hang => std::future::pending().await,
        }
    }
}

#[async_trait]
impl SessionControl for FakeControl {
    async fn end(self: Box<Self>, deactivate: bool) -> Option<std::process::ExitStatus> {
        self.0.record(Call::End { deactivate });
        None
    }
}
