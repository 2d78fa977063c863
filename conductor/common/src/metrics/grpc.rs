//! gRPC server requests by service, method and status code: a tower layer
//! for `tonic::transport::Server::layer`.
//!
//! ```text
//!  request ──▶ path /pkg.Service/Method (known from the descriptor sets, else "unknown")
//!  response ──▶ grpc-status in the headers (trailers-only: an error) ──▶ counted
//!           └─▶ body ... trailers grpc-status ──────────────────────────▶ counted
//!  dropped before any status (the client went away) ────────────────────▶ counted as Canceled
//! ```
//!
//! Only methods named in the service's descriptor sets become label values,
//! so a client inventing paths cannot grow the label set. Code names are
//! gRPC's own (`OK`, `NotFound`, `Canceled`, ...), as in go-grpc-prometheus.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use prost::Message as _;
use tokio::time::Instant;

use super::{latency_histogram, Counter, Family, HistogramFamily, Registry, Unit};

type CodeLabels = [(&'static str, String); 3];
type MethodLabels = [(&'static str, String); 2];

/// The metrics of one gRPC server; [`GrpcMetrics::layer`] records into them.
#[derive(Clone)]
pub struct GrpcMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    requests: Family<CodeLabels, Counter>,
    duration: HistogramFamily<MethodLabels>,
    /// `/pkg.Service/Method` → (service, method).
    methods: HashMap<String, (String, String)>,
}

impl GrpcMetrics {
    /// Register `<prefix>_grpc_requests_total{service,method,code}` and
    /// `<prefix>_grpc_request_duration_seconds{service,method}`; the methods
    /// are those of every service in `descriptor_sets` (encoded
    /// `FileDescriptorSet`s, as given to tonic-reflection).
    pub fn register(
        registry: &mut Registry,
        prefix: &str,
        descriptor_sets: &[&[u8]],
    ) -> Result<Self, prost::DecodeError> {
        let mut methods = HashMap::new();
        for set in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            for file in &set.file {
                for service in &file.service {
                    let full = match file.package() {
                        "" => service.name().to_owned(),
                        p => format!("{p}.{}", service.name()),
                    };
                    for m in &service.method {
                        methods.insert(
                            format!("/{full}/{}", m.name()),
                            (full.clone(), m.name().to_owned()),
                        );
                    }
                }
            }
        }
        let requests = Family::<CodeLabels, Counter>::default();
        let duration = HistogramFamily::<MethodLabels>::new_with_constructor(latency_histogram);
        registry.register(
            format!("{prefix}_grpc_requests"),
            "gRPC requests handled, by service, method and status code",
            requests.clone(),
        );
        registry.register_with_unit(
            format!("{prefix}_grpc_request_duration"),
            "Time from a gRPC request's arrival to its final status (a stream's whole life)",
            Unit::Seconds,
            duration.clone(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                requests,
                duration,
                methods,
            }),
        })
    }

    /// The tower layer that records requests into these metrics.
    pub fn layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            metrics: self.clone(),
        }
    }

    fn labels(&self, path: &str) -> (String, String) {
        self.inner
            .methods
            .get(path)
            .cloned()
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()))
    }
}

/// What `Server::builder().layer(metrics.layer())` stacks, to name the
/// router's type (`tonic::transport::server::Router<WithGrpcMetrics>`).
pub type WithGrpcMetrics =
    tower::layer::util::Stack<GrpcMetricsLayer, tower::layer::util::Identity>;

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: GrpcMetrics,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = self.metrics.labels(req.uri().path());
        let mut pending = Pending(Some(Recorder {
            metrics: self.metrics.clone(),
            service,
            method,
            start: Instant::now(),
        }));
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => {
                    if let Some(status) = resp.headers().get("grpc-status") {
                        pending.finish(code_name(status.as_bytes()));
                    }
                    Ok(resp.map(|inner| MetricsBody { inner, pending }))
                }
                Err(e) => {
                    pending.finish("Unknown");
                    Err(e)
                }
            }
        })
    }
}

struct Recorder {
    metrics: GrpcMetrics,
    service: String,
    method: String,
    start: Instant,
}

/// A request not yet counted; counted as `Canceled` if dropped so.
struct Pending(Option<Recorder>);

