//! The `deploy` binary: parse the command line, set up logging, bind the
//! gRPC port and hand over to `deploy::run` until SIGTERM/SIGINT. A failure
//! is printed as one line, `deploy: <error: cause: ...>`, exit code 1.

use deploy::config::Layered as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use deploy::config::Config;
use porthole_common::config::Overrides;
use porthole_common::{service, telemetry};

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
        let mut o = Overrides::default();
        o.set("service", "listen", self.listen)
            .set("conductor", "api_url", self.conductor_api_url.as_ref())
            .switch("service", "log_format", self.log_json, "json");
        o.into_vec()
    }
}

fn main() -> ExitCode {
    service::exit("deploy", run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &cli.overrides())?;
    telemetry::init(config.service.log_format == "json");
    let listen = config.service.listen;
    service::serve(listen, "gRPC port", "stopping", |listener, shutdown| {
        deploy::run(listener, config, shutdown)
    })?;
    Ok(())
}
