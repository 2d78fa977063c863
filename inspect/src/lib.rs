//! inspect: in-band hardware inspection as a service of its own, which the
//! conductor calls over gRPC (`inspect.v1`) as its inspect interface.
//!
//! `main.rs` parses the command line and calls [`run`]; tests call the same
//! entry point in-process. Module map:
//!
//! - [`config`]: the typed configuration (file, `PORTHOLE_INSPECT_*`, flags).
//! - [`inspector`]: ironic-inspector's HTTP API, its version check.
//! - [`agent`]: the built-in `agent` interface's processing of the
//!   ramdisk's inventory (properties, root disk, ports).
//! - [`inspections`]: one record per node, the poller, the change stream.
//! - [`grpc`]: `inspect.v1.InspectService` and the error → status mapping.
//! - [`metrics`]: the Prometheus metrics (`service.metrics_listen`).
//!
//! ```text
//!  run ──▶ [inspector] enabled? connect + version check (refuse to start when wrong)
//!      ──▶ poller ──▶ serve gRPC ──shutdown──▶ stop the poller ──▶ return
//! ```

// A service logs through tracing, never to stdout/stderr directly.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod agent;
pub mod config;
#[cfg(test)]
mod fake;
pub mod grpc;
pub mod inspections;
pub mod inspector;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use porthole_common::service;
use porthole_proto::inspect::v1::inspect_service_server::InspectServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use config::Config;
use inspections::{Inspections, Timing};
use inspector::{Backend, InspectorClient, InspectorError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("refusing to start: {0}")]
    Inspector(#[from] InspectorError),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("gRPC TLS: {0}")]
    Tls(#[from] porthole_common::tls::TlsError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] porthole_common::metrics::MetricsError),
}

/// How long client connections may stay open once shutdown began.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serve `inspect.v1` on `listener` until `shutdown` is cancelled. With
/// `[inspector] enabled`, ironic-inspector must answer with a supported
/// API version first, else this returns [`RunError::Inspector`] at once.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let acceptor = match config.service.server_tls()? {
        Some(tls) => Some(tls.acceptor()?),
        None => None,
    };
    let inspector: Option<Arc<dyn Backend>> = match config.inspector.enabled {
        true => Some(Arc::new(InspectorClient::connect(&config.inspector).await?)),
        false => {
            info!("[inspector] enabled = false: the inspector interface refuses every inspection");
            None
        }
    };
    run_with(listener, config, inspector, acceptor, shutdown).await
}

/// [`run`] with the backend given (tests put an in-memory one here).
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    inspector: Option<Arc<dyn Backend>>,
    acceptor: Option<porthole_common::tls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = porthole_common::metrics::MetricsServer::start_optional(
        config.service.metrics_listen,
        metrics::get().registry(),
        shutdown.child_token(),
    )
    .await?;
    let tasks = TaskTracker::new();
    let timing = Timing {
        status_check_period: config.inspector.status_check_period,
        inspect_wait_timeout: config.inspector.inspect_wait_timeout,
    };
    let inspections = Inspections::with_agent(
        inspector,
        Some(config.agent.clone()),
        timing,
        &tasks,
        shutdown.child_token(),
        inspections::EVENT_BUFFER,
    );
    let (_health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(porthole_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(%addr, inspector = config.inspector.enabled, tls = acceptor.is_some(), "inspect service serving");
    let router = tonic::transport::Server::builder()
        .layer(metrics::get().grpc_layer())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(InspectServiceServer::new(grpc::InspectApi::new(
            inspections,
        )));
    let serve = service::serve_grpc(
        router,
        listener,
        acceptor,
        config.service.tls_handshake_timeout,
        shutdown.clone(),
    );
    // A watcher's stream never ends by itself: give open connections
    // SHUTDOWN_GRACE once shutdown began, then stop anyway.
    let served = service::until_grace(serve, &shutdown, SHUTDOWN_GRACE).await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    if let Some(m) = metrics {
        m.stop().await;
    }
    info!("inspect service stopped");
    Ok(served?)
}
