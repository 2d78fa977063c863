//! The `console-svc` command line: `serve`, and the operator's client
//! commands (`enable`, `disable`, `show`, `list`, `log`, `drain`) that talk to a
//! running service over gRPC. `main.rs` parses and dispatches; the client
//! commands live here so tests can call them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use pb::console_service_client::ConsoleServiceClient;
use porthole_common::tls::ClientTls;
use porthole_proto::console::v1 as pb;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(
    name = "console-svc",
    version,
    about = "Porthole's console service and its client"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Enable (or keep) a node's console: serial (IPMI SOL) or --kind vnc.
    Enable(EnableArgs),
    /// Disable a node's console.
    Disable(NodeArgs),
    /// Show one node's console.
    Show(NodeArgs),
    /// List every console.
    List(ClientArgs),
    /// Print what a node's console printed recently (native and rmcp backends).
    Log(LogArgs),
    /// Empty the replica at --server (etcd only): it stops taking consoles
    /// and releases its own to the other replicas, but keeps running.
    Drain(ClientArgs),
    /// Run by socat for each connection: sol deactivate, then sol activate.
    #[command(hide = true)]
    SolExec,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "PORTHOLE_CONSOLE_SVC_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address (service.listen).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Serial backend: native, socat or rmcp (console.backend).
    #[arg(long)]
    pub backend: Option<String>,
    /// START:END, END excluded (console.port_range).
    #[arg(long)]
    pub port_range: Option<String>,
    /// Address console ports bind to (console.socat_address).
    #[arg(long)]
    pub socat_address: Option<String>,
    /// Where started processes are recorded (console.terminal_pid_dir).
    #[arg(long)]
    pub terminal_pid_dir: Option<PathBuf>,
    /// Log lines as JSON (service.log_format = "json").
    #[arg(long)]
    pub log_json: bool,
    /// Serve Prometheus metrics on GET /metrics here (service.metrics_listen).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// The rmcp backend's UDP: shared (one socket for all consoles) or
    /// per-console (rmcp.udp).
    #[arg(long, value_name = "per-console|shared")]
    pub rmcp_udp: Option<String>,
}

