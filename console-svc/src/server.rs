//! `run`: the console service's one entry point, used by `main.rs` and by
//! tests in-process.
//!
//! ```text
//!  run ──▶ sweep leftovers of a crashed run ──▶ serve gRPC ──shutdown──▶ drain, stop every console
//!      ──▶ stop placement/publish/mirror ──▶ revoke the lease (awaited, bounded) ──▶ return
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use porthole_common::metrics::grpc::WithGrpcMetrics;
use porthole_common::metrics::MetricsServer;
use porthole_common::tls::{self, TlsAcceptor};
use porthole_proto::console::v1::console_service_server::ConsoleServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::backend::ConsoleBackend;
use crate::cluster::forward::PeerTls;
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::{Backend, Config};
use crate::consoles::Consoles;
use crate::coordinator::etcd::{lease, EtcdCoordinator, EtcdSettings, Member};
use crate::coordinator::local::LocalCoordinator;
use crate::coordinator::{CoordError, Coordinator};
use crate::grpc::ConsoleApi;
use crate::manager::{Backends, ConsoleManager, Placement};
use crate::process::ProcessTable;
use crate::seal::Sealer;
use crate::sol::native::NativeBackend;
use crate::sol::socat::{SocatBackend, SocatSettings};
use crate::sol::SolError;
use crate::tasks::Tasks;
use crate::vnc::VncBackend;

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
    let metrics = match config.service.metrics_listen {
        Some(addr) => Some(
            MetricsServer::start(
                addr,
                crate::metrics::get().registry(),
                shutdown.child_token(),
            )
            .await?,
        ),
        None => None,
    };
    let replica = Replica::start(&config, peer_tls, &shutdown).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    // health_reporter() says SERVING for ""; not before report_health says so.
    set_health(&health, ServingStatus::NotServing).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(porthole_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
          backend = config.console.backend.as_str(),
          tls = match (&acceptor, &config.service.tls_client_ca_file) {
              (None, _) => "off",
              (Some(_), None) => "on",
              (Some(_), Some(_)) => "mutual",
          },
          "console-svc serving");
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

/// Serve until `shutdown`, then give client connections [`SHUTDOWN_GRACE`].
async fn serve_until_grace(
    router: tonic::transport::server::Router<WithGrpcMetrics>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let serve = serve(router, listener, acceptor, config, shutdown.clone());
    // A graceful shutdown waits for every client connection to close; one
    // whose peer never answers the GOAWAY would keep us up for ever. Give
    // them SHUTDOWN_GRACE once shutdown began, then stop anyway.
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = serve => served,
        _ = grace => {
            warn!(grace = ?SHUTDOWN_GRACE, "client connections still open after shutdown began; closing them");
            Ok(())
        }
    }
}

/// This replica's consoles and what coordinates them: the manager, and
/// with etcd the coordinator and the cluster layer.
struct Replica {
    manager: ConsoleManager,
    coordinator: Arc<dyn Coordinator>,
    etcd: Option<Arc<EtcdCoordinator>>,
    cluster: Option<Cluster>,
    /// The parent of the coordination tasks (lease, mirror, placement,
    /// publish); cancelled last, after every console stopped.
    coordination: CancellationToken,
}

/// How long shutdown waits for placement, publish and the mirror to end.
const COORDINATION_BOUND: Duration = Duration::from_secs(2);

impl Replica {
    /// Sweep what a crashed run left, then start the backends, the
    /// coordinator, the manager and (with etcd) the cluster layer.
    async fn start(
        config: &Arc<Config>,
        peer_tls: PeerTls,
        shutdown: &CancellationToken,
    ) -> Result<Self, RunError> {
        let processes = Arc::new(processes(config).await?);
        let backends = Backends {
            serial: serial_backend(config)?,
            vnc: match config.vnc.enabled {
                true => Some(Arc::new(VncBackend::new(config)?) as Arc<dyn ConsoleBackend>),
                false => None,
            },
        };
        // Not a child of `shutdown`: the lease outlives the consoles, so
        // that revoking it frees them for the others at once.
        let coordination = CancellationToken::new();
        let (coordinator, etcd) = coordinator(config, coordination.clone()).await?;
        let placement = match etcd {
            Some(_) => Placement::Cluster,
            None => Placement::Local,
        };
        let manager = ConsoleManager::new(
            config.clone(),
            backends,
            coordinator.clone(),
            processes,
            placement,
            shutdown.child_token(),
        );
        let cluster = match &etcd {
            Some(etcd) => Some(cluster(
                config,
                etcd.clone(),
                &manager,
                peer_tls,
                coordination.clone(),
            )?),
            None => None,
        };
        Ok(Self {
            manager,
            coordinator,
            etcd,
            cluster,
            coordination,
        })
    }

