//! The `conductor` binary: parse the command line, set up logging, bind the
//! API port, and hand over to `conductor::run` until SIGTERM/SIGINT. A
//! failure is printed as one line, `conductor: <error: cause: ...>`, with exit
//! code 1 (never a backtrace, whatever `RUST_BACKTRACE` says).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use conductor::config::Config;
use porthole_common::{shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "conductor",
    version,
    about = "Porthole's conductor: an Ironic-compatible API for nodes, power and consoles"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "PORTHOLE_CONDUCTOR_CONFIG")]
    config: Option<PathBuf>,
    /// REST listen address (api.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// console-svc gRPC endpoint, e.g. http://127.0.0.1:50051 (console.endpoint).
    #[arg(long)]
    console_svc: Option<String>,
    /// SQLite file (database.path).
    #[arg(long)]
    database: Option<PathBuf>,
    /// noauth or http_basic (api.auth_strategy).
    #[arg(long)]
    auth_strategy: Option<String>,
    /// htpasswd file with bcrypt hashes (api.http_basic_auth_user_file).
    #[arg(long)]
    http_basic_auth_user_file: Option<PathBuf>,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
    /// Serve Prometheus metrics on GET /metrics here (api.metrics_listen).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

impl Cli {
    fn overrides(&self) -> Vec<(&'static str, &'static str, toml::Value)> {
        let s = |v: String| toml::Value::String(v);
        let mut o = Vec::new();
        if let Some(v) = self.listen {
            o.push(("api", "listen", s(v.to_string())));
        }
        if let Some(v) = &self.console_svc {
            o.push(("console", "endpoint", s(v.clone())));
        }
        if let Some(v) = &self.database {
            o.push(("database", "path", s(v.display().to_string())));
        }
        if let Some(v) = &self.auth_strategy {
            o.push(("api", "auth_strategy", s(v.clone())));
        }
        if let Some(v) = &self.http_basic_auth_user_file {
            o.push((
                "api",
                "http_basic_auth_user_file",
                s(v.display().to_string()),
            ));
        }
        if self.log_json {
            o.push(("api", "log_format", s("json".into())));
        }
        if let Some(v) = self.metrics_listen {
            o.push(("api", "metrics_listen", s(v.to_string())));
        }
        o
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "conductor: {}",
                porthole_common::report::error_line(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &cli.overrides())?;
    telemetry::init(config.api.log_format == "json");
    tokio::runtime::Runtime::new()?.block_on(serve(config))
}

async fn serve(config: Config) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("binding the API port {}", config.api.listen))?;
    let shutdown = shutdown::on_signals("stopping")?;
    conductor::run(listener, config, shutdown).await?;
    Ok(())
}
