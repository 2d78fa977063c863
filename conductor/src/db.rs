//! The node registry: nodes and ports in an embedded SQLite file that
//! survives restarts. Passwords in driver_info are sealed at rest (`seal`).
//!
//! One connection behind a mutex: every call is a short statement, and
//! [`Store::modify_node`] reads, changes and writes a node under that one
//! lock so concurrent power and console updates never lose each other's
//! changes. SQLite blocks (disk, and up to its 5 s busy timeout on a lock),
//! so [`Store`] is async and runs every call on tokio's blocking pool
//! (`spawn_blocking`), never on a runtime worker; [`Registry`] is the
//! synchronous store underneath. Callers: `service` (domain operations), the
//! REST handlers and the console watcher.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, Row};

use crate::model::{now, Dict, Node, NodeAttrs};
use crate::seal::{SealError, Sealer};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON is damaged: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{kind} {ident} could not be found.")]
    NotFound { kind: &'static str, ident: String },
    #[error("{0}")]
    Duplicate(String),
    #[error("database worker: {0}")]
    Worker(String),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
  uuid TEXT PRIMARY KEY, name TEXT UNIQUE, driver TEXT NOT NULL,
  driver_info TEXT NOT NULL, driver_internal_info TEXT NOT NULL,
  console_interface TEXT NOT NULL, power_state TEXT, target_power_state TEXT,
  provision_state TEXT NOT NULL, target_provision_state TEXT,
  maintenance INTEGER NOT NULL, maintenance_reason TEXT,
  console_enabled INTEGER NOT NULL, console_info TEXT,
  properties TEXT NOT NULL, instance_info TEXT NOT NULL, instance_uuid TEXT,
  extra TEXT NOT NULL, resource_class TEXT, last_error TEXT,
  created_at TEXT NOT NULL, updated_at TEXT);
CREATE TABLE IF NOT EXISTS ports (
  uuid TEXT PRIMARY KEY, address TEXT NOT NULL UNIQUE,
  node_uuid TEXT NOT NULL REFERENCES nodes(uuid) ON DELETE CASCADE,
  extra TEXT NOT NULL, pxe_enabled INTEGER NOT NULL,
  created_at TEXT NOT NULL, updated_at TEXT);
";

/// Node columns added after the first schema: `(name, type)`, added to an
/// older database on open (ALTER TABLE ... ADD COLUMN).
const NODE_COLS_ADDED: &[(&str, &str)] = &[
    ("provision_updated_at", "TEXT"),
    ("inspection_started_at", "TEXT"),
    ("inspection_finished_at", "TEXT"),
    ("deploy_step", "TEXT NOT NULL DEFAULT '{}'"),
    ("clean_step", "TEXT NOT NULL DEFAULT '{}'"),
    ("automated_clean", "INTEGER"),
    // `{kind: name}` of every interface but console (`drivers::InterfaceSet`).
    ("interfaces", "TEXT NOT NULL DEFAULT '{}'"),
];

const NODE_COLS: &str = "uuid, name, driver, driver_info, driver_internal_info, \
  console_interface, power_state, target_power_state, provision_state, \
  target_provision_state, maintenance, maintenance_reason, console_enabled, \
  console_info, properties, instance_info, instance_uuid, extra, resource_class, \
  last_error, created_at, updated_at, provision_updated_at, \
  inspection_started_at, inspection_finished_at, deploy_step, clean_step, automated_clean, interfaces";

/// The registry, synchronous: call it only off the runtime's workers
/// (through [`Store`]).
pub struct Registry {
    conn: Mutex<Connection>,
    sealer: Sealer,
}

/// The registry as async calls, each run on tokio's blocking pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Registry>,
}

impl Store {
    /// Open (or create) the database; blocks, so call it off the workers
    /// or at start (see `lib::run`).
    pub fn open(path: &Path, sealer: Sealer) -> Result<Self, DbError> {
        Ok(Self {
            inner: Arc::new(Registry::open(path, sealer)?),
        })
    }

    /// Run `f` on the registry in the blocking pool.
    async fn call<T, E>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r,
            Err(e) => Err(DbError::Worker(e.to_string()).into()),
        }
    }

    pub async fn insert_node(&self, node: &Node) -> Result<(), DbError> {
        let node = node.clone();
        self.call(move |r| r.insert_node(&node)).await
    }

    /// A node by UUID or name.
    pub async fn get_node(&self, ident: &str) -> Result<Node, DbError> {
        let ident = ident.to_owned();
        self.call(move |r| r.get_node(&ident)).await
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>, DbError> {
        self.call(|r| r.list_nodes()).await
    }

    /// Read node `ident`, let `f` change it, write it back with a fresh
    /// `updated_at`, all under one lock. `f`'s error leaves the node as it was.
    pub async fn modify_node<E, F>(&self, ident: &str, f: F) -> Result<Node, E>
    where
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Node) -> Result<(), E> + Send + 'static,
    {
        let ident = ident.to_owned();
        self.call(move |r| r.modify_node(&ident, f)).await
    }

    /// Delete a node and its ports.
    pub async fn delete_node(&self, uuid: &str) -> Result<(), DbError> {
        let uuid = uuid.to_owned();
        self.call(move |r| r.delete_node(&uuid)).await
    }
}

