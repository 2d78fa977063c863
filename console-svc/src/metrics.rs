//! console-svc's Prometheus metrics (`porthole_console_…`), served on
//! `service.metrics_listen` by `server::run`; README.md lists them.
//!
//! One process-wide set, [`get`], built on first use. The events happen deep
//! inside the backends, the coordinator and placement; a static lets each
//! place count with one line instead of threading a handle through every
//! constructor (the usual Prometheus client model: one default registry per
//! process). The cost: in-process tests share the values, so tests compare
//! before and after, or scrape a console-svc process of their own.
//!
//! The consoles-by-state gauge is read at scrape time from each manager (a
//! [`Census`]), so it cannot drift from what the manager holds.
//!
//! Callers: `sol::native` (activations, viewers, bytes), `sol::socat`
//! (activations, connections), `vnc` (viewers, bytes), `manager` (enable
//! latency, fences, census), `coordinator::etcd` (lease renewals, claims,
//! request errors), `cluster::placement` (takeovers), `server` (gRPC layer,
//! endpoint).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use porthole_common::metrics::grpc::{GrpcMetrics, GrpcMetricsLayer};
use porthole_common::metrics::{
    exponential_buckets, latency_histogram, seconds, Collector, Counter, DescriptorEncoder,
    EncodeMetric, Family, Gauge, Histogram, HistogramFamily, MetricType, Registry, Unit,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Console kinds and states as label values (every pair is always exported).
pub const KINDS: [&str; 2] = ["serial", "vnc"];
pub const STATES: [&str; 4] = ["starting", "running", "failed", "disabled"];

/// What the rmcp backend's shared UDP sockets counted (`[rmcp] udp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RmcpUdpCounts {
    /// Sessions on a shared socket now.
    pub shared_sessions: u64,
    /// Datagrams dropped: from an address no session uses.
    pub unknown_peer: u64,
    /// Datagrams dropped: the session's queue was full.
    pub queue_full: u64,
    /// Sessions given a socket of their own: their BMC's address was in use.
    pub own_socket: u64,
}

/// Who can tell [`RmcpUdpCounts`] (the rmcp backend's UDP pool).
pub trait RmcpUdpSource: Send + Sync {
    fn rmcp_udp(&self) -> RmcpUdpCounts;
}

/// Who can tell how many consoles it holds in which state.
pub trait Census: Send + Sync {
    /// `(kind, state)` of every console, as in [`KINDS`] and [`STATES`].
    fn census(&self) -> Vec<(&'static str, &'static str)>;
}

pub struct ConsoleMetrics {
    registry: Arc<Registry>,
    grpc: GrpcMetrics,
    sol_activations: Family<Labels1, Counter>,
    sol_activation_failures: Family<Labels1, Counter>,
    viewers: Family<Labels1, Gauge>,
    viewer_connections: Family<Labels1, Counter>,
    viewer_bytes: Family<Labels2, Counter>,
    enable_duration: HistogramFamily<Labels2>,
    lease_renewal: Histogram,
    fences: Counter,
    claims: Family<Labels1, Counter>,
    takeovers: Counter,
    etcd_errors: Family<Labels1, Counter>,
    censuses: Arc<Mutex<Vec<Weak<dyn Census>>>>,
    rmcp_udp: Arc<Mutex<Vec<Weak<dyn RmcpUdpSource>>>>,
}

static METRICS: LazyLock<ConsoleMetrics> = LazyLock::new(ConsoleMetrics::new);

/// The process's metrics.
pub fn get() -> &'static ConsoleMetrics {
    &METRICS
}

/// Enable takes an ipmitool round trip or a VNC handshake: 10 ms to ~40 s.
fn enable_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

