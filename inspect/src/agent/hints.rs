//! Root device hints (a node's `properties.root_device`), as Ironic reads
//! them: the hint names and types Ironic accepts, an optional operator in
//! front of the value (`s==` is the default for strings, `==` for the
//! size in GiB; `s!=`, `<in>`, `<or>`, `>=`, `<=`, `>`, `<`, `!=`), and a
//! disk matches when it satisfies every hint.
//!
//! Callers: [`super::root_disk`].

use serde_json::Value;

use super::{Dict, GIB};

/// Why a node's hints cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HintError {
    #[error("Root device hints must be a JSON object, not {0}")]
    NotObject(String),
    #[error("The hints \"{0}\" are invalid. Valid hints are: \"size, model, wwn, serial, vendor, wwn_with_extension, wwn_vendor_extension, name, rotational, hctl, by_path\"")]
    Unknown(String),
    #[error("Root device hint \"{0}\" is not a string value. Hint expression: {1}")]
    NotString(String, String),
    #[error("Root device hint \"{0}\" is not an integer value. Current value: {1}")]
    NotInteger(String, String),
    #[error("Root device hint \"{0}\" should be a positive integer. Current value: {1}")]
    NotPositive(String, String),
    #[error("Root device hint \"{0}\" is not a Boolean value. Current value: {1}")]
    NotBool(String, String),
    #[error("Root device hint \"{0}\" expression is empty")]
    Empty(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Str,
    Bool,
}

const HINTS: &[(&str, Kind)] = &[
    ("size", Kind::Int),
    ("model", Kind::Str),
    ("wwn", Kind::Str),
    ("serial", Kind::Str),
    ("vendor", Kind::Str),
    ("wwn_with_extension", Kind::Str),
    ("wwn_vendor_extension", Kind::Str),
    ("name", Kind::Str),
    ("rotational", Kind::Bool),
    ("hctl", Kind::Str),
    ("by_path", Kind::Str),
];

/// The operators, longest first so `s==` is not read as `==`.
const OPS: &[&str] = &[
    "<or>", "<in>", "s==", "s!=", "s>=", "s<=", "s>", "s<", "==", "!=", ">=", "<=", ">", "<",
];

#[derive(Clone, Debug, PartialEq)]
enum Test {
    /// `op` and its values (`<or>` has several).
    Op(&'static str, Vec<String>),
    Bool(bool),
}

/// Parsed hints: every one must hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Hints(Vec<(&'static str, Kind, Test)>);

fn shown(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// `[op] value [op value]*` → the operator (default `dflt`) and values.
fn split(expr: &str, dflt: &'static str) -> (&'static str, Vec<String>) {
    let e = expr.trim().to_lowercase();
    for op in OPS {
        if let Some(rest) = e.strip_prefix(op) {
            let values = rest
                .split(op)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            return (op, values);
        }
    }
    (dflt, vec![e])
}

fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
            "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Parse and check `raw` (a node's `root_device`).
pub fn parse(raw: &Value) -> Result<Hints, HintError> {
    let Value::Object(m) = raw else {
        return Err(HintError::NotObject(raw.to_string()));
    };
    let unknown: Vec<&str> = m
        .keys()
        .map(String::as_str)
        .filter(|k| !HINTS.iter().any(|(n, _)| n == k))
        .collect();
    if !unknown.is_empty() {
        return Err(HintError::Unknown(unknown.join(", ")));
    }
    let mut out = Vec::new();
    for (name, kind) in HINTS {
        let Some(v) = m.get(*name) else { continue };
        let n = (*name).to_owned();
        let test = match kind {
            Kind::Bool => Test::Bool(parse_bool(v).ok_or(HintError::NotBool(n, shown(v)))?),
            Kind::Str => {
                let Value::String(s) = v else {
                    return Err(HintError::NotString(n, shown(v)));
                };
                if s.trim().is_empty() {
                    return Err(HintError::Empty(n));
                }
                let (op, values) = split(s, "s==");
                Test::Op(op, values)
            }
            Kind::Int => {
                let (op, values) = split(&shown(v), "==");
                if values.is_empty() {
                    return Err(HintError::Empty(n));
                }
                for x in &values {
                    let i: i64 = x
                        .parse()
                        .map_err(|_| HintError::NotInteger(n.clone(), shown(v)))?;
                    if i <= 0 {
                        return Err(HintError::NotPositive(n, shown(v)));
                    }
                }
                Test::Op(op, values)
            }
        };
        out.push((*name, *kind, test));
    }
    Ok(Hints(out))
}

fn num_cmp(op: &str, have: f64, want: f64) -> bool {
    match op {
        "==" | "<or>" => (have - want).abs() < f64::EPSILON,
        "!=" => (have - want).abs() >= f64::EPSILON,
        ">=" => have >= want,
        "<=" => have <= want,
        ">" => have > want,
        "<" => have < want,
        _ => false,
    }
}

fn str_cmp(op: &str, have: &str, want: &str) -> bool {
    match op {
        "s==" | "<or>" => have == want,
        "s!=" => have != want,
        "s>=" => have >= want,
        "s<=" => have <= want,
        "s>" => have > want,
        "s<" => have < want,
        "<in>" => have.contains(want),
        _ => false,
    }
}

impl Hints {
    /// Does `disk` (an inventory disk: size in bytes, name, model, ...)
    /// satisfy every hint? A disk without the attribute does not.
    pub fn matches(&self, disk: &Dict) -> bool {
        self.0.iter().all(|(name, kind, test)| {
            let Some(have) = disk.get(*name).filter(|v| !v.is_null()) else {
                return false;
            };
            match (kind, test) {
                (Kind::Bool, Test::Bool(want)) => parse_bool(have) == Some(*want),
                (Kind::Int, Test::Op(op, values)) => {
                    let Some(bytes) = have.as_u64() else {
                        return false;
                    };
                    let gib = bytes as f64 / GIB as f64;
                    let any = |w: &String| w.parse::<f64>().is_ok_and(|w| num_cmp(op, gib, w));
                    match *op {
                        "<or>" => values.iter().any(any),
                        _ => values.first().is_some_and(any),
                    }
                }
                (Kind::Str, Test::Op(op, values)) => {
                    let have = shown(have).trim().to_lowercase();
                    match *op {
                        "<or>" => values.iter().any(|w| str_cmp(op, &have, w)),
                        _ => values.first().is_some_and(|w| str_cmp(op, &have, w)),
                    }
                }
                _ => false,
            }
        })
    }
}
