//! The deploy and inspect interfaces the provision state machine drives:
//! a small trait each (the deploy and inspect services implement them over
//! gRPC: `inspector` and `agent` are [`super::inspect_grpc::GrpcInspect`]
//! once `[inspect] endpoint` is set), the `fake` implementation of the
//! `fake-hardware` driver, which succeeds at once, `no-inspect`, and a
//! stand-in for every name whose implementation is not here (`direct`,
//! `iscsi` without the deploy service, `inspector`/`agent` without the
//! inspect service, ...: it validates false, saying why). `iscsi` is
//! [`super::deploy_grpc::GrpcIscsi`] once `[deploy] endpoint` is set.
//!
//! [`Interfaces::for_node`] picks a node's by its `deploy_interface` and
//! `inspect_interface`; callers: `service::provision`, `service` validate,
//! `inspect_grpc` (which nodes wait for the inspect service).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::drivers::Kind;
use crate::model::{Dict, Node};
use crate::provision::Event;

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

/// What the deploy ramdisk reported in `pass_deploy_info`, checked
/// (`service::deploy_callback`): where its iSCSI target listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployCallback {
    /// The ramdisk's IP address.
    pub address: std::net::IpAddr,
    pub port: u16,
    pub iqn: String,
    pub lun: u32,
}

/// Deploying, tearing down, cleaning and adopting a node.
pub trait DeployInterface: Send + Sync {
    /// The interface name (`deploy_interface`).
    fn name(&self) -> &'static str;
    /// Can this interface deploy `node` (Ironic's `validate`: driver_info,
    /// instance_info, the service behind it)? The reason when not.
    fn validate(&self, _node: &Node) -> Result<(), InterfaceError> {
        Ok(())
    }
    /// Ask the service behind the interface whether it can deploy `node`
    /// (for the gRPC interface: the deploy service's Validate); an error
    /// refuses deploy/rebuild before the node moves and makes `node
    /// validate` false. Default: nothing to ask.
    fn check_service<'a>(&'a self, _node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    /// The deploy after the ramdisk's callback (`pass_deploy_info`
    /// accepted, the node back in `deploying`): write the image and boot
    /// it. Default: this interface takes no callback.
    fn continue_deploy<'a>(
        &'a self,
        _node: &'a Node,
        _callback: &'a DeployCallback,
    ) -> BoxFuture<'a, StepResult> {
        let e = InterfaceError(format!(
            "The {} deploy interface does not continue a deploy after a ramdisk callback.",
            self.name()
        ));
        Box::pin(async move { Err(e) })
    }
    /// Undo what deploy() prepared for the ramdisk (boot media, stored
    /// images, the deploy key); called when a deploy fails, times out or
    /// is aborted, and by tear_down. Default: nothing to undo.
    fn clean_up<'a>(&'a self, _node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    /// Does tear_down expect the node powered off first (Ironic's iscsi
    /// and agent tear_down power it off)? The provision service does it,
    /// under the node's lock, before [`DeployInterface::tear_down`].
    fn powers_off_at_tear_down(&self) -> bool {
        false
    }
    /// Before a power on or reboot from the API (the power service, under
    /// the node's lock): make the deployed instance bootable again (the
    /// design's IloPower: the boot ISO re-inserted). An error fails the
    /// power action. Default: nothing to do.
    fn prepare_power_on<'a>(
        &'a self,
        _node: &'a Node,
    ) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
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
    /// Can this interface inspect `node`? The reason when not.
    fn validate(&self, _node: &Node) -> Result<(), InterfaceError> {
        Ok(())
    }
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

/// `no-inspect`: validates (as Ironic's no-op interfaces), but inspecting
/// is refused before it starts.
pub struct NoInspect;

impl InspectInterface for NoInspect {
    fn name(&self) -> &'static str {
        "no-inspect"
    }
    fn inspect<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, StepResult> {
        let e = no_inspect(node);
        Box::pin(async move { Err(e) })
    }
}

fn no_inspect(node: &Node) -> InterfaceError {
    InterfaceError(format!(
        "Driver {} does not support inspect (disabled or not implemented).",
        node.driver
    ))
}

/// An interface name this conductor knows but cannot run yet (its service
/// comes in a later issue): it validates false and every call fails.
pub struct Unavailable {
    kind: Kind,
    name: String,
}

impl Unavailable {
    fn error(&self) -> InterfaceError {
        if self.kind == Kind::Deploy && self.name == super::deploy_grpc::ISCSI {
            return InterfaceError(format!(
                "The deploy interface \"{}\" needs the deploy service, which this conductor is not configured with: set deploy.endpoint (PORTHOLE_CONDUCTOR_DEPLOY_ENDPOINT).",
                self.name
            ));
        }
        if self.kind == Kind::Inspect && INSPECT_SERVICE_INTERFACES.contains(&self.name.as_str()) {
            return InterfaceError(format!(
                "The inspect interface \"{}\" needs the inspect service, which this conductor is not configured with: set inspect.endpoint (PORTHOLE_CONDUCTOR_INSPECT_ENDPOINT).",
                self.name
            ));
        }
        InterfaceError(format!(
            "The {} interface \"{}\" is not available in this conductor yet.",
            self.kind.name(),
            self.name
        ))
    }
    fn fail<'a, T: Send + 'a>(&self) -> BoxFuture<'a, Result<T, InterfaceError>> {
        let e = self.error();
        Box::pin(async move { Err(e) })
    }
}

