//! Passwords at rest in etcd, in porthole-common's one sealing format
//! (ChaCha20-Poly1305, the node id as associated data, `sealed:v1:…`).
//!
//! Every replica reads the same 32-byte key from `[etcd] secret_key_file`
//! (raw 32 bytes, or 64 hex digits such as `openssl rand -hex 32` prints).
//! This wrapper speaks [`Secret`]; there is no clear-text fallback: `open`
//! refuses anything that is not sealed for that node.

use std::path::Path;

pub use porthole_common::seal::SealError;

use crate::secret::Secret;

/// The AEAD key, loaded once at start.
#[derive(Clone, Debug)]
pub struct Sealer(porthole_common::seal::Sealer);

impl Sealer {
    /// Read the key; the file must exist (every replica needs the same one).
    pub fn load(path: &Path) -> Result<Self, SealError> {
        porthole_common::seal::Sealer::load(path).map(Self)
    }

    pub fn from_key(key: &[u8; 32]) -> Self {
        Self(porthole_common::seal::Sealer::from_key(key))
    }

    /// Seal `clear` for `node` (the node id is authenticated, not secret).
    pub fn seal(&self, node: &str, clear: &Secret) -> String {
        self.0.seal(node, clear.expose())
    }

    /// The clear text of a value sealed for `node`.
    pub fn open(&self, node: &str, sealed: &str) -> Result<Secret, SealError> {
        self.0.open(node, sealed).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_for_one_node_and_refuses_clear_text() {
        let a = Sealer::from_key(&[7; 32]);
        let sealed = a.seal("node-1", &Secret::new("hunter2"));
        assert!(sealed.starts_with("sealed:v1:") && !sealed.contains("hunter2"));
        assert_eq!(a.open("node-1", &sealed).unwrap().expose(), "hunter2");
        assert!(a.open("node-2", &sealed).is_err(), "other node");
        assert!(a.open("node-1", "hunter2").is_err(), "clear text");
    }

    /// A value a replica of the previous release wrote to etcd (recorded
    /// by its sealer with key [7; 32] for node-1) still opens.
    #[test]
    fn values_from_the_previous_release_still_open() {
        let old = OLD_SEALED;
        let opened = Sealer::from_key(&[7; 32]).open("node-1", old).unwrap();
        assert_eq!(opened.expose(), "hunter2");
    }

    const OLD_SEALED: &str = "sealed:v1:lfooEncwieyBuebDoR394K5qUS2tFqo8traqUR4sqHewxCg=";
}
