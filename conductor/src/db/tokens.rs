//! The per-operation secrets the conductor issues to a node's ramdisk (the
//! deploy key / agent token): one per node at most, sealed at rest with
//! the node's UUID bound (the `ramdisk-token` domain, so a value copied
//! from driver_info does not open here), in their own table so no API
//! rendering of a node can ever carry one. Deleted with the node.
//!
//! Callers: `service::ramdisk` through [`Store`]'s methods below.

use rusqlite::{params, OptionalExtension};

use super::{DbError, Registry, Store};
use crate::model::{now, Dict};

/// The key under which the provision service hands the clear token to an
/// interface in an in-memory copy of the node (Ironic's key). The store
/// never writes it: a node written back from such a copy loses it.
pub const IN_MEMORY_KEY: &str = "agent_secret_token";

/// `info` without the in-memory token.
pub(super) fn without_token(info: &Dict) -> std::borrow::Cow<'_, Dict> {
    if info.contains_key(IN_MEMORY_KEY) {
        let mut d = info.clone();
        d.remove(IN_MEMORY_KEY);
        std::borrow::Cow::Owned(d)
    } else {
        std::borrow::Cow::Borrowed(info)
    }
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ramdisk_tokens (
  node_uuid TEXT PRIMARY KEY REFERENCES nodes(uuid) ON DELETE CASCADE,
  wait_state TEXT NOT NULL, sealed TEXT NOT NULL, created_at TEXT NOT NULL);
";

/// A node's ramdisk secret, opened.
#[derive(Clone, PartialEq, Eq)]
pub struct RamdiskToken {
    /// The wait state it is good for (e.g. `wait call-back`).
    pub wait_state: String,
    pub token: String,
}

impl std::fmt::Debug for RamdiskToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamdiskToken")
            .field("wait_state", &self.wait_state)
            .field("token", &"******")
            .finish()
    }
}

fn domain(uuid: &str) -> String {
    format!("{uuid}/ramdisk-token")
}

impl Registry {
    pub fn put_ramdisk_token(&self, uuid: &str, t: &RamdiskToken) -> Result<(), DbError> {
        let sealed = self.sealer.seal_str(&domain(uuid), &t.token);
        self.lock().execute(
            "INSERT INTO ramdisk_tokens (node_uuid, wait_state, sealed, created_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT(node_uuid) DO UPDATE SET \
             wait_state = excluded.wait_state, sealed = excluded.sealed, \
             created_at = excluded.created_at",
            params![uuid, t.wait_state, sealed, now()],
        )?;
        Ok(())
    }

    pub fn ramdisk_token(&self, uuid: &str) -> Result<Option<RamdiskToken>, DbError> {
        let row: Option<(String, String)> = self
            .lock()
            .query_row(
                "SELECT wait_state, sealed FROM ramdisk_tokens WHERE node_uuid = ?1",
                [uuid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(wait_state, sealed)| {
            let token = self.sealer.open_str(&domain(uuid), &sealed)?;
            Ok(RamdiskToken { wait_state, token })
        })
        .transpose()
    }

    /// Forget `uuid`'s token; whether there was one.
    pub fn drop_ramdisk_token(&self, uuid: &str) -> Result<bool, DbError> {
        let n = self
            .lock()
            .execute("DELETE FROM ramdisk_tokens WHERE node_uuid = ?1", [uuid])?;
        Ok(n > 0)
    }
}

impl Store {
    pub async fn put_ramdisk_token(&self, uuid: &str, t: RamdiskToken) -> Result<(), DbError> {
        let uuid = uuid.to_owned();
        self.call(move |r| r.put_ramdisk_token(&uuid, &t)).await
    }

    pub async fn ramdisk_token(&self, uuid: &str) -> Result<Option<RamdiskToken>, DbError> {
        let uuid = uuid.to_owned();
        self.call(move |r| r.ramdisk_token(&uuid)).await
    }

    pub async fn drop_ramdisk_token(&self, uuid: &str) -> Result<bool, DbError> {
        let uuid = uuid.to_owned();
        self.call(move |r| r.drop_ramdisk_token(&uuid)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_at_rest_and_gone_with_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = crate::seal::Sealer::load_or_create(&dir.path().join("k")).unwrap();
        let r = Registry::open(&dir.path().join("db"), sealer).unwrap();
        let uuid = "11111111-2222-3333-4444-555555555555";
        r.lock()
            .execute(
                "INSERT INTO nodes (uuid, driver, driver_info, driver_internal_info, \
                 console_interface, provision_state, maintenance, console_enabled, \
                 properties, instance_info, extra, created_at) \
                 VALUES (?1, 'fake-hardware', '{}', '{}', 'no-console', 'enroll', 0, 0, \
                 '{}', '{}', '{}', '2026-01-01T00:00:00+00:00')",
                [uuid],
            )
            .unwrap();
        let t = RamdiskToken {
            wait_state: "wait call-back".into(),
            token: "s3cret-token-value".into(),
        };
        r.put_ramdisk_token(uuid, &t).unwrap();
        assert_eq!(r.ramdisk_token(uuid).unwrap(), Some(t.clone()));
        let stored: String = r
            .lock()
            .query_row("SELECT sealed FROM ramdisk_tokens", [], |row| row.get(0))
            .unwrap();
        assert!(!stored.contains("s3cret"), "sealed at rest: {stored}");
        assert!(!format!("{t:?}").contains("s3cret"), "Debug masks it");
        // A node written back from the interface's in-memory copy keeps
        // no token in driver_internal_info.
        let mut n = r.get_node(uuid).unwrap();
        n.driver_internal_info.insert(
            IN_MEMORY_KEY.into(),
            serde_json::json!("s3cret-token-value"),
        );
        r.modify_node(uuid, move |stored: &mut crate::model::Node| {
            *stored = n;
            Ok::<_, DbError>(())
        })
        .unwrap();
        let raw: String = r
            .lock()
            .query_row("SELECT driver_internal_info FROM nodes", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert!(!raw.contains("s3cret"), "{raw}");
        r.delete_node(uuid).unwrap();
        assert_eq!(r.ramdisk_token(uuid).unwrap(), None, "cascade");
        assert!(!r.drop_ramdisk_token(uuid).unwrap());
    }
}
