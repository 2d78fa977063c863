//! JSON Patch (RFC 6902: add, replace, remove) as Ironic applies it to a
//! node or port: `add` on an existing member replaces it, `replace` and
//! `remove` need the member to exist. A failing operation is reported as
//! Ironic does (`Couldn't apply patch '<op>'. Reason: <jsonpatch's reason>`,
//! e.g. "can't replace a non-existent object 'x'"). Callers: `service` for PATCH.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("Invalid patch: {0}")]
    Invalid(String),
    #[error("Adding a new attribute ({0}) to the root of the resource is not allowed")]
    NewRootAttribute(String),
    /// An operation that cannot apply: Ironic's PatchError around
    /// python-jsonpatch's reason.
    #[error("Couldn't apply patch '{op}'. Reason: {reason}")]
    Failed { op: String, reason: String },
}

/// The longest rendering of an operation echoed in an error.
const OP_ECHO: usize = 256;

fn failed(op: &Value, reason: String) -> PatchError {
    let mut op = op.to_string();
    if op.len() > OP_ECHO {
        let mut end = OP_ECHO;
        while !op.is_char_boundary(end) {
            end -= 1;
        }
        op.truncate(end);
        op.push_str("...");
    }
    PatchError::Failed { op, reason }
}

/// Apply `ops` (a JSON array) to `doc`.
pub fn apply(doc: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError::Invalid("a JSON Patch is a list of operations".into()))?;
    for op in ops {
        apply_one(doc, op)?;
    }
    Ok(())
}

fn apply_one(doc: &mut Value, op: &Value) -> Result<(), PatchError> {
    let kind = op["op"]
        .as_str()
        .ok_or_else(|| PatchError::Invalid("an operation needs \"op\"".into()))?;
    let path = op["path"]
        .as_str()
        .ok_or_else(|| PatchError::Invalid("an operation needs \"path\"".into()))?;
    let parts = split(path)?;
    let (last, parents) = parts.split_last().expect("split gives at least one part");
    let parent =
        walk(doc, parents).map_err(|member| failed(op, format!("member '{member}' not found")))?;
    let Value::Object(map) = parent else {
        return Err(PatchError::Invalid(format!(
            "{path}: the parent is not an object"
        )));
    };
    match kind {
        "add" | "replace" => {
            let value = op
                .get("value")
                .ok_or_else(|| PatchError::Invalid(format!("{kind} {path} needs a value")))?;
            if !map.contains_key(last) && (kind == "replace" || parents.is_empty()) {
                if parents.is_empty() && kind == "add" {
                    return Err(PatchError::NewRootAttribute(path.to_owned()));
                }
                return Err(failed(
                    op,
                    format!("can't replace a non-existent object '{last}'"),
                ));
            }
            map.insert(last.clone(), value.clone());
            Ok(())
        }
        "remove" => {
            if parents.is_empty() {
                // Root attributes are reset to null rather than dropped.
                return match map.get_mut(last) {
                    Some(v) => {
                        *v = Value::Null;
                        Ok(())
                    }
                    None => Err(failed(
                        op,
                        format!("can't remove a non-existent object '{last}'"),
                    )),
                };
            }
            map.remove(last)
                .map(drop)
                .ok_or_else(|| failed(op, format!("can't remove a non-existent object '{last}'")))
        }
        other => Err(PatchError::Invalid(format!(
            "operation {other:?} is not supported (add, replace, remove)"
        ))),
    }
}

fn split(path: &str) -> Result<Vec<String>, PatchError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| PatchError::Invalid(format!("{path:?} is not a JSON pointer")))?;
    let parts: Vec<String> = rest
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    if parts.iter().any(String::is_empty) {
        return Err(PatchError::Invalid(format!(
            "{path:?} has an empty segment"
        )));
    }
    Ok(parts)
}

/// The value at `parts`, or the first member that is missing.
fn walk<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for p in parts {
        cur = cur
            .get_mut(p)
            .filter(|v| !v.is_null())
            .ok_or_else(|| p.clone())?;
    }
    Ok(cur)
}

/// The top-level attribute a path changes (`/driver_info/x` → `driver_info`).
pub fn root_of(op: &Value) -> Option<String> {
    let path = op["path"].as_str()?;
    split(path).ok()?.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn add_replace_remove() {
        let mut d = json!({"name": "a", "driver_info": {"x": 1}});
        let ops = json!([
            {"op": "add", "path": "/driver_info/ipmi_port", "value": "623"},
            {"op": "replace", "path": "/name", "value": "b"},
            {"op": "remove", "path": "/driver_info/x"},
        ]);
        apply(&mut d, &ops).unwrap();
        assert_eq!(d, json!({"name": "b", "driver_info": {"ipmi_port": "623"}}));
    }

    #[test]
    fn errors_are_clear() {
        let mut d = json!({"name": "a", "driver_info": {}});
        let bad = |ops: Value, d: &mut Value| apply(d, &ops).unwrap_err();
        // python-jsonpatch's reasons, inside Ironic's PatchError wording.
        let e = bad(
            json!([{"op": "replace", "path": "/driver_info/nope", "value": 1}]),
            &mut d,
        );
        assert_eq!(
            e.to_string(),
            r#"Couldn't apply patch '{"op":"replace","path":"/driver_info/nope","value":1}'. Reason: can't replace a non-existent object 'nope'"#
        );
        let e = bad(
            json!([{"op": "replace", "path": "/bogus", "value": 1}]),
            &mut d,
        );
        assert!(
            e.to_string()
                .ends_with("Reason: can't replace a non-existent object 'bogus'"),
            "{e}"
        );
        let e = bad(
            json!([{"op": "remove", "path": "/driver_info/nope"}]),
            &mut d,
        );
        assert!(
            e.to_string()
                .ends_with("Reason: can't remove a non-existent object 'nope'"),
            "{e}"
        );
        let e = bad(
            json!([{"op": "add", "path": "/extra/a/b", "value": 1}]),
            &mut d,
        );
        assert!(
            e.to_string().ends_with("Reason: member 'extra' not found"),
            "{e}"
        );
        let long = "x".repeat(10_000);
        let e = bad(
            json!([{"op": "replace", "path": "/driver_info/nope", "value": long}]),
            &mut d,
        );
        assert!(e.to_string().len() < 400, "echoes the whole operation: {e}");
        assert!(matches!(
            bad(json!([{"op": "add", "path": "/bogus", "value": 1}]), &mut d),
            PatchError::NewRootAttribute(_)
        ));
        assert!(matches!(
            bad(json!([{"op": "move", "path": "/name"}]), &mut d),
            PatchError::Invalid(_)
        ));
        assert!(matches!(
            bad(json!({"op": "add"}), &mut d),
            PatchError::Invalid(_)
        ));
    }
}
