//! Secrets at rest: driver_info passwords in porthole-common's one sealing
//! format (ChaCha20-Poly1305, the node's UUID as associated data,
//! `sealed:v1:…`), so a sealed password copied into another node's row
//! does not open.
//!
//! The key is 32 random bytes in a file (mode 0600), created on first start
//! beside the database unless configured. Callers: the store (`db`) seals
//! on every write and opens on every read, so nothing else sees the sealed
//! form; it also migrates values sealed before the format was shared
//! ([`Sealer::reseal_dict_v0`]).

use std::path::Path;

pub use porthole_common::seal::SealError;
use porthole_common::seal::{self, is_sealed};

use crate::model::{is_secret_key, Dict};

/// The AEAD key, loaded once.
#[derive(Clone, Debug)]
pub struct Sealer(seal::Sealer);

impl Sealer {
    /// Load the key from `path`, creating it (0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        seal::Sealer::load_or_create(path).map(Self)
    }

    /// `dict` with every string secret sealed for node `uuid`.
    pub fn seal_dict(&self, uuid: &str, dict: &Dict) -> Dict {
        map_secrets(dict, |s| Ok(self.0.seal(uuid, s))).expect("sealing cannot fail")
    }

    /// `dict` with every secret sealed for node `uuid` opened; a value that
    /// is not sealed (written before sealing existed) passes through.
    pub fn open_dict(&self, uuid: &str, dict: &Dict) -> Result<Dict, SealError> {
        map_secrets(dict, |s| match is_sealed(s) {
            true => self.0.open(uuid, s),
            false => Ok(s.to_owned()),
        })
    }

    /// One secret sealed for `id` (associated data), e.g. a ramdisk token.
    pub fn seal_str(&self, id: &str, clear: &str) -> String {
        self.0.seal(id, clear)
    }

    /// A secret sealed by [`Sealer::seal_str`] for the same `id`.
    pub fn open_str(&self, id: &str, sealed: &str) -> Result<String, SealError> {
        self.0.open(id, sealed)
    }

    /// A driver_info as an older conductor stored it (secrets sealed without
    /// associated data, or in clear text) in today's form for node `uuid`.
    pub fn reseal_dict_v0(&self, uuid: &str, dict: &Dict) -> Result<Dict, SealError> {
        map_secrets(dict, |s| {
            let clear = match is_sealed(s) {
                true => self.0.open_unbound_v0(s)?,
                false => s.to_owned(),
            };
            Ok(self.0.seal(uuid, &clear))
        })
    }
}

fn map_secrets(
    dict: &Dict,
    f: impl Fn(&str) -> Result<String, SealError>,
) -> Result<Dict, SealError> {
    dict.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) if is_secret_key(k) => {
                Ok((k.clone(), serde_json::Value::String(f(s)?)))
            }
            other => Ok((k.clone(), other.clone())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(pw: &str) -> Dict {
        let mut d = Dict::new();
        d.insert("ipmi_password".into(), json!(pw));
        d.insert("ipmi_address".into(), json!("10.0.0.1"));
        d
    }

    #[test]
    fn seal_then_open_and_wrong_keys_or_nodes_fail() {
        let dir = tempfile::tempdir().unwrap();
        let a = Sealer::load_or_create(&dir.path().join("a.key")).unwrap();
        let b = Sealer::load_or_create(&dir.path().join("b.key")).unwrap();
        let sealed = a.seal_dict("n1", &info("hunter2"));
        let pw = sealed["ipmi_password"].as_str().unwrap();
        assert!(pw.starts_with(seal::PREFIX) && !pw.contains("hunter2"));
        assert_eq!(sealed["ipmi_address"], "10.0.0.1");
        assert_eq!(a.open_dict("n1", &sealed).unwrap(), info("hunter2"));
        assert!(b.open_dict("n1", &sealed).is_err(), "other key");
        assert!(a.open_dict("n2", &sealed).is_err(), "other node");
        assert_eq!(a.open_dict("n1", &info("plain")).unwrap(), info("plain"));
        let again = Sealer::load_or_create(&dir.path().join("a.key")).unwrap();
        assert_eq!(again.open_dict("n1", &sealed).unwrap(), info("hunter2"));
    }
}
