//! VIFs (virtual interfaces, nova's Neutron ports) attached to a node, kept
//! as Ironic keeps them: `internal_info.tenant_vif_port_id` of one of the
//! node's portgroups or ports (where nova's config drive network metadata
//! reads them back). Attach picks a free port-like object as Ironic's
//! `get_free_port_like_object` does: a requested one, else a portgroup,
//! else a port outside any portgroup, PXE-enabled ports first.
//!
//! Callers: the VIF handlers in `api::vifs`; tear down in
//! `service::provision` (every VIF detached, as Ironic's).

use serde_json::Value;

use super::{Conductor, ServiceError};
use crate::model::{Dict, Port, Portgroup};

/// Where a port or portgroup records its VIF.
pub const VIF_KEY: &str = "tenant_vif_port_id";

/// An attach request: Ironic's `vif_info` body.
#[derive(Debug)]
pub struct VifAttach {
    pub id: String,
    pub port_uuid: Option<String>,
    pub portgroup_uuid: Option<String>,
}

impl VifAttach {
    /// Check a request body (`{"id": ..., "port_uuid"?, "portgroup_uuid"?}`).
    pub fn parse(body: &Dict) -> Result<Self, ServiceError> {
        let id = match body.get("id") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
            Some(other) => {
                return Err(ServiceError::Invalid(format!(
                    "Invalid id: {} is not a VIF identifier",
                    super::shown(other)
                )))
            }
            None => {
                return Err(ServiceError::Invalid(
                    "Missing mandatory parameter: id".into(),
                ))
            }
        };
        let uuid_of = |k: &str| -> Result<Option<String>, ServiceError> {
            body.get(k)
                .and_then(Value::as_str)
                .map(super::parse_uuid)
                .transpose()
        };
        let v = Self {
            id,
            port_uuid: uuid_of("port_uuid")?,
            portgroup_uuid: uuid_of("portgroup_uuid")?,
        };
        if v.port_uuid.is_some() && v.portgroup_uuid.is_some() {
            return Err(ServiceError::Invalid(
                "Cannot specify both port_uuid and portgroup_uuid".into(),
            ));
        }
        Ok(v)
    }
}

fn vif_of(info: &Dict) -> Option<&str> {
    info.get(VIF_KEY).and_then(Value::as_str)
}

impl Conductor {
    /// The VIF IDs attached to a node.
    pub async fn vif_list(&self, ident: &str) -> Result<Vec<String>, ServiceError> {
        let node = self.store.get_node(ident).await?;
        let groups: Vec<Portgroup> = self.store.list_docs(Some(&node.uuid)).await?;
        let ports = self.store.list_ports(Some(&node.uuid)).await?;
        Ok(groups
            .iter()
            .filter_map(|g| vif_of(&g.internal_info))
            .chain(ports.iter().filter_map(|p| vif_of(&p.internal_info)))
            .map(str::to_owned)
            .collect())
    }

    pub async fn vif_attach(&self, ident: &str, req: VifAttach) -> Result<(), ServiceError> {
        let node = self.store.get_node(ident).await?;
        if self.is_busy(&node.uuid) {
            return Err(ServiceError::Locked(node.uuid));
        }
        self.store
            .modify_node_ports(&node.uuid, move |ports, groups| attach(ports, groups, &req))
            .await
    }

    /// Detach every VIF of a node (tear down, as Ironic's
    /// `remove_vifs_from_node`); called under the node's lock.
    pub async fn remove_vifs(&self, uuid: &str) -> Result<(), ServiceError> {
        self.store
            .modify_node_ports(uuid, |ports, groups| {
                clear_all(ports, groups);
                Ok::<_, ServiceError>(())
            })
            .await
    }

    pub async fn vif_detach(&self, ident: &str, vif: &str) -> Result<(), ServiceError> {
        let node = self.store.get_node(ident).await?;
        if self.is_busy(&node.uuid) {
            return Err(ServiceError::Locked(node.uuid));
        }
        let (vif, uuid) = (vif.to_owned(), node.uuid.clone());
        self.store
            .modify_node_ports(&node.uuid, move |ports, groups| {
                let slot = groups
                    .iter_mut()
                    .map(|g| &mut g.internal_info)
                    .chain(ports.iter_mut().map(|p| &mut p.internal_info))
                    .find(|info| vif_of(info) == Some(vif.as_str()));
                match slot {
                    Some(info) => {
                        info.remove(VIF_KEY);
                        Ok(())
                    }
                    None => Err(ServiceError::Invalid(format!(
                        "Unable to detach VIF {vif} from node {uuid} because it is not attached to it."
                    ))),
                }
            })
            .await
    }
}

/// Forget every VIF recorded on `ports` and `groups`.
fn clear_all(ports: &mut [Port], groups: &mut [Portgroup]) {
    for info in groups
        .iter_mut()
        .map(|g| &mut g.internal_info)
        .chain(ports.iter_mut().map(|p| &mut p.internal_info))
    {
        info.remove(VIF_KEY);
    }
}

/// Record `req` on a free port-like object of the node.
fn attach(
    ports: &mut [Port],
    groups: &mut [Portgroup],
    req: &VifAttach,
) -> Result<(), ServiceError> {
    let taken = groups
        .iter()
        .filter(|g| vif_of(&g.internal_info) == Some(req.id.as_str()))
        .map(|g| ("Portgroup", g.uuid.clone()))
        .chain(
            ports
                .iter()
                .filter(|p| vif_of(&p.internal_info) == Some(req.id.as_str()))
                .map(|p| ("Port", p.uuid.clone())),
        )
        .next();
    if let Some((kind, uuid)) = taken {
        return Err(ServiceError::Conflict(format!(
            "Unable to attach VIF because VIF {} is already attached to Ironic {kind} {uuid}",
            req.id
        )));
    }
    let no_free = || {
        ServiceError::Invalid(format!(
            "Unable to attach VIF {}, not enough free physical ports.",
            req.id
        ))
    };
    let id = Value::String(req.id.clone());
    if let Some(want) = &req.portgroup_uuid {
        let g = groups.iter_mut().find(|g| &g.uuid == want).ok_or_else(|| {
            ServiceError::Invalid(format!("Portgroup {want} could not be found."))
        })?;
        if vif_of(&g.internal_info).is_some() {
            return Err(no_free());
        }
        g.internal_info.insert(VIF_KEY.into(), id);
        return Ok(());
    }
    if let Some(want) = &req.port_uuid {
        let p = ports
            .iter_mut()
            .find(|p| &p.uuid == want)
            .ok_or_else(|| ServiceError::Invalid(format!("Port {want} could not be found.")))?;
        if vif_of(&p.internal_info).is_some() {
            return Err(no_free());
        }
        p.internal_info.insert(VIF_KEY.into(), id);
        return Ok(());
    }
    if let Some(g) = groups
        .iter_mut()
        .find(|g| vif_of(&g.internal_info).is_none())
    {
        g.internal_info.insert(VIF_KEY.into(), id);
        return Ok(());
    }
    let mut free: Vec<&mut Port> = ports
        .iter_mut()
        .filter(|p| p.portgroup_uuid.is_none() && vif_of(&p.internal_info).is_none())
        .collect();
    free.sort_by_key(|p| !p.pxe_enabled);
    let p = free.into_iter().next().ok_or_else(no_free)?;
    p.internal_info.insert(VIF_KEY.into(), id);
    Ok(())
}

#[cfg(test)]
mod tests;