    /// What the gRPC API calls: the cluster with etcd, else the manager.
    fn consoles(&self) -> Arc<dyn Consoles> {
        match &self.cluster {
            Some(c) => Arc::new(c.clone()),
            None => Arc::new(self.manager.clone()),
        }
    }

    /// Once `shutdown` fires: NOT_SERVING; drain (stop taking, leave,
    /// release each console so another replica claims it at once); stop the
    /// consoles; stop placement, publish and the mirror; revoke the lease
    /// and wait for it (bounded by [`lease::REVOKE_TIMEOUT`]).
    async fn stop_after(
        self,
        shutdown: CancellationToken,
        health: tonic_health::server::HealthReporter,
    ) {
        shutdown.cancelled().await;
        set_health(&health, ServingStatus::NotServing).await;
        if let Some(cluster) = &self.cluster {
            cluster.drain().await;
        }
        self.manager.shutdown().await;
        if let Some(cluster) = &self.cluster {
            if !cluster.stop(COORDINATION_BOUND).await {
                warn!("placement, publish or the etcd mirror did not end in time");
            }
        }
        self.coordination.cancel();
        if let Some(etcd) = &self.etcd {
            if !etcd.stop(lease::REVOKE_TIMEOUT + COORDINATION_BOUND).await {
                warn!("the etcd lease keeper did not end in time");
            }
        }
    }
}

/// The process table, with what a crashed run left behind cleaned up.
async fn processes(config: &Config) -> Result<ProcessTable, RunError> {
    let pid_dir = config.console.terminal_pid_dir.clone();
    let pid_err = |source| RunError::PidDir {
        dir: pid_dir.clone(),
        source,
    };
    let processes = ProcessTable::open(&pid_dir, config.console.kill_timeout).map_err(pid_err)?;
    for left in processes.sweep().await.map_err(pid_err)? {
        warn!(pid = left.pid, label = %left.label, killed = left.killed, "cleaned up after a previous run");
    }
    Ok(processes)
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

type Serving = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// `router` on `listener` until `shutdown`: plaintext, or TLS with each
/// handshake on its own task, bounded, so a client that connects and
/// stalls holds up no one else.
fn serve(
    router: tonic::transport::server::Router<WithGrpcMetrics>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    config: &Config,
    shutdown: CancellationToken,
) -> Serving {
    match acceptor {
        Some(acceptor) => {
            let timeout = config.service.tls_handshake_timeout;
            let incoming = tls::incoming(listener, acceptor, timeout, shutdown.clone());
            Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()))
        }
        None => Box::pin(
            router
                .serve_with_incoming_shutdown(plain_incoming(listener), shutdown.cancelled_owned()),
        ),
    }
}

/// The accepted plaintext gRPC connections, each with `TCP_NODELAY` (the
/// TLS accept loop sets it too): tonic applies its nodelay setting only to
/// listeners it binds itself, and without it a reply written in pieces
/// (headers, message, trailers) waits for the client's delayed ACK, about
/// 40 ms on Linux.
fn plain_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// How long client connections may stay open once shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The coordinator, and the etcd one again when that is what it is.
async fn coordinator(
    config: &Config,
    cancel: CancellationToken,
) -> Result<(Arc<dyn Coordinator>, Option<Arc<EtcdCoordinator>>), RunError> {
    let replica = config.service.replica_id.clone();
    let etcd = &config.etcd;
    if etcd.endpoints.is_empty() {
        return Ok((Arc::new(LocalCoordinator::new(replica)), None));
    }
    let settings = EtcdSettings {
        endpoints: etcd.endpoints.clone(),
        prefix: etcd.prefix.clone(),
        lease_ttl: etcd.lease_ttl,
        connect_timeout: etcd.connect_timeout,
    };
    let member = Member {
        replica,
        host: config.console.url_host(),
        grpc: config.service.listen.to_string(),
    };
    info!(endpoints = ?etcd.endpoints, "coordinating through etcd");
    let etcd = EtcdCoordinator::start(settings, member, cancel).await?;
    Ok((etcd.clone(), Some(etcd)))
}

/// The cluster layer: specs sealed with the key file, placement, endpoints.
fn cluster(
    config: &Config,
    etcd: Arc<EtcdCoordinator>,
    manager: &ConsoleManager,
    peer_tls: PeerTls,
    cancel: CancellationToken,
) -> Result<Cluster, RunError> {
    let key_file = config
        .etcd
        .secret_key_file
        .as_deref()
        .unwrap_or(std::path::Path::new(""));
    let sealer = Sealer::load(key_file)?;
    let specs = etcd.spec_store(sealer, config.console.port_range.clone());
    let settings = ClusterSettings {
        enable_timeout: config.etcd.enable_timeout,
        claim_step: config.etcd.claim_step,
        peer_tls,
    };
    Ok(Cluster::start(
        etcd,
        specs,
        manager.clone(),
        settings,
        cancel,
    ))
}