impl DeployInterface for Unavailable {
    fn name(&self) -> &'static str {
        "unavailable"
    }
    fn validate(&self, _: &Node) -> Result<(), InterfaceError> {
        Err(self.error())
    }
    fn deploy<'a>(&'a self, _: &'a Node, _: Option<&'a Value>) -> BoxFuture<'a, StepResult> {
        self.fail()
    }
    fn tear_down<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        self.fail()
    }
    fn take_over<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        self.fail()
    }
    fn clean_steps(&self, _: &Node) -> Vec<CleanStep> {
        Vec::new()
    }
    fn execute_clean_step<'a>(
        &'a self,
        _: &'a Node,
        _: &'a CleanStep,
    ) -> BoxFuture<'a, StepResult> {
        self.fail()
    }
}

impl InspectInterface for Unavailable {
    fn name(&self) -> &'static str {
        "unavailable"
    }
    fn validate(&self, _: &Node) -> Result<(), InterfaceError> {
        Err(self.error())
    }
    fn inspect<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, StepResult> {
        self.fail()
    }
}

/// The deploy and inspect interfaces of one node.
#[derive(Clone)]
pub struct NodeInterfaces {
    pub deploy: Arc<dyn DeployInterface>,
    pub inspect: Arc<dyn InspectInterface>,
}

impl NodeInterfaces {
    /// May `event` start on `node` with these interfaces? Ironic's
    /// up-front refusal (400) when not: deploy, rebuild and adopt validate
    /// the deploy interface, inspect the inspect interface.
    pub fn ready_for(&self, node: &Node, event: Event) -> Result<(), String> {
        let uuid = &node.uuid;
        match event {
            Event::Deploy | Event::Rebuild | Event::Adopt => {
                self.deploy.validate(node).map_err(|e| {
                    format!("Failed to validate deploy or power info for node {uuid}. Error: {e}")
                })
            }
            Event::Inspect if node.interface(Kind::Inspect) == "no-inspect" => {
                Err(no_inspect(node).0)
            }
            Event::Inspect => self.inspect.validate(node).map_err(|e| {
                format!("Failed to validate inspection or power info for node {uuid}. Error: {e}")
            }),
            _ => Ok(()),
        }
    }
}

/// The inspect interfaces the inspect service implements.
pub const INSPECT_SERVICE_INTERFACES: [&str; 2] = ["inspector", "agent"];

/// The deploy and inspect implementations the conductor has, by
/// interface name; the deploy and inspect services register theirs.
#[derive(Clone)]
pub struct Interfaces {
    pub deploy: BTreeMap<String, Arc<dyn DeployInterface>>,
    pub inspect: BTreeMap<String, Arc<dyn InspectInterface>>,
    /// The inspect service (`[inspect] endpoint`), when configured: its
    /// results are followed (`inspect_grpc::follow`).
    pub inspect_service: Option<super::inspect_grpc::InspectClient>,
}

impl Default for Interfaces {
    fn default() -> Self {
        let mut deploy: BTreeMap<String, Arc<dyn DeployInterface>> = BTreeMap::new();
        deploy.insert("fake".into(), Arc::new(Fake));
        let mut inspect: BTreeMap<String, Arc<dyn InspectInterface>> = BTreeMap::new();
        inspect.insert("fake".into(), Arc::new(Fake));
        inspect.insert("no-inspect".into(), Arc::new(NoInspect));
        Self {
            deploy,
            inspect,
            inspect_service: None,
        }
    }
}

impl Interfaces {
    /// Use the inspect service at `client` for the `inspector` and `agent`
    /// inspect interfaces (the service itself refuses what it cannot do).
    pub fn set_inspect_service(&mut self, client: super::inspect_grpc::InspectClient) {
        for name in INSPECT_SERVICE_INTERFACES {
            let grpc = super::inspect_grpc::GrpcInspect::new(name, client.clone());
            self.inspect.insert(name.into(), Arc::new(grpc));
        }
        self.inspect_service = Some(client);
    }

    /// Use the deploy service for the `iscsi` deploy interface (and with
    /// it the virtual-media boot interfaces).
    pub fn set_deploy_service(&mut self, iscsi: Arc<dyn DeployInterface>) {
        self.deploy.insert(super::deploy_grpc::ISCSI.into(), iscsi);
    }

    /// `node`'s interfaces by its `deploy_interface` and
    /// `inspect_interface`; a name without an implementation here gets
    /// [`Unavailable`].
    pub fn for_node(&self, node: &Node) -> NodeInterfaces {
        let unavailable = |kind: Kind| {
            Arc::new(Unavailable {
                kind,
                name: node.interface(kind).to_owned(),
            })
        };
        NodeInterfaces {
            deploy: match self.deploy.get(node.interface(Kind::Deploy)) {
                Some(d) => d.clone(),
                None => unavailable(Kind::Deploy),
            },
            inspect: match self.inspect.get(node.interface(Kind::Inspect)) {
                Some(i) => i.clone(),
                None => unavailable(Kind::Inspect),
            },
        }
    }
}