/// Add the columns an older database lacks.
fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let mut have = Vec::new();
    {
        let mut stmt = conn.prepare("PRAGMA table_info(nodes)")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            have.push(r.get::<_, String>(1)?);
        }
    }
    for (name, ty) in NODE_COLS_ADDED {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE nodes ADD COLUMN {name} {ty}"))?;
        }
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("JSON values always serialize")
}

fn dict(s: String) -> Result<Dict, DbError> {
    Ok(serde_json::from_str(&s)?)
}

/// `PRAGMA user_version` of a database whose secrets are sealed in the
/// shared format (node UUID as associated data). 0: an older conductor's,
/// secrets sealed without associated data or in clear text.
const SEALED_BY_NODE: i64 = 1;

/// Bring an older database's secrets to today's sealing, in one
/// transaction, the first time this version opens it.
fn reseal_secrets(conn: &Connection, sealer: &Sealer) -> Result<(), DbError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= SEALED_BY_NODE {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT uuid, driver_info FROM nodes")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (uuid, info) in &rows {
        let resealed = sealer.reseal_dict_v0(uuid, &dict(info.clone())?)?;
        tx.execute(
            "UPDATE nodes SET driver_info = ?2 WHERE uuid = ?1",
            params![uuid, to_json(&resealed)],
        )?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {SEALED_BY_NODE}"))?;
    tx.commit()?;
    if !rows.is_empty() {
        tracing::info!(
            nodes = rows.len(),
            "re-sealed driver_info secrets with each node's UUID bound"
        );
    }
    Ok(())
}

