//! Node maintenance (`PUT/DELETE /v1/nodes/{n}/maintenance`) and traits
//! (`/v1/nodes/{n}/traits`), with Ironic's trait name rule: `CUSTOM_`
//! followed by `[A-Z0-9_]+`, or one of os-traits' standard names
//! (`std_traits.txt`, generated from os-traits 3.9.0), 1-255 characters,
//! at most 50 per node.
//!
//! Callers: the handlers in `api::traits`.

use serde_json::Value;

use super::{Conductor, ServiceError};
use crate::model::Node;

/// os-traits' standard trait names, one a line, sorted.
const STANDARD: &str = include_str!("std_traits.txt");
/// Ironic's `MAX_TRAITS_PER_NODE`.
pub const MAX_TRAITS: usize = 50;

/// Is `t` a trait name Ironic accepts? Else the reason, in jsonschema's
/// words as Ironic reports them (`name` is the argument: `trait`, `body`).
pub fn check_trait(name: &str, t: &Value) -> Result<String, ServiceError> {
    let bad = |msg: String| ServiceError::Invalid(format!("Schema error for {name}: {msg}"));
    let Some(s) = t.as_str() else {
        return Err(bad(format!("{} is not of type 'string'", super::shown(t))));
    };
    let shown: String = s.chars().take(64).collect();
    if s.is_empty() {
        return Err(bad("'' should be non-empty".into()));
    }
    if s.len() > 255 {
        return Err(bad(format!("'{shown}...' is too long")));
    }
    let custom = s.strip_prefix("CUSTOM_").is_some_and(|r| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    });
    if custom || STANDARD.lines().any(|l| l == s) {
        return Ok(s.to_owned());
    }
    Err(bad(format!(
        "'{shown}' is not valid under any of the given schemas. Possible root cause: '{shown}' does not match '^CUSTOM_[A-Z0-9_]+$'"
    )))
}

fn too_many(node: &Node, n: usize) -> ServiceError {
    ServiceError::Invalid(format!(
        "Could not modify traits for node {} as it would exceed the maximum number of traits per node ({n} vs. {MAX_TRAITS})",
        node.uuid
    ))
}

impl Conductor {
    /// Put a node in maintenance (with a reason) or take it out.
    pub async fn set_maintenance(
        &self,
        ident: &str,
        on: bool,
        reason: Option<String>,
    ) -> Result<Node, ServiceError> {
        self.store
            .modify_node(ident, move |n: &mut Node| -> Result<(), ServiceError> {
                n.maintenance = on;
                n.maintenance_reason = if on { reason } else { None };
                Ok(())
            })
            .await
    }

    /// Replace the node's traits (`Some(list)`) or add one (`add`).
    pub async fn put_traits(
        &self,
        ident: &str,
        replace: Option<Vec<String>>,
        add: Option<String>,
    ) -> Result<Node, ServiceError> {
        self.store
            .modify_node(ident, move |n: &mut Node| {
                let mut set: Vec<String> = match replace {
                    Some(list) => list,
                    None => n.attrs.traits.clone(),
                };
                set.extend(add);
                set.sort();
                set.dedup();
                if set.len() > MAX_TRAITS {
                    return Err(too_many(n, set.len()));
                }
                n.attrs.traits = set;
                Ok(())
            })
            .await
    }

    /// Remove one trait (404 as Ironic if the node lacks it) or all.
    pub async fn delete_traits(
        &self,
        ident: &str,
        one: Option<String>,
    ) -> Result<Node, ServiceError> {
        self.store
            .modify_node(ident, move |n: &mut Node| {
                match &one {
                    Some(t) => {
                        let before = n.attrs.traits.len();
                        n.attrs.traits.retain(|x| x != t);
                        if n.attrs.traits.len() == before {
                            return Err(ServiceError::Missing(format!(
                                "Node {} doesn't have a trait '{}'",
                                n.uuid,
                                t.chars().take(255).collect::<String>()
                            )));
                        }
                    }
                    None => n.attrs.traits.clear(),
                }
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trait_names_as_ironic() {
        for ok in [
            "CUSTOM_GOLD",
            "CUSTOM_A_1",
            "HW_CPU_X86_AVX2",
            "COMPUTE_NET_VIF_MODEL_VIRTIO",
        ] {
            assert_eq!(check_trait("trait", &json!(ok)).unwrap(), ok);
        }
        let e = check_trait("trait", &json!("foo")).unwrap_err().to_string();
        assert_eq!(
            e,
            "Schema error for trait: 'foo' is not valid under any of the given schemas. Possible root cause: 'foo' does not match '^CUSTOM_[A-Z0-9_]+$'"
        );
        for bad in [
            json!("CUSTOM_"),
            json!("CUSTOM_lower"),
            json!("HW_NOPE_NOT_A_TRAIT"),
            json!(""),
            json!(5),
            json!("x".repeat(300)),
        ] {
            let e = check_trait("body", &bad).unwrap_err().to_string();
            assert!(e.starts_with("Schema error for body: "), "{bad}: {e}");
        }
        assert!(
            STANDARD.lines().count() > 300,
            "the standard list is loaded"
        );
    }
}
