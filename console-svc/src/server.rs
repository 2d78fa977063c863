//! `run`: the console service's one entry point, used by `main.rs` and by
//! tests in-process.
//!
//! ```text
//!  run ──▶ sweep leftovers of a crashed run ──▶ serve gRPC ──shutdown──▶ drain, stop every console
//!      ──▶ stop placement/publish/mirror ──▶ revoke the lease (awaited, bounded) ──▶ return
//! ```

use std::sync::Arc;
use std::time::Duration;

use porthole_common::metrics::grpc::WithGrpcMetrics;
use porthole_common::metrics::MetricsServer;
use porthole_common::tls::TlsAcceptor;
use porthole_proto::console::v1::console_service_server::ConsoleServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use self::health::{drained_or_stopping, report_health, set_health};
use self::replica::Replica;
use crate::cluster::forward::PeerTls;
use crate::config::Config;
use crate::coordinator::CoordError;
use crate::grpc::ConsoleApi;
use crate::sol::SolError;
use crate::tasks::Tasks;

mod health;
mod replica;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("terminal_pid_dir {dir}: {source}")]
    PidDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("coordination: {0}")]
    Coordination(#[from] CoordError),
    #[error("serial backend: {0}")]
    Backend(#[from] SolError),
    #[error("VNC backend: {0}")]
    Vnc(#[from] crate::vnc::VncError),
    #[error("etcd secret key: {0}")]
    Seal(#[from] crate::seal::SealError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] porthole_common::metrics::MetricsError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("gRPC TLS: {0}")]
    Tls(#[from] porthole_common::tls::TlsError),
}

/// Serve `console.v1` on `listener` until `shutdown` is cancelled, then
/// stop every console, revoke the etcd lease (bounded) and return.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    // First, so that a bad certificate or key stops us before anything starts.
    let (acceptor, peer_tls) = tls_settings(&config)?;
    let metrics = start_metrics(&config, &shutdown).await?;
    let replica = Replica::start(&config, peer_tls, &shutdown).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    // health_reporter() says SERVING for ""; not before report_health says so.
    set_health(&health, ServingStatus::NotServing).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(porthole_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    log_serving(&listener, &config, acceptor.is_some());
    let tasks = Tasks::new(&shutdown);
    tasks.spawn(report_health(
        health.clone(),
        replica.coordinator.serving(),
        drained_or_stopping(replica.cluster.clone(), shutdown.clone()),
    ));
    let api = ConsoleApi::new(replica.consoles());
    let stopper = tasks.spawn(replica.stop_after(shutdown.clone(), health));
    let router = tonic::transport::Server::builder()
        .layer(crate::metrics::get().grpc_layer())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ConsoleServiceServer::new(api));
    let served = serve_until_grace(router, listener, acceptor, &config, &shutdown).await;
    shutdown.cancel();
    // Consoles stopped, placement and publish ended, the lease revoked.
    let _ = stopper.await;
    if !tasks.stop(SHUTDOWN_GRACE).await {
        warn!("the health reporter did not end");
    }
    if let Some(metrics) = metrics {
        metrics.stop().await;
    }
    info!("console-svc stopped");
    Ok(served?)
}

/// The Prometheus endpoint, when `service.metrics_listen` names one.
async fn start_metrics(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<MetricsServer>, RunError> {
    let registry = crate::metrics::get().registry();
    let listen = config.service.metrics_listen;
    Ok(MetricsServer::start_optional(listen, registry, shutdown.child_token()).await?)
}

fn log_serving(listener: &TcpListener, config: &Config, tls: bool) {
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
          backend = config.console.backend.as_str(),
          tls = match (tls, &config.service.tls_client_ca_file) {
              (false, _) => "off",
              (true, None) => "on",
              (true, Some(_)) => "mutual",
          },
          "console-svc serving");
}

/// Serve until `shutdown`, then give client connections [`SHUTDOWN_GRACE`].
async fn serve_until_grace(
    router: tonic::transport::server::Router<WithGrpcMetrics>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let serve = porthole_common::service::serve_grpc(
        router,
        listener,
        acceptor,
        config.service.tls_handshake_timeout,
        shutdown.clone(),
    );
    porthole_common::service::until_grace(serve, shutdown, SHUTDOWN_GRACE).await
}

/// The TLS acceptor when gRPC is served over TLS, and how this replica
/// calls the others (files read once, here).
fn tls_settings(config: &Config) -> Result<(Option<TlsAcceptor>, PeerTls), RunError> {
    let acceptor = match config.service.server_tls()? {
        Some(tls) => Some(tls.acceptor()?),
        None => None,
    };
    let peer = match config.service.peer_tls()? {
        Some(tls) => PeerTls::tls(tls.tonic(("service.tls_cert_file", "service.tls_key_file"))?),
        None => PeerTls::default(),
    };
    Ok((acceptor, peer))
}

/// How long client connections may stay open once shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