impl Registry {
    pub fn open(path: &Path, sealer: Sealer) -> Result<Self, DbError> {
        let err = |source| DbError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        migrate(&conn).map_err(err)?;
        extra::migrate(&conn).map_err(err)?;
        reseal_secrets(&conn, &sealer)?;
        conn.execute_batch(tokens::SCHEMA).map_err(err)?;
        conn.execute_batch(inventory::SCHEMA).map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            sealer,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node_from_row(&self, r: &Row<'_>) -> Result<Node, DbError> {
        let console_info: Option<String> = r.get(13)?;
        Ok(Node {
            uuid: r.get(0)?,
            name: r.get(1)?,
            driver: r.get(2)?,
            driver_info: self
                .sealer
                .open_dict(&r.get::<_, String>(0)?, &dict(r.get(3)?)?)?,
            driver_internal_info: dict(r.get(4)?)?,
            console_interface: r.get(5)?,
            power_state: r.get(6)?,
            target_power_state: r.get(7)?,
            provision_state: r.get(8)?,
            target_provision_state: r.get(9)?,
            maintenance: r.get(10)?,
            maintenance_reason: r.get(11)?,
            console_enabled: r.get(12)?,
            console_info: console_info.map(|s| serde_json::from_str(&s)).transpose()?,
            properties: dict(r.get(14)?)?,
            instance_info: dict(r.get(15)?)?,
            instance_uuid: r.get(16)?,
            extra: dict(r.get(17)?)?,
            resource_class: r.get(18)?,
            last_error: r.get(19)?,
            created_at: r.get(20)?,
            updated_at: r.get(21)?,
            provision_updated_at: r.get(22)?,
            inspection_started_at: r.get(23)?,
            inspection_finished_at: r.get(24)?,
            deploy_step: dict(r.get(25)?)?,
            clean_step: dict(r.get(26)?)?,
            automated_clean: r.get(27)?,
            interfaces: crate::drivers::InterfaceSet::from_stored(
                &r.get::<_, String>(2)?,
                &dict(r.get(28)?)?,
            ),
            reservation: None,
            attrs: NodeAttrs::default(),
        })
    }

    fn write_node(&self, conn: &Connection, n: &Node, insert: bool) -> Result<(), DbError> {
        let sql = if insert {
            format!("INSERT INTO nodes ({NODE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)")
        } else {
            "UPDATE nodes SET name=?2, driver=?3, driver_info=?4, driver_internal_info=?5, \
             console_interface=?6, power_state=?7, target_power_state=?8, provision_state=?9, \
             target_provision_state=?10, maintenance=?11, maintenance_reason=?12, \
             console_enabled=?13, console_info=?14, properties=?15, instance_info=?16, \
             instance_uuid=?17, extra=?18, resource_class=?19, last_error=?20, \
             created_at=?21, updated_at=?22, provision_updated_at=?23, \
             inspection_started_at=?24, inspection_finished_at=?25, deploy_step=?26, \
             clean_step=?27, automated_clean=?28, interfaces=?29 WHERE uuid=?1"
                .to_owned()
        };
        let res = conn.execute(
            &sql,
            params![
                n.uuid,
                n.name,
                n.driver,
                to_json(&self.sealer.seal_dict(&n.uuid, &n.driver_info)),
                to_json(&tokens::without_token(&n.driver_internal_info)),
                n.console_interface,
                n.power_state,
                n.target_power_state,
                n.provision_state,
                n.target_provision_state,
                n.maintenance,
                n.maintenance_reason,
                n.console_enabled,
                n.console_info.as_ref().map(to_json),
                to_json(&n.properties),
                to_json(&n.instance_info),
                n.instance_uuid,
                to_json(&n.extra),
                n.resource_class,
                n.last_error,
                n.created_at,
                n.updated_at,
                n.provision_updated_at,
                n.inspection_started_at,
                n.inspection_finished_at,
                to_json(&n.deploy_step),
                to_json(&n.clean_step),
                n.automated_clean,
                to_json(&n.interfaces.to_stored()),
            ],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, Some(m)))
                if e.code == rusqlite::ErrorCode::ConstraintViolation
                    && m.contains("nodes.instance_uuid") =>
            {
                Err(DbError::Duplicate(format!(
                    "Instance {} is already associated with a node, it cannot be associated with this other node {}",
                    n.instance_uuid.as_deref().unwrap_or("-"),
                    n.uuid
                )))
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(DbError::Duplicate(format!(
                    "A node with name {} or UUID {} already exists.",
                    n.name.as_deref().unwrap_or("-"),
                    n.uuid
                )))
            }
            other => other.map(drop).map_err(DbError::from),
        }?;
        extra::store_attrs(conn, &n.uuid, &n.attrs)
    }

    pub fn insert_node(&self, node: &Node) -> Result<(), DbError> {
        self.write_node(&self.lock(), node, true)
    }

    fn find_node(&self, conn: &Connection, ident: &str) -> Result<Node, DbError> {
        let sql = format!("SELECT {NODE_COLS} FROM nodes WHERE uuid = ?1 OR name = ?1");
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([ident])?;
        match rows.next()? {
            Some(r) => {
                let mut node = self.node_from_row(r)?;
                node.attrs = extra::load_attrs(conn, &node.uuid)?;
                Ok(node)
            }
            None => Err(DbError::NotFound {
                kind: "Node",
                ident: ident.to_owned(),
            }),
        }
    }

    /// A node by UUID or name.
    pub fn get_node(&self, ident: &str) -> Result<Node, DbError> {
        self.find_node(&self.lock(), ident)
    }

    pub fn list_nodes(&self) -> Result<Vec<Node>, DbError> {
        let conn = self.lock();
        let sql = format!("SELECT {NODE_COLS} FROM nodes ORDER BY created_at, uuid");
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut node = self.node_from_row(r)?;
            node.attrs = extra::load_attrs(&conn, &node.uuid)?;
            out.push(node);
        }
        Ok(out)
    }

    /// Read node `ident`, let `f` change it, write it back with a fresh
    /// `updated_at`, all under one lock. `f`'s error leaves the node as it was.
    pub fn modify_node<E: From<DbError>>(
        &self,
        ident: &str,
        f: impl FnOnce(&mut Node) -> Result<(), E>,
    ) -> Result<Node, E> {
        let conn = self.lock();
        let mut node = self.find_node(&conn, ident)?;
        let before = node.clone();
        f(&mut node)?;
        if node != before {
            node.updated_at = Some(now());
            self.write_node(&conn, &node, false)?;
        }
        Ok(node)
    }

    /// Delete a node and its ports.
    pub fn delete_node(&self, uuid: &str) -> Result<(), DbError> {
        let n = self
            .lock()
            .execute("DELETE FROM nodes WHERE uuid = ?1", [uuid])?;
        if n == 0 {
            return Err(DbError::NotFound {
                kind: "Node",
                ident: uuid.to_owned(),
            });
        }
        Ok(())
    }
}

mod docs;
mod extra;
pub mod inventory;
mod ports;
pub mod tokens;

pub use docs::Doc;

#[cfg(test)]
mod tests;
