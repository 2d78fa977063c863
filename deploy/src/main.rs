//! The `deploy` binary: parse the command line, set up logging, bind the
//! gRPC port and hand over to `deploy::run` until SIGTERM/SIGINT. A failure
//! is printed as one line, `deploy: <error: cause: ...>`, exit code 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use deploy::config::Config;
use porthole_common::{shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "deploy",
    version,
    about = "Porthole's deploy service: virtual floppy and ISO, object stores, Redfish virtual media"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "PORTHOLE_DEPLOY_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (service.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The conductor's API URL as the ramdisk reaches it (conductor.api_url).
    #[arg(long)]
    conductor_api_url: Option<String>,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
}

impl Cli {
    fn overrides(&self) -> Vec<(&'static str, &'static str, toml::Value)> {
        let s = |v: String| toml::Value::String(v);
        let mut o = Vec::new();
        if let Some(v) = self.listen {
            o.push(("service", "listen", s(v.to_string())));
        }
        if let Some(v) = &self.conductor_api_url {
            o.push(("conductor", "api_url", s(v.clone())));
        }
        if self.log_json {
            o.push(("service", "log_format", s("json".into())));
        }
        o
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "deploy: {}",
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
    deploy::run(listener, config, shutdown).await?;
    Ok(())
}