impl ServeArgs {
    /// The flags given, as `(section, key, value)` config overrides.
    pub fn overrides(&self) -> Vec<(&'static str, &'static str, toml::Value)> {
        let s = |v: &str| toml::Value::String(v.to_owned());
        let mut o = Vec::new();
        if let Some(v) = &self.listen {
            o.push(("service", "listen", s(&v.to_string())));
        }
        if let Some(v) = &self.backend {
            o.push(("console", "backend", s(v)));
        }
        if let Some(v) = &self.port_range {
            o.push(("console", "port_range", s(v)));
        }
        if let Some(v) = &self.socat_address {
            o.push(("console", "socat_address", s(v)));
        }
        if let Some(v) = &self.terminal_pid_dir {
            o.push(("console", "terminal_pid_dir", s(&v.to_string_lossy())));
        }
        if self.log_json {
            o.push(("service", "log_format", s("json")));
        }
        if let Some(v) = &self.metrics_listen {
            o.push(("service", "metrics_listen", s(&v.to_string())));
        }
        if let Some(v) = &self.rmcp_udp {
            o.push(("rmcp", "udp", s(v)));
        }
        o
    }
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The console service's gRPC URL.
    #[arg(
        long,
        env = "PORTHOLE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// PEM CA that signed the service's certificate (TLS; default with an
    /// https:// URL: the system's roots).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a service that requires one (mutual TLS).
    #[arg(long, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// PEM key of --cert-file.
    #[arg(long, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Name to check in the service's certificate (default: the URL's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    /// The TLS options given, if any.
    pub fn tls(&self) -> ClientTls {
        ClientTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            server_name: self.server_name.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    pub node: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `enable` asks for: a serial console (IPMI SOL) or a VNC console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Serial,
    Vnc,
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    pub node: String,
    /// serial (IPMI SOL, the --bmc-* options) or vnc (the --vnc-* options).
    #[arg(long, value_enum, default_value_t = Kind::Serial)]
    pub kind: Kind,
    /// BMC address (serial).
    #[arg(long)]
    pub bmc_address: Option<String>,
    /// IPMI UDP port (serial; default 623).
    #[arg(long)]
    pub bmc_port: Option<u16>,
    /// BMC user (serial).
    #[arg(long)]
    pub bmc_username: Option<String>,
    /// A file holding the BMC password (serial; never on the command line).
    #[arg(long)]
    pub bmc_password_file: Option<PathBuf>,
    /// ipmitool -C (serial).
    #[arg(long)]
    pub cipher_suite: Option<u32>,
    /// ipmitool -L (serial; default ADMINISTRATOR).
    #[arg(long)]
    pub privilege_level: Option<String>,
    /// The VNC server's host (vnc).
    #[arg(long)]
    pub vnc_host: Option<String>,
    /// The VNC server's TCP port (vnc; default 5900).
    #[arg(long)]
    pub vnc_port: Option<u16>,
    /// A file holding the VNC password (vnc; none when the server asks for
    /// none; never on the command line).
    #[arg(long)]
    pub vnc_password_file: Option<PathBuf>,
    /// A fixed console port inside the service's port range.
    #[arg(long)]
    pub port: Option<u16>,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl EnableArgs {
    /// The EnableConsole request these arguments describe, passwords read
    /// from their files; an option of the other kind, or a missing one, is
    /// an error that names it.
    pub fn request(&self) -> Result<pb::EnableConsoleRequest> {
        let kind = match self.kind {
            Kind::Serial => "serial",
            Kind::Vnc => "vnc",
        };
        let given = |name: &str, set: bool| set.then(|| format!("--{name}"));
        let other = match self.kind {
            Kind::Serial => vec![
                given("vnc-host", self.vnc_host.is_some()),
                given("vnc-port", self.vnc_port.is_some()),
                given("vnc-password-file", self.vnc_password_file.is_some()),
            ],
            Kind::Vnc => vec![
                given("bmc-address", self.bmc_address.is_some()),
                given("bmc-port", self.bmc_port.is_some()),
                given("bmc-username", self.bmc_username.is_some()),
                given("bmc-password-file", self.bmc_password_file.is_some()),
                given("cipher-suite", self.cipher_suite.is_some()),
                given("privilege-level", self.privilege_level.is_some()),
            ],
        };
        let wrong: Vec<String> = other.into_iter().flatten().collect();
        if !wrong.is_empty() {
            bail!(
                "{} not for a {kind} console (--kind {kind})",
                wrong.join(", ")
            );
        }
        let need = |v: &Option<String>, name: &str| {
            v.clone()
                .ok_or_else(|| anyhow!("a {kind} console needs --{name}"))
        };
        let need_file = |v: &Option<PathBuf>, name: &str| {
            v.clone()
                .ok_or_else(|| anyhow!("a {kind} console needs --{name}"))
        };
        let mut req = pb::EnableConsoleRequest {
            node_id: self.node.clone(),
            port: self.port.map(u32::from).unwrap_or(0),
            ..Default::default()
        };
        match self.kind {
            Kind::Serial => {
                let address = need(&self.bmc_address, "bmc-address")?;
                let username = need(&self.bmc_username, "bmc-username")?;
                let file = need_file(&self.bmc_password_file, "bmc-password-file")?;
                req.kind = pb::ConsoleKind::Serial as i32;
                req.ipmi = Some(pb::IpmiTarget {
                    address,
                    port: self.bmc_port.unwrap_or(623).into(),
                    username,
                    password: read_password(&file)?,
                    cipher_suite: self.cipher_suite,
                    privilege_level: self.privilege_level.clone().unwrap_or_default(),
                });
            }
            Kind::Vnc => {
                let host = need(&self.vnc_host, "vnc-host")?;
                let password = match &self.vnc_password_file {
                    Some(file) => read_password(file)?,
                    None => String::new(),
                };
                req.kind = pb::ConsoleKind::Vnc as i32;
                req.vnc = Some(pb::VncTarget {
                    host,
                    port: self.vnc_port.map(u32::from).unwrap_or(0),
                    password,
                });
            }
        }
        Ok(req)
    }
}

/// A password file's contents without the trailing line break.
fn read_password(file: &std::path::Path) -> Result<String> {
    let password =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(password.trim_end_matches(['\r', '\n']).to_owned())
}

#[derive(Debug, Args)]
pub struct LogArgs {
    pub node: String,
    /// Only the newest N bytes.
    #[arg(long, default_value_t = 0)]
    pub max_bytes: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Run a client command, writing its output to `out`.
pub async fn run_client(command: Command, out: &mut impl Write) -> Result<()> {
    let hint = client_args(&command).and_then(certificate_hint);
    let done = commands(command, out).await;
    match (done, hint) {
        (Err(e), Some(hint)) if closed_under_us(&e) => Err(e.context(hint)),
        (done, _) => done,
    }
}

/// The connection options of a client command.
fn client_args(command: &Command) -> Option<&ClientArgs> {
    match command {
        Command::Enable(a) => Some(&a.client),
        Command::Disable(a) | Command::Show(a) => Some(&a.client),
        Command::Log(a) => Some(&a.client),
        Command::List(a) | Command::Drain(a) => Some(a),
        Command::Serve(_) | Command::SolExec => None,
    }
}

/// A TLS server that wants a client certificate closes the connection
/// after the handshake; the call then fails with a bare transport error.
/// Say what is likely missing when no certificate was given.
fn certificate_hint(args: &ClientArgs) -> Option<String> {
    (args.server.starts_with("https://") && args.cert_file.is_none()).then(|| {
        format!(
            "console-svc at {} closed the connection; if it requires a client \
             certificate, give --cert-file and --key-file",
            args.server
        )
    })
}

/// Whether `e` is a call whose connection failed under it.
fn closed_under_us(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let status = c
            .downcast_ref::<tonic::Status>()
            .or_else(|| c.downcast_ref::<RpcError>().map(|r| &r.0));
        status
            .and_then(|s| std::error::Error::source(s))
            .is_some_and(|s| s.is::<tonic::transport::Error>())
    })
}

async fn commands(command: Command, out: &mut impl Write) -> Result<()> {
    match command {
        Command::Enable(a) => {
            let req = a.request()?;
            let c = connect(&a.client).await?.enable_console(req).await;
            print_console(out, &c.map_err(rpc)?.into_inner(), a.client.json)
        }
        Command::Disable(a) => {
            let mut client = connect(&a.client).await?;
            // DisableConsole itself is idempotent (an unknown node is not an
            // error, the conductor relies on that); an operator who names a
            // node the service does not know has mistyped it: say so.
            let get = pb::GetConsoleRequest {
                node_id: a.node.clone(),
            };
            if let Err(status) = client.get_console(get).await {
                return Err(match status.code() {
                    tonic::Code::NotFound => anyhow!(
                        "{} ({}): nothing disabled; console-svc knows a node by the id it was \
                         enabled with (the conductor uses the node's UUID)",
                        status.message(),
                        code_name(status.code())
                    ),
                    _ => rpc(status),
                });
            }
            let req = pb::DisableConsoleRequest { node_id: a.node };
            let c = client.disable_console(req).await.map_err(rpc)?;
            print_console(out, &c.into_inner(), a.client.json)
        }
        Command::Show(a) => {
            let req = pb::GetConsoleRequest { node_id: a.node };
            let c = connect(&a.client).await?.get_console(req).await;
            print_console(out, &c.map_err(rpc)?.into_inner(), a.client.json)
        }
        Command::Drain(a) => {
            let resp = connect(&a)
                .await?
                .drain_replica(pb::DrainReplicaRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            match a.json {
                true => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"replica": resp.replica, "released": resp.released})
                )?,
                false => writeln!(
                    out,
                    "replica {} drained: released {} console(s)",
                    resp.replica, resp.released
                )?,
            }
            Ok(())
        }
        Command::List(a) => {
            // Every page: the service answers at most 1000 consoles at once.
            let all = pb::list_all(&mut connect(&a).await?, 0).await;
            print_list(out, &all.map_err(rpc)?, a.json)
        }
        Command::Log(a) => {
            let req = pb::GetConsoleLogRequest {
                node_id: a.node,
                max_bytes: a.max_bytes,
            };
            let log = connect(&a.client)
                .await?
                .get_console_log(req)
                .await
                .map_err(rpc)?
                .into_inner();
            if a.client.json {
                let v = serde_json::json!({
                    "data": String::from_utf8_lossy(&log.data), "truncated": log.truncated });
                writeln!(out, "{v}")?;
            } else {
                out.write_all(&log.data)?;
            }
            Ok(())
        }
        Command::Serve(_) | Command::SolExec => unreachable!("not client commands"),
    }
}

