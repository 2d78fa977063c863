//! deploy: the virtual-media deploy service (the iLO virtual-media iSCSI
//! deploy; Ironic's `iscsi` deploy and `ilo-virtual-media` boot
//! interfaces call it through the conductor). `main.rs` parses the command
//! line and calls [`run`]; tests call the same entry point in-process.
//!
//! ```text
//!  PrepareRamdisk ─▶ validate ─▶ floppy (vfat, in memory) ─▶ store (swift | http) ─▶ temp URL
//!                 ─▶ Redfish: insert floppy + deploy ISO ─▶ boot once Cd ─▶ power on / reboot
//! ```
//!
//! Module map:
//! - [`config`]: the typed configuration (file, `PORTHOLE_DEPLOY_*`, flags).
//! - [`validate`]: what a node needs before anything is done.
//! - [`deploy`]: PrepareRamdisk and CleanUp; [`grpc`]: `deploy.v1` over it.
//! - [`image`]: the vfat floppy; [`secret`]: the per-deploy keys.
//! - [`store`]: the Swift (tempauth or Keystone v3) and embedded HTTP stores
//!   behind one trait.
//! - [`metrics`]: the Prometheus metrics (`service.metrics_listen`).
//! - [`instance`]: ContinueDeploy (image cache and checks, the iSCSI write,
//!   `done`, the shared boot ISO) and ReleaseBootIso; [`grpc_instance`]:
//!   `deploy.v1.InstanceDeployService` over it.
//!
//! Redfish virtual media live in porthole-bmc (`vmedia`), the shared BMC
//! library.

// A service logs through tracing, never to stdout/stderr directly.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod config;
pub mod deploy;
pub mod grpc;
pub mod grpc_instance;
pub mod image;
pub mod instance;
pub mod metrics;
pub mod secret;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use porthole_bmc::redfish::{Client, RedfishError};
use porthole_bmc::Secret;
use porthole_common::metrics::MetricsServer;
use porthole_common::service;
use porthole_proto::deploy::v1::deploy_service_server::DeployServiceServer;
use porthole_proto::deploy::v1::instance_deploy_service_server::InstanceDeployServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use config::{Backend, Config, SwiftAuthType};
use store::http::HttpStore;
use store::keystone::KeystoneSettings;
use store::swift::{SwiftAuth, SwiftSettings, SwiftStore};
use store::{Store, StoreError};

/// Why the service could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("TLS: {0}")]
    Tls(#[from] porthole_common::tls::TlsError),
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] porthole_common::metrics::MetricsError),
    #[error("embedded store: binding {addr}: {source}")]
    StoreBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {what} {path}: {source}")]
    SecretFile {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("Redfish client: {0}")]
    Redfish(#[from] RedfishError),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    ImageCache(#[from] instance::cache::CacheError),
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// How long client connections may stay open once shutdown began.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serve `deploy.v1` on `listener` (and the embedded store on its own
/// port) until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let acceptor = match config.service.server_tls()? {
        Some(t) => Some(t.acceptor()?),
        None => None,
    };
    let metrics = MetricsServer::start_optional(
        config.service.metrics_listen,
        metrics::get().registry(),
        shutdown.child_token(),
    )
    .await?;
    let (store, http_store) = open_store(&config, shutdown.child_token()).await?;
    let redfish = Client::new(config.redfish.timeout)?;
    let config = Arc::new(config);
    let instances = Arc::new(instance::Instances::new(
        config.clone(),
        store.clone(),
        redfish.clone(),
    )?);
    let deployer = Arc::new(deploy::Deployer::new(config.clone(), store, redfish));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_serving::<DeployServiceServer<grpc::DeployApi>>()
        .await;
    health
        .set_serving::<InstanceDeployServiceServer<grpc_instance::InstanceApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(porthole_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = acceptor.is_some(),
        store = ?config.store.backend,
        "deploy service serving"
    );
    let router = tonic::transport::Server::builder()
        .layer(metrics::get().grpc_layer())
        .add_service(health_service)
        .add_service(reflection)
        .add_service(DeployServiceServer::new(grpc::DeployApi::new(deployer)))
        .add_service(InstanceDeployServiceServer::new(
            grpc_instance::InstanceApi::new(instances, config.instance.ramdisk_port),
        ));
    let serve = service::serve_grpc(
        router,
        listener,
        acceptor,
        config.service.tls_handshake_timeout,
        shutdown.clone(),
    );
    let served = service::until_grace(serve, &shutdown, SHUTDOWN_GRACE).await;
    shutdown.cancel();
    if let Some(s) = http_store {
        s.stopped().await;
    }
    if let Some(m) = metrics {
        m.stop().await;
    }
    tracing::info!("deploy service stopped");
    Ok(served?)
}

/// The configured store (and the embedded one's handle, to wait for it).
async fn open_store(
    config: &Config,
    cancel: CancellationToken,
) -> Result<(Arc<dyn Store>, Option<HttpStore>), RunError> {
    match config.store.backend {
        Backend::Http => {
            let at = config.store.http_listen;
            let listener = TcpListener::bind(at)
                .await
                .map_err(|source| RunError::StoreBind { addr: at, source })?;
            let started = HttpStore::start(
                &config.store.http_dir,
                listener,
                config.store.http_public_url.as_deref(),
                cancel,
            )
            .await?;
            Ok((Arc::new(started.store.clone()), Some(started.store)))
        }
        Backend::Swift => {
            let s = &config.swift;
            let read = |what, path: &std::path::Path| {
                std::fs::read_to_string(path)
                    .map(|t| Secret::new(t.lines().next().unwrap_or("").trim()))
                    .map_err(|source| RunError::SecretFile {
                        what,
                        path: path.to_owned(),
                        source,
                    })
            };
            let key = read("swift.key_file", s.key_file.as_deref().expect("validated"))?;
            let temp_url_key = match &s.temp_url_key_file {
                Some(p) => Some(read("swift.temp_url_key_file", p)?),
                None => None,
            };
            let auth_url = s.auth_url.clone().expect("validated");
            let user = s.user.clone().expect("validated");
            let auth = match s.auth_type {
                SwiftAuthType::Tempauth => SwiftAuth::TempAuth {
                    auth_url,
                    user,
                    key,
                },
                SwiftAuthType::Password => SwiftAuth::Keystone(KeystoneSettings {
                    auth_url,
                    user,
                    password: key,
                    user_domain_name: s.user_domain_name.clone(),
                    project_name: s.project_name.clone().expect("validated"),
                    project_domain_name: s.project_domain_name.clone(),
                    region: s.region_name.clone(),
                    interface: s.interface.clone(),
                }),
            };
            let store = SwiftStore::new(SwiftSettings {
                auth,
                container: s.container.clone(),
                temp_url_key,
                timeout: s.timeout,
            })?;
            Ok((Arc::new(store), None))
        }
    }
}
