//! The deploy service's Prometheus metrics (`porthole_deploy_…`), served on
//! `service.metrics_listen` by [`crate::run`]: the gRPC requests, each
//! PrepareRamdisk step's duration and the results.
//!
//! One process-wide set, [`get`], as in the other services.
//!
//! Callers: [`crate::run`] (the gRPC layer, the endpoint), [`crate::deploy`].

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use porthole_common::metrics::grpc::{GrpcMetrics, GrpcMetricsLayer};
use porthole_common::metrics::{
    latency_histogram, seconds, Counter, Family, HistogramFamily, Registry, Unit,
};

type Labels1 = [(&'static str, &'static str); 1];

pub struct DeployMetrics {
    registry: Arc<Registry>,
    grpc: GrpcMetrics,
    steps: HistogramFamily<Labels1>,
    prepares: Family<Labels1, Counter>,
    continues: Family<Labels1, Counter>,
    writes: Family<Labels1, Counter>,
    written: Counter,
}

static METRICS: LazyLock<DeployMetrics> = LazyLock::new(DeployMetrics::new);

/// The process's metrics.
pub fn get() -> &'static DeployMetrics {
    &METRICS
}

/// The steps of PrepareRamdisk, as labelled.
pub const STEPS: [&str; 4] = ["floppy_build", "upload", "insert", "power"];

impl DeployMetrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let grpc = GrpcMetrics::register(
            &mut r,
            "porthole_deploy",
            &[porthole_proto::FILE_DESCRIPTOR_SET],
        )
        .expect("the crate's own descriptor set decodes");
        let steps = HistogramFamily::<Labels1>::new_with_constructor(latency_histogram);
        let prepares = Family::<Labels1, Counter>::default();
        r.register_with_unit(
            "porthole_deploy_step_duration",
            "Time of each PrepareRamdisk step: floppy_build, upload (to the store, with the temp URL), insert (both virtual media), power (boot once from CD and power on or reboot)",
            Unit::Seconds,
            steps.clone(),
        );
        r.register(
            "porthole_deploy_prepares",
            "PrepareRamdisk calls finished, by result (success, invalid: refused before any action, failure)",
            prepares.clone(),
        );
        for step in STEPS {
            let _ = steps.get_or_create(&[("step", step)]);
        }
        for result in ["success", "invalid", "failure"] {
            let _ = prepares.get_or_create(&[("result", result)]);
        }
        let (continues, writes, written) = register_instance(&mut r);
        Self {
            registry: Arc::new(r),
            grpc,
            steps,
            prepares,
            continues,
            writes,
            written,
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn grpc_layer(&self) -> GrpcMetricsLayer {
        self.grpc.layer()
    }

    pub fn step(&self, step: &'static str, took: Duration) {
        self.steps
            .get_or_create(&[("step", step)])
            .observe(seconds(took));
    }

    pub fn prepared(&self, result: &'static str) {
        self.prepares.get_or_create(&[("result", result)]).inc();
    }

    /// A ContinueDeploy ended (success, invalid, failure).
    pub fn continued(&self, result: &'static str) {
        self.continues.get_or_create(&[("result", result)]).inc();
    }

    /// An iSCSI write ended (success, failure).
    pub fn write_result(&self, result: &'static str) {
        self.writes.get_or_create(&[("result", result)]).inc();
    }

    /// Bytes of image written to targets.
    pub fn written(&self, bytes: u64) {
        self.written.inc_by(bytes);
    }
}

/// ContinueDeploy's metrics (issue 14); its steps (fetch, write, verify,
/// boot_iso_build) share `porthole_deploy_step_duration`.
fn register_instance(
    r: &mut Registry,
) -> (Family<Labels1, Counter>, Family<Labels1, Counter>, Counter) {
    let continues = Family::<Labels1, Counter>::default();
    let writes = Family::<Labels1, Counter>::default();
    let written = Counter::default();
    r.register(
        "porthole_deploy_continues",
        "ContinueDeploy calls finished, by result (success, invalid, failure)",
        continues.clone(),
    );
    r.register(
        "porthole_deploy_iscsi_writes",
        "Image writes to iSCSI targets, by result (success, failure)",
        writes.clone(),
    );
    r.register_with_unit(
        "porthole_deploy_written",
        "Bytes of images written to iSCSI targets",
        Unit::Bytes,
        written.clone(),
    );
    for result in ["success", "invalid", "failure"] {
        let _ = continues.get_or_create(&[("result", result)]);
    }
    for result in ["success", "failure"] {
        let _ = writes.get_or_create(&[("result", result)]);
    }
    (continues, writes, written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_the_names_the_readme_gives() {
        get().step("upload", Duration::from_millis(5));
        get().prepared("invalid");
        let text = porthole_common::metrics::encode(&get().registry());
        for name in [
            "porthole_deploy_step_duration_seconds_count{step=\"upload\"}",
            "porthole_deploy_step_duration_seconds_count{step=\"power\"} 0",
            "porthole_deploy_prepares_total{result=\"success\"}",
            "porthole_deploy_prepares_total{result=\"invalid\"}",
            "porthole_deploy_continues_total{result=\"failure\"}",
            "porthole_deploy_iscsi_writes_total{result=\"success\"}",
            "porthole_deploy_written_bytes_total",
        ] {
            assert!(text.contains(name), "{name} not in\n{text}");
        }
    }
}
