//! Validated console requests: what a caller asked for, checked once at the
//! edge (gRPC) and carried as plain domain types from there on.
//!
//! `ConsoleSpec::from_request` is the only place that turns wire input into a
//! spec; everything it rejects is a [`SpecError`], which `crate::error`
//! turns into INVALID_ARGUMENT. This module imports nothing from the layers
//! above it (the gRPC error type, the cluster).

use std::fmt;
use std::net::IpAddr;

use porthole_proto::console::v1 as pb;

use crate::secret::Secret;
use crate::text::quoted;

/// A request that is not a valid console spec; the message says what is
/// wrong and quotes at most a bounded part of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(String);

impl SpecError {
    fn invalid(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// A node's id as Ironic knows it (a UUID or a name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

/// The longest node id. Every name made from one must fit: the log file
/// `<log_dir>/<id>.log.1` (a file name is at most 255 bytes), the etcd keys
/// `<prefix>consoles/<id>/endpoint`, log fields. Ironic's UUIDs are 36
/// characters and its node names are host-name-like; 128 leaves room.
pub const MAX_NODE_ID_LEN: usize = 128;

impl NodeId {
    pub fn parse(raw: &str) -> Result<Self, SpecError> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~');
        if raw.is_empty() {
            return Err(SpecError::invalid("node_id must not be empty"));
        }
        if raw.len() > MAX_NODE_ID_LEN {
            return Err(SpecError::invalid(format!(
                "node_id {} is {} characters long; at most {MAX_NODE_ID_LEN} are allowed",
                quoted(raw),
                raw.chars().count()
            )));
        }
        if !raw.chars().all(ok_char) {
            return Err(SpecError::invalid(format!(
                "node_id {} must be letters, digits, '-', '_', '.' or '~'",
                quoted(raw)
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// ipmitool's `-L` privilege levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivilegeLevel {
    Callback,
    User,
    Operator,
    Administrator,
}

impl PrivilegeLevel {
    pub fn parse(raw: &str) -> Result<Self, SpecError> {
        match raw.to_ascii_uppercase().as_str() {
            "" | "ADMINISTRATOR" | "ADMIN" => Ok(Self::Administrator),
            "OPERATOR" => Ok(Self::Operator),
            "USER" => Ok(Self::User),
            "CALLBACK" => Ok(Self::Callback),
            _ => Err(SpecError::invalid(format!(
                "privilege_level {} is not one of CALLBACK, USER, OPERATOR, ADMINISTRATOR",
                quoted(raw)
            ))),
        }
    }

    pub fn as_ipmitool_arg(self) -> &'static str {
        match self {
            Self::Callback => "CALLBACK",
            Self::User => "USER",
            Self::Operator => "OPERATOR",
            Self::Administrator => "ADMINISTRATOR",
        }
    }
}

/// How to reach a BMC over IPMI lanplus. The password stays a [`Secret`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpmiTarget {
    pub address: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    pub cipher_suite: u8,
    pub privilege: PrivilegeLevel,
}

impl IpmiTarget {
    pub const DEFAULT_PORT: u16 = 623;
    pub const DEFAULT_CIPHER_SUITE: u8 = 3;

    /// `address:port` for messages (IPv6 in brackets).
    pub fn display_addr(&self) -> String {
        match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", self.port),
            _ => format!("{}:{}", self.address, self.port),
        }
    }

    fn from_proto(p: pb::IpmiTarget) -> Result<Self, SpecError> {
        let address = p.address.trim().to_owned();
        if !is_host(&address) {
            return Err(SpecError::invalid(format!(
                "ipmi.address {} is neither an IP address nor a host name",
                quoted(&p.address)
            )));
        }
        let port = match p.port {
            0 => Self::DEFAULT_PORT,
            n => u16::try_from(n).map_err(|_| {
                SpecError::invalid(format!("ipmi.port {n} is not a UDP port (1-65535)"))
            })?,
        };
        // ipmitool reads the user name from argv; it goes through socat's EXEC
        // string too, whose separators must not appear in it.
        let username = p.username;
        if username.len() > 16
            || username
                .chars()
                .any(|c| c.is_control() || ",:!'\"\\ ".contains(c))
        {
            return Err(SpecError::invalid(
                "ipmi.username must be at most 16 characters without spaces, quotes, ',', ':', '!' or '\\'",
            ));
        }
        if p.password.len() > 20 {
            return Err(SpecError::invalid(
                "ipmi.password is longer than IPMI 2.0's 20 bytes",
            ));
        }
        let cipher_suite = match p.cipher_suite {
            None => Self::DEFAULT_CIPHER_SUITE,
            Some(n @ 0..=17) => n as u8,
            Some(n) => {
                return Err(SpecError::invalid(format!(
                    "ipmi.cipher_suite {n} is not an IPMI cipher suite (0-17)"
                )))
            }
        };
        Ok(Self {
            address,
            port,
            username,
            password: Secret::new(p.password),
            cipher_suite,
            privilege: PrivilegeLevel::parse(&p.privilege_level)?,
        })
    }
}

/// An IP address or an RFC 1123 host name.
fn is_host(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(label_ok)
        && !s.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit()))
}

/// How to reach a BMC's VNC server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VncTarget {
    pub host: String,
    pub port: u16,
    /// VNC authentication uses the first 8 bytes, as every VNC client does.
    pub password: Option<Secret>,
}

