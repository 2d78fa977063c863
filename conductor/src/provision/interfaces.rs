//! The deploy and inspect interfaces the provision state machine drives:
//! a small trait each (the deploy and inspect services of later issues
//! implement them over gRPC), and the `fake` implementation of the
//! `fake-hardware` driver, which succeeds at once.
//!
//! [`Interfaces::for_node`] picks a node's; callers: `service::provision`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::model::{Dict, Node};

/// A boxed future, so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How an interface's step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Finished: the machine moves on.
    Done,
    /// Started; the interface reports back later (the node waits in
    /// `wait call-back`, `inspect wait` or `clean wait`, unlocked).
    Wait,
}

/// An interface failed; the text goes to last_error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InterfaceError(pub String);

pub type StepResult = Result<Outcome, InterfaceError>;

/// A clean step an interface declares (Ironic's `{interface, step,
/// priority, args}`); automated cleaning runs those with priority > 0,
/// highest first.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanStep {
    pub interface: &'static str,
    pub step: String,
    pub priority: u32,
    pub args: Dict,
}

impl CleanStep {
    /// As Ironic shows it in `clean_step`.
    pub fn to_json(&self) -> Dict {
        let mut m = Dict::new();
        m.insert("interface".into(), self.interface.into());
        m.insert("step".into(), self.step.clone().into());
        m.insert("priority".into(), self.priority.into());
        m.insert("args".into(), Value::Object(self.args.clone()));
        m
    }
}

/// Deploying, tearing down, cleaning and adopting a node.
pub trait DeployInterface: Send + Sync {
    /// The interface name (`deploy_interface`).
    fn name(&self) -> &'static str;
    /// Write the image (with the configdrive, when given) and boot it.
    fn deploy<'a>(
        &'a self,
        node: &'a Node,
        configdrive: Option<&'a Value>,
    ) -> BoxFuture<'a, StepResult>;
    /// Undo a deployment (before cleaning).
    fn tear_down<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>>;
    /// Take over a node deployed by other means (adopt): no write.
    fn take_over<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>>;
    /// The clean steps this interface declares for `node`.
    fn clean_steps(&self, node: &Node) -> Vec<CleanStep>;
    fn execute_clean_step<'a>(
        &'a self,
        node: &'a Node,
        step: &'a CleanStep,
    ) -> BoxFuture<'a, StepResult>;
}

/// Inspecting a node's hardware.
pub trait InspectInterface: Send + Sync {
    fn name(&self) -> &'static str;
    /// Ask the service behind the interface whether it can inspect `node`
    /// now (for the gRPC interfaces: ValidateInspection, e.g. refused while
    /// its `[inspector]` is disabled); an error refuses the `inspect` verb
    /// before the node moves. Default: nothing to ask.
    fn check_service<'a>(&'a self, _node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    fn inspect<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, StepResult>;
    /// Stop the inspection `node` waits for (`abort` from `inspect wait`);
    /// an error refuses the abort and the node keeps waiting. Default:
    /// nothing to stop.
    fn abort<'a>(&'a self, _node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The `fake` deploy and inspect interfaces: everything succeeds at once,
/// nothing is written, no clean steps.
pub struct Fake;

impl DeployInterface for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn deploy<'a>(&'a self, _: &'a Node, _: Option<&'a Value>) -> BoxFuture<'a, StepResult> {
        Box::pin(async { Ok(Outcome::Done) })
    }
    fn tear_down<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    fn take_over<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    fn clean_steps(&self, _: &Node) -> Vec<CleanStep> {
        Vec::new()
    }
    fn execute_clean_step<'a>(
        &'a self,
        _: &'a Node,
        _: &'a CleanStep,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async { Ok(Outcome::Done) })
    }
}

impl InspectInterface for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn inspect<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, StepResult> {
        Box::pin(async { Ok(Outcome::Done) })
    }
}

/// The deploy and inspect interfaces of one node.
#[derive(Clone)]
pub struct NodeInterfaces {
    pub deploy: Arc<dyn DeployInterface>,
    pub inspect: Arc<dyn InspectInterface>,
}

/// The interfaces the conductor has, by hardware type.
#[derive(Clone)]
pub struct Interfaces {
    /// What `fake-hardware` nodes use (tests replace it).
    pub fake_hardware: NodeInterfaces,
    /// The inspect service (`[inspect] endpoint`), whose `inspector` and
    /// `agent` interfaces [`super::inspect_grpc::GrpcInspect`] gives.
    pub inspect_service: Option<super::inspect_grpc::InspectClient>,
}

impl Default for Interfaces {
    fn default() -> Self {
        Self {
            fake_hardware: NodeInterfaces {
                deploy: Arc::new(Fake),
                inspect: Arc::new(Fake),
            },
            inspect_service: None,
        }
    }
}

/// The interface names a node of `driver` has (for the API and errors).
pub fn interface_names(driver: &str) -> (&'static str, &'static str) {
    match driver {
        "fake-hardware" => ("fake", "fake"),
        _ => ("direct", "no-inspect"),
    }
}

impl Interfaces {
    /// `node`'s interfaces, or `None` when this conductor cannot deploy or
    /// inspect nodes of its driver yet (ipmi and redfish nodes: their
    /// deploy and inspect services come in later issues).
    pub fn for_node(&self, node: &Node) -> Option<NodeInterfaces> {
        (node.driver == "fake-hardware").then(|| self.fake_hardware.clone())
    }
}
