//! JSON Patch (RFC 6902) as Ironic applies it to a node, port, portgroup or
//! volume record: `add`, `remove`, `replace`, `move`, `copy` and `test`,
//! JSON pointers (RFC 6901) with `~0`/`~1` escapes, array indices and `-`.
//!
//! Ironic's rules on top of the RFC: `add` of a member the root does not
//! have is refused (checked for every operation before any applies), and
//! removing a root member resets it to `null` rather than dropping it (the
//! caller then applies the field's default). The patch applies to a copy,
//! so `doc` is unchanged unless every operation succeeds. A failing
//! operation is reported as Ironic does (`Couldn't apply patch '<op>'.
//! Reason: <python-jsonpatch's reason>`). Callers: `service` for every
//! PATCH (nodes, ports, portgroups, volume connectors and targets).

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
/// The longest rendering of a value echoed in a `test` failure.
const VALUE_ECHO: usize = 64;

fn echo(v: &Value, max: usize) -> String {
    let mut s = v.to_string();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

fn failed(op: &Value, reason: String) -> PatchError {
    PatchError::Failed {
        op: echo(op, OP_ECHO),
        reason,
    }
}

/// The six operations of RFC 6902.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Add,
    Remove,
    Replace,
    Move,
    Copy,
    Test,
}

/// One operation, checked for shape.
struct Op<'a> {
    kind: Kind,
    path: Vec<String>,
    from: Option<Vec<String>>,
    value: Option<&'a Value>,
    raw: &'a Value,
}

/// Check the shape of every operation in `ops` (a JSON array).
fn parse(ops: &Value) -> Result<Vec<Op<'_>>, PatchError> {
    let list = ops
        .as_array()
        .ok_or_else(|| PatchError::Invalid("a JSON Patch is a list of operations".into()))?;
    list.iter().map(parse_one).collect()
}

fn parse_one(raw: &Value) -> Result<Op<'_>, PatchError> {
    let obj = raw
        .as_object()
        .ok_or_else(|| PatchError::Invalid(format!("{} is not an operation", echo(raw, 64))))?;
    let kind = match obj.get("op").and_then(Value::as_str) {
        Some("add") => Kind::Add,
        Some("remove") => Kind::Remove,
        Some("replace") => Kind::Replace,
        Some("move") => Kind::Move,
        Some("copy") => Kind::Copy,
        Some("test") => Kind::Test,
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "operation {:?} is not one of add, remove, replace, move, copy, test",
                other.chars().take(32).collect::<String>()
            )))
        }
        None => return Err(PatchError::Invalid("an operation needs \"op\"".into())),
    };
    let path = obj
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| PatchError::Invalid("an operation needs \"path\"".into()))?;
    let path = pointer(path)?;
    let value = obj.get("value");
    if matches!(kind, Kind::Add | Kind::Replace | Kind::Test) && value.is_none() {
        return Err(PatchError::Invalid(format!(
            "'{}' is a mandatory attribute for an {} operation",
            "value",
            obj["op"].as_str().unwrap_or_default()
        )));
    }
    let from = match kind {
        Kind::Move | Kind::Copy => Some(pointer(
            obj.get("from").and_then(Value::as_str).ok_or_else(|| {
                PatchError::Invalid(format!(
                    "'from' is a mandatory attribute for a {} operation",
                    obj["op"].as_str().unwrap_or_default()
                ))
            })?,
        )?),
        _ => None,
    };
    Ok(Op {
        kind,
        path,
        from,
        value,
        raw,
    })
}

/// An RFC 6901 pointer into a resource: at least one token, `~1` → `/`
/// and `~0` → `~` (in that order, so `~01` is `~1`).
fn pointer(path: &str) -> Result<Vec<String>, PatchError> {
    let shown = || path.chars().take(64).collect::<String>();
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| PatchError::Invalid(format!("{:?} is not a JSON pointer", shown())))?;
    let tokens: Vec<String> = rest
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    if tokens[0].is_empty() {
        return Err(PatchError::Invalid(format!(
            "{:?} names no attribute of the resource",
            shown()
        )));
    }
    Ok(tokens)
}

/// Apply `ops` (a JSON array) to `doc`: all of them, or none.
pub fn apply(doc: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let ops = parse(ops)?;
    // As Ironic's apply_jsonpatch: refuse new root members up front.
    for op in &ops {
        let adds_root = matches!(op.kind, Kind::Add | Kind::Move | Kind::Copy);
        if adds_root && op.path.len() == 1 && doc.get(&op.path[0]).is_none() {
            return Err(PatchError::NewRootAttribute(format!("/{}", op.path[0])));
        }
    }
    let mut work = doc.clone();
    for op in &ops {
        apply_one(&mut work, op).map_err(|reason| failed(op.raw, reason))?;
    }
    *doc = work;
    Ok(())
}

