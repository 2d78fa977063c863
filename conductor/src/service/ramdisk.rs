//! Ramdisk-facing operations and their secret: the per-operation token the
//! conductor issues when a node starts work that may wait for its ramdisk
//! (deploying, inspecting, cleaning), checked in constant time on every
//! ramdisk call, good only while the node is in that wait state, and
//! forgotten as soon as the wait ends (any transition out of it).
//!
//! - The token: 32 bytes from the OS CSPRNG (`ring::rand::SystemRandom`),
//!   URL-safe base64; sealed at rest in its own table (`db::tokens`), so no
//!   node rendering can carry it; the API never shows it. The interface
//!   that boots the ramdisk gets it in the in-memory copy of the node it is
//!   handed (`driver_internal_info.agent_secret_token`, never written).
//! - vendor_passthru (`service::vendor`) checks ramdisk methods with
//!   [`Conductor::check_ramdisk_token`].
//! - Ironic's agent endpoints: `lookup` (no secret, as Ironic: only nodes
//!   in a state that waits for a ramdisk, the token never returned) and
//!   `heartbeat` (the secret as `agent_token`).
//!
//! A refused call records nothing and changes nothing. Callers: the
//! handlers in `api::ramdisk`, `service::vendor`; `service::provision`
//! (issue, and forget after each transition).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::{normalize_mac, Conductor, ServiceError};
use crate::db::tokens::RamdiskToken;
use crate::model::{now, Dict, Node};
use crate::provision::State;

/// Where the interface finds the token in the node it is handed (Ironic's
/// key); only ever in memory.
pub const TOKEN_KEY: &str = crate::db::tokens::IN_MEMORY_KEY;

/// Ironic's words for a missing or wrong secret.
pub const BAD_TOKEN: &str = "Invalid or missing agent token received.";

/// The states Ironic lets a ramdisk look its node up in.
const LOOKUP_STATES: &[State] = &[
    State::Deploying,
    State::DeployWait,
    State::Cleaning,
    State::CleanWait,
    State::Inspecting,
    State::InspectWait,
];

/// The wait states a ramdisk may call back in.
pub const WAIT_STATES: &[State] = &[State::DeployWait, State::CleanWait, State::InspectWait];

/// Who is calling, as the API's authentication saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// With operator credentials (or noauth).
    Operator,
    /// http_basic is on and the request carried no valid credentials.
    Anonymous,
}

/// The wait a working state may lead to (the secret is issued for it).
pub fn wait_of(state: State) -> Option<State> {
    match state {
        State::Deploying => Some(State::DeployWait),
        State::Inspecting => Some(State::InspectWait),
        State::Cleaning => Some(State::CleanWait),
        _ => None,
    }
}

/// A fresh secret from the OS CSPRNG.
fn fresh_token() -> Result<String, ServiceError> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| ServiceError::Invalid("the system's random source failed".into()))?;
    Ok(B64URL.encode(buf))
}

/// The secret a ramdisk call presents: `agent_token` (the agent's), or
/// `key` (the deploy key of the iscsi deploy's `pass_deploy_info`).
pub(super) fn presented(args: &Dict) -> Option<&str> {
    args.get("agent_token")
        .or_else(|| args.get("key"))
        .and_then(Value::as_str)
}

impl Conductor {
    /// Issue the secret for the wait `wait` that `uuid`'s current work may
    /// lead to; the clear value, for the interface to give the ramdisk.
    pub async fn issue_ramdisk_token(
        &self,
        uuid: &str,
        wait: State,
    ) -> Result<String, ServiceError> {
        let token = fresh_token()?;
        let t = RamdiskToken {
            wait_state: wait.as_str().to_owned(),
            token: token.clone(),
        };
        self.store.put_ramdisk_token(uuid, t).await?;
        Ok(token)
    }

    /// After `uuid` moved to `state`: outside a wait, its secret is gone.
    pub(crate) async fn forget_ramdisk_token_unless_waiting(&self, uuid: &str, state: State) {
        if WAIT_STATES.contains(&state) {
            return;
        }
        match self.store.drop_ramdisk_token(uuid).await {
            Ok(true) => tracing::debug!(node = %uuid, %state, "ramdisk token invalidated"),
            Ok(false) => {}
            Err(e) => tracing::warn!(node = %uuid, error = %e, "cannot drop the ramdisk token"),
        }
    }

