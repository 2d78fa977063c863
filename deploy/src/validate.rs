//! `validate()` of the virtual-media deploy, as Ironic's iscsi deploy and
//! ilo-virtual-media boot check a node before anything is done: the node
//! has ports, `driver_info.deploy_iso` is an http(s) URL, the BMC's Redfish
//! address is set, the conductor's API URL for the ramdisk is configured,
//! `instance_info.image_source` is set, and boot_option / boot_mode are
//! ones the floppy can carry. Every problem is reported at once, in
//! Ironic's words where Ironic has them; the caller answers 400.
//!
//! Callers: [`crate::grpc`] (Validate), [`crate::deploy`] (PrepareRamdisk
//! checks again before acting).

use porthole_proto::deploy::v1::DeployNode;

use crate::config::Config;

/// What is wrong with a node, one line per problem.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Invalid(pub Vec<String>);

/// Check `node` against `config`.
pub fn validate(node: &DeployNode, config: &Config) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    if uuid::Uuid::parse_str(&node.uuid).is_err() {
        problems.push(format!("Node uuid {:?} is not a UUID.", node.uuid));
    }
    if node.port_addresses.is_empty() {
        problems.push(format!(
            "Node {} does not have any port associated with it.",
            node.uuid
        ));
    }
    let mut missing_driver_info = Vec::new();
    if node.deploy_iso.is_empty() {
        missing_driver_info.push("deploy_iso");
    } else if !is_http_url(&node.deploy_iso) {
        problems.push(format!(
            "driver_info deploy_iso must be an http(s) URL the BMC can fetch, not {:?}.",
            node.deploy_iso
        ));
    }
    if node.bmc.as_ref().is_none_or(|b| b.address.is_empty()) {
        missing_driver_info.push("redfish_address");
    }
    if !missing_driver_info.is_empty() {
        problems.push(format!(
            "Some parameters were missing in node's driver_info: {missing_driver_info:?}."
        ));
    }
    if config.conductor.api_url.is_none() {
        problems.push(
            "Couldn't get the URL of the Ironic API service from the configuration file (set conductor.api_url of the deploy service)."
                .into(),
        );
    }
    if node.image_source.is_empty() {
        problems.push(
            "Some parameters were missing in node's instance_info. Missing are: ['image_source']."
                .into(),
        );
    }
    if !["", "local", "netboot"].contains(&node.boot_option.as_str()) {
        problems.push(format!(
            "Invalid boot_option {:?}: expected \"local\" or \"netboot\".",
            node.boot_option
        ));
    }
    if !["", "bios", "uefi"].contains(&node.boot_mode.as_str()) {
        problems.push(format!(
            "Invalid boot_mode {:?}: expected \"bios\" or \"uefi\".",
            node.boot_mode
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems))
    }
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s)
        .map(|u| ["http", "https"].contains(&u.scheme()) && u.host().is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use porthole_proto::deploy::v1::RedfishAccess;

    use super::*;

    fn config(api: bool) -> Config {
        let mut c = Config::default();
        c.conductor.api_url = api.then(|| "http://192.0.2.1:6385".to_owned());
        c
    }

    fn good() -> DeployNode {
        DeployNode {
            uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            bmc: Some(RedfishAccess {
                address: "http://127.0.0.1:8000".into(),
                ..Default::default()
            }),
            deploy_iso: "http://images/deploy.iso".into(),
            image_source: "http://images/user.qcow2".into(),
            port_addresses: vec!["52:54:00:12:34:56".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_complete_node_passes() {
        validate(&good(), &config(true)).unwrap();
    }

    #[test]
    fn each_missing_piece_is_named_and_all_are_reported_at_once() {
        let node = DeployNode {
            uuid: good().uuid,
            ..Default::default()
        };
        let Invalid(p) = validate(&node, &config(false)).unwrap_err();
        let all = p.join("\n");
        for want in [
            "does not have any port",
            "driver_info: [\"deploy_iso\", \"redfish_address\"]",
            "URL of the Ironic API service",
            "Missing are: ['image_source']",
        ] {
            assert!(all.contains(want), "{want:?} not in:\n{all}");
        }
        assert_eq!(p.len(), 4, "{all}");
    }

    #[test]
    fn bad_values_are_refused_with_what_was_given() {
        let mut node = good();
        node.deploy_iso = "file:///etc/passwd".into();
        node.boot_option = "kexec".into();
        node.boot_mode = "legacy".into();
        node.uuid = "node-1".into();
        let err = validate(&node, &config(true)).unwrap_err().to_string();
        for want in [
            "\"file:///etc/passwd\"",
            "\"kexec\"",
            "\"legacy\"",
            "\"node-1\" is not a UUID",
        ] {
            assert!(err.contains(want), "{want} not in {err}");
        }
    }
}
