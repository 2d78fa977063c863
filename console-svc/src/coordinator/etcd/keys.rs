//! The etcd key layout, in one place: every key and key prefix this service
//! writes or reads, built from the configured prefix, and keys parsed back.
//!
//! ```text
//!  <prefix>members/<replica>        member doc, bound to the replica's lease
//!  <prefix>consoles/<node>/spec     desired state (sealed passwords)
//!  <prefix>consoles/<node>/owner    claim; create revision = fencing token
//!  <prefix>consoles/<node>/endpoint where the owner serves it
//!  <prefix>consoles/<node>/failure  why the last claim could not start it (claimer's lease)
//!  <prefix>ports/<port>             node holding a cluster-wide port
//! ```
//!
//! The prefix is taken as given (config requires it to end in `/`). The
//! coordinator and spec store use [`Keys::new`] with it; the cluster layer
//! reads the mirror ([`super::view::ClusterView`]), whose keys are relative
//! to the prefix, through [`Keys::relative`].

use crate::spec::NodeId;

const MEMBERS: &str = "members/";
const CONSOLES: &str = "consoles/";
const PORTS: &str = "ports/";
const SPEC: &str = "spec";
const OWNER: &str = "owner";
const ENDPOINT: &str = "endpoint";
const FAILURE: &str = "failure";

/// Every key this service writes, under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// `members/<replica>`.
    Member(String),
    /// `consoles/<node>/<leaf>`.
    Console(NodeId, Leaf),
    /// `ports/<port>`.
    Port(u16),
}

