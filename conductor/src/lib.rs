//! conductor: nodes, power and consoles behind an Ironic-compatible REST API.
//!
//! `main.rs` parses the command line and calls [`run`]; tests call the same
//! entry point in-process. Module map:
//!
//! - [`config`]: the typed configuration (file, `PORTHOLE_CONDUCTOR_*`, flags).
//! - [`model`], [`db`], [`seal`]: nodes and ports, their SQLite registry,
//!   passwords sealed at rest; [`instance_info`]: the config drive kept there.
//! - [`service`]: the domain operations (create, PATCH, power, console).
//! - [`power`]: ipmitool and Redfish drivers.
//! - [`drivers`]: hardware types, enabled interfaces, driver aliases.
//! - [`provision`]: Ironic's provision state machine; deploy/inspect interfaces.
//! - [`console`], [`watch`]: the console-svc client, reconcile, WatchConsoles.
//! - [`api`]: the REST API v1 (axum), auth, versions, the error mapping.
//! - [`patch`]: JSON Patch.
//! - [`periodic`]: the provision timeouts (Ironic's `[conductor]` periodic checks).
//! - [`logfmt`]: text log lines with control characters escaped (in porthole-common).
//! - [`metrics`]: the Prometheus metrics (`api.metrics_listen`).

// A service logs through tracing, never to stdout/stderr directly.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod api;
pub mod config;
pub mod console;
pub mod db;
pub mod drivers;
pub use porthole_common::logfmt;
pub mod instance_info;
pub mod metrics;
pub mod model;
pub mod patch;
pub mod periodic;
pub mod power;
pub mod provision;
pub mod seal;
pub mod service;
pub mod watch;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::{AuthStrategy, Config};
use model::Node;
use service::{Conductor, PowerTiming, ServiceError};

/// Why the conductor could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("refusing auth_strategy = noauth on {0}: anyone who reaches it controls every node; listen on loopback, use http_basic, or set api.allow_noauth_on_any_address = true")]
    InsecureNoauth(std::net::SocketAddr),
    #[error(transparent)]
    Auth(#[from] api::AuthError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    #[error("cannot create {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("serving the API: {0}")]
    Serve(std::io::Error),
    #[error("power drivers: {0}")]
    Power(#[from] power::PowerError),
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] porthole_common::metrics::MetricsError),
    #[error("inspect service: {0}")]
    Inspect(#[from] provision::inspect_grpc::InspectClientError),
    #[error("deploy service: {0}")]
    Deploy(#[from] provision::deploy_grpc::DeployClientError),
    #[error("drivers: {0}")]
    Drivers(#[from] drivers::DriverError),
}

/// How long a stop waits for open API connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serve the API on `listener` until `shutdown` is cancelled (then at most
/// [`SHUTDOWN_GRACE`] for open connections).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    check_noauth(&config, addr)?;
    let basic = match config.api.auth_strategy {
        AuthStrategy::Noauth => None,
        AuthStrategy::HttpBasic => {
            let file = config
                .api
                .http_basic_auth_user_file
                .as_deref()
                .expect("validated in Config::load");
            let file = file.to_owned();
            // Reading the file and making the dummy hash block: off the workers.
            let basic = tokio::task::spawn_blocking(move || api::HttpBasic::load(&file))
                .await
                .map_err(|e| RunError::Serve(std::io::Error::other(e)))??;
            Some(Arc::new(basic))
        }
    };
    let metrics = porthole_common::metrics::MetricsServer::start_optional(
        config.api.metrics_listen,
        metrics::get().registry(),
        shutdown.child_token(),
    )
    .await?;
    let opened = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || open(&config, shutdown))
            .await
            .map_err(|e| RunError::Serve(std::io::Error::other(e)))??
    };
    let conductor = Arc::new(opened);
    clear_stale_power_actions(&conductor).await?;
    conductor
        .fail_stuck_provisioning()
        .await
        .map_err(|e| match e {
            ServiceError::Db(d) => RunError::Db(d),
            other => RunError::Serve(std::io::Error::other(other.to_string())),
        })?;
    conductor.tasks.spawn(watch::follow(conductor.clone()));
    if let Some(inspect) = conductor.interfaces.inspect_service.clone() {
        conductor
            .tasks
            .spawn(provision::inspect_grpc::follow(conductor.clone(), inspect));
    }
    let timeouts = periodic::ProvisionTimeouts::start(
        conductor.clone(),
        periodic::Timeouts::from_config(&config.conductor),
        shutdown.child_token(),
    );
    let state = api::AppState {
        conductor: conductor.clone(),
        basic,
        public_endpoint: config.api.public_endpoint.clone(),
    };
    tracing::info!(%addr, auth = ?config.api.auth_strategy, console_svc = %config.console.endpoint, "conductor API listening");
    // axum::serve leaves Nagle on: small replies would wait on delayed ACKs.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY on an API connection");
        }
    });
    use tower::Layer;
    let app = tower::util::MapRequestLayer::new(api::normalize_path).layer(api::router(state));
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    // A graceful stop waits for open connections, but only so long: an
    // HTTP/2 client that never answers the GOAWAY's ping (or a request that
    // never ends) would otherwise keep a stopped conductor up for ever.
    let served = porthole_common::service::until_grace(server, &shutdown, SHUTDOWN_GRACE).await;
    shutdown.cancel();
    if let Some(m) = metrics {
        m.stop().await;
    }
    if let Some(t) = timeouts {
        t.stop().await;
    }
    conductor.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), conductor.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running after 10 s; leaving them");
    }
    served.map_err(RunError::Serve)
}