impl Pending {
    fn finish(&mut self, code: &'static str) {
        let Some(r) = self.0.take() else { return };
        let inner = &r.metrics.inner;
        inner
            .duration
            .get_or_create(&[("service", r.service.clone()), ("method", r.method.clone())])
            .observe(super::seconds(r.start.elapsed()));
        inner
            .requests
            .get_or_create(&[
                ("service", r.service),
                ("method", r.method),
                ("code", code.to_owned()),
            ])
            .inc();
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its request when the status arrives.
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        pending: Pending,
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or("Unknown", |s| code_name(s.as_bytes()));
                    this.pending.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.pending.finish("Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// gRPC's name of a `grpc-status` value.
fn code_name(status: &[u8]) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    std::str::from_utf8(status)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .and_then(|n| NAMES.get(n).copied())
        .unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt};

    type Data = std::io::Cursor<Vec<u8>>;

    /// A body that yields these frames, then ends.
    struct Frames(Vec<Frame<Data>>);
    impl Body for Frames {
        type Data = Data;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Infallible>>> {
            Poll::Ready(match self.0.is_empty() {
                true => None,
                false => Some(Ok(self.0.remove(0))),
            })
        }
    }

    fn descriptor() -> Vec<u8> {
        use prost_types::{
            FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
        };
        FileDescriptorSet {
            file: vec![FileDescriptorProto {
                package: Some("demo.v1".into()),
                service: vec![ServiceDescriptorProto {
                    name: Some("Demo".into()),
                    method: vec![MethodDescriptorProto {
                        name: Some("Hello".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn text(registry: &Registry) -> String {
        super::super::encode(registry)
    }

    async fn drain(body: MetricsBody<Frames>) {
        let mut body = std::pin::pin!(body);
        while let Some(f) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            f.unwrap();
        }
    }

    #[tokio::test]
    async fn counts_by_method_and_code_from_headers_trailers_or_drop() {
        let mut registry = Registry::default();
        let metrics = GrpcMetrics::register(&mut registry, "t", &[&descriptor()]).unwrap();
        let svc = tower::service_fn(|req: http::Request<()>| async move {
            let mut trailers = http::HeaderMap::new();
            let resp = match req.uri().path() {
                // An error: trailers-only, the status in the headers.
                "/demo.v1.Demo/Hello" if req.headers().contains_key("fail") => {
                    http::Response::builder()
                        .header("grpc-status", "5")
                        .body(Frames(vec![]))
                }
                _ => {
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    http::Response::builder().body(Frames(vec![
                        Frame::data(std::io::Cursor::new(b"x".to_vec())),
                        Frame::trailers(trailers),
                    ]))
                }
            };
            Ok::<_, Infallible>(resp.unwrap())
        });
        let mut svc = metrics.layer().layer(svc);
        let call = |path: &str, fail: bool| {
            let mut b = http::Request::builder().uri(path);
            if fail {
                b = b.header("fail", "1");
            }
            b.body(()).unwrap()
        };
        let ok = svc
            .ready()
            .await
            .unwrap()
            .call(call("/demo.v1.Demo/Hello", false));
        drain(ok.await.unwrap().into_body()).await;
        let failed = svc
            .ready()
            .await
            .unwrap()
            .call(call("/demo.v1.Demo/Hello", true));
        drain(failed.await.unwrap().into_body()).await;
        // An invented path is "unknown", not a new label value.
        let odd = svc.ready().await.unwrap().call(call("/x.Y/Z", false));
        drain(odd.await.unwrap().into_body()).await;
        // A stream whose client went away before the status.
        let gone = svc
            .ready()
            .await
            .unwrap()
            .call(call("/demo.v1.Demo/Hello", false));
        drop(gone.await.unwrap());

        let t = text(&registry);
        let has = |line: &str| assert!(t.contains(line), "{line} missing in\n{t}");
        has(r#"t_grpc_requests_total{service="demo.v1.Demo",method="Hello",code="OK"} 1"#);
        has(r#"t_grpc_requests_total{service="demo.v1.Demo",method="Hello",code="NotFound"} 1"#);
        has(r#"t_grpc_requests_total{service="demo.v1.Demo",method="Hello",code="Canceled"} 1"#);
        has(r#"t_grpc_requests_total{service="unknown",method="unknown",code="OK"} 1"#);
        has(r#"t_grpc_request_duration_seconds_count{service="demo.v1.Demo",method="Hello"} 3"#);
        assert!(!t.contains("x.Y"), "{t}");
    }

    #[test]
    fn code_names_are_grpcs() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"14"), "Unavailable");
        assert_eq!(code_name(b"16"), "Unauthenticated");
        assert_eq!(code_name(b"99"), "Unknown");
        assert_eq!(code_name(b"x"), "Unknown");
    }
}