impl ConsoleMetrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let grpc = GrpcMetrics::register(
            &mut r,
            "porthole_console",
            &[
                porthole_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            ],
        )
        .expect("the compiled-in descriptor sets decode");
        let m = Self {
            registry: Arc::default(),
            grpc,
            sol_activations: Family::default(),
            sol_activation_failures: Family::default(),
            viewers: Family::default(),
            viewer_connections: Family::default(),
            viewer_bytes: Family::default(),
            enable_duration: HistogramFamily::new_with_constructor(enable_histogram),
            lease_renewal: latency_histogram(),
            fences: Counter::default(),
            claims: Family::default(),
            takeovers: Counter::default(),
            etcd_errors: Family::default(),
            censuses: Arc::default(),
            rmcp_udp: Arc::default(),
        };
        let p = |name: &str| format!("porthole_console_{name}");
        r.register(
            p("sol_activations"),
            "SOL sessions asked of a BMC (native: each `sol activate`; socat: each viewer connection, which runs one)",
            m.sol_activations.clone(),
        );
        r.register(
            p("sol_activation_failures"),
            "SOL activations that did not come up (native backend; socat's children are not observed)",
            m.sol_activation_failures.clone(),
        );
        r.register(
            p("viewers"),
            "Viewers connected now (native serial and VNC backends)",
            m.viewers.clone(),
        );
        r.register(
            p("viewer_connections"),
            "Viewer connections accepted",
            m.viewer_connections.clone(),
        );
        r.register_with_unit(
            p("viewer"),
            "Bytes relayed between viewers and consoles; direction to_node (keystrokes, VNC client messages) or to_viewer (console output, framebuffer)",
            Unit::Bytes,
            m.viewer_bytes.clone(),
        );
        r.register_with_unit(
            p("enable_duration"),
            "Time to start a console here (port bound, backend up), by kind and result",
            Unit::Seconds,
            m.enable_duration.clone(),
        );
        r.register_with_unit(
            p("lease_renewal_duration"),
            "Round trip of an etcd lease keep-alive that was answered",
            Unit::Seconds,
            m.lease_renewal.clone(),
        );
        r.register(
            p("fences"),
            "Times this replica stopped serving every console because its lease could not be kept",
            m.fences.clone(),
        );
        r.register(
            p("claims"),
            "Console claims (etcd owner key) by result: won, or lost to another replica",
            m.claims.clone(),
        );
        r.register(
            p("takeovers"),
            "Claims of consoles that another replica had owned (it died, was fenced or drained)",
            m.takeovers.clone(),
        );
        r.register(
            p("etcd_request_errors"),
            "Failed etcd requests: failed_over (that member could not answer; the next one, or all again after a pause, is tried) or returned (the error reached the caller)",
            m.etcd_errors.clone(),
        );
        r.register_collector(Box::new(ConsolesCollector {
            sources: m.censuses.clone(),
        }));
        r.register_collector(Box::new(RmcpUdpCollector {
            sources: m.rmcp_udp.clone(),
        }));
        // Every fixed series exists from the start, so rate() sees the first event.
        for backend in ["native", "socat", "rmcp"] {
            let _ = m.sol_activations.get_or_create(&[("backend", backend)]);
            let _ = m
                .sol_activation_failures
                .get_or_create(&[("backend", backend)]);
        }
        for kind in KINDS {
            let _ = m.viewers.get_or_create(&[("kind", kind)]);
            let _ = m.viewer_connections.get_or_create(&[("kind", kind)]);
            for result in ["ok", "error"] {
                let _ = m
                    .enable_duration
                    .get_or_create(&[("kind", kind), ("result", result)]);
            }
            for direction in ["to_node", "to_viewer"] {
                let _ = m
                    .viewer_bytes
                    .get_or_create(&[("kind", kind), ("direction", direction)]);
            }
        }
        for result in ["won", "lost"] {
            let _ = m.claims.get_or_create(&[("result", result)]);
        }
        for outcome in ["failed_over", "returned"] {
            let _ = m.etcd_errors.get_or_create(&[("outcome", outcome)]);
        }
        Self {
            registry: Arc::new(r),
            ..m
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The tower layer for the gRPC server.
    pub fn grpc_layer(&self) -> GrpcMetricsLayer {
        self.grpc.layer()
    }

    /// Count `census`'s consoles in `porthole_console_consoles` while it lives.
    pub fn add_census(&self, census: Weak<dyn Census>) {
        let mut all = self.censuses.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|c| c.strong_count() > 0);
        all.push(census);
    }

    /// Count `source`'s UDP figures in `porthole_console_rmcp_udp_*` while it lives.
    pub fn add_rmcp_udp(&self, source: Weak<dyn RmcpUdpSource>) {
        let mut all = self.rmcp_udp.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|c| c.strong_count() > 0);
        all.push(source);
    }

    pub fn sol_activation(&self, backend: &'static str) {
        self.sol_activations
            .get_or_create(&[("backend", backend)])
            .inc();
    }

    pub fn sol_activation_failed(&self, backend: &'static str) {
        self.sol_activation_failures
            .get_or_create(&[("backend", backend)])
            .inc();
    }

    /// A viewer of a `kind` console connected; it counts until the guard drops.
    pub fn viewer(&self, kind: &'static str) -> ViewerGuard {
        self.viewer_connections
            .get_or_create(&[("kind", kind)])
            .inc();
        let gauge = self.viewers.get_or_create_owned(&[("kind", kind)]);
        gauge.inc();
        ViewerGuard(gauge)
    }

    /// A socat connection (its end is not observed: no gauge).
    pub fn viewer_connected(&self, kind: &'static str) {
        self.viewer_connections
            .get_or_create(&[("kind", kind)])
            .inc();
    }

    pub fn bytes_to_node(&self, kind: &'static str, n: usize) {
        self.bytes(kind, "to_node").inc_by(n as u64);
    }

    pub fn bytes_to_viewer(&self, kind: &'static str, n: usize) {
        self.bytes(kind, "to_viewer").inc_by(n as u64);
    }

    fn bytes(&self, kind: &'static str, direction: &'static str) -> Counter {
        self.viewer_bytes
            .get_or_create_owned(&[("kind", kind), ("direction", direction)])
    }

    pub fn enable_done(&self, kind: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.enable_duration
            .get_or_create(&[("kind", kind), ("result", result)])
            .observe(seconds(took));
    }

    pub fn lease_renewed(&self, took: Duration) {
        self.lease_renewal.observe(seconds(took));
    }

    pub fn fenced(&self) {
        self.fences.inc();
    }

    pub fn claim(&self, won: bool) {
        let result = if won { "won" } else { "lost" };
        self.claims.get_or_create(&[("result", result)]).inc();
    }

    pub fn takeover(&self) {
        self.takeovers.inc();
    }

    /// `failed_over`: another member is tried; else the caller gets it.
    pub fn etcd_error(&self, failed_over: bool) {
        let outcome = if failed_over {
            "failed_over"
        } else {
            "returned"
        };
        self.etcd_errors
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }
}

