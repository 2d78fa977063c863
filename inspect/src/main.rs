//! The `inspect` binary: parse the command line, set up logging, bind the
//! gRPC port, and hand over to `inspect::run` until SIGTERM/SIGINT. A
//! failure is printed as one line, `inspect: <error: cause: ...>`, with exit
//! code 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use inspect::config::Config;
use porthole_common::{shutdown, telemetry};

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
        let s = |v: String| toml::Value::String(v);
        let mut o = Vec::new();
        if let Some(v) = self.listen {
            o.push(("service", "listen", s(v.to_string())));
        }
        if let Some(v) = &self.inspector_url {
            o.push(("inspector", "service_url", s(v.clone())));
        }
        if self.log_json {
            o.push(("service", "log_format", s("json".into())));
        }
        if let Some(v) = self.metrics_listen {
            o.push(("service", "metrics_listen", s(v.to_string())));
        }
        o
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "inspect: {}",
                porthole_common::report::error_line(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &cli.overrides())?;
    telemetry::init(config.service.log_format == "json");
    tokio::runtime::Runtime::new()?.block_on(serve(config))
}

async fn serve(config: Config) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.service.listen)
        .await
        .with_context(|| format!("binding the gRPC port {}", config.service.listen))?;
    let shutdown = shutdown::on_signals("stopping")?;
    inspect::run(listener, config, shutdown).await?;
    Ok(())
}
