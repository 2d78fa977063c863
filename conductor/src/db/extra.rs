//! Storage for what the API surface added to nodes: the `node_attrs` table
//! (one JSON [`NodeAttrs`] per node, beside its row), Ironic's unique
//! `instance_uuid`, and read-change-write of all of a node's ports and
//! portgroups under the one lock (VIF attach and detach). Callers:
//! `Registry` (`db`), `service`.

use rusqlite::{params, Connection, OptionalExtension};

use super::{to_json, DbError, Registry, Store};
use crate::model::{now, NodeAttrs, Port, Portgroup};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS node_attrs (
  node_uuid TEXT PRIMARY KEY REFERENCES nodes(uuid) ON DELETE CASCADE,
  attrs TEXT NOT NULL);
";

/// Ironic's unique `instance_uuid` (an instance on one node at most).
const INSTANCE_INDEX: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS nodes_instance_uuid ON nodes(instance_uuid)";

pub(super) fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    super::ports::migrate(conn)?;
    conn.execute_batch(SCHEMA)?;
    if let Err(e) = conn.execute_batch(INSTANCE_INDEX) {
        // An older conductor let two nodes share an instance: keep serving
        // them, and say which rule is not enforced until that is fixed.
        tracing::warn!(error = %e, "nodes share an instance_uuid; it is not enforced unique until they no longer do");
    }
    super::docs::migrate(conn)
}

pub(super) fn load_attrs(conn: &Connection, uuid: &str) -> Result<NodeAttrs, DbError> {
    let raw: Option<String> = conn
        .prepare_cached("SELECT attrs FROM node_attrs WHERE node_uuid = ?1")?
        .query_row([uuid], |r| r.get(0))
        .optional()?;
    Ok(match raw {
        Some(s) => serde_json::from_str(&s)?,
        None => NodeAttrs::default(),
    })
}

pub(super) fn store_attrs(conn: &Connection, uuid: &str, a: &NodeAttrs) -> Result<(), DbError> {
    conn.prepare_cached("INSERT OR REPLACE INTO node_attrs (node_uuid, attrs) VALUES (?1, ?2)")?
        .execute(params![uuid, to_json(a)])?;
    Ok(())
}

impl Registry {
    /// Let `f` change node `node_uuid`'s ports and portgroups together (VIF
    /// attach/detach), under one lock; each changed one is written back.
    pub fn modify_node_ports<T, E: From<DbError>>(
        &self,
        node_uuid: &str,
        f: impl FnOnce(&mut [Port], &mut [Portgroup]) -> Result<T, E>,
    ) -> Result<T, E> {
        let conn = self.lock();
        let mut ports = self.ports_where(&conn, "node_uuid = ?1", node_uuid)?;
        let mut groups: Vec<Portgroup> = super::docs::of_node(&conn, node_uuid)?;
        let (p0, g0) = (ports.clone(), groups.clone());
        let out = f(&mut ports, &mut groups)?;
        let tx = conn.unchecked_transaction().map_err(DbError::from)?;
        for (p, old) in ports.iter_mut().zip(&p0) {
            if p != old {
                p.updated_at = Some(now());
                self.write_port(&tx, p, false)?;
            }
        }
        for (g, old) in groups.iter_mut().zip(&g0) {
            if g != old {
                g.updated_at = Some(now());
                super::docs::write(&tx, g, false)?;
            }
        }
        tx.commit().map_err(DbError::from)?;
        Ok(out)
    }
}

impl Store {
    /// See [`Registry::modify_node_ports`].
    pub async fn modify_node_ports<T, E, F>(&self, node_uuid: &str, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut [Port], &mut [Portgroup]) -> Result<T, E> + Send + 'static,
    {
        let node_uuid = node_uuid.to_owned();
        self.call(move |r| r.modify_node_ports(&node_uuid, f)).await
    }
}
