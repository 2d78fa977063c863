//! Vendor interfaces: the methods a node's `vendor_interface` offers
//! through `/v1/nodes/{node}/vendor_passthru/{method}` (Ironic's
//! `vendor_routes`), as a small trait; the `fake` one of `fake-hardware`
//! nodes with one method, `fake_callback`; and [`IscsiVendor`], the
//! `pass_deploy_info` of nodes deployed by the `iscsi` deploy interface
//! (the deploy ramdisk's callback, which `service::deploy_callback` runs).
//!
//! A method marked [`VendorMethod::ramdisk`] is the ramdisk's: the API lets
//! a caller without operator credentials reach it, and the conductor runs
//! it only for a node in one of those wait states that presents the
//! secret it issued for this operation (`service::ramdisk`).
//!
//! Callers: `service::ramdisk` (the passthru), `api::vendor` (routing).

use std::sync::Arc;

use serde_json::{json, Value};

use super::interfaces::{BoxFuture, InterfaceError};
use super::State;
use crate::model::{Dict, Node};

/// One vendor method and how it may be called (Ironic's `@passthru`).
#[derive(Clone, Debug)]
pub struct VendorMethod {
    pub name: &'static str,
    /// `POST`, `GET`, ... (upper case).
    pub http_methods: &'static [&'static str],
    /// Run in the background (202) rather than answered at once (200).
    pub is_async: bool,
    pub description: &'static str,
    pub attach: bool,
    /// Hold the node's lock while it runs (409 while another action does).
    pub require_exclusive_lock: bool,
    /// Called by the node's ramdisk: the wait states it may be called in.
    pub ramdisk: Option<&'static [State]>,
}

impl VendorMethod {
    /// As Ironic's `GET .../vendor_passthru/methods` shows one.
    pub fn to_json(&self) -> Value {
        json!({
            "http_methods": self.http_methods,
            "async": self.is_async,
            "description": self.description,
            "attach": self.attach,
            "require_exclusive_lock": self.require_exclusive_lock,
        })
    }
}

/// A node's vendor interface.
pub trait VendorInterface: Send + Sync {
    /// The interface name (`vendor_interface`).
    fn name(&self) -> &'static str;
    fn methods(&self) -> &[VendorMethod];
    /// Run `method` (one of [`VendorInterface::methods`], already checked
    /// against its HTTP methods and, for a ramdisk method, the node's
    /// state and secret) with the request's JSON arguments, the secret
    /// taken out. Its answer is the response body.
    fn call<'a>(
        &'a self,
        node: &'a Node,
        method: &'a str,
        http_method: &'a str,
        args: &'a Dict,
    ) -> BoxFuture<'a, Result<Value, InterfaceError>>;
}

/// The `fake` vendor interface: one ramdisk method that answers with what
/// it was called with and changes nothing.
pub struct FakeVendor;

const FAKE_METHODS: &[VendorMethod] = &[VendorMethod {
    name: "fake_callback",
    http_methods: &["POST"],
    is_async: false,
    description: "A fake ramdisk callback: answers with the node, its state and the arguments (the secret left out); changes nothing.",
    attach: false,
    require_exclusive_lock: true,
    ramdisk: Some(&[State::DeployWait, State::CleanWait, State::InspectWait]),
}];

impl VendorInterface for FakeVendor {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn methods(&self) -> &[VendorMethod] {
        FAKE_METHODS
    }
    fn call<'a>(
        &'a self,
        node: &'a Node,
        method: &'a str,
        http_method: &'a str,
        args: &'a Dict,
    ) -> BoxFuture<'a, Result<Value, InterfaceError>> {
        Box::pin(async move {
            Ok(json!({
                "method": method,
                "http_method": http_method,
                "node_uuid": node.uuid,
                "provision_state": node.provision_state,
                "args": args,
            }))
        })
    }
}

/// The `iscsi` deploy's ramdisk callback (Ironic's iscsi_deploy
/// `VendorPassthru.pass_deploy_info`).
pub const PASS_DEPLOY_INFO: &str = "pass_deploy_info";

const ISCSI_METHODS: &[VendorMethod] = &[VendorMethod {
    name: PASS_DEPLOY_INFO,
    http_methods: &["POST"],
    is_async: true,
    description: "The deploy ramdisk's callback: where its iSCSI target is (address, iqn, optional port and lun) or the error it met; the deployment key as key.",
    attach: false,
    require_exclusive_lock: true,
    ramdisk: Some(&[State::DeployWait]),
}];

/// The vendor methods of a node whose deploy interface is the deploy
/// service's `iscsi`: `pass_deploy_info`, which the conductor itself runs
/// (`service::deploy_callback`: it moves the node), so [`Self::call`] is
/// never reached for it.
pub struct IscsiVendor;

impl VendorInterface for IscsiVendor {
    fn name(&self) -> &'static str {
        "iscsi"
    }
    fn methods(&self) -> &[VendorMethod] {
        ISCSI_METHODS
    }
    fn call<'a>(
        &'a self,
        _: &'a Node,
        method: &'a str,
        _: &'a str,
        _: &'a Dict,
    ) -> BoxFuture<'a, Result<Value, InterfaceError>> {
        let e = InterfaceError(format!("No handler for method {method}"));
        Box::pin(async move { Err(e) })
    }
}

/// The vendor interfaces this conductor has, by interface name.
#[derive(Clone)]
pub struct VendorInterfaces {
    /// What `fake-hardware` nodes use (tests may replace it).
    pub fake_hardware: Arc<dyn VendorInterface>,
    /// What nodes deployed by `iscsi` use (any vendor_interface but
    /// `no-vendor`), while the deploy service is configured.
    pub iscsi: Option<Arc<dyn VendorInterface>>,
}

impl Default for VendorInterfaces {
    fn default() -> Self {
        Self {
            fake_hardware: Arc::new(FakeVendor),
            iscsi: None,
        }
    }
}

impl VendorInterfaces {
    /// `node`'s vendor interface by its `vendor_interface`; `None` is
    /// Ironic's `no-vendor` (and, for now, `ipmitool`, `redfish` and `ilo`,
    /// which offer no methods of their own here yet: on a node deployed by
    /// `iscsi` they offer `pass_deploy_info`).
    pub fn for_node(&self, node: &Node) -> Option<Arc<dyn VendorInterface>> {
        use crate::drivers::Kind;
        match node.interface(Kind::Vendor) {
            "fake" => Some(self.fake_hardware.clone()),
            "no-vendor" => None,
            _ if node.interface(Kind::Deploy) == super::deploy_grpc::ISCSI => self.iscsi.clone(),
            _ => None,
        }
    }
}
