//! [`Replica`]: what `run` starts before it serves and stops after: the
//! backends, the coordinator (local, or etcd with its lease), the console
//! manager and, with etcd, the cluster layer; and the order they stop in.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use super::health::set_health;
use super::RunError;
use crate::backend::ConsoleBackend;
use crate::cluster::forward::PeerTls;
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::{Backend, Config};
use crate::consoles::Consoles;
use crate::coordinator::etcd::{lease, EtcdCoordinator, EtcdSettings, Member};
use crate::coordinator::local::LocalCoordinator;
use crate::coordinator::Coordinator;
use crate::manager::{Backends, ConsoleManager, Placement};
use crate::process::ProcessTable;
use crate::seal::Sealer;
use crate::sol::native::NativeBackend;
use crate::sol::socat::{SocatBackend, SocatSettings};
use crate::vnc::VncBackend;

/// This replica's consoles and what coordinates them: the manager, and
/// with etcd the coordinator and the cluster layer.
pub(super) struct Replica {
    manager: ConsoleManager,
    pub(super) coordinator: Arc<dyn Coordinator>,
    etcd: Option<Arc<EtcdCoordinator>>,
    pub(super) cluster: Option<Cluster>,
    /// The parent of the coordination tasks (lease, mirror, placement,
    /// publish); cancelled last, after every console stopped.
    coordination: CancellationToken,
}

/// How long shutdown waits for placement, publish and the mirror to end.
const COORDINATION_BOUND: Duration = Duration::from_secs(2);

impl Replica {
    /// Sweep what a crashed run left, then start the backends, the
    /// coordinator, the manager and (with etcd) the cluster layer.
    pub(super) async fn start(
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
    pub(super) fn consoles(&self) -> Arc<dyn Consoles> {
        match &self.cluster {
            Some(c) => Arc::new(c.clone()),
            None => Arc::new(self.manager.clone()),
        }
    }

    /// Once `shutdown` fires: NOT_SERVING; drain (stop taking, leave,
    /// release each console so another replica claims it at once); stop the
    /// consoles; stop placement, publish and the mirror; revoke the lease
    /// and wait for it (bounded by [`lease::REVOKE_TIMEOUT`]).
    pub(super) async fn stop_after(
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

fn serial_backend(config: &Config) -> Result<Arc<dyn ConsoleBackend>, RunError> {
    let c = &config.console;
    Ok(match c.backend {
        Backend::Native => Arc::new(NativeBackend::new(config)),
        Backend::Rmcp => Arc::new(crate::sol::native::rmcp::RmcpBackend::new(config)),
        Backend::Socat => Arc::new(SocatBackend::new(SocatSettings {
            socat: c.socat_path.clone(),
            ipmitool: c.ipmitool_path.clone(),
            helper: crate::sol::sol_exec::helper_path(c.sol_exec_helper.as_deref()),
            subprocess_timeout: c.subprocess_timeout,
            checking_interval: c.subprocess_checking_interval,
            terminal_timeout: c.terminal_timeout,
            retry_max_backoff: c.retry_max_backoff,
        })?),
    })
}
