//! The `console-svc` binary: parse the command line, set up logging, and
//! hand over to the library (`console_svc::run` or a client command). A
//! failure is printed as one line, `console-svc: <error: cause: ...>`, with
//! exit code 1 (never a backtrace, whatever `RUST_BACKTRACE` says).

use console_svc::config::Layered as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use console_svc::cli::{self, Cli, Command};
use console_svc::config::{Config, LogFormat};
use porthole_common::{service, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SolExec = cli.command {
        // Runs under socat for each console connection, asking this
        // replica's activation gate before it touches the BMC.
        let code = console_svc::sol::sol_exec::run();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    service::exit("console-svc", run(cli))
}

fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(args.config.as_deref(), std::env::vars(), &args.overrides())?;
            telemetry::init(config.service.log_format == LogFormat::Json);
            runtime.block_on(serve(config))
        }
        other => {
            telemetry::init(false);
            runtime.block_on(cli::run_client(other, &mut std::io::stdout()))
        }
    }
}

async fn serve(config: Config) -> Result<()> {
    let listen = config.service.listen;
    service::bind_and_run(listen, "gRPC port", "stopping every console", |l, s| {
        console_svc::run(l, config, s)
    })
    .await?;
    Ok(())
}