/// The last part of a `consoles/<node>/…` key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leaf {
    Spec,
    Owner,
    Endpoint,
    Failure,
    /// A leaf this version does not know (written by a newer one).
    Other(String),
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Keys relative to the prefix, as the mirror names them.
    pub const fn relative() -> Self {
        Self {
            prefix: String::new(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `key` without the prefix, if it is under it.
    pub fn strip<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.prefix)
    }

    pub fn member(&self, replica: &str) -> String {
        format!("{}{MEMBERS}{replica}", self.prefix)
    }

    pub fn members_prefix(&self) -> String {
        format!("{}{MEMBERS}", self.prefix)
    }

    pub fn spec(&self, node: &NodeId) -> String {
        self.console(node, SPEC)
    }

    pub fn owner(&self, node: &NodeId) -> String {
        self.console(node, OWNER)
    }

    pub fn endpoint(&self, node: &NodeId) -> String {
        self.console(node, ENDPOINT)
    }

    pub fn failure(&self, node: &NodeId) -> String {
        self.console(node, FAILURE)
    }

    /// Every key of one node: `consoles/<node>/`.
    pub fn node_prefix(&self, node: &NodeId) -> String {
        format!("{}{CONSOLES}{node}/", self.prefix)
    }

    pub fn consoles_prefix(&self) -> String {
        format!("{}{CONSOLES}", self.prefix)
    }

    pub fn port(&self, port: u16) -> String {
        format!("{}{PORTS}{port}", self.prefix)
    }

    pub fn ports_prefix(&self) -> String {
        format!("{}{PORTS}", self.prefix)
    }

    fn console(&self, node: &NodeId, leaf: &str) -> String {
        format!("{}{CONSOLES}{node}/{leaf}", self.prefix)
    }

    /// What `key` names; `None` for a key outside the layout (not under
    /// the prefix, a node id or port that does not parse).
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = self.strip(key)?;
        if let Some(replica) = rest.strip_prefix(MEMBERS) {
            return Some(Key::Member(replica.to_owned()));
        }
        if let Some(port) = rest.strip_prefix(PORTS) {
            return port.parse().ok().map(Key::Port);
        }
        let (node, leaf) = rest.strip_prefix(CONSOLES)?.rsplit_once('/')?;
        let node = NodeId::parse(node).ok()?;
        let leaf = match leaf {
            SPEC => Leaf::Spec,
            OWNER => Leaf::Owner,
            ENDPOINT => Leaf::Endpoint,
            FAILURE => Leaf::Failure,
            other => Leaf::Other(other.to_owned()),
        };
        Some(Key::Console(node, leaf))
    }

    /// The node of any `consoles/<node>/…` key.
    pub fn node_of(&self, key: &str) -> Option<NodeId> {
        match self.parse(key)? {
            Key::Console(node, _) => Some(node),
            _ => None,
        }
    }

    /// The node of a `consoles/<node>/spec` key.
    pub fn parse_spec(&self, key: &str) -> Option<NodeId> {
        match self.parse(key)? {
            Key::Console(node, Leaf::Spec) => Some(node),
            _ => None,
        }
    }

    /// The port of a `ports/<port>` key.
    pub fn parse_port(&self, key: &str) -> Option<u16> {
        match self.parse(key)? {
            Key::Port(port) => Some(port),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::parse(id).unwrap()
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let k = Keys::new("/porthole/console/");
        let n = node("node-1");
        assert_eq!(k.member("replica-a"), "/porthole/console/members/replica-a");
        assert_eq!(k.members_prefix(), "/porthole/console/members/");
        assert_eq!(k.spec(&n), "/porthole/console/consoles/node-1/spec");
        assert_eq!(k.owner(&n), "/porthole/console/consoles/node-1/owner");
        assert_eq!(k.endpoint(&n), "/porthole/console/consoles/node-1/endpoint");
        assert_eq!(k.node_prefix(&n), "/porthole/console/consoles/node-1/");
        assert_eq!(k.consoles_prefix(), "/porthole/console/consoles/");
        assert_eq!(k.port(12000), "/porthole/console/ports/12000");
        assert_eq!(k.ports_prefix(), "/porthole/console/ports/");
        let rel = Keys::relative();
        assert_eq!(rel.spec(&n), "consoles/node-1/spec");
        assert_eq!(rel.member("r"), "members/r");
        assert_eq!(rel.port(1), "ports/1");
    }

    #[test]
    fn every_built_key_parses_back() {
        // Every character a node id may hold, and ids that look like leaves.
        let odd = [
            "a.b~c_d-E9",
            "...",
            "~",
            "spec",
            "owner",
            "endpoint",
            "consoles",
        ];
        for prefix in ["/porthole/console/", "/no-slash", "", "x/consoles/"] {
            let k = Keys::new(prefix);
            for id in odd {
                let n = node(id);
                assert_eq!(
                    k.parse(&k.spec(&n)),
                    Some(Key::Console(n.clone(), Leaf::Spec))
                );
                assert_eq!(
                    k.parse(&k.owner(&n)),
                    Some(Key::Console(n.clone(), Leaf::Owner))
                );
                let ep = k.endpoint(&n);
                assert_eq!(k.parse(&ep), Some(Key::Console(n.clone(), Leaf::Endpoint)));
                assert_eq!(k.node_of(&ep), Some(n.clone()));
                assert_eq!(k.parse_spec(&k.spec(&n)), Some(n.clone()));
                assert_eq!(k.parse_spec(&ep), None, "{ep} is no spec key");
                assert!(k.spec(&n).starts_with(&k.node_prefix(&n)));
                assert!(k.node_prefix(&n).starts_with(&k.consoles_prefix()));
            }
            let member = k.member("replica/odd.name");
            assert_eq!(
                k.parse(&member),
                Some(Key::Member("replica/odd.name".into()))
            );
            assert!(member.starts_with(&k.members_prefix()));
            assert_eq!(k.parse_port(&k.port(65535)), Some(65535));
            assert!(k.port(7).starts_with(&k.ports_prefix()));
        }
    }

    #[test]
    fn the_prefix_is_taken_as_given() {
        // With or without a trailing slash the prefix is not altered (the
        // config insists on one); keys of one prefix are not another's.
        let slash = Keys::new("/p/");
        let bare = Keys::new("/p");
        let n = node("n");
        assert_eq!(slash.spec(&n), "/p/consoles/n/spec");
        assert_eq!(bare.spec(&n), "/pconsoles/n/spec");
        assert_eq!(bare.parse(&slash.spec(&n)), None);
        assert_eq!(slash.parse(&bare.spec(&n)), None);
        assert_eq!(slash.strip("/p/ports/1"), Some("ports/1"));
        assert_eq!(slash.strip("/q/ports/1"), None);
    }

    #[test]
    fn keys_outside_the_layout_are_not_parsed() {
        let k = Keys::new("/p/");
        for key in [
            "/p/consoles/bad id/spec", // space: not a node id
            "/p/consoles/a/b/spec",    // "a/b": not a node id
            "/p/consoles/spec",        // no node
            "/p/consoles//spec",       // empty node
            "/p/ports/not-a-port",
            "/p/ports/65536",
            "/p/other/thing",
            "/elsewhere/consoles/a/spec",
        ] {
            assert_eq!(k.parse(key), None, "{key}");
            assert_eq!(k.node_of(key), None, "{key}");
        }
        assert_eq!(
            k.parse("/p/consoles/a/later"),
            Some(Key::Console(node("a"), Leaf::Other("later".into())))
        );
    }
}
