//! JSON Patch (RFC 6902: add, replace, remove) as Ironic applies it to a
//! node or port: `add` on an existing member replaces it, `replace` and
//! `remove` need the member to exist. Callers: `service` for PATCH.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("Invalid patch: {0}")]
    Invalid(String),
    #[error("Adding a new attribute ({0}) to the root of the resource is not allowed.")]
    NewRootAttribute(String),
    #[error("Can't remove non-existent object '{0}'.")]
    Missing(String),
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
    let parent = walk(doc, parents, path)?;
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
                if parents.is_empty() {
                    return Err(PatchError::NewRootAttribute(path.to_owned()));
                }
                return Err(PatchError::Missing(path.to_owned()));
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
                    None => Err(PatchError::Missing(path.to_owned())),
                };
            }
            map.remove(last)
                .map(drop)
                .ok_or_else(|| PatchError::Missing(path.to_owned()))
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

fn walk<'a>(doc: &'a mut Value, parts: &[String], path: &str) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for p in parts {
        cur = cur
            .get_mut(p)
            .filter(|v| !v.is_null())
            .ok_or_else(|| PatchError::Missing(path.to_owned()))?;
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
        assert!(matches!(
            bad(
                json!([{"op": "replace", "path": "/driver_info/nope", "value": 1}]),
                &mut d
            ),
            PatchError::Missing(_)
        ));
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
