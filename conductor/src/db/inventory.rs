//! Node inventories: the hardware inventory a node's ramdisk reported and
//! the plugin data the inspection kept (Ironic's `node_inventory` table),
//! one record per node, replaced by each inspection that finishes, deleted
//! with the node.
//!
//! Callers: `service::continue_inspection` (store), `api::inspection`
//! (`GET /v1/nodes/{node}/inventory`), through [`Store`]'s methods.

use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use super::{DbError, Registry, Store};
use crate::model::now;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS node_inventory (
  node_uuid TEXT PRIMARY KEY REFERENCES nodes(uuid) ON DELETE CASCADE,
  inventory TEXT NOT NULL, plugin_data TEXT NOT NULL, created_at TEXT NOT NULL);
";

/// A node's stored inspection data.
#[derive(Clone, Debug, PartialEq)]
pub struct Inventory {
    pub inventory: Value,
    pub plugin_data: Value,
}

impl Registry {
    pub fn put_inventory(&self, uuid: &str, inv: &Inventory) -> Result<(), DbError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO node_inventory (node_uuid, inventory, plugin_data, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![uuid, super::to_json(&inv.inventory), super::to_json(&inv.plugin_data), now()],
        )?;
        Ok(())
    }

    pub fn inventory(&self, uuid: &str) -> Result<Option<Inventory>, DbError> {
        let row: Option<(String, String)> = self
            .lock()
            .query_row(
                "SELECT inventory, plugin_data FROM node_inventory WHERE node_uuid = ?1",
                [uuid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(i, p)| {
            Ok(Inventory {
                inventory: serde_json::from_str(&i)?,
                plugin_data: serde_json::from_str(&p)?,
            })
        })
        .transpose()
    }
}

impl Store {
    pub async fn put_inventory(&self, uuid: &str, inv: Inventory) -> Result<(), DbError> {
        let uuid = uuid.to_owned();
        self.call(move |r| r.put_inventory(&uuid, &inv)).await
    }

    /// `uuid`'s inventory, `None` when no inspection stored one.
    pub async fn inventory(&self, uuid: &str) -> Result<Option<Inventory>, DbError> {
        let uuid = uuid.to_owned();
        self.call(move |r| r.inventory(&uuid)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;

    #[test]
    fn replaced_by_each_inspection_and_gone_with_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = crate::seal::Sealer::load_or_create(&dir.path().join("k")).unwrap();
        let r = Registry::open(&dir.path().join("db"), sealer).unwrap();
        let node = Node {
            uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            driver: "fake-hardware".into(),
            provision_state: "manageable".into(),
            created_at: now(),
            ..Node::default()
        };
        r.insert_node(&node).unwrap();
        assert_eq!(r.inventory(&node.uuid).unwrap(), None);
        let one = Inventory {
            inventory: serde_json::json!({"cpu": {"count": 1}}),
            plugin_data: serde_json::json!({}),
        };
        r.put_inventory(&node.uuid, &one).unwrap();
        assert_eq!(r.inventory(&node.uuid).unwrap(), Some(one));
        let two = Inventory {
            inventory: serde_json::json!({"cpu": {"count": 2}}),
            plugin_data: serde_json::json!({"macs": []}),
        };
        r.put_inventory(&node.uuid, &two).unwrap();
        assert_eq!(r.inventory(&node.uuid).unwrap(), Some(two));
        r.delete_node(&node.uuid).unwrap();
        assert_eq!(r.inventory(&node.uuid).unwrap(), None);
    }
}