/// noauth only on loopback, unless the operator explicitly allows it.
pub fn check_noauth(config: &Config, addr: std::net::SocketAddr) -> Result<(), RunError> {
    let open = config.api.auth_strategy == AuthStrategy::Noauth && !addr.ip().is_loopback();
    if open && !config.api.allow_noauth_on_any_address {
        return Err(RunError::InsecureNoauth(addr));
    }
    Ok(())
}

fn open(config: &Config, shutdown: CancellationToken) -> Result<Conductor, RunError> {
    if let Some(dir) = config
        .database
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| RunError::StateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let sealer = seal::Sealer::load_or_create(&config.secret_key_file())?;
    let store = db::Store::open(&config.database.path, sealer)?;
    let consoles = console::ConsoleClient::new(&config.console)?;
    let power = power::PowerSettings::new(
        config.power.ipmitool_path.clone(),
        config.power.command_timeout,
    )?;
    let timing = PowerTiming {
        state_timeout: config.power.state_timeout,
        poll_interval: config.power.poll_interval,
    };
    let mut conductor = Conductor::new(store, consoles, power, timing, shutdown);
    let mut registry = drivers::Registry::from_config(&config.drivers)?;
    registry.set_inspect_service(config.inspect.endpoint.is_some());
    conductor.drivers = std::sync::Arc::new(registry);
    conductor.evidence = provision::evidence::Settings::from_config(&config.conductor);
    conductor.power_off_after_deploy_failure = config.deploy.power_off_after_deploy_failure;
    if config.inspect.endpoint.is_some() {
        let client = provision::inspect_grpc::InspectClient::from_config(&config.inspect)?;
        conductor.interfaces.set_inspect_service(client);
    }
    if config.deploy.endpoint.is_some() {
        let client = provision::deploy_grpc::DeployClient::from_config(&config.deploy)?;
        let iscsi = provision::deploy_grpc::GrpcIscsi::new(client, conductor.store.clone());
        conductor
            .interfaces
            .set_deploy_service(std::sync::Arc::new(iscsi));
        conductor.vendors.iscsi = Some(std::sync::Arc::new(provision::vendor::IscsiVendor));
    }
    Ok(conductor)
}

/// A power action cut short by a stop leaves target_power_state behind:
/// clear it and say so in last_error.
async fn clear_stale_power_actions(c: &Conductor) -> Result<(), RunError> {
    for node in c.store.list_nodes().await? {
        if let Some(target) = node.target_power_state {
            c.store
                .modify_node(&node.uuid, move |n: &mut Node| {
                    n.target_power_state = None;
                    n.last_error = Some(format!(
                        "The conductor stopped during a change of power state to {target}."
                    ));
                    Ok::<_, ServiceError>(())
                })
                .await
                .map_err(|e| match e {
                    ServiceError::Db(d) => RunError::Db(d),
                    other => RunError::Serve(std::io::Error::other(other.to_string())),
                })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noauth_is_refused_off_loopback_unless_allowed() {
        let mut c = Config::default();
        let any: std::net::SocketAddr = "0.0.0.0:6385".parse().unwrap();
        assert!(check_noauth(&c, "127.0.0.1:6385".parse().unwrap()).is_ok());
        assert!(check_noauth(&c, "[::1]:6385".parse().unwrap()).is_ok());
        let err = check_noauth(&c, any).unwrap_err().to_string();
        assert!(err.contains("refusing auth_strategy = noauth"), "{err}");
        c.api.allow_noauth_on_any_address = true;
        assert!(check_noauth(&c, any).is_ok());
        c.api.allow_noauth_on_any_address = false;
        c.api.auth_strategy = AuthStrategy::HttpBasic;
        assert!(check_noauth(&c, any).is_ok());
    }

    /// `run` applies that check before it opens anything.
    #[tokio::test]
    async fn run_refuses_noauth_off_loopback() {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let err = run(listener, Config::default(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::InsecureNoauth(_)), "{err}");
    }
}
