//! GetConsoleLog on any replica. A console's log lives in its owner's
//! memory, so a replica that does not run the console asks the owner, whose
//! `members/<replica>` key names its gRPC address, once and with a short
//! deadline. A forwarded request is marked and is never forwarded again.
//!
//! ```text
//!  GetConsoleLog ─▶ console running here? ──yes──▶ the local log
//!        │ no (and the request was not forwarded to us)
//!        ▼
//!  read consoles/<node>/ and members/ (etcd, now)
//!        ├─ owner is this replica ─────────────────▶ the local answer
//!        ├─ owner R, members/R = {grpc} ──forward──▶ R's answer, its status kept
//!        ├─ no owner (spec but unclaimed) ─────────▶ UNAVAILABLE
//!        ├─ R not a member / no answer in time ────▶ UNAVAILABLE naming R
//!        └─ no spec, no owner ─────────────────────▶ NOT_FOUND
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use porthole_proto::console::v1 as pb;
use tonic::metadata::MetadataValue;
use tracing::debug;

use super::api::RELATIVE;
use super::Cluster;
use crate::backend::LogSnapshot;
use crate::coordinator::etcd::view::Entry;
use crate::coordinator::etcd::Member;
use crate::error::ConsoleError;
use crate::spec::NodeId;

/// Request metadata naming the replica that forwarded a request.
pub const FORWARDED_BY: &str = "x-porthole-forwarded-by";

/// Connecting to the owner and its answer, together.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest forwarded answer accepted (tonic's default is 4 MiB; the
/// log ring is configurable).
const MAX_FORWARDED_BYTES: usize = 256 * 1024 * 1024;

/// How a replica reaches the others: plaintext, or TLS with a client config
/// built once at start (this replica's own certificate as the client's).
/// Never printed with `{:?}` of the config: it holds the key.
#[derive(Clone, Default)]
pub struct PeerTls(Option<tonic::transport::ClientTlsConfig>);

impl PeerTls {
    pub fn tls(config: tonic::transport::ClientTlsConfig) -> Self {
        Self(Some(config))
    }

    fn scheme(&self) -> &'static str {
        match self.0 {
            Some(_) => "https",
            None => "http",
        }
    }
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "PeerTls(tls)",
            None => "PeerTls(plaintext)",
        })
    }
}

/// Why a replica could not get a console log from the console's owner.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no replica serves the console of {node} yet (it has no owner); try again")]
    NoOwner { node: String },
    #[error(
        "the console of {node} is owned by replica {owner}, which is not a live member \
         (leaving or gone); try again"
    )]
    OwnerUnknown { node: String, owner: String },
    #[error("the console of {node} is owned by replica {owner} at {url}, which did not answer: {reason}")]
    OwnerUnreachable {
        node: String,
        owner: String,
        url: String,
        reason: String,
    },
    #[error("replica {owner}, owner of the console of {node}: {message}")]
    Owner {
        node: String,
        owner: String,
        code: tonic::Code,
        message: String,
    },
    #[error(
        "replica {replica} was asked by replica {from} for the log of {node} but does not \
         run that console (starting, stopping or moved); try again"
    )]
    NotHere {
        node: String,
        replica: String,
        from: String,
    },
}

/// Where a node's log is read.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Here,
    Owner { owner: String, url: String },
}

impl Cluster {
    /// GetConsoleLog from cluster state (see the module doc).
    /// `forwarded_by`: the replica that forwarded this request, if any.
    pub async fn log(
        &self,
        node: &NodeId,
        max_bytes: u32,
        forwarded_by: Option<&str>,
    ) -> Result<LogSnapshot, ConsoleError> {
        let manager = &self.inner.manager;
        if manager.ownership(node).is_some() {
            return manager.log(node, max_bytes as usize);
        }
        if let Some(from) = forwarded_by {
            return Err(ForwardError::NotHere {
                node: node.to_string(),
                replica: self.replica().to_owned(),
                from: from.to_owned(),
            }
            .into());
        }
        let keys = self
            .read_raw(&[&RELATIVE.node_prefix(node), &RELATIVE.members_prefix()])
            .await?;
        let scheme = self.inner.settings.peer_tls.scheme();
        match route(node, self.replica(), &keys, scheme)? {
            Route::Here => manager.log(node, max_bytes as usize),
            Route::Owner { owner, url } => {
                debug!(%node, %owner, %url, "forwarding GetConsoleLog to the owner");
                Ok(self.ask_owner(node, &owner, &url, max_bytes).await?)
            }
        }
    }

