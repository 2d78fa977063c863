//! Ports in the store: the `ports` table (its later columns added to an
//! older database on open), insert, lookup by UUID or MAC, lists, a
//! read-change-write under the one lock, delete. Callers: `Registry` and
//! `Store` (`db`), `service`.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{dict, to_json, DbError, Registry, Store};
use crate::model::{now, Port};

pub(super) const PORT_COLS: &str =
    "uuid, address, node_uuid, extra, pxe_enabled, created_at, updated_at, \
  internal_info, local_link_connection, physical_network, portgroup_uuid, is_smartnic, name";

/// Port columns added after the first schema.
const PORT_COLS_ADDED: &[(&str, &str)] = &[
    ("internal_info", "TEXT NOT NULL DEFAULT '{}'"),
    ("local_link_connection", "TEXT NOT NULL DEFAULT '{}'"),
    ("physical_network", "TEXT"),
    ("portgroup_uuid", "TEXT"),
    ("is_smartnic", "INTEGER NOT NULL DEFAULT 0"),
    ("name", "TEXT"),
];

pub(super) fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let mut have = Vec::new();
    {
        let mut stmt = conn.prepare("PRAGMA table_info(ports)")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            have.push(r.get::<_, String>(1)?);
        }
    }
    for (name, ty) in PORT_COLS_ADDED {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE ports ADD COLUMN {name} {ty}"))?;
        }
    }
    Ok(())
}

impl Store {
    pub async fn insert_port(&self, p: &Port) -> Result<(), DbError> {
        let p = p.clone();
        self.call(move |r| r.insert_port(&p)).await
    }

    /// A port by UUID or MAC address.
    pub async fn get_port(&self, ident: &str) -> Result<Port, DbError> {
        let ident = ident.to_owned();
        self.call(move |r| r.get_port(&ident)).await
    }

    /// Ports, all or one node's.
    pub async fn list_ports(&self, node_uuid: Option<&str>) -> Result<Vec<Port>, DbError> {
        let node_uuid = node_uuid.map(str::to_owned);
        self.call(move |r| r.list_ports(node_uuid.as_deref())).await
    }

    pub async fn delete_port(&self, uuid: &str) -> Result<(), DbError> {
        let uuid = uuid.to_owned();
        self.call(move |r| r.delete_port(&uuid)).await
    }

    /// See [`Registry::modify_port`].
    pub async fn modify_port<E, F>(&self, ident: &str, f: F) -> Result<Port, E>
    where
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Port) -> Result<(), E> + Send + 'static,
    {
        let ident = ident.to_owned();
        self.call(move |r| r.modify_port(&ident, f)).await
    }
}

impl Registry {
    pub fn insert_port(&self, p: &Port) -> Result<(), DbError> {
        self.write_port(&self.lock(), p, true)
    }

    pub(super) fn write_port(
        &self,
        conn: &Connection,
        p: &Port,
        insert: bool,
    ) -> Result<(), DbError> {
        let sql = if insert {
            format!("INSERT INTO ports ({PORT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)")
        } else {
            "UPDATE ports SET address=?2, node_uuid=?3, extra=?4, pxe_enabled=?5, created_at=?6, \
             updated_at=?7, internal_info=?8, local_link_connection=?9, physical_network=?10, \
             portgroup_uuid=?11, is_smartnic=?12, name=?13 WHERE uuid=?1"
                .to_owned()
        };
        let res = conn.execute(
            &sql,
            params![
                p.uuid,
                p.address,
                p.node_uuid,
                to_json(&p.extra),
                p.pxe_enabled,
                p.created_at,
                p.updated_at,
                to_json(&p.internal_info),
                to_json(&p.local_link_connection),
                p.physical_network,
                p.portgroup_uuid,
                p.is_smartnic,
                p.name,
            ],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(DbError::Duplicate(format!(
                    "A port with MAC address {} already exists.",
                    p.address
                )))
            }
            other => other.map(drop).map_err(DbError::from),
        }
    }

    fn port_from_row(r: &Row<'_>) -> Result<Port, DbError> {
        Ok(Port {
            uuid: r.get(0)?,
            address: r.get(1)?,
            node_uuid: r.get(2)?,
            extra: dict(r.get(3)?)?,
            pxe_enabled: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
            internal_info: dict(r.get(7)?)?,
            local_link_connection: dict(r.get(8)?)?,
            physical_network: r.get(9)?,
            portgroup_uuid: r.get(10)?,
            is_smartnic: r.get(11)?,
            name: r.get(12)?,
        })
    }

    /// A port by UUID or MAC address.
    pub fn get_port(&self, ident: &str) -> Result<Port, DbError> {
        let conn = self.lock();
        let sql = format!("SELECT {PORT_COLS} FROM ports WHERE uuid = ?1 OR address = ?1");
        let row = conn
            .query_row(&sql, [ident.to_ascii_lowercase()], |r| {
                Ok(Self::port_from_row(r))
            })
            .optional()?;
        row.unwrap_or_else(|| {
            Err(DbError::NotFound {
                kind: "Port",
                ident: ident.to_owned(),
            })
        })
    }

    /// Ports, all or one node's.
    pub fn list_ports(&self, node_uuid: Option<&str>) -> Result<Vec<Port>, DbError> {
        let conn = self.lock();
        let sql = format!(
            "SELECT {PORT_COLS} FROM ports WHERE ?1 IS NULL OR node_uuid = ?1 ORDER BY created_at, uuid"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([node_uuid])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(Self::port_from_row(r)?);
        }
        Ok(out)
    }

    pub fn delete_port(&self, uuid: &str) -> Result<(), DbError> {
        self.lock()
            .execute("DELETE FROM ports WHERE uuid = ?1", [uuid])?;
        Ok(())
    }

    pub(super) fn ports_where(
        &self,
        conn: &Connection,
        cond: &str,
        arg: &str,
    ) -> Result<Vec<Port>, DbError> {
        let sql = format!("SELECT {PORT_COLS} FROM ports WHERE {cond} ORDER BY created_at, uuid");
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([arg])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(Self::port_from_row(r)?);
        }
        Ok(out)
    }

    /// Read port `ident` (UUID or MAC), let `f` change it, write it back
    /// with a fresh `updated_at`, under one lock; `f`'s error changes nothing.
    pub fn modify_port<E: From<DbError>>(
        &self,
        ident: &str,
        f: impl FnOnce(&mut Port) -> Result<(), E>,
    ) -> Result<Port, E> {
        let conn = self.lock();
        let mut port = self
            .ports_where(
                &conn,
                "uuid = ?1 OR address = ?1",
                &ident.to_ascii_lowercase(),
            )?
            .pop()
            .ok_or_else(|| DbError::NotFound {
                kind: "Port",
                ident: ident.to_owned(),
            })?;
        let before = port.clone();
        f(&mut port)?;
        if port != before {
            port.updated_at = Some(now());
            self.write_port(&conn, &port, false)?;
        }
        Ok(port)
    }
}