/// Holds one connected viewer in `porthole_console_viewers`.
pub struct ViewerGuard(Gauge);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `porthole_console_consoles{kind,state}`, counted at scrape time.
struct ConsolesCollector {
    sources: Arc<Mutex<Vec<Weak<dyn Census>>>>,
}

impl std::fmt::Debug for ConsolesCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsolesCollector")
    }
}

impl Collector for ConsolesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<Labels2, Gauge>::default();
        for kind in KINDS {
            for state in STATES {
                let _ = family.get_or_create(&[("kind", kind), ("state", state)]);
            }
        }
        let sources: Vec<Arc<dyn Census>> = {
            let all = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            all.iter().filter_map(Weak::upgrade).collect()
        };
        for (kind, state) in sources.iter().flat_map(|s| s.census()) {
            family
                .get_or_create(&[("kind", kind), ("state", state)])
                .inc();
        }
        let metric = encoder.encode_descriptor(
            "porthole_console_consoles",
            "Consoles this replica holds, by kind and state",
            None,
            MetricType::Gauge,
        )?;
        family.encode(metric)
    }
}

/// `porthole_console_rmcp_udp_*`, summed over the live sources at scrape time.
struct RmcpUdpCollector {
    sources: Arc<Mutex<Vec<Weak<dyn RmcpUdpSource>>>>,
}

impl std::fmt::Debug for RmcpUdpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RmcpUdpCollector")
    }
}

impl Collector for RmcpUdpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources: Vec<Arc<dyn RmcpUdpSource>> = {
            let all = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            all.iter().filter_map(Weak::upgrade).collect()
        };
        let mut sum = RmcpUdpCounts::default();
        for c in sources.iter().map(|s| s.rmcp_udp()) {
            sum.shared_sessions += c.shared_sessions;
            sum.unknown_peer += c.unknown_peer;
            sum.queue_full += c.queue_full;
            sum.own_socket += c.own_socket;
        }
        let dropped = Family::<Labels1, Counter>::default();
        dropped
            .get_or_create(&[("reason", "unknown_peer")])
            .inc_by(sum.unknown_peer);
        dropped
            .get_or_create(&[("reason", "queue_full")])
            .inc_by(sum.queue_full);
        dropped.encode(encoder.encode_descriptor(
            "porthole_console_rmcp_udp_dropped",
            "Datagrams the rmcp backend's shared UDP socket dropped: from an address no session uses, or for a session whose queue was full",
            None,
            MetricType::Counter,
        )?)?;
        let sessions: Gauge = Gauge::default();
        sessions.set(sum.shared_sessions as i64);
        sessions.encode(encoder.encode_descriptor(
            "porthole_console_rmcp_udp_shared_sessions",
            "rmcp sessions on the shared UDP socket now",
            None,
            MetricType::Gauge,
        )?)?;
        let own: Counter = Counter::default();
        own.inc_by(sum.own_socket);
        own.encode(encoder.encode_descriptor(
            "porthole_console_rmcp_udp_own_sockets",
            "rmcp sessions given a UDP socket of their own because their BMC's address already had a session on the shared one",
            None,
            MetricType::Counter,
        )?)
    }
}

