//! Console port allocation from Ironic's `[console] port_range`.
//!
//! The range is `start:end` with `end` excluded, as in Ironic. A node keeps
//! the port it was given for as long as the service runs (disable and enable
//! give it back the same one), an explicit per-node port is honoured when it
//! lies inside the range and is free, and an exhausted range is an error that
//! says so. A fresh choice (a node without a port asking for none) skips
//! the ports the caller finds busy, as Ironic's `acquire_port` does: a port
//! another program holds (a listener, or a client connection in TIME_WAIT
//! on it) is passed over for the next free one. Ports are only bookkeeping
//! here; the caller says what is busy and binding is the backends' job.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::spec::NodeId;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    #[error("no free console port in {range}: all {count} are assigned to nodes")]
    Exhausted { range: PortRange, count: usize },
    #[error(
        "no free console port in {range}: {assigned} are assigned to nodes and the other {busy} are in use by other programs"
    )]
    AllBusy {
        range: PortRange,
        assigned: usize,
        busy: usize,
    },
    #[error("port {port} is outside the console port range {range}")]
    OutOfRange { port: u16, range: PortRange },
    #[error("port {port} is already the console port of node {holder}")]
    Taken { port: u16, holder: String },
}

/// `start:end`, end excluded (Ironic's `[console] port_range`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRange(Range<u16>);