    /// One GetConsoleLog on the owner, marked as forwarded, within
    /// [`FORWARD_TIMEOUT`].
    async fn ask_owner(
        &self,
        node: &NodeId,
        owner: &str,
        url: &str,
        max_bytes: u32,
    ) -> Result<LogSnapshot, ForwardError> {
        let unreachable = |reason: String| ForwardError::OwnerUnreachable {
            node: node.to_string(),
            owner: owner.to_owned(),
            url: url.to_owned(),
            reason,
        };
        let mut request = tonic::Request::new(pb::GetConsoleLogRequest {
            node_id: node.to_string(),
            max_bytes,
        });
        let me = MetadataValue::try_from(self.replica())
            .unwrap_or_else(|_| MetadataValue::from_static("unnamed"));
        request.metadata_mut().insert(FORWARDED_BY, me);
        let answer = call_owner(url, &self.inner.settings.peer_tls, request)
            .await
            .map_err(|failed| match failed {
                CallFailed::Unreachable(reason) => unreachable(reason),
                CallFailed::Answered(status) => ForwardError::Owner {
                    node: node.to_string(),
                    owner: owner.to_owned(),
                    code: status.code(),
                    message: status.message().to_owned(),
                },
            })?;
        Ok(LogSnapshot {
            data: answer.data,
            truncated: answer.truncated,
        })
    }
}

/// How a call to the owner failed.
#[derive(Debug)]
enum CallFailed {
    /// No answer: not connected, the connection failed under the call (a
    /// TLS peer refusing our certificate closes it after the handshake), or
    /// none within [`FORWARD_TIMEOUT`].
    Unreachable(String),
    /// The owner answered with this status.
    Answered(tonic::Status),
}

/// GetConsoleLog on the replica at `url`, connecting as `tls` says, within
/// [`FORWARD_TIMEOUT`].
async fn call_owner(
    url: &str,
    tls: &PeerTls,
    request: tonic::Request<pb::GetConsoleLogRequest>,
) -> Result<pb::GetConsoleLogResponse, CallFailed> {
    let unreachable = |e: &dyn std::error::Error| CallFailed::Unreachable(chain(e));
    let call = async {
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| unreachable(&e))?
            .connect_timeout(FORWARD_TIMEOUT);
        if let Some(tls) = &tls.0 {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| unreachable(&e))?;
        }
        let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
        pb::console_service_client::ConsoleServiceClient::new(channel)
            .max_decoding_message_size(MAX_FORWARDED_BYTES)
            .get_console_log(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| match std::error::Error::source(&status) {
                Some(e) if e.is::<tonic::transport::Error>() => {
                    CallFailed::Unreachable(format!("{}: {}", status.message(), chain(e)))
                }
                _ => CallFailed::Answered(status),
            })
    };
    tokio::time::timeout(FORWARD_TIMEOUT, call)
        .await
        .map_err(|_| CallFailed::Unreachable(format!("no answer within {FORWARD_TIMEOUT:?}")))?
}

/// Who answers for `node`, from its `consoles/<node>/` keys and every
/// `members/` key (relative to the prefix).
fn route(
    node: &NodeId,
    me: &str,
    keys: &[(String, Entry)],
    scheme: &str,
) -> Result<Route, ConsoleError> {
    let get = |key: String| keys.iter().find(|(k, _)| *k == key).map(|(_, e)| e);
    let owner = match get(RELATIVE.owner(node)) {
        Some(entry) => String::from_utf8_lossy(&entry.value).into_owned(),
        None if get(RELATIVE.spec(node)).is_some() => {
            return Err(ForwardError::NoOwner {
                node: node.to_string(),
            }
            .into())
        }
        None => {
            return Err(ConsoleError::NotFound(format!(
                "{node} (console is not enabled)"
            )))
        }
    };
    if owner == me {
        return Ok(Route::Here);
    }
    let member = get(RELATIVE.member(&owner))
        .and_then(|entry| serde_json::from_slice::<Member>(&entry.value).ok());
    match member {
        Some(member) => Ok(Route::Owner {
            url: grpc_url(&member, scheme),
            owner,
        }),
        None => Err(ForwardError::OwnerUnknown {
            node: node.to_string(),
            owner,
        }
        .into()),
    }
}

