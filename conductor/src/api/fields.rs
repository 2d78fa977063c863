//! Microversion gating as Ironic does it: the negotiated version travels
//! with each request ([`Microversion`], set by `version::middleware`; a
//! request without a version header is gated as the maximum, where Ironic
//! would hide everything after 1.1 — every client that relies on gating
//! sends the header);
//! fields newer than it are hidden from responses, asked-for `fields`,
//! PATCHes and creates naming them get 406, and sub-resources newer than
//! it are 404 ([`require`]). Callers: the node, port, trait, VIF, portgroup
//! and volume handlers.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::Value;

use super::ApiError;
use crate::model::Dict;

/// The request's negotiated minor version (1.x).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Microversion(pub u32);

impl<S: Send + Sync> FromRequestParts<S> for Microversion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Microversion>()
            .copied()
            .unwrap_or(Microversion(super::version::MIN_MINOR)))
    }
}

/// Node fields and the minor version that added each (Ironic's
/// `VERSIONED_FIELDS`, up to the advertised maximum).
pub const NODE_FIELDS: &[(&str, u32)] = &[
    ("driver_internal_info", 3),
    ("name", 5),
    ("inspection_finished_at", 6),
    ("inspection_started_at", 6),
    ("clean_step", 7),
    ("raid_config", 12),
    ("target_raid_config", 12),
    ("network_interface", 20),
    ("resource_class", 21),
    ("boot_interface", 31),
    ("console_interface", 31),
    ("deploy_interface", 31),
    ("inspect_interface", 31),
    ("management_interface", 31),
    ("power_interface", 31),
    ("raid_interface", 31),
    ("vendor_interface", 31),
    ("storage_interface", 33),
    ("traits", 37),
    ("rescue_interface", 38),
    ("bios_interface", 40),
    ("fault", 42),
    ("deploy_step", 44),
    ("conductor_group", 46),
    ("automated_clean", 47),
    ("protected", 48),
    ("protected_reason", 48),
    ("conductor", 49),
    ("owner", 50),
    ("description", 51),
    ("allocation_uuid", 52),
    ("retired", 61),
    ("retired_reason", 61),
    ("lessee", 65),
    ("network_data", 66),
    ("boot_mode", 75),
    ("secure_boot", 75),
    ("shard", 82),
    ("parent_node", 83),
    ("firmware_interface", 86),
    ("service_step", 87),
    ("disable_power_off", 95),
];

/// Port fields by the minor version that added them.
pub const PORT_FIELDS: &[(&str, u32)] = &[
    ("internal_info", 18),
    ("local_link_connection", 19),
    ("pxe_enabled", 19),
    ("portgroup_uuid", 24),
    ("physical_network", 34),
    ("is_smartnic", 53),
    ("name", 88),
];

fn newer<'a>(table: &'a [(&'a str, u32)], mv: Microversion) -> impl Iterator<Item = &'a str> {
    table
        .iter()
        .filter(move |(_, v)| mv.0 < *v)
        .map(|(f, _)| *f)
}

/// Drop the fields `mv` does not have yet.
pub fn hide(table: &[(&str, u32)], obj: &mut Dict, mv: Microversion) {
    for f in newer(table, mv) {
        obj.remove(f);
    }
}

/// 406 if `?fields=` names a field newer than `mv`.
pub fn check_fields(
    table: &[(&str, u32)],
    fields: &Option<Vec<String>>,
    mv: Microversion,
) -> Result<(), ApiError> {
    let Some(fields) = fields else { return Ok(()) };
    if newer(table, mv).any(|f| fields.iter().any(|x| x == f)) {
        return Err(ApiError::NotAcceptable);
    }
    Ok(())
}

/// 406 if a PATCH sets a field newer than `mv` (Ironic's
/// `reject_patch_in_newer_versions`: a non-remove op on exactly `/field`).
pub fn check_patch(table: &[(&str, u32)], ops: &Value, mv: Microversion) -> Result<(), ApiError> {
    let sets = |f: &str| {
        ops.as_array().into_iter().flatten().any(|op| {
            op["path"].as_str() == Some(&format!("/{f}")) && op["op"].as_str() != Some("remove")
        })
    };
    if newer(table, mv).any(sets) {
        return Err(ApiError::NotAcceptable);
    }
    Ok(())
}

/// 406 if a create body gives a field newer than `mv` a value (Ironic's
/// `reject_fields_in_newer_versions`; `conductor_group` `""` and `name`
/// null count as unset).
pub fn check_create(table: &[(&str, u32)], body: &Dict, mv: Microversion) -> Result<(), ApiError> {
    for f in newer(table, mv) {
        let unset = match body.get(f) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => f == "conductor_group" && s.is_empty(),
            Some(_) => false,
        };
        if !unset {
            return Err(ApiError::NotAcceptable);
        }
    }
    Ok(())
}

/// 404 below `min`, as Ironic's sub-controllers newer than the request.
pub fn require(mv: Microversion, min: u32) -> Result<(), ApiError> {
    if mv.0 < min {
        return Err(ApiError::NoRoute);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gating() {
        let mut n = Dict::new();
        for (f, _) in NODE_FIELDS {
            n.insert((*f).into(), Value::Null);
        }
        n.insert("uuid".into(), Value::Null);
        let mut old = n.clone();
        hide(NODE_FIELDS, &mut old, Microversion(1));
        assert_eq!(old.keys().collect::<Vec<_>>(), ["uuid"]);
        let mut at50 = n.clone();
        hide(NODE_FIELDS, &mut at50, Microversion(50));
        assert!(at50.contains_key("owner") && !at50.contains_key("description"));
        let mut max = n.clone();
        hide(
            NODE_FIELDS,
            &mut max,
            Microversion(super::super::version::MAX_MINOR),
        );
        assert_eq!(max, n, "everything shows at the advertised maximum");

        let f = Some(vec!["owner".to_owned()]);
        assert!(check_fields(NODE_FIELDS, &f, Microversion(49)).is_err());
        assert!(check_fields(NODE_FIELDS, &f, Microversion(50)).is_ok());
        let ops = json!([{"op": "add", "path": "/owner", "value": "p"}]);
        assert!(matches!(
            check_patch(NODE_FIELDS, &ops, Microversion(49)),
            Err(ApiError::NotAcceptable)
        ));
        assert!(check_patch(NODE_FIELDS, &ops, Microversion(50)).is_ok());
        let rm = json!([{"op": "remove", "path": "/owner"}]);
        assert!(check_patch(NODE_FIELDS, &rm, Microversion(1)).is_ok());
        let body: Dict =
            serde_json::from_value(json!({"driver": "ipmi", "conductor_group": "", "name": null}))
                .unwrap();
        assert!(check_create(NODE_FIELDS, &body, Microversion(1)).is_ok());
        let body: Dict = serde_json::from_value(json!({"driver": "ipmi", "shard": "s"})).unwrap();
        assert!(check_create(NODE_FIELDS, &body, Microversion(81)).is_err());
        assert!(require(Microversion(36), 37).is_err() && require(Microversion(37), 37).is_ok());
    }
}
