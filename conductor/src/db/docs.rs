//! Records stored whole as JSON documents, one table each: portgroups,
//! volume connectors and volume targets. Each table has the record's UUID,
//! its node (deleted with the node), two key columns that carry its
//! uniqueness rules (a portgroup's name and address; a connector's type and
//! ID; a target's boot index per node) and the document. [`Doc`] says how a
//! record type maps onto its table. Callers: `Registry`/`Store` (`db`),
//! `service`.

use rusqlite::{params, Connection};
use serde::{de::DeserializeOwned, Serialize};

use super::{to_json, DbError, Registry, Store};
use crate::model::{now, Portgroup, VolumeConnector, VolumeTarget};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS portgroups (
  uuid TEXT PRIMARY KEY,
  node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE,
  k1 TEXT UNIQUE, k2 TEXT UNIQUE, doc TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS volume_connectors (
  uuid TEXT PRIMARY KEY,
  node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE,
  k1 TEXT, k2 TEXT, doc TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (k1, k2));
CREATE TABLE IF NOT EXISTS volume_targets (
  uuid TEXT PRIMARY KEY,
  node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE,
  k1 TEXT, k2 TEXT, doc TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (node_uuid, k1));
";

pub(super) fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(SCHEMA)
}

/// How a record type maps onto its table.
pub trait Doc: Serialize + DeserializeOwned + Clone + PartialEq + Send + 'static {
    const TABLE: &'static str;
    /// The name in "<KIND> <ident> could not be found."
    const KIND: &'static str;
    /// Whether a lookup may give `k1` instead of the UUID (a name).
    const K1_IS_NAME: bool;
    fn uuid(&self) -> &str;
    fn node_uuid(&self) -> &str;
    fn keys(&self) -> (Option<String>, Option<String>);
    fn touch(&mut self, at: String);
    /// Ironic's message when a uniqueness rule is broken (`col`: the column
    /// sqlite names, `uuid`, `k1` or `k2`).
    fn duplicate(&self, col: &str) -> String;
}

impl Doc for Portgroup {
    const TABLE: &'static str = "portgroups";
    const KIND: &'static str = "Portgroup";
    const K1_IS_NAME: bool = true;
    fn uuid(&self) -> &str {
        &self.uuid
    }
    fn node_uuid(&self) -> &str {
        &self.node_uuid
    }
    fn keys(&self) -> (Option<String>, Option<String>) {
        (self.name.clone(), self.address.clone())
    }
    fn touch(&mut self, at: String) {
        self.updated_at = Some(at);
    }
    fn duplicate(&self, col: &str) -> String {
        match col {
            "k1" => format!(
                "A portgroup with name {} already exists.",
                self.name.as_deref().unwrap_or("-")
            ),
            "k2" => format!(
                "A portgroup with MAC address {} already exists.",
                self.address.as_deref().unwrap_or("-")
            ),
            _ => format!("A portgroup with UUID {} already exists.", self.uuid),
        }
    }
}

impl Doc for VolumeConnector {
    const TABLE: &'static str = "volume_connectors";
    const KIND: &'static str = "Volume connector";
    const K1_IS_NAME: bool = false;
    fn uuid(&self) -> &str {
        &self.uuid
    }
    fn node_uuid(&self) -> &str {
        &self.node_uuid
    }
    fn keys(&self) -> (Option<String>, Option<String>) {
        (Some(self.kind.clone()), Some(self.connector_id.clone()))
    }
    fn touch(&mut self, at: String) {
        self.updated_at = Some(at);
    }
    fn duplicate(&self, col: &str) -> String {
        match col {
            "uuid" => format!("A volume connector with UUID {} already exists.", self.uuid),
            _ => format!(
                "A volume connector with type {} and connector ID {} already exists.",
                self.kind, self.connector_id
            ),
        }
    }
}

impl Doc for VolumeTarget {
    const TABLE: &'static str = "volume_targets";
    const KIND: &'static str = "Volume target";
    const K1_IS_NAME: bool = false;
    fn uuid(&self) -> &str {
        &self.uuid
    }
    fn node_uuid(&self) -> &str {
        &self.node_uuid
    }
    fn keys(&self) -> (Option<String>, Option<String>) {
        (Some(self.boot_index.to_string()), None)
    }
    fn touch(&mut self, at: String) {
        self.updated_at = Some(at);
    }
    fn duplicate(&self, col: &str) -> String {
        match col {
            "uuid" => format!("A volume target with UUID {} already exists.", self.uuid),
            _ => format!(
                "A volume target with boot index '{}' for the same node already exists.",
                self.boot_index
            ),
        }
    }
}

fn read<T: Doc>(conn: &Connection, cond: &str, arg: Option<&str>) -> Result<Vec<T>, DbError> {
    let sql = format!(
        "SELECT doc FROM {} WHERE {cond} ORDER BY created_at, uuid",
        T::TABLE
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([arg])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(serde_json::from_str(&r.get::<_, String>(0)?)?);
    }
    Ok(out)
}

