//! The `inspect` binary: parse the command line, set up logging, bind the
//! gRPC port, and hand over to `inspect::run` until SIGTERM/SIGINT. A
//! failure is printed as one line, `inspect: <error: cause: ...>`, with exit
//! code 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use inspect::config::Config;
use porthole_common::config::Overrides;
use porthole_common::{service, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "inspect",
    version,
    about = "Porthole's inspect service: in-band hardware inspection (inspect.v1 over gRPC)"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "PORTHOLE_INSPECT_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (service.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// ironic-inspector's API, e.g. http://127.0.0.1:5050/v1 (inspector.service_url).
    #[arg(long)]
    inspector_url: Option<String>,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
    /// Serve Prometheus metrics on GET /metrics here (service.metrics_listen).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

impl Cli {
    fn overrides(&self) -> Vec<(&'static str, &'static str, toml::Value)> {
        let mut o = Overrides::default();
        o.set("service", "listen", self.listen)
            .set("inspector", "service_url", self.inspector_url.as_ref())
            .switch("service", "log_format", self.log_json, "json")
            .set("service", "metrics_listen", self.metrics_listen);
        o.into_vec()
    }
}

fn main() -> ExitCode {
    service::exit("inspect", run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &cli.overrides())?;
    telemetry::init(config.service.log_format == "json");
    let listen = config.service.listen;
    service::serve(listen, "gRPC port", "stopping", |listener, shutdown| {
        inspect::run(listener, config, shutdown)
    })?;
    Ok(())
}