/// A gRPC error as the operator reads it: the service's message and the
/// code's canonical name, e.g. `no console for node n1 (NOT_FOUND)`; the
/// status's own cause (a transport error) stays its source.
#[derive(Debug)]
struct RpcError(tonic::Status);

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = match self.0.message() {
            "" => self.0.code().description(),
            m => m,
        };
        write!(f, "{message} ({})", code_name(self.0.code()))
    }
}

impl std::error::Error for RpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(RpcError(status))
}

/// `NotFound` → `NOT_FOUND`, as gRPC names its codes.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(ch.to_ascii_uppercase());
    }
    name
}

async fn connect(args: &ClientArgs) -> Result<ConsoleServiceClient<Channel>> {
    let server = &args.server;
    let mut endpoint = Endpoint::from_shared(server.clone())
        .with_context(|| format!("--server {server}: not a URL"))?;
    let tls = args.tls();
    if tls.wanted(server) {
        if !server.starts_with("https://") {
            bail!("--server {server}: TLS options need an https:// URL");
        }
        endpoint = endpoint.tls_config(tls.tonic(("--cert-file", "--key-file"))?)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to console-svc at {server}"))?;
    Ok(ConsoleServiceClient::new(channel))
}

/// The JSON shape of a console, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct ConsoleView {
    pub node_id: String,
    pub kind: String,
    pub state: String,
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub owner: String,
    pub backend: String,
    pub last_error: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<&pb::Console> for ConsoleView {
    fn from(c: &pb::Console) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let name = |s: &str, prefix: &str| s.trim_start_matches(prefix).to_ascii_lowercase();
        Self {
            node_id: c.node_id.clone(),
            kind: name(c.kind().as_str_name(), "CONSOLE_KIND_"),
            state: name(c.state().as_str_name(), "CONSOLE_STATE_"),
            url: some(&c.url),
            host: some(&c.host),
            port: (c.port != 0).then_some(c.port),
            owner: c.owner.clone(),
            backend: c.backend.clone(),
            last_error: some(&c.last_error),
            created_at: c.created_at.as_ref().map(ToString::to_string),
            updated_at: c.updated_at.as_ref().map(ToString::to_string),
        }
    }
}

fn print_console(out: &mut impl Write, c: &pb::Console, json: bool) -> Result<()> {
    let v = ConsoleView::from(c);
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(out, "node:       {}", v.node_id)?;
    writeln!(out, "state:      {}", v.state)?;
    writeln!(out, "url:        {}", v.url.as_deref().unwrap_or("-"))?;
    writeln!(out, "owner:      {} ({} backend)", v.owner, v.backend)?;
    writeln!(
        out,
        "last_error: {}",
        v.last_error.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "updated_at: {}",
        v.updated_at.as_deref().unwrap_or("-")
    )?;
    Ok(())
}

fn print_list(out: &mut impl Write, consoles: &[pb::Console], json: bool) -> Result<()> {
    let views: Vec<ConsoleView> = consoles.iter().map(ConsoleView::from).collect();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36} {:<9} {:<28} LAST ERROR",
        "NODE", "STATE", "URL"
    )?;
    for v in views {
        writeln!(
            out,
            "{:<36} {:<9} {:<28} {}",
            v.node_id,
            v.state,
            v.url.as_deref().unwrap_or("-"),
            v.last_error.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
