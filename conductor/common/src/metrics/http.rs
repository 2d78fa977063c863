//! HTTP API requests by method, route template and status, with their
//! latency: an axum middleware (`axum::middleware::from_fn_with_state`).
//!
//! The route label is the matched template (`/v1/nodes/{node}`), never the
//! raw path, and a request no route matched is `unmatched`; methods outside
//! the standard set are `other`. So no client can grow the label set.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;

use super::{latency_histogram, Counter, Family, HistogramFamily, Registry, Unit};

type StatusLabels = [(&'static str, String); 3];
type RouteLabels = [(&'static str, String); 2];

/// The metrics of one HTTP API; [`HttpMetrics::track`] records into them.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<StatusLabels, Counter>,
    duration: HistogramFamily<RouteLabels>,
}

impl HttpMetrics {
    /// Register `<prefix>_api_requests_total{method,route,status}` and
    /// `<prefix>_api_request_duration_seconds{method,route}`.
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let requests = Family::<StatusLabels, Counter>::default();
        let duration = HistogramFamily::<RouteLabels>::new_with_constructor(latency_histogram);
        registry.register(
            format!("{prefix}_api_requests"),
            "API requests answered, by method, route template and HTTP status",
            requests.clone(),
        );
        registry.register_with_unit(
            format!("{prefix}_api_request_duration"),
            "Time to answer an API request (until the response head), by method and route template",
            Unit::Seconds,
            duration.clone(),
        );
        Self { requests, duration }
    }

    /// The middleware: `router.layer(from_fn_with_state(metrics, HttpMetrics::track))`.
    /// Added with `Router::layer`, it runs after routing, so the matched
    /// template is known.
    pub async fn track(State(metrics): State<HttpMetrics>, req: Request, next: Next) -> Response {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
        let method = method_label(req.method()).to_owned();
        let start = Instant::now();
        let resp = next.run(req).await;
        metrics
            .duration
            .get_or_create(&[("method", method.clone()), ("route", route.clone())])
            .observe(super::seconds(start.elapsed()));
        metrics
            .requests
            .get_or_create(&[
                ("method", method),
                ("route", route),
                ("status", resp.status().as_u16().to_string()),
            ])
            .inc();
        resp
    }
}

fn method_label(m: &http::Method) -> &'static str {
    use http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn labels_are_route_templates_not_paths() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry, "t");
        let app = axum::Router::new()
            .route("/v1/nodes/{node}", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                metrics,
                HttpMetrics::track,
            ));
        for (method, path) in [
            ("GET", "/v1/nodes/a"),
            ("GET", "/v1/nodes/b"),
            ("GET", "/nowhere/at/all"),
            ("BREW", "/v1/nodes/c"),
        ] {
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            app.clone().oneshot(req).await.unwrap();
        }
        let t = super::super::encode(&registry);
        let has = |line: &str| assert!(t.contains(line), "{line} missing in\n{t}");
        has(r#"t_api_requests_total{method="GET",route="/v1/nodes/{node}",status="200"} 2"#);
        has(r#"t_api_requests_total{method="GET",route="unmatched",status="404"} 1"#);
        has(r#"t_api_requests_total{method="other",route="/v1/nodes/{node}",status="405"} 1"#);
        has(r#"t_api_request_duration_seconds_count{method="GET",route="/v1/nodes/{node}"} 2"#);
        assert!(!t.contains("/v1/nodes/a") && !t.contains("nowhere"), "{t}");
    }
}
