//! The inspect service's Prometheus metrics (`porthole_inspect_…`), served
//! on `service.metrics_listen` by [`crate::run`]: the gRPC requests (the
//! shared layer). One process-wide set, as in console-svc and the
//! conductor.

use std::sync::{Arc, LazyLock};

use porthole_common::metrics::grpc::{GrpcMetrics, GrpcMetricsLayer};
use porthole_common::metrics::Registry;

pub struct InspectMetrics {
    registry: Arc<Registry>,
    grpc: GrpcMetrics,
}

static METRICS: LazyLock<InspectMetrics> = LazyLock::new(|| {
    let mut r = Registry::default();
    let grpc = GrpcMetrics::register(
        &mut r,
        "porthole_inspect",
        &[porthole_proto::FILE_DESCRIPTOR_SET],
    )
    .expect("the compiled descriptor set decodes");
    InspectMetrics {
        registry: Arc::new(r),
        grpc,
    }
});

/// The process's metrics.
pub fn get() -> &'static InspectMetrics {
    &METRICS
}

impl InspectMetrics {
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
    pub fn grpc_layer(&self) -> GrpcMetricsLayer {
        self.grpc.layer()
    }
}