    /// `node` is in one of `states` and `given` is the secret issued for
    /// that wait (compared in constant time); else 400 (Ironic raises InvalidParameterValue here), nothing recorded.
    pub async fn check_ramdisk_token(
        &self,
        node: &Node,
        states: &[State],
        given: Option<&str>,
    ) -> Result<(), ServiceError> {
        let refuse = |why: &str| {
            tracing::info!(node = %node.uuid, state = %node.provision_state, why, "ramdisk call refused");
            Err(ServiceError::Invalid(BAD_TOKEN.into()))
        };
        let Some(given) = given else {
            return refuse("no token");
        };
        let waiting = State::parse(&node.provision_state).is_ok_and(|s| states.contains(&s));
        let stored = self.store.ramdisk_token(&node.uuid).await?;
        let Some(stored) = stored.filter(|t| t.wait_state == node.provision_state) else {
            return refuse("no token issued for this wait");
        };
        let same: bool = stored.token.as_bytes().ct_eq(given.as_bytes()).into();
        if !same {
            return refuse("wrong token");
        }
        if !waiting {
            return refuse("not in a state this call is allowed in");
        }
        Ok(())
    }

    /// Ironic's `GET /v1/lookup`: the node a ramdisk runs on, by its MAC
    /// addresses or UUID, only while it waits for a ramdisk; 404 alike for
    /// a node that does not exist and one in another state.
    pub async fn lookup(
        &self,
        addresses: &[String],
        node_uuid: Option<&str>,
    ) -> Result<Value, ServiceError> {
        let macs: Vec<String> = addresses
            .iter()
            .filter_map(|a| normalize_mac(a).ok())
            .collect();
        if macs.is_empty() && node_uuid.is_none() {
            return Err(ServiceError::Invalid(
                "At least one of 'addresses' and 'node_uuid' parameters is required".into(),
            ));
        }
        let not_found = || ServiceError::NotFound;
        let node = match node_uuid {
            Some(u) => self.store.get_node(u).await.map_err(|_| not_found())?,
            None => {
                let ports = self.store.list_ports(None).await?;
                let owner = ports
                    .iter()
                    .find(|p| macs.contains(&p.address))
                    .map(|p| p.node_uuid.clone())
                    .ok_or_else(not_found)?;
                self.store.get_node(&owner).await.map_err(|_| not_found())?
            }
        };
        let allowed = State::parse(&node.provision_state).is_ok_and(|s| LOOKUP_STATES.contains(&s));
        if !allowed {
            return Err(not_found());
        }
        Ok(json!({
            "node": {
                "uuid": node.uuid,
                "properties": node.properties,
                "instance_info": crate::model::masked(&node.instance_info),
                "driver_internal_info": crate::model::masked(&node.driver_internal_info),
            },
            "config": {
                "heartbeat_timeout": 300,
                // Issued with the operation and handed over with the boot
                // media, as Ironic's pregenerated tokens: never sent here.
                "agent_token": crate::model::MASK,
                "agent_token_required": true,
            },
        }))
    }

    /// Ironic's `POST /v1/heartbeat/{node}`: with the operation's secret,
    /// in a wait state, records where the agent listens.
    pub async fn heartbeat(self: &Arc<Self>, ident: &str, body: &Dict) -> Result<(), ServiceError> {
        let node = self.store.get_node(ident).await?;
        self.check_ramdisk_token(
            &node,
            WAIT_STATES,
            body.get("agent_token").and_then(Value::as_str),
        )
        .await?;
        let url = match body.get("callback_url") {
            Some(Value::String(u)) if (u.starts_with("http://") || u.starts_with("https://")) && u.len() <= 255 => u.clone(),
            None | Some(Value::Null) => {
                return Err(ServiceError::Invalid("Missing argument: \"callback_url\"".into()))
            }
            Some(_) => {
                return Err(ServiceError::Invalid(
                    "Invalid callback_url: an http:// or https:// URL of at most 255 characters is expected.".into(),
                ))
            }
        };
        let version = body
            .get("agent_version")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let _guard = self.reserve(&node.uuid)?;
        let node = self.store.get_node(&node.uuid).await?;
        self.check_ramdisk_token(
            &node,
            WAIT_STATES,
            body.get("agent_token").and_then(Value::as_str),
        )
        .await?;
        self.store
            .modify_node(&node.uuid, move |n: &mut Node| {
                let info = &mut n.driver_internal_info;
                info.insert("agent_url".into(), Value::String(url));
                if let Some(v) = version {
                    info.insert("agent_version".into(), Value::String(v));
                }
                info.insert("agent_last_heartbeat".into(), Value::String(now()));
                Ok::<_, ServiceError>(())
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