pub(super) fn of_node<T: Doc>(conn: &Connection, node_uuid: &str) -> Result<Vec<T>, DbError> {
    read(conn, "node_uuid = ?1", Some(node_uuid))
}

fn find<T: Doc>(conn: &Connection, ident: &str) -> Result<T, DbError> {
    let cond = if T::K1_IS_NAME {
        "uuid = ?1 OR k1 = ?1"
    } else {
        "uuid = ?1"
    };
    read(conn, cond, Some(ident))?
        .pop()
        .ok_or_else(|| DbError::NotFound {
            kind: T::KIND,
            ident: ident.to_owned(),
        })
}

pub(super) fn write<T: Doc>(conn: &Connection, d: &T, insert: bool) -> Result<(), DbError> {
    let (k1, k2) = d.keys();
    let sql = if insert {
        format!(
            "INSERT INTO {} (uuid, node_uuid, k1, k2, doc, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            T::TABLE
        )
    } else {
        format!(
            "UPDATE {} SET node_uuid = ?2, k1 = ?3, k2 = ?4, doc = ?5 WHERE uuid = ?1",
            T::TABLE
        )
    };
    let res = conn.execute(
        &sql,
        params![d.uuid(), d.node_uuid(), k1, k2, to_json(d), now()],
    );
    match res {
        Err(rusqlite::Error::SqliteFailure(e, m))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let m = m.unwrap_or_default();
            if m.contains("FOREIGN KEY") {
                return Err(DbError::NotFound {
                    kind: "Node",
                    ident: d.node_uuid().to_owned(),
                });
            }
            let col = ["k1", "k2"]
                .into_iter()
                .find(|c| m.contains(&format!("{}.{c}", T::TABLE)))
                .unwrap_or("uuid");
            Err(DbError::Duplicate(d.duplicate(col)))
        }
        other => other.map(drop).map_err(DbError::from),
    }
}

impl Registry {
    pub fn insert_doc<T: Doc>(&self, d: &T) -> Result<(), DbError> {
        write(&self.lock(), d, true)
    }

    pub fn get_doc<T: Doc>(&self, ident: &str) -> Result<T, DbError> {
        find(&self.lock(), ident)
    }

    /// All records, or one node's.
    pub fn list_docs<T: Doc>(&self, node_uuid: Option<&str>) -> Result<Vec<T>, DbError> {
        read(&self.lock(), "?1 IS NULL OR node_uuid = ?1", node_uuid)
    }

    /// Read, let `f` change, write back (fresh `updated_at`) under one lock.
    pub fn modify_doc<T: Doc, E: From<DbError>>(
        &self,
        ident: &str,
        f: impl FnOnce(&mut T) -> Result<(), E>,
    ) -> Result<T, E> {
        let conn = self.lock();
        let mut d: T = find(&conn, ident)?;
        let before = d.clone();
        f(&mut d)?;
        if d != before {
            d.touch(now());
            write(&conn, &d, false)?;
        }
        Ok(d)
    }

    pub fn delete_doc<T: Doc>(&self, uuid: &str) -> Result<(), DbError> {
        let sql = format!("DELETE FROM {} WHERE uuid = ?1", T::TABLE);
        if self.lock().execute(&sql, [uuid])? == 0 {
            return Err(DbError::NotFound {
                kind: T::KIND,
                ident: uuid.to_owned(),
            });
        }
        Ok(())
    }
}

impl Store {
    pub async fn insert_doc<T: Doc>(&self, d: &T) -> Result<(), DbError> {
        let d = d.clone();
        self.call(move |r| r.insert_doc(&d)).await
    }

    /// By UUID (or, for portgroups, name).
    pub async fn get_doc<T: Doc>(&self, ident: &str) -> Result<T, DbError> {
        let ident = ident.to_owned();
        self.call(move |r| r.get_doc(&ident)).await
    }

    pub async fn list_docs<T: Doc>(&self, node_uuid: Option<&str>) -> Result<Vec<T>, DbError> {
        let node_uuid = node_uuid.map(str::to_owned);
        self.call(move |r| r.list_docs(node_uuid.as_deref())).await
    }

    pub async fn modify_doc<T, E, F>(&self, ident: &str, f: F) -> Result<T, E>
    where
        T: Doc,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut T) -> Result<(), E> + Send + 'static,
    {
        let ident = ident.to_owned();
        self.call(move |r| r.modify_doc(&ident, f)).await
    }

    pub async fn delete_doc<T: Doc>(&self, uuid: &str) -> Result<(), DbError> {
        let uuid = uuid.to_owned();
        self.call(move |r| r.delete_doc::<T>(&uuid)).await
    }
}
