//! The `conductor` binary: parse the command line, set up logging, bind the
//! API port, and hand over to `conductor::run` until SIGTERM/SIGINT. A
//! failure is printed as one line, `conductor: <error: cause: ...>`, with exit
//! code 1 (never a backtrace, whatever `RUST_BACKTRACE` says).

use conductor::config::Layered as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use conductor::config::Config;
use porthole_common::config::Overrides;
use porthole_common::{service, telemetry};

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
        let mut o = Overrides::default();
        o.set("api", "listen", self.listen)
            .set("console", "endpoint", self.console_svc.as_ref())
            .path("database", "path", self.database.as_deref())
            .set("api", "auth_strategy", self.auth_strategy.as_ref())
            .path(
                "api",
                "http_basic_auth_user_file",
                self.http_basic_auth_user_file.as_deref(),
            )
            .switch("api", "log_format", self.log_json, "json")
            .set("api", "metrics_listen", self.metrics_listen);
        o.into_vec()
    }
}

fn main() -> ExitCode {
    service::exit("conductor", run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &cli.overrides())?;
    telemetry::init(config.api.log_format == "json");
    let listen = config.api.listen;
    service::serve(listen, "API port", "stopping", |listener, shutdown| {
        conductor::run(listener, config, shutdown)
    })?;
    Ok(())
}