fn apply_one(doc: &mut Value, op: &Op<'_>) -> Result<(), String> {
    match op.kind {
        Kind::Add => add(doc, &op.path, op.value.cloned().unwrap_or(Value::Null)),
        Kind::Remove => remove(doc, &op.path).map(drop),
        Kind::Replace => replace(doc, &op.path, op.value.cloned().unwrap_or(Value::Null)),
        Kind::Test => {
            let want = op.value.unwrap_or(&Value::Null);
            let have = resolve(doc, &op.path)?;
            if have == want {
                Ok(())
            } else {
                Err(format!(
                    "{} is not equal to tested value {}",
                    echo(have, VALUE_ECHO),
                    echo(want, VALUE_ECHO)
                ))
            }
        }
        Kind::Copy => {
            let from = op.from.as_deref().unwrap_or_default();
            let v = resolve(doc, from)?.clone();
            add(doc, &op.path, v)
        }
        Kind::Move => {
            let from = op.from.as_deref().unwrap_or_default();
            if from == op.path.as_slice() {
                return Ok(());
            }
            if op.path.len() > from.len() && op.path.starts_with(from) {
                return Err("Cannot move values into their own children".into());
            }
            let v = remove(doc, from)?;
            add(doc, &op.path, v)
        }
    }
}

/// An array index token: digits without a leading zero.
fn index(token: &str) -> Result<usize, String> {
    let ok = !token.is_empty()
        && token.chars().all(|c| c.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    ok.then(|| token.parse().ok())
        .flatten()
        .ok_or_else(|| format!("'{token}' is not a valid sequence index"))
}

/// The value at `tokens`.
fn resolve<'a>(doc: &'a Value, tokens: &[String]) -> Result<&'a Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = step(cur, t)?;
    }
    Ok(cur)
}

fn step<'a>(cur: &'a Value, t: &str) -> Result<&'a Value, String> {
    match cur {
        Value::Object(m) => m.get(t).ok_or_else(|| format!("member '{t}' not found")),
        Value::Array(a) => {
            let i = index(t)?;
            a.get(i)
                .ok_or_else(|| format!("index '{i}' is out of bounds"))
        }
        _ => Err(format!("member '{t}' not found")),
    }
}

/// The container holding the last token of `tokens`. A `null` on the way
/// counts as missing (an unset dict attribute such as `extra`).
fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let (_, parents) = tokens.split_last().expect("a pointer has a token");
    let mut cur = doc;
    for t in parents {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t.as_str())
                .filter(|v| !v.is_null())
                .ok_or_else(|| format!("member '{t}' not found"))?,
            Value::Array(a) => {
                let i = index(t)?;
                a.get_mut(i)
                    .ok_or_else(|| format!("index '{i}' is out of bounds"))?
            }
            _ => return Err(format!("member '{t}' not found")),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    let last = tokens.last().expect("a pointer has a token");
    match parent_mut(doc, tokens)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" { a.len() } else { index(last)? };
            if i > a.len() {
                return Err("can't insert outside of list".into());
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!(
            "can't add member '{last}' to a value that is not an object or list"
        )),
    }
}

/// Remove and return the value at `tokens`; a root member becomes `null`.
fn remove(doc: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let last = tokens.last().expect("a pointer has a token");
    let at_root = tokens.len() == 1;
    match parent_mut(doc, tokens)? {
        Value::Object(m) if at_root => match m.get_mut(last.as_str()) {
            Some(v) => Ok(std::mem::take(v)),
            None => Err(format!("can't remove a non-existent object '{last}'")),
        },
        Value::Object(m) => m
            .remove(last.as_str())
            .ok_or_else(|| format!("can't remove a non-existent object '{last}'")),
        Value::Array(a) => {
            let i = index(last)?;
            if i >= a.len() {
                return Err(format!("can't remove a non-existent object '{last}'"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("can't remove a non-existent object '{last}'")),
    }
}

fn replace(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    let last = tokens.last().expect("a pointer has a token");
    match parent_mut(doc, tokens)? {
        Value::Object(m) => match m.get_mut(last.as_str()) {
            Some(v) => {
                *v = value;
                Ok(())
            }
            None => Err(format!("can't replace a non-existent object '{last}'")),
        },
        Value::Array(a) => {
            let i = index(last)?;
            match a.get_mut(i) {
                Some(v) => {
                    *v = value;
                    Ok(())
                }
                None => Err("can't replace outside of list".into()),
            }
        }
        _ => Err(format!("can't replace a non-existent object '{last}'")),
    }
}

/// The top-level attribute a path changes (`/driver_info/x` → `driver_info`).
pub fn root_of(op: &Value) -> Option<String> {
    let path = op["path"].as_str()?;
    pointer(path).ok()?.into_iter().next()
}

/// Every top-level attribute `ops` touches: each `path`'s, and each
/// `from`'s (a `move` empties its source).
pub fn roots(ops: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for op in ops.as_array().into_iter().flatten() {
        for key in ["path", "from"] {
            if let Some(r) = op[key]
                .as_str()
                .and_then(|p| pointer(p).ok())
                .and_then(|t| t.into_iter().next())
            {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// The raw `path` of each operation whose root is not in `allowed`, for
/// Ironic's "Cannot patch ..." message.
pub fn first_disallowed<'a>(ops: &'a Value, allowed: &[&str]) -> Option<&'a str> {
    ops.as_array()?.iter().find_map(|op| {
        ["path", "from"].into_iter().find_map(|key| {
            let p = op[key].as_str()?;
            let root = pointer(p).ok()?.into_iter().next()?;
            (!allowed.contains(&root.as_str())).then_some(p)
        })
    })
}

#[cfg(test)]
mod tests;
