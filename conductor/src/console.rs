//! The conductor's side of console-svc: the gRPC client (TLS-capable), the
//! EnableConsole request built from a node, and console_info from a reply.
//!
//! Callers: `service` (PUT /states/console, node delete), `watch`
//! (reconcile on start, WatchConsoles) and `provision::evidence` (the log
//! at a failure).

use pb::console_service_client::ConsoleServiceClient;
use porthole_common::tls::ClientTls;
use porthole_proto::console::v1 as pb;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::config::ConsoleSvcConfig;
use crate::model::Node;
use crate::power::{info_str, info_u16};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The node cannot have a console as configured (the caller's fault).
    #[error("{0}")]
    Invalid(String),
    /// console-svc cannot be reached.
    #[error("the console service at {endpoint} is unavailable: {message}")]
    Unavailable { endpoint: String, message: String },
    /// console-svc answered with an error.
    #[error("the console service refused: {}", .0.message())]
    Rejected(tonic::Status),
    #[error("console service TLS settings: {0}")]
    Config(String),
}

/// Which console a console_interface gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Serial,
    Vnc,
}

/// The console interfaces the conductor knows, and what they give.
pub const INTERFACES: &[(&str, Option<Kind>)] = &[
    ("ipmitool-socat", Some(Kind::Serial)),
    ("ipmitool-shellinabox", Some(Kind::Serial)),
    ("redfish-graphical", Some(Kind::Vnc)),
    ("fake-graphical", Some(Kind::Vnc)),
    ("no-console", None),
];

pub fn interface_kind(iface: &str) -> Result<Option<Kind>, ConsoleError> {
    INTERFACES
        .iter()
        .find(|(n, _)| *n == iface)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            let names: Vec<&str> = INTERFACES.iter().map(|(n, _)| *n).collect();
            ConsoleError::Invalid(format!(
                "Console interface {iface:?} is not supported; use one of {}.",
                names.join(", ")
            ))
        })
}

#[derive(Clone)]
pub struct ConsoleClient {
    endpoint: String,
    client: ConsoleServiceClient<Channel>,
}

