//! The inspect service's Prometheus metrics (`porthole_inspect_…`), served
//! on `service.metrics_listen` by [`crate::run`]: the gRPC requests (the
//! shared layer), the requests to ironic-inspector by call and outcome,
//! inspections started and ended, and those waiting now. One process-wide
//! set, as in console-svc and the conductor (in-process tests compare
//! before and after).
//!
//! Callers: `inspector` (each HTTP request), `inspections` (start, end).

use std::sync::{Arc, LazyLock};

use porthole_common::metrics::grpc::{GrpcMetrics, GrpcMetricsLayer};
use porthole_common::metrics::{Counter, Family, Gauge, Registry};

type Labels2 = [(&'static str, &'static str); 2];
type Labels1 = [(&'static str, &'static str); 1];

pub struct InspectMetrics {
    registry: Arc<Registry>,
    grpc: GrpcMetrics,
    inspector_requests: Family<Labels2, Counter>,
    started: Family<Labels1, Counter>,
    ended: Family<Labels1, Counter>,
    waiting: Gauge,
}

static METRICS: LazyLock<InspectMetrics> = LazyLock::new(InspectMetrics::new);

/// The process's metrics.
pub fn get() -> &'static InspectMetrics {
    &METRICS
}

impl InspectMetrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let grpc = GrpcMetrics::register(
            &mut r,
            "porthole_inspect",
            &[
                porthole_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        )
        .expect("the compiled-in descriptor sets decode");
        let m = Self {
            registry: Arc::default(),
            grpc,
            inspector_requests: Family::default(),
            started: Family::default(),
            ended: Family::default(),
            waiting: Gauge::default(),
        };
        r.register(
            "porthole_inspect_inspector_requests",
            "HTTP requests to ironic-inspector, by call (version, start, status, abort) and outcome (ok, refused, unreachable)",
            m.inspector_requests.clone(),
        );
        r.register(
            "porthole_inspect_inspections_started",
            "Inspections started, by interface",
            m.started.clone(),
        );
        r.register(
            "porthole_inspect_inspections_ended",
            "Inspections ended, by state (finished, failed, aborted)",
            m.ended.clone(),
        );
        r.register(
            "porthole_inspect_inspections_waiting",
            "Inspections waiting now",
            m.waiting.clone(),
        );
        Self {
            registry: Arc::new(r),
            ..m
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn grpc_layer(&self) -> GrpcMetricsLayer {
        self.grpc.layer()
    }

    pub fn inspector_request(&self, call: &'static str, outcome: &'static str) {
        self.inspector_requests
            .get_or_create(&[("call", call), ("outcome", outcome)])
            .inc();
    }

    /// Requests so far (for tests).
    pub fn inspector_requests(&self, call: &'static str, outcome: &'static str) -> u64 {
        self.inspector_requests
            .get_or_create(&[("call", call), ("outcome", outcome)])
            .get()
    }

    pub fn started(&self, interface: &'static str) {
        self.started
            .get_or_create(&[("interface", interface)])
            .inc();
        self.waiting.inc();
    }

    pub fn ended(&self, state: &'static str) {
        self.ended.get_or_create(&[("state", state)]).inc();
        self.waiting.dec();
    }
}
