//! The JSON a `consoles/<node>/spec` key holds, and its conversion from and
//! to [`ConsoleSpec`]. Passwords are sealed on the way in and opened on the
//! way out; nothing else in the service sees the sealed form.
//!
//! ```text
//!  ConsoleSpec + port ──to_json (seal)──▶ {"node","kind","port","target":{…"password":"sealed:v1:…"},
//!                                          "created_at","updated_at"}
//!  value of consoles/<node>/spec ──from_json (open, validate)──▶ ConsoleSpec{requested_port: Some(port)}
//!                                ──times──▶ SpecTimes (None for documents written before them)
//! ```
//!
//! The times (RFC 3339, UTC) say when the console's spec was first written
//! and last changed, so every replica reports the same ones. The writer
//! chooses them (see `Cluster::enable`).
//!
//! Fields a reader does not know are ignored: during a rolling upgrade the
//! replicas of the previous release read what the new ones write (that is
//! how the times were added). A change that an older replica must not
//! ignore needs a new `kind` or a new document key, not a new field.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::seal::{SealError, Sealer};
use crate::spec::{
    ConsoleKind, ConsoleSpec, IpmiTarget, NodeId, PrivilegeLevel, Target, VncTarget,
};

/// When a console's spec was first written and last changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecTimes {
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl SpecTimes {
    /// A spec written now for the first time.
    pub fn new_at(now: SystemTime) -> Self {
        Self {
            created_at: now,
            updated_at: now,
        }
    }

    /// The same console's spec, changed at `now`.
    pub fn changed_at(self, now: SystemTime) -> Self {
        Self {
            created_at: self.created_at,
            updated_at: now,
        }
    }
}