impl PortRange {
    pub fn new(start: u16, end: u16) -> Result<Self, String> {
        if start == 0 || start >= end {
            return Err(format!(
                "port_range {start}:{end} must be START:END with 0 < START < END (END excluded)"
            ));
        }
        Ok(Self(start..end))
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} (end excluded)", self.0.start, self.0.end)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once(':')
            .ok_or_else(|| format!("port_range {s:?} must look like 10000:20000"))?;
        let parse = |x: &str| {
            x.trim()
                .parse::<u16>()
                .map_err(|_| format!("port_range {s:?}: {x:?} is not a port number"))
        };
        Self::new(parse(a)?, parse(b)?)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which node holds which port. Assignments are sticky: `release` is never
/// called on disable, only when a node is forgotten.
#[derive(Debug)]
pub struct PortAllocator {
    range: PortRange,
    by_node: HashMap<NodeId, u16>,
    taken: BTreeSet<u16>,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            by_node: HashMap::new(),
            taken: BTreeSet::new(),
        }
    }

    /// An allocator that already knows these (node, port) assignments, such
    /// as the cluster's `ports/<port>` keys.
    pub fn with_assignments(
        range: PortRange,
        assignments: impl IntoIterator<Item = (NodeId, u16)>,
    ) -> Self {
        let mut a = Self::new(range);
        for (node, port) in assignments {
            a.taken.insert(port);
            a.by_node.insert(node, port);
        }
        a
    }

    /// One of the free ports picked by `seed` (None when the range is full).
    pub fn random_free(&self, seed: u64) -> Option<u16> {
        let free = self.range.len().saturating_sub(self.taken.len()).max(1);
        let skip = (seed % free as u64) as usize;
        self.range
            .0
            .clone()
            .filter(|p| !self.taken.contains(p))
            .nth(skip)
    }

    /// The port a node holds, if any.
    pub fn current(&self, node: &NodeId) -> Option<u16> {
        self.by_node.get(node).copied()
    }

    pub fn range(&self) -> &PortRange {
        &self.range
    }

    /// The node's port: the requested one, else the one it had, else the
    /// lowest free port in the range.
    pub fn assign(&mut self, node: &NodeId, requested: Option<u16>) -> Result<u16, PortError> {
        let current = self.by_node.get(node).copied();
        let port = match (requested, current) {
            (Some(port), _) => {
                if !self.range.contains(port) {
                    return Err(PortError::OutOfRange {
                        port,
                        range: self.range.clone(),
                    });
                }
                if let Some(holder) = self.holder(port).filter(|h| *h != node) {
                    return Err(PortError::Taken {
                        port,
                        holder: holder.to_string(),
                    });
                }
                port
            }
            (None, Some(port)) => port,
            (None, None) => self
                .range
                .0
                .clone()
                .find(|p| !self.taken.contains(p))
                .ok_or(PortError::Exhausted {
                    range: self.range.clone(),
                    count: self.range.len(),
                })?,
        };
        if let Some(old) = current.filter(|old| *old != port) {
            self.taken.remove(&old);
        }
        self.by_node.insert(node.clone(), port);
        self.taken.insert(port);
        Ok(port)
    }

    /// Whether `assign(node, requested)` picks a fresh port: the node asks
    /// for none and has none yet.
    pub fn is_fresh(&self, node: &NodeId, requested: Option<u16>) -> bool {
        requested.is_none() && !self.by_node.contains_key(node)
    }

    /// A fresh port for `node`: the lowest free one that `usable` accepts
    /// (the caller's "can it be bound now"), skipping the ones it refuses.
    /// A node that already holds a port gives it up for the new one.
    pub fn assign_fresh(
        &mut self,
        node: &NodeId,
        mut usable: impl FnMut(u16) -> bool,
    ) -> Result<u16, PortError> {
        let current = self.by_node.get(node).copied();
        let mut busy = 0;
        let mut found = None;
        for p in self.range.0.clone() {
            if self.taken.contains(&p) && current != Some(p) {
                continue;
            }
            if usable(p) {
                found = Some(p);
                break;
            }
            busy += 1;
        }
        let Some(port) = found else {
            let assigned = self.taken.len() - usize::from(current.is_some());
            if busy == 0 {
                return Err(PortError::Exhausted {
                    range: self.range.clone(),
                    count: self.range.len(),
                });
            }
            return Err(PortError::AllBusy {
                range: self.range.clone(),
                assigned,
                busy,
            });
        };
        if let Some(old) = current.filter(|old| *old != port) {
            self.taken.remove(&old);
        }
        self.by_node.insert(node.clone(), port);
        self.taken.insert(port);
        Ok(port)
    }

    /// Forget a node's port (its fresh choice could not be used).
    pub fn release(&mut self, node: &NodeId) {
        if let Some(port) = self.by_node.remove(node) {
            self.taken.remove(&port);
        }
    }

    fn holder(&self, port: u16) -> Option<&NodeId> {
        self.by_node
            .iter()
            .find_map(|(n, p)| (*p == port).then_some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::parse(n).unwrap()
    }

    #[test]
    fn parses_ironic_ranges_with_end_excluded() {
        let r: PortRange = "10000:10002".parse().unwrap();
        assert!(r.contains(10000) && r.contains(10001) && !r.contains(10002));
        assert_eq!(r.len(), 2);
        assert!("10:5".parse::<PortRange>().is_err());
        assert!("abc".parse::<PortRange>().is_err());
    }

    #[test]
    fn ports_are_sticky_and_exhaustion_is_reported() {
        let mut a = PortAllocator::new("10000:10002".parse().unwrap());
        assert_eq!(a.assign(&node("a"), None), Ok(10000));
        assert_eq!(a.assign(&node("b"), None), Ok(10001));
        assert_eq!(a.assign(&node("a"), None), Ok(10000), "sticky");
        let err = a.assign(&node("c"), None).unwrap_err();
        assert!(matches!(err, PortError::Exhausted { count: 2, .. }));
        assert!(err.to_string().contains("10000:10002"));
    }

    #[test]
    fn random_free_ports_are_free() {
        let a = PortAllocator::with_assignments(
            "10000:10004".parse().unwrap(),
            [(node("a"), 10000), (node("b"), 10002)],
        );
        for seed in 0..20 {
            let p = a.random_free(seed).unwrap();
            assert!(p == 10001 || p == 10003, "{p}");
        }
        let full =
            PortAllocator::with_assignments("10000:10001".parse().unwrap(), [(node("a"), 10000)]);
        assert_eq!(full.random_free(7), None);
    }

    #[test]
    fn fresh_choices_skip_busy_ports() {
        let mut a = PortAllocator::new("10000:10004".parse().unwrap());
        assert_eq!(a.assign(&node("a"), None), Ok(10000));
        assert!(a.is_fresh(&node("b"), None));
        assert!(!a.is_fresh(&node("a"), None), "a has its port");
        assert!(!a.is_fresh(&node("b"), Some(10003)), "explicit");
        // 10001 is held by another program: b gets 10002, and 10001 is
        // not recorded for anyone.
        let mut asked = Vec::new();
        let got = a.assign_fresh(&node("b"), |p| {
            asked.push(p);
            p != 10001
        });
        assert_eq!(got, Ok(10002));
        assert_eq!(asked, [10001, 10002], "assigned ports are not probed");
        assert_eq!(a.assign(&node("c"), None), Ok(10001), "bookkeeping only");
        // Everything free is busy: said so, nothing recorded.
        let err = a.assign_fresh(&node("d"), |_| false).unwrap_err();
        assert_eq!(
            err,
            PortError::AllBusy {
                range: a.range().clone(),
                assigned: 3,
                busy: 1
            }
        );
        assert!(
            err.to_string().contains("1 are in use by other programs"),
            "{err}"
        );
        assert_eq!(a.current(&node("d")), None);
        assert_eq!(a.assign_fresh(&node("d"), |_| true), Ok(10003));
        assert!(matches!(
            a.assign_fresh(&node("e"), |_| true),
            Err(PortError::Exhausted { count: 4, .. })
        ));
        // A node moved off a port it could not use gives it back.
        assert_eq!(a.assign_fresh(&node("d"), |p| p != 10003).ok(), None);
        a.release(&node("d"));
        assert_eq!(a.current(&node("d")), None);
        assert_eq!(a.assign(&node("e"), None), Ok(10003));
    }

    #[test]
    fn explicit_ports_are_checked() {
        let mut a = PortAllocator::new("10000:10010".parse().unwrap());
        assert_eq!(a.assign(&node("a"), Some(10005)), Ok(10005));
        assert!(matches!(
            a.assign(&node("b"), Some(10005)),
            Err(PortError::Taken { .. })
        ));
        assert!(matches!(
            a.assign(&node("b"), Some(9999)),
            Err(PortError::OutOfRange { .. })
        ));
        // Moving a node to another explicit port frees its old one.
        assert_eq!(a.assign(&node("a"), Some(10006)), Ok(10006));
        assert_eq!(a.assign(&node("b"), Some(10005)), Ok(10005));
    }
}