/// The URL a member's gRPC service is reached at (`scheme`: `http` or
/// `https`, as this replica serves). A replica listening on every address
/// (`0.0.0.0`, `[::]`) is reached at its advertised host.
fn grpc_url(member: &Member, scheme: &str) -> String {
    match member.grpc.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            format!("{scheme}://{}:{}", member.host, addr.port())
        }
        _ => format!("{scheme}://{}", member.grpc),
    }
}

/// An error with its sources (tonic's transport errors say little alone).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
#[path = "forward_tls_tests.rs"]
mod tls_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &str) -> Entry {
        Entry {
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        }
    }

    fn member(replica: &str, grpc: &str) -> (String, Entry) {
        let doc = Member {
            replica: replica.into(),
            host: "192.0.2.7".into(),
            grpc: grpc.into(),
        };
        (
            RELATIVE.member(replica),
            entry(&serde_json::to_string(&doc).unwrap()),
        )
    }

    fn node() -> NodeId {
        NodeId::parse("node-1").unwrap()
    }

    fn status(r: Result<Route, ConsoleError>) -> tonic::Status {
        tonic::Status::from(r.unwrap_err())
    }

    #[test]
    fn the_owner_answers_at_its_grpc_address() {
        let keys = vec![
            (RELATIVE.spec(&node()), entry("{}")),
            (RELATIVE.owner(&node()), entry("r2")),
            member("r1", "10.0.0.1:50051"),
            member("r2", "10.0.0.2:50051"),
            member("r20", "10.0.0.20:50051"),
        ];
        assert_eq!(
            route(&node(), "r1", &keys, "http").unwrap(),
            Route::Owner {
                owner: "r2".into(),
                url: "http://10.0.0.2:50051".into()
            }
        );
        assert_eq!(route(&node(), "r2", &keys, "http").unwrap(), Route::Here);
    }

    #[test]
    fn no_owner_or_an_unknown_one_is_unavailable_and_named() {
        let unclaimed = vec![(RELATIVE.spec(&node()), entry("{}"))];
        let s = status(route(&node(), "r1", &unclaimed, "http"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("no owner"), "{}", s.message());

        let gone = vec![
            (RELATIVE.spec(&node()), entry("{}")),
            (RELATIVE.owner(&node()), entry("r9")),
            member("r1", "10.0.0.1:50051"),
        ];
        let s = status(route(&node(), "r1", &gone, "http"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("replica r9"), "{}", s.message());

        let s = status(route(&node(), "r1", &[], "http"));
        assert_eq!(s.code(), tonic::Code::NotFound);
    }

    #[test]
    fn a_wildcard_listen_address_is_reached_at_the_advertised_host() {
        let (_, e) = member("r1", "0.0.0.0:50051");
        let m: Member = serde_json::from_slice(&e.value).unwrap();
        assert_eq!(grpc_url(&m, "http"), "http://192.0.2.7:50051");
        assert_eq!(grpc_url(&m, "https"), "https://192.0.2.7:50051");
        let (_, e) = member("r1", "[::1]:50051");
        let m: Member = serde_json::from_slice(&e.value).unwrap();
        assert_eq!(grpc_url(&m, "http"), "http://[::1]:50051");
        assert_eq!(grpc_url(&m, "https"), "https://[::1]:50051");
    }

    #[test]
    fn the_owners_status_is_kept_and_other_failures_are_unavailable() {
        let owner = ForwardError::Owner {
            node: "node-1".into(),
            owner: "r2".into(),
            code: tonic::Code::Unimplemented,
            message: "the socat backend keeps no console log".into(),
        };
        let s = tonic::Status::from(ConsoleError::from(owner));
        assert_eq!(s.code(), tonic::Code::Unimplemented);
        assert!(s.message().starts_with("replica r2"), "{}", s.message());
        let unreachable = ForwardError::OwnerUnreachable {
            node: "node-1".into(),
            owner: "r2".into(),
            url: "http://10.0.0.2:50051".into(),
            reason: "no answer within 2s".into(),
        };
        let s = tonic::Status::from(ConsoleError::from(unreachable));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("replica r2 at http://10.0.0.2:50051"));
    }
}
