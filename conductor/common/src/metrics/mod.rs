//! Prometheus metrics: a registry's families served as OpenMetrics text on
//! `GET /metrics`, and the helpers services register their metrics with.
//!
//! Each service keeps one [`Registry`] (console-svc and the conductor build
//! theirs once, in a process-wide static: their counters are bumped from
//! deep inside the code without a handle passed around) and, when its
//! `metrics_listen` is set, starts a [`MetricsServer`] on it:
//!
//! ```text
//!  service start ──▶ MetricsServer::start(addr, registry, cancel)
//!  scraper ──GET /metrics──▶ encode(registry): # HELP / # TYPE / samples / # EOF
//!  cancel ──▶ the server stops accepting; MetricsServer::stop awaits it
//! ```
//!
//! [`grpc`] counts a tonic server's requests by method and status code (a
//! tower layer); [`http`] counts an axum router's requests by route template
//! and status, with their latency. Names follow Prometheus' conventions:
//! `<service>_…`, counters end in `_total` (added by the encoder), units are
//! base units and in the name (`_seconds`, `_bytes`).

pub mod grpc;
pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
pub use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::{Registry, Unit};

/// The content type of what `/metrics` serves.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics_listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A histogram family whose histograms all get the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets for request and operation latencies in seconds: 1 ms to about
/// 33 s, doubling.
pub fn latency_buckets() -> std::vec::IntoIter<f64> {
    exponential_buckets(0.001, 2.0, 16)
        .collect::<Vec<_>>()
        .into_iter()
}

/// A histogram with [`latency_buckets`] (for [`HistogramFamily`]).
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Seconds as a histogram observation.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The registry's families as OpenMetrics text (ends with `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error is a bug of ours
    // (a malformed name) and shows as a truncated exposition.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        warn!(error = %e, "encoding metrics failed");
    }
    text
}

/// The `/metrics` endpoint of one service, until its token is cancelled.
pub struct MetricsServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Bind `listen` and serve `registry` on `GET /metrics` until `cancel`.
    pub async fn start(
        listen: SocketAddr,
        registry: Arc<Registry>,
        cancel: CancellationToken,
    ) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| MetricsError::Bind {
                addr: listen,
                source,
            })?;
        Self::serve(listener, registry, cancel)
    }

    /// [`start`](Self::start) when `listen` is configured, else nothing.
    pub async fn start_optional(
        listen: Option<SocketAddr>,
        registry: Arc<Registry>,
        cancel: CancellationToken,
    ) -> Result<Option<Self>, MetricsError> {
        match listen {
            Some(at) => Ok(Some(Self::start(at, registry, cancel).await?)),
            None => Ok(None),
        }
    }

    /// Serve `registry` on an already bound listener.
    pub fn serve(
        listener: TcpListener,
        registry: Arc<Registry>,
        cancel: CancellationToken,
    ) -> Result<Self, MetricsError> {
        let addr = listener.local_addr().map_err(|source| MetricsError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let registry = registry.clone();
                    async move { scrape(&registry) }
                }),
            )
            .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") });
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                warn!(error = %e, "metrics endpoint stopped");
            }
        });
        info!(%addr, "metrics on http://{addr}/metrics");
        Ok(Self { addr, cancel, task })
    }

    /// Where it listens (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving and wait for the server task.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

fn scrape(registry: &Registry) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode(registry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_registry_and_stops() {
        let mut registry = Registry::default();
        let hits = Counter::<u64>::default();
        registry.register("demo_hits", "Hits.", hits.clone());
        hits.inc_by(3);
        let server = MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(registry),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let addr = server.local_addr();
        let resp = get(addr, "/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("application/openmetrics-text"), "{resp}");
        assert!(resp.contains("# TYPE demo_hits counter"), "{resp}");
        assert!(resp.contains("demo_hits_total 3"), "{resp}");
        assert!(resp.trim_end().ends_with("# EOF"), "{resp}");
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        server.stop().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_busy_address_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsServer::start(addr, Arc::default(), CancellationToken::new())
            .await
            .err()
            .expect("bind fails")
            .to_string();
        assert!(err.contains(&format!("metrics_listen {addr}")), "{err}");
    }
}