/// The times stored in a spec document (None when it predates them or is
/// not a spec document at all).
pub fn times(json: &[u8]) -> Option<SpecTimes> {
    #[derive(Deserialize)]
    struct TimesOnly {
        #[serde(default, with = "humantime_serde")]
        created_at: Option<SystemTime>,
        #[serde(default, with = "humantime_serde")]
        updated_at: Option<SystemTime>,
    }
    let doc: TimesOnly = serde_json::from_slice(json).ok()?;
    let created_at = doc.created_at?;
    Some(SpecTimes {
        created_at,
        updated_at: doc.updated_at.unwrap_or(created_at),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SpecDocError {
    #[error("spec of {node}: {reason}")]
    Invalid { node: String, reason: String },
    #[error("spec of {node}: {source}")]
    Seal { node: String, source: SealError },
}

#[derive(Serialize, Deserialize)]
struct SpecDoc {
    node: String,
    kind: KindDoc,
    /// The console's port, assigned cluster-wide (`ports/<port>`).
    port: u16,
    /// The service chose `port` for this spec (the request named none and
    /// the node held none): where it is busy it may move to the next free
    /// one. Absent (false): a kept or explicit port, never moved.
    #[serde(default, skip_serializing_if = "is_false")]
    port_auto: bool,
    target: TargetDoc,
    /// Absent in documents written before the times were kept.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    created_at: Option<SystemTime>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    updated_at: Option<SystemTime>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum KindDoc {
    Serial,
    Vnc,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TargetDoc {
    Ipmi(IpmiDoc),
    Vnc(VncDoc),
}

#[derive(Serialize, Deserialize)]
struct IpmiDoc {
    address: String,
    port: u16,
    username: String,
    /// Sealed.
    password: String,
    cipher_suite: u8,
    privilege: String,
}

#[derive(Serialize, Deserialize)]
struct VncDoc {
    host: String,
    port: u16,
    /// Sealed; absent when the VNC server wants none.
    password: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether a spec document's port was the service's own choice (see
/// `SpecDoc::port_auto`); false for anything else.
pub fn port_auto(json: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct AutoOnly {
        #[serde(default)]
        port_auto: bool,
    }
    serde_json::from_slice::<AutoOnly>(json).is_ok_and(|d| d.port_auto)
}

/// Where a spec's port came from: the service's choice (`auto`, which may
/// move when busy) or the node's kept or explicit one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecPort {
    pub port: u16,
    pub auto: bool,
}

impl SpecPort {
    /// A kept or explicit port.
    pub fn kept(port: u16) -> Self {
        Self { port, auto: false }
    }
}

/// The stored form of `spec` served on `port`, written with `times`.
pub fn to_json(sealer: &Sealer, spec: &ConsoleSpec, port: SpecPort, times: SpecTimes) -> String {
    let node = spec.node.as_str();
    let target = match &spec.target {
        Target::Ipmi(t) => TargetDoc::Ipmi(IpmiDoc {
            address: t.address.clone(),
            port: t.port,
            username: t.username.clone(),
            password: sealer.seal(node, &t.password),
            cipher_suite: t.cipher_suite,
            privilege: t.privilege.as_ipmitool_arg().to_owned(),
        }),
        Target::Vnc(t) => TargetDoc::Vnc(VncDoc {
            host: t.host.clone(),
            port: t.port,
            password: t.password.as_ref().map(|p| sealer.seal(node, p)),
        }),
    };
    let doc = SpecDoc {
        node: node.to_owned(),
        kind: match spec.kind() {
            ConsoleKind::Serial => KindDoc::Serial,
            ConsoleKind::Vnc => KindDoc::Vnc,
        },
        port: port.port,
        port_auto: port.auto,
        target,
        created_at: Some(times.created_at),
        updated_at: Some(times.updated_at),
    };
    serde_json::to_string(&doc).expect("a spec serializes")
}

/// The spec stored for `node` (the key's node), with its port as the
/// requested one so every replica serves it on the same port.
pub fn from_json(sealer: &Sealer, node: &NodeId, json: &[u8]) -> Result<ConsoleSpec, SpecDocError> {
    let invalid = |reason: String| SpecDocError::Invalid {
        node: node.to_string(),
        reason,
    };
    let doc: SpecDoc = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
    if doc.node != node.as_str() {
        return Err(invalid(format!("names node {:?}", doc.node)));
    }
    let open = |sealed: &str| {
        sealer
            .open(node.as_str(), sealed)
            .map_err(|source| SpecDocError::Seal {
                node: node.to_string(),
                source,
            })
    };
    let target = match doc.target {
        TargetDoc::Ipmi(t) if doc.kind == KindDoc::Serial => Target::Ipmi(IpmiTarget {
            address: t.address,
            port: t.port,
            username: t.username,
            password: open(&t.password)?,
            cipher_suite: t.cipher_suite,
            privilege: PrivilegeLevel::parse(&t.privilege).map_err(|e| invalid(e.to_string()))?,
        }),
        TargetDoc::Vnc(t) if doc.kind == KindDoc::Vnc => Target::Vnc(VncTarget {
            host: t.host,
            port: t.port,
            password: t.password.as_deref().map(open).transpose()?,
        }),
        _ => return Err(invalid("kind and target disagree".into())),
    };
    Ok(ConsoleSpec {
        node: node.clone(),
        target,
        requested_port: Some(doc.port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn node() -> NodeId {
        NodeId::parse("node-1").unwrap()
    }

    fn ipmi_spec() -> ConsoleSpec {
        ConsoleSpec {
            node: node(),
            target: Target::Ipmi(IpmiTarget {
                address: "127.0.0.1".into(),
                port: 21100,
                username: "admin".into(),
                password: Secret::new("hunter2"),
                cipher_suite: 3,
                privilege: PrivilegeLevel::Operator,
            }),
            requested_port: None,
        }
    }

    #[test]
    fn round_trips_without_clear_passwords() {
        let sealer = Sealer::from_key(&[3; 32]);
        let json = to_json(&sealer, &ipmi_spec(), SpecPort::kept(10005), now());
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains("\"port\":10005") && json.contains("\"kind\":\"serial\""));
        let back = from_json(&sealer, &node(), json.as_bytes()).unwrap();
        let mut want = ipmi_spec();
        want.requested_port = Some(10005);
        assert_eq!(back, want);

        let vnc = ConsoleSpec {
            node: node(),
            target: Target::Vnc(VncTarget {
                host: "::1".into(),
                port: 5900,
                password: Some(Secret::new("vncpass")),
            }),
            requested_port: Some(10006),
        };
        let json = to_json(&sealer, &vnc, SpecPort::kept(10006), now());
        assert!(!json.contains("vncpass"), "{json}");
        assert_eq!(from_json(&sealer, &node(), json.as_bytes()).unwrap(), vnc);
    }

    fn now() -> SpecTimes {
        SpecTimes::new_at(SystemTime::now())
    }

    #[test]
    fn times_are_the_writers_and_old_documents_still_read() {
        let sealer = Sealer::from_key(&[3; 32]);
        let created = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let changed = created + std::time::Duration::from_nanos(86_400_000_000_007);
        let times = SpecTimes::new_at(created).changed_at(changed);
        let json = to_json(&sealer, &ipmi_spec(), SpecPort::kept(10005), times);
        assert!(
            json.contains("\"created_at\":\"2023-11-14T22:13:20.123"),
            "{json}"
        );
        assert_eq!(
            super::times(json.as_bytes()),
            Some(times),
            "exact round trip"
        );
        assert!(from_json(&sealer, &node(), json.as_bytes()).is_ok());

        // A document from before the times: readable, no times.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("created_at");
        fields.remove("updated_at");
        let old = old.to_string();
        let mut want = ipmi_spec();
        want.requested_port = Some(10005);
        assert_eq!(from_json(&sealer, &node(), old.as_bytes()).unwrap(), want);
        assert_eq!(super::times(old.as_bytes()), None);
    }

    /// What a later release adds is ignored, not refused.
    #[test]
    fn fields_from_a_later_release_are_ignored() {
        let sealer = Sealer::from_key(&[3; 32]);
        let json = to_json(&sealer, &ipmi_spec(), SpecPort::kept(10005), now());
        let mut doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        doc["added_later"] = serde_json::json!({"x": 1});
        doc["target"]["ipmi"]["added_later_too"] = serde_json::json!(true);
        let mut want = ipmi_spec();
        want.requested_port = Some(10005);
        let read = from_json(&sealer, &node(), doc.to_string().as_bytes());
        assert_eq!(read.unwrap(), want);
    }

    #[test]
    fn refuses_other_nodes_keys_and_damage() {
        let sealer = Sealer::from_key(&[3; 32]);
        let json = to_json(&sealer, &ipmi_spec(), SpecPort::kept(10005), now());
        let other = NodeId::parse("node-2").unwrap();
        let err = from_json(&sealer, &other, json.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("names node"), "{err}");
        let wrong = Sealer::from_key(&[4; 32]);
        assert!(matches!(
            from_json(&wrong, &node(), json.as_bytes()),
            Err(SpecDocError::Seal { .. })
        ));
        let swapped = json.replace("\"kind\":\"serial\"", "\"kind\":\"vnc\"");
        assert!(from_json(&sealer, &node(), swapped.as_bytes()).is_err());
        assert!(from_json(&sealer, &node(), b"{").is_err());
    }
}
