//! `grpc.health.v1` for console-svc: what `run` reports, for the overall
//! service `""` and the console service alike.

use porthole_proto::console::v1::console_service_server::ConsoleServiceServer;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::cluster::Cluster;
use crate::grpc::ConsoleApi;

/// `grpc.health.v1`: SERVING while the coordinator lets us serve, and
/// NOT_SERVING for good once `quiet` resolves (drained or shutting down:
/// the replica still answers API calls, but a load balancer should stop
/// sending it work). The overall service `""` says the same as
/// `porthole.console.v1.ConsoleService`, so a probe that names no service
/// (Kubernetes' gRPC probe by default) sees a fenced or drained replica.
pub(super) async fn report_health(
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

pub(super) async fn set_health(
    health: &tonic_health::server::HealthReporter,
    status: ServingStatus,
) {
    for name in HEALTH_NAMES {
        health.set_service_status(name, status).await;
    }
}

/// Resolves when the replica is drained (`DrainReplica`) or shuts down.
pub(super) async fn drained_or_stopping(cluster: Option<Cluster>, shutdown: CancellationToken) {
    match cluster {
        Some(cluster) => tokio::select! {
            _ = cluster.drained() => {}
            _ = shutdown.cancelled() => {}
        },
        None => shutdown.cancelled().await,
    }
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