/// `grpc.health.v1`: SERVING while the coordinator lets us serve, and
/// NOT_SERVING for good once `quiet` resolves (drained or shutting down:
/// the replica still answers API calls, but a load balancer should stop
/// sending it work). The overall service `""` says the same as
/// `porthole.console.v1.ConsoleService`, so a probe that names no service
/// (Kubernetes' gRPC probe by default) sees a fenced or drained replica.
async fn report_health(
    health: tonic_health::server::HealthReporter,
    mut serving: tokio::sync::watch::Receiver<bool>,
    quiet: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(quiet);
    loop {
        let status = match *serving.borrow_and_update() {
            true => ServingStatus::Serving,
            false => ServingStatus::NotServing,
        };
        set_health(&health, status).await;
        tokio::select! {
            _ = &mut quiet => break,
            changed = serving.changed() => if changed.is_err() {
                (&mut quiet).await;
                break;
            },
        }
    }
    set_health(&health, ServingStatus::NotServing).await;
}

/// The names health answers for: overall and the console service.
const HEALTH_NAMES: [&str; 2] = [
    "",
    <ConsoleServiceServer<ConsoleApi> as tonic::server::NamedService>::NAME,
];

async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for name in HEALTH_NAMES {
        health.set_service_status(name, status).await;
    }
}

/// Resolves when the replica is drained (`DrainReplica`) or shuts down.
async fn drained_or_stopping(cluster: Option<Cluster>, shutdown: CancellationToken) {
    match cluster {
        Some(cluster) => tokio::select! {
            _ = cluster.drained() => {}
            _ = shutdown.cancelled() => {}
        },
        None => shutdown.cancelled().await,
    }
}

fn serial_backend(config: &Config) -> Result<Arc<dyn ConsoleBackend>, RunError> {
    let c = &config.console;
    Ok(match c.backend {
        Backend::Native => Arc::new(NativeBackend::new(config)),
        Backend::Socat => Arc::new(SocatBackend::new(SocatSettings {
            socat: c.socat_path.clone(),
            ipmitool: c.ipmitool_path.clone(),
            helper: c.sol_exec_helper.clone().unwrap_or_else(|| {
                std::env::current_exe().unwrap_or_else(|_| "console-svc".into())
            }),
            subprocess_timeout: c.subprocess_timeout,
            checking_interval: c.subprocess_checking_interval,
            terminal_timeout: c.terminal_timeout,
            retry_max_backoff: c.retry_max_backoff,
        })?),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::server::{HealthReporter, HealthService};

    use super::*;

    async fn status(reporter: &HealthReporter, name: &str) -> ServingStatus {
        let service = HealthService::from_health_reporter(reporter.clone());
        let request = tonic::Request::new(HealthCheckRequest {
            service: name.into(),
        });
        match service.check(request).await {
            Ok(r) => match r.into_inner().status() {
                tonic_health::pb::health_check_response::ServingStatus::Serving => {
                    ServingStatus::Serving
                }
                tonic_health::pb::health_check_response::ServingStatus::NotServing => {
                    ServingStatus::NotServing
                }
                _ => ServingStatus::Unknown,
            },
            Err(_) => ServingStatus::Unknown,
        }
    }

    /// Both the named service and the overall `""` become `want`.
    async fn becomes(reporter: &HealthReporter, want: ServingStatus) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for name in ["porthole.console.v1.ConsoleService", ""] {
            while status(reporter, name).await != want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name:?} never {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fenced_or_drained_is_not_serving_overall_too_whatever_the_lease_does() {
        // As tonic_health::server::health_reporter() leaves it: "" SERVING.
        let reporter = HealthReporter::new();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let (serving, rx) = tokio::sync::watch::channel(true);
        let drained = CancellationToken::new();
        tokio::spawn(report_health(
            reporter.clone(),
            rx,
            drained.clone().cancelled_owned(),
        ));
        becomes(&reporter, ServingStatus::Serving).await;
        // Fenced (the lease is not known valid).
        serving.send_replace(false);
        becomes(&reporter, ServingStatus::NotServing).await;
        serving.send_replace(true);
        becomes(&reporter, ServingStatus::Serving).await;

        drained.cancel();
        becomes(&reporter, ServingStatus::NotServing).await;
        // A lease regained after the drain does not make it SERVING again.
        serving.send_replace(false);
        serving.send_replace(true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        for name in ["porthole.console.v1.ConsoleService", ""] {
            assert_eq!(status(&reporter, name).await, ServingStatus::NotServing);
        }
    }
}