/// A viewer connection whose bytes are counted: what is read from it goes
/// to the node, what is written to it goes to the viewer.
pub struct Counted<S> {
    inner: S,
    kind: &'static str,
}

impl<S> Counted<S> {
    pub fn new(inner: S, kind: &'static str) -> Self {
        Self { inner, kind }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            get().bytes_to_node(self.kind, buf.filled().len() - before);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            get().bytes_to_viewer(self.kind, n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The value of one sample line (`name{labels} value`) in `text`.
    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
            .parse()
            .unwrap()
    }

    fn scrape() -> String {
        porthole_common::metrics::encode(&get().registry())
    }

    struct Fixed(Vec<(&'static str, &'static str)>);
    impl Census for Fixed {
        fn census(&self) -> Vec<(&'static str, &'static str)> {
            self.0.clone()
        }
    }

    #[test]
    fn consoles_are_counted_at_scrape_time_and_forgotten_with_their_manager() {
        let series = r#"porthole_console_consoles{kind="vnc",state="failed"}"#;
        let base = sample(&scrape(), series);
        let census: Arc<dyn Census> = Arc::new(Fixed(vec![("vnc", "failed"), ("vnc", "failed")]));
        get().add_census(Arc::downgrade(&census));
        assert_eq!(sample(&scrape(), series), base + 2.0);
        drop(census);
        assert_eq!(sample(&scrape(), series), base);
        // Every kind × state is exported, zero or not.
        let text = scrape();
        for kind in KINDS {
            for state in STATES {
                sample(
                    &text,
                    &format!(r#"porthole_console_consoles{{kind="{kind}",state="{state}"}}"#),
                );
            }
        }
    }

    struct Udp(RmcpUdpCounts);
    impl RmcpUdpSource for Udp {
        fn rmcp_udp(&self) -> RmcpUdpCounts {
            self.0
        }
    }

    #[test]
    fn rmcp_udp_figures_are_summed_at_scrape_time() {
        let unknown = r#"porthole_console_rmcp_udp_dropped_total{reason="unknown_peer"}"#;
        let full = r#"porthole_console_rmcp_udp_dropped_total{reason="queue_full"}"#;
        let sessions = "porthole_console_rmcp_udp_shared_sessions";
        let own = "porthole_console_rmcp_udp_own_sockets_total";
        let text = scrape();
        let base = [unknown, full, sessions, own].map(|s| sample(&text, s));
        let counts = RmcpUdpCounts {
            shared_sessions: 3,
            unknown_peer: 5,
            queue_full: 7,
            own_socket: 1,
        };
        let a: Arc<dyn RmcpUdpSource> = Arc::new(Udp(counts));
        let b: Arc<dyn RmcpUdpSource> = Arc::new(Udp(counts));
        get().add_rmcp_udp(Arc::downgrade(&a));
        get().add_rmcp_udp(Arc::downgrade(&b));
        let text = scrape();
        let now = [unknown, full, sessions, own].map(|s| sample(&text, s));
        assert_eq!(
            now,
            [base[0] + 10.0, base[1] + 14.0, base[2] + 6.0, base[3] + 2.0]
        );
        drop((a, b));
        let text = scrape();
        assert_eq!(
            [unknown, full, sessions, own].map(|s| sample(&text, s)),
            base
        );
    }

    // The tests below use kind "test", which nothing else in this process
    // counts, so their values are exact although the metrics are shared.

    #[tokio::test]
    async fn counted_streams_count_both_directions() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut counted = Counted::new(ours, "test");
        theirs.write_all(b"keys").await.unwrap();
        let mut buf = [0u8; 4];
        counted.read_exact(&mut buf).await.unwrap();
        counted.write_all(b"screen").await.unwrap();
        let text = scrape();
        let to_node = r#"porthole_console_viewer_bytes_total{kind="test",direction="to_node"}"#;
        let to_viewer = r#"porthole_console_viewer_bytes_total{kind="test",direction="to_viewer"}"#;
        assert_eq!(sample(&text, to_node), 4.0);
        assert_eq!(sample(&text, to_viewer), 6.0);
    }

    #[test]
    fn a_viewer_counts_while_its_guard_lives() {
        let gauge = r#"porthole_console_viewers{kind="test"}"#;
        let conns = r#"porthole_console_viewer_connections_total{kind="test"}"#;
        let first = get().viewer("test");
        let second = get().viewer("test");
        assert_eq!(sample(&scrape(), gauge), 2.0);
        drop(first);
        assert_eq!(sample(&scrape(), gauge), 1.0);
        drop(second);
        assert_eq!(sample(&scrape(), gauge), 0.0);
        assert_eq!(sample(&scrape(), conns), 2.0);
    }
}