impl ConsoleClient {
    /// A lazily connecting client: the conductor starts while console-svc is down.
    pub fn new(cfg: &ConsoleSvcConfig) -> Result<Self, ConsoleError> {
        let tls = ClientTls {
            ca_file: cfg.tls_ca.clone(),
            cert_file: cfg.tls_cert.clone(),
            key_file: cfg.tls_key.clone(),
            server_name: cfg.tls_domain.clone(),
        };
        let channel = tls
            .lazy_channel(
                &cfg.endpoint,
                cfg.timeout,
                ("console.tls_cert", "console.tls_key"),
            )
            .map_err(|e| ConsoleError::Config(e.to_string()))?;
        Ok(Self {
            endpoint: cfg.endpoint.clone(),
            client: ConsoleServiceClient::new(channel),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn status(&self, s: tonic::Status) -> ConsoleError {
        // A connection that failed under the call (refused, reset, or
        // closed by the server in the TLS handshake, e.g. for want of a
        // client certificate) arrives as whatever code hyper's error maps
        // to, CANCELLED among them; it is the service being unavailable to
        // us, not its answer.
        let transport =
            std::error::Error::source(&s).is_some_and(|e| e.is::<tonic::transport::Error>());
        match s.code() {
            _ if transport => ConsoleError::Unavailable {
                endpoint: self.endpoint.clone(),
                message: chain(&s),
            },
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                if s.message().contains("transport") || s.code() != tonic::Code::Unknown =>
            {
                ConsoleError::Unavailable {
                    endpoint: self.endpoint.clone(),
                    message: s.message().to_owned(),
                }
            }
            _ => ConsoleError::Rejected(s),
        }
    }

    #[tracing::instrument(skip_all, fields(node = %req.node_id))]
    pub async fn enable(&self, req: pb::EnableConsoleRequest) -> Result<pb::Console, ConsoleError> {
        let mut c = self.client.clone();
        c.enable_console(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.status(s))
    }

    #[tracing::instrument(skip(self))]
    pub async fn disable(&self, node_id: &str) -> Result<(), ConsoleError> {
        let mut c = self.client.clone();
        let req = pb::DisableConsoleRequest {
            node_id: node_id.to_owned(),
        };
        c.disable_console(req)
            .await
            .map(drop)
            .map_err(|s| self.status(s))
    }

    /// The newest `max_bytes` of the console's log (GetConsoleLog); the
    /// caller bounds the wait (`provision::evidence`).
    #[tracing::instrument(skip(self))]
    pub async fn log(
        &self,
        node_id: &str,
        max_bytes: u32,
    ) -> Result<pb::GetConsoleLogResponse, ConsoleError> {
        let mut c = self.client.clone();
        let req = pb::GetConsoleLogRequest {
            node_id: node_id.to_owned(),
            max_bytes,
        };
        c.get_console_log(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.status(s))
    }

    pub async fn watch(&self) -> Result<tonic::Streaming<pb::ConsoleEvent>, ConsoleError> {
        let mut c = self.client.clone();
        c.watch_consoles(pb::WatchConsolesRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.status(s))
    }
}

/// The EnableConsole request for `node`, or why it cannot have a console.
pub fn enable_request(node: &Node) -> Result<pb::EnableConsoleRequest, ConsoleError> {
    let who = node.name.as_deref().unwrap_or(&node.uuid);
    let kind = interface_kind(&node.console_interface)?.ok_or_else(|| {
        ConsoleError::Invalid(format!(
            "Node {who} has console_interface no-console; set console_interface to ipmitool-socat (serial) or redfish-graphical (VNC) first."
        ))
    })?;
    let info = &node.driver_info;
    let missing = |keys: &[&str]| -> Vec<String> {
        keys.iter()
            .filter(|k| info_str(info, k).is_none())
            .map(|k| k.to_string())
            .collect()
    };
    let invalid = |e: crate::power::PowerError| ConsoleError::Invalid(e.to_string());
    match kind {
        Kind::Serial => {
            let m = missing(&["ipmi_address", "ipmi_username", "ipmi_password"]);
            if !m.is_empty() {
                return Err(ConsoleError::Invalid(format!(
                    "Cannot enable the console of node {who}: driver_info is missing {} (the serial console logs in to the BMC over IPMI).",
                    m.join(", ")
                )));
            }
            let cipher = match info_str(info, "ipmi_cipher_suite") {
                None => None,
                Some(s) => Some(s.parse::<u32>().map_err(|_| {
                    ConsoleError::Invalid(format!(
                        "driver_info ipmi_cipher_suite must be a number, not {s:?}."
                    ))
                })?),
            };
            Ok(pb::EnableConsoleRequest {
                node_id: node.uuid.clone(),
                kind: pb::ConsoleKind::Serial as i32,
                ipmi: Some(pb::IpmiTarget {
                    address: info_str(info, "ipmi_address").unwrap_or_default(),
                    port: info_u16(info, "ipmi_port")
                        .map_err(invalid)?
                        .unwrap_or(0)
                        .into(),
                    username: info_str(info, "ipmi_username").unwrap_or_default(),
                    password: info_str(info, "ipmi_password").unwrap_or_default(),
                    cipher_suite: cipher,
                    privilege_level: info_str(info, "ipmi_priv_level").unwrap_or_default(),
                }),
                port: info_u16(info, "ipmi_terminal_port")
                    .map_err(invalid)?
                    .unwrap_or(0)
                    .into(),
                vnc: None,
            })
        }
        Kind::Vnc => {
            let host = info_str(info, "vnc_host").or_else(|| info_str(info, "vnc_address"));
            let Some(host) = host else {
                return Err(ConsoleError::Invalid(format!(
                    "Cannot enable the graphical console of node {who}: driver_info is missing vnc_host (the BMC's VNC server)."
                )));
            };
            Ok(pb::EnableConsoleRequest {
                node_id: node.uuid.clone(),
                kind: pb::ConsoleKind::Vnc as i32,
                ipmi: None,
                port: 0,
                vnc: Some(pb::VncTarget {
                    host,
                    port: info_u16(info, "vnc_port")
                        .map_err(invalid)?
                        .unwrap_or(0)
                        .into(),
                    password: info_str(info, "vnc_password").unwrap_or_default(),
                }),
            })
        }
    }
}

/// Ironic's console_info for a console console-svc reports, if it has a URL.
pub fn console_info(c: &pb::Console) -> Option<Value> {
    if c.url.is_empty() {
        return None;
    }
    let ty = if c.kind == pb::ConsoleKind::Vnc as i32 {
        "vnc"
    } else {
        "socat"
    };
    Some(json!({"type": ty, "url": c.url}))
}

/// Record what console-svc reported on `node`: console_info, and for VNC
/// driver_internal_info.vnc_host/vnc_port. Never touches console_enabled.
pub fn apply(node: &mut Node, c: &pb::Console) {
    if let Some(info) = console_info(c) {
        node.console_info = Some(info);
    }
    if c.kind == pb::ConsoleKind::Vnc as i32 && c.port != 0 {
        node.driver_internal_info
            .insert("vnc_host".into(), json!(c.host));
        node.driver_internal_info
            .insert("vnc_port".into(), json!(c.port));
    }
}

/// A status's message and its sources' (a transport error alone says
/// "operation was canceled"; its source says the connection was closed).
/// A status's message and its sources' (shared with `provision::inspect_grpc`).
pub(crate) fn chain(s: &tonic::Status) -> String {
    let mut text = s.message().to_owned();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_certificate_without_its_key_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "not read before the pair is checked").unwrap();
        let cfg = ConsoleSvcConfig {
            endpoint: "https://127.0.0.1:50051".into(),
            tls_cert: Some(cert),
            ..ConsoleSvcConfig::default()
        };
        match ConsoleClient::new(&cfg) {
            Err(ConsoleError::Config(m)) => {
                assert_eq!(m, "console.tls_cert needs console.tls_key")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a certificate without its key was accepted"),
        }
        let cfg = ConsoleSvcConfig {
            endpoint: "https://127.0.0.1:50051".into(),
            tls_ca: Some(dir.path().join("missing-ca.pem")),
            ..ConsoleSvcConfig::default()
        };
        match ConsoleClient::new(&cfg) {
            Err(ConsoleError::Config(m)) => assert!(m.contains("missing-ca.pem"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a missing CA file was accepted"),
        }
    }
}