impl VncTarget {
    pub const DEFAULT_PORT: u16 = 5900;

    /// `host:port` for messages and connects (IPv6 in brackets).
    pub fn display_addr(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    fn from_proto(p: pb::VncTarget) -> Result<Self, SpecError> {
        let host = p.host.trim().to_owned();
        if !is_host(&host) {
            return Err(SpecError::invalid(format!(
                "vnc.host {} is neither an IP address nor a host name",
                quoted(&p.host)
            )));
        }
        let port = match p.port {
            0 => Self::DEFAULT_PORT,
            n => u16::try_from(n).map_err(|_| {
                SpecError::invalid(format!("vnc.port {n} is not a TCP port (1-65535)"))
            })?,
        };
        let password = (!p.password.is_empty()).then(|| Secret::new(p.password));
        Ok(Self {
            host,
            port,
            password,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleKind {
    Serial,
    Vnc,
}

/// What a console connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Ipmi(IpmiTarget),
    Vnc(VncTarget),
}

impl Target {
    pub fn kind(&self) -> ConsoleKind {
        match self {
            Self::Ipmi(_) => ConsoleKind::Serial,
            Self::Vnc(_) => ConsoleKind::Vnc,
        }
    }
}

/// What a caller wants: one node's console, served on `port` (or one the
/// service picks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSpec {
    pub node: NodeId,
    pub target: Target,
    pub requested_port: Option<u16>,
}

impl ConsoleSpec {
    pub fn kind(&self) -> ConsoleKind {
        self.target.kind()
    }

    pub fn from_request(req: pb::EnableConsoleRequest) -> Result<Self, SpecError> {
        let node = NodeId::parse(&req.node_id)?;
        let target = match pb::ConsoleKind::try_from(req.kind) {
            Ok(pb::ConsoleKind::Serial) | Ok(pb::ConsoleKind::Unspecified) => {
                let ipmi = req
                    .ipmi
                    .ok_or_else(|| SpecError::invalid("ipmi is required for a serial console"))?;
                Target::Ipmi(IpmiTarget::from_proto(ipmi)?)
            }
            Ok(pb::ConsoleKind::Vnc) => {
                let vnc = req
                    .vnc
                    .ok_or_else(|| SpecError::invalid("vnc is required for a VNC console"))?;
                Target::Vnc(VncTarget::from_proto(vnc)?)
            }
            Err(_) => {
                return Err(SpecError::invalid(format!(
                    "kind {} is not a console kind",
                    req.kind
                )))
            }
        };
        let requested_port = match req.port {
            0 => None,
            n => Some(u16::try_from(n).map_err(|_| {
                SpecError::invalid(format!("port {n} is not a TCP port (1-65535)"))
            })?),
        };
        Ok(Self {
            node,
            target,
            requested_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::EnableConsoleRequest {
        pb::EnableConsoleRequest {
            node_id: "node-1".into(),
            kind: pb::ConsoleKind::Serial as i32,
            ipmi: Some(pb::IpmiTarget {
                address: "127.0.0.1".into(),
                port: 21100,
                username: "admin".into(),
                password: "password".into(),
                cipher_suite: None,
                privilege_level: String::new(),
            }),
            port: 0,
            vnc: None,
        }
    }

    #[test]
    fn accepts_a_complete_request_with_defaults() {
        let spec = ConsoleSpec::from_request(request()).unwrap();
        assert_eq!(spec.node.as_str(), "node-1");
        let Target::Ipmi(ipmi) = &spec.target else {
            panic!("serial console expected")
        };
        assert_eq!(ipmi.cipher_suite, 3);
        assert_eq!(ipmi.privilege, PrivilegeLevel::Administrator);
        assert_eq!(spec.requested_port, None);
    }

    #[test]
    fn rejects_bad_fields_with_a_reason() {
        type Mutation = Box<dyn Fn(&mut pb::EnableConsoleRequest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.node_id.clear()), "node_id must not be empty"),
            (Box::new(|r| r.node_id = "a b".into()), "node_id"),
            (
                Box::new(|r| r.ipmi.as_mut().unwrap().address = "300.1.1.1".into()),
                "ipmi.address",
            ),
            (
                Box::new(|r| r.ipmi.as_mut().unwrap().address = "bad host!".into()),
                "ipmi.address",
            ),
            (
                Box::new(|r| r.ipmi.as_mut().unwrap().port = 70000),
                "ipmi.port",
            ),
            (
                Box::new(|r| r.ipmi.as_mut().unwrap().username = "a,b".into()),
                "ipmi.username",
            ),
            (
                Box::new(|r| r.ipmi.as_mut().unwrap().cipher_suite = Some(99)),
                "cipher_suite",
            ),
            (
                Box::new(|r| r.ipmi.as_mut().unwrap().privilege_level = "ROOT".into()),
                "privilege_level",
            ),
            (Box::new(|r| r.ipmi = None), "ipmi is required"),
            (Box::new(|r| r.port = 70000), "port 70000"),
        ];
        for (mutate, want) in cases {
            let mut r = request();
            mutate(&mut r);
            let err = ConsoleSpec::from_request(r).unwrap_err();
            let status = tonic::Status::from(err.clone());
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{err}");
            assert!(
                err.to_string().contains(want),
                "{err} should mention {want}"
            );
        }
    }

    /// Long input is refused with a reason that quotes at most 64
    /// characters of it; the longest id allowed names a log file that fits.
    #[test]
    fn long_input_is_refused_without_being_echoed() {
        let huge = "a".repeat(1 << 20);
        let mut r = request();
        r.node_id = huge.clone();
        let err = ConsoleSpec::from_request(r).unwrap_err().to_string();
        assert!(
            err.contains("1048576 characters long; at most 128"),
            "{err}"
        );
        assert!(err.len() < 200, "{} bytes", err.len());
        let err = NodeId::parse(&format!("{huge} x")).unwrap_err().to_string();
        assert!(err.len() < 200, "{} bytes", err.len());
        let err = NodeId::parse(&"a".repeat(255)).unwrap_err().to_string();
        assert!(err.contains("at most 128"), "{err}");
        let longest = NodeId::parse(&"a".repeat(MAX_NODE_ID_LEN)).unwrap();
        assert!(format!("{longest}.log.1").len() <= 255);
        for mutate in [
            (|r: &mut pb::EnableConsoleRequest| {
                r.ipmi.as_mut().unwrap().address = "!".repeat(1 << 20)
            }) as fn(&mut pb::EnableConsoleRequest),
            |r| r.ipmi.as_mut().unwrap().privilege_level = "R".repeat(1 << 20),
        ] {
            let mut r = request();
            mutate(&mut r);
            let err = ConsoleSpec::from_request(r).unwrap_err().to_string();
            assert!(err.len() < 200 && err.contains('…'), "{} bytes", err.len());
        }
    }

    #[test]
    fn vnc_consoles_need_a_vnc_target() {
        let mut r = request();
        r.kind = pb::ConsoleKind::Vnc as i32;
        let err = ConsoleSpec::from_request(r.clone()).unwrap_err();
        assert!(err.to_string().contains("vnc is required"), "{err}");
        r.vnc = Some(pb::VncTarget {
            host: "::1".into(),
            port: 0,
            password: "secret".into(),
        });
        let spec = ConsoleSpec::from_request(r).unwrap();
        assert_eq!(spec.kind(), ConsoleKind::Vnc);
        let Target::Vnc(vnc) = spec.target else {
            panic!("VNC target expected")
        };
        assert_eq!(vnc.display_addr(), "[::1]:5900");
        assert_eq!(vnc.password.unwrap().expose(), "secret");
    }

    #[test]
    fn host_names_and_ipv6_are_addresses() {
        assert!(is_host("bmc-1.example.org"));
        assert!(is_host("::1"));
        assert!(!is_host("1.2.3.999"));
        assert!(!is_host(""));
    }
}
